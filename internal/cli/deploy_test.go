package cli

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime"
	"mime/multipart"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/runagent-go/runagent/internal/agentfolder"
	"github.com/runagent-go/runagent/internal/platformapi"
	"github.com/runagent-go/runagent/internal/templates"
)

func newAgentDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "my-agent")
	if err := templates.Write("default", dir); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "__pycache__"), 0o755)
	os.WriteFile(filepath.Join(dir, "__pycache__", "main.cpython-312.pyc"), []byte("x"), 0o644)
	return dir
}

// uploadForm reads the multipart upload the deploy command sent: the form's
// agent_id, the zip's file name and the names in the zip.
func uploadForm(t *testing.T, r recordedRequest) (agentID, fileName string, files []string) {
	t.Helper()
	_, params, err := mime.ParseMediaType(r.ContentType)
	if err != nil {
		t.Fatalf("upload content type %q: %v", r.ContentType, err)
	}
	mr := multipart.NewReader(bytes.NewReader(r.Body), params["boundary"])
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			return agentID, fileName, files
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(part)
		switch part.FormName() {
		case "agent_id":
			agentID = string(b)
		case "file":
			fileName = part.FileName()
			zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				t.Fatalf("the upload is not a zip: %v", err)
			}
			for _, f := range zr.File {
				files = append(files, f.Name)
			}
		}
	}
}

// lastUpload is the last upload request since the reset.
func (lp *livePlatform) lastUpload(t *testing.T) recordedRequest {
	t.Helper()
	reqs := lp.requests()
	for i := len(reqs) - 1; i >= 0; i-- {
		if reqs[i].Method == "POST" && reqs[i].Path == "/api/v1/agents/upload" {
			return reqs[i]
		}
	}
	t.Fatalf("no upload was sent; calls: %q", lp.calls())
	return recordedRequest{}
}

func TestDeploy(t *testing.T) {
	isolate(t)
	p := newPlatform(t)
	key, _ := p.createKey(t, platformapi.KeyRequest{Name: "ci", Scopes: []string{"deploy"}})
	dir := newAgentDir(t)

	p.reset()
	res := runCLI(t, "", "deploy", dir, "--server", p.url+"/", "--api-key", key)
	if res.err != nil {
		t.Fatalf("deploy: %v\n%s", res.err, res.stderr)
	}
	folder, err := agentfolder.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	id := folder.Config.AgentID
	if id == agentfolder.ZeroAgentID {
		t.Fatal("the placeholder agent id was not replaced")
	}
	formID, fileName, files := uploadForm(t, p.lastUpload(t))
	if formID != id || fileName != "my-agent.zip" {
		t.Errorf("upload form: agent_id %q, file name %q", formID, fileName)
	}
	if !slices.Contains(files, "runagent.config.json") || !slices.Contains(files, "main.py") ||
		slices.ContainsFunc(files, func(s string) bool { return strings.Contains(s, "__pycache__") }) {
		t.Errorf("bundle files = %v", files)
	}
	calls := p.calls()
	if len(calls) != 3 || calls[0] != "POST /api/v1/tokens/validate?token="+key || calls[1] != "POST /api/v1/agents/upload?" ||
		calls[2] != "POST /api/v1/agents/"+id+"/start?" {
		t.Errorf("calls = %q", calls)
	}
	for _, want := range []string{"Gave the agent the fresh id " + id, "Packing ", " files (", "Uploading ", "Uploaded version 1", "Starting version 1…", "Started version 1"} {
		if !strings.Contains(res.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, res.stderr)
		}
	}
	endpoint := p.url + "/api/v1/agents/" + id
	for _, want := range []string{`Deployed "Demo Agent" version 1.`, "agent id  " + id, "endpoint  " + endpoint,
		"runagent run --base-url " + p.url + " --id " + id + " --tag minimal --KEY=VALUE",
		"curl -X POST " + endpoint + "/run", "runagent keys create --name NAME --scope run --agent " + id} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, res.stdout)
		}
	}
	if strings.Contains(res.stderr, "\r") || strings.Contains(res.stderr, "\033") {
		t.Errorf("progress drawn although stderr is not a terminal: %q", res.stderr)
	}
	// It serves: the server says so, and a call answers.
	if st, err := p.client(key).Status(context.Background(), id); err != nil || st.Status != "deployed" || st.ActiveVersion != 1 || st.Instances.Ready < 1 {
		t.Errorf("status after deploy: %+v %v", st, err)
	}
	if out := p.run(t, p.admin, id, "minimal", map[string]any{"message": "hi"}, false); len(out) == 0 {
		t.Error("the deployed agent did not answer")
	}

	// --json: one object; --agent-id overrides the config's.
	other := "0193a1b2-0000-7000-8000-00000000abcd"
	p.reset()
	res = runCLI(t, "", "deploy", dir, "--server", p.url, "--api-key", key, "--json", "--agent-id", other)
	if res.err != nil {
		t.Fatal(res.err)
	}
	var out map[string]any
	if err := json.Unmarshal([]byte(res.stdout), &out); err != nil || len(out) != 3 || out["agent_id"] != other || out["version"] != 1.0 ||
		out["endpoint"] != p.url+"/api/v1/agents/"+other {
		t.Errorf("--json output = %q (%v)", res.stdout, err)
	}
	if formID, _, _ := uploadForm(t, p.lastUpload(t)); formID != other {
		t.Errorf("upload agent_id = %q, want %q", formID, other)
	}
}

func TestDeployFailures(t *testing.T) {
	isolate(t)
	p := newPlatform(t)
	key, _ := p.createKey(t, platformapi.KeyRequest{Name: "ci", Scopes: []string{"deploy"}})
	runKey, _ := p.createKey(t, platformapi.KeyRequest{Name: "ci", Scopes: []string{"run"}})
	dir := newAgentDir(t)
	args := func(key string, more ...string) []string {
		return append([]string{"deploy", "--server", p.url, "--api-key", key}, more...)
	}

	p.reset()
	res := runCLI(t, "", args(key, dir, "--agent-id", "nope")...)
	if res.err == nil || !strings.Contains(res.err.Error(), `--agent-id: "nope" is not a UUID`) {
		t.Errorf("bad --agent-id: %v", res.err)
	}
	res = runCLI(t, "", args(key, t.TempDir())...)
	if res.err == nil || !strings.Contains(res.err.Error(), "runagent init") {
		t.Errorf("folder without config: %v", res.err)
	}
	os.WriteFile(filepath.Join(dir, "runagent.config.json"), []byte(`{"agent_name": "x", "framework": "nope", "agent_id": "z"}`), 0o644)
	res = runCLI(t, "", args(key, dir)...)
	if res.err == nil || !strings.Contains(res.err.Error(), "cannot be deployed; fix these first:\n  runagent.config.json") {
		t.Errorf("invalid config: %v", res.err)
	}
	if len(p.calls()) != 0 {
		t.Errorf("a broken folder reached the server: %q", p.calls())
	}

	dir = newAgentDir(t)
	res = runCLI(t, "", args(runKey, dir)...)
	if res.err == nil || !strings.Contains(res.err.Error(), `the API key from --api-key ("ci") has the scopes run; deploying needs deploy or admin`) {
		t.Errorf("run-only key: %v", res.err)
	}
	if c := p.calls(); len(c) != 1 {
		t.Errorf("a run-only key went on past validation: %q", c)
	}

	// A version that does not start (its code fails at import) is uploaded
	// but not serving; the error says where to look.
	os.WriteFile(filepath.Join(dir, "main.py"), []byte("raise RuntimeError('broken on purpose')\n"), 0o644)
	res = runCLI(t, "", args(key, dir)...)
	folder, err := agentfolder.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	id := folder.Config.AgentID
	if res.err == nil || !strings.Contains(res.err.Error(), "start: VALIDATION_ERROR: version 1 of agent "+id+" did not start: ") ||
		!strings.Contains(res.err.Error(), "RuntimeError: broken on purpose") || !strings.Contains(res.err.Error(), "(HTTP 400)") ||
		!strings.Contains(res.err.Error(), "runagent logs "+id) {
		t.Errorf("start failure: %v", res.err)
	}
	if st, err := p.client(key).Status(context.Background(), id); err != nil || st.Status != "uploaded" || st.Error == nil ||
		!strings.Contains(string(*st.Error), "broken on purpose") {
		t.Errorf("status after a failed start: %+v %v", st, err)
	}
}

func TestDeployOnATerminal(t *testing.T) {
	isolate(t)
	p := newPlatform(t)
	dir := newAgentDir(t)
	old := isTerminal
	isTerminal = func(any) bool { return true }
	t.Cleanup(func() { isTerminal = old })

	res := runCLI(t, "", "deploy", dir, "--server", p.url, "--api-key", p.admin)
	if res.err != nil {
		t.Fatalf("deploy: %v\n%s", res.err, res.stderr)
	}
	for _, want := range []string{"Packing ", "Uploading", "\r", "Uploaded version 1", "Starting version 1…", "Started version 1"} {
		if !strings.Contains(res.stderr, want) {
			t.Errorf("stderr lacks %q:\n%q", want, res.stderr)
		}
	}
	if !strings.Contains(res.stdout, `Deployed "Demo Agent" version 1.`) {
		t.Errorf("stdout = %q", res.stdout)
	}

	// --json keeps to plain lines even on a terminal.
	res = runCLI(t, "", "deploy", dir, "--server", p.url, "--api-key", p.admin, "--json")
	if res.err != nil || strings.Contains(res.stderr, "\r") || strings.Count(res.stdout, "\n") != 1 || !strings.Contains(res.stdout, `"version":2`) {
		t.Errorf("--json on a terminal: %v\nstdout %q\nstderr %q", res.err, res.stdout, res.stderr)
	}
}
