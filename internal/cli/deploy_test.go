package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/runagent-go/runagent/internal/agentfolder"
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

func TestDeploy(t *testing.T) {
	isolate(t)
	p := newPlatform(t)
	dir := newAgentDir(t)

	res := runCLI(t, "", "deploy", dir, "--server", p.srv.URL+"/", "--api-key", cliTestKey)
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
	if p.uploadAgentID != id || p.uploadName != "my-agent.zip" {
		t.Errorf("upload form: agent_id %q, file name %q", p.uploadAgentID, p.uploadName)
	}
	if !slices.Contains(p.uploadFiles, "runagent.config.json") || !slices.Contains(p.uploadFiles, "main.py") ||
		slices.ContainsFunc(p.uploadFiles, func(s string) bool { return strings.Contains(s, "__pycache__") }) {
		t.Errorf("bundle files = %v", p.uploadFiles)
	}
	calls := p.calls()
	if len(calls) != 3 || calls[0] != "POST /api/v1/tokens/validate?token="+cliTestKey || calls[1] != "POST /api/v1/agents/upload?" ||
		calls[2] != "POST /api/v1/agents/"+id+"/start?" {
		t.Errorf("calls = %q", calls)
	}
	for _, want := range []string{"Gave the agent the fresh id " + id, "Packing ", " files (", "Uploading ", "Uploaded version 4", "Starting version 4…", "Started version 4"} {
		if !strings.Contains(res.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, res.stderr)
		}
	}
	endpoint := p.srv.URL + "/api/v1/agents/" + id
	for _, want := range []string{`Deployed "Demo Agent" version 4.`, "agent id  " + id, "endpoint  " + endpoint,
		"runagent run --base-url " + p.srv.URL + " --id " + id + " --tag minimal --KEY=VALUE",
		"curl -X POST " + endpoint + "/run", "runagent keys create --name NAME --scope run --agent " + id} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, res.stdout)
		}
	}
	if strings.Contains(res.stderr, "\r") || strings.Contains(res.stderr, "\033") {
		t.Errorf("progress drawn although stderr is not a terminal: %q", res.stderr)
	}

	// --json: one object; --agent-id overrides the config's.
	other := "0193a1b2-0000-7000-8000-00000000abcd"
	res = runCLI(t, "", "deploy", dir, "--server", p.srv.URL, "--api-key", cliTestKey, "--json", "--agent-id", other)
	if res.err != nil {
		t.Fatal(res.err)
	}
	var out map[string]any
	if err := json.Unmarshal([]byte(res.stdout), &out); err != nil || len(out) != 3 || out["agent_id"] != other || out["version"] != 4.0 ||
		out["endpoint"] != p.srv.URL+"/api/v1/agents/"+other {
		t.Errorf("--json output = %q (%v)", res.stdout, err)
	}
	if p.uploadAgentID != other {
		t.Errorf("upload agent_id = %q, want %q", p.uploadAgentID, other)
	}
}

func TestDeployFailures(t *testing.T) {
	isolate(t)
	p := newPlatform(t)
	dir := newAgentDir(t)
	args := func(more ...string) []string {
		return append([]string{"deploy", "--server", p.srv.URL, "--api-key", cliTestKey}, more...)
	}

	res := runCLI(t, "", args(dir, "--agent-id", "nope")...)
	if res.err == nil || !strings.Contains(res.err.Error(), `--agent-id: "nope" is not a UUID`) {
		t.Errorf("bad --agent-id: %v", res.err)
	}
	res = runCLI(t, "", args(t.TempDir())...)
	if res.err == nil || !strings.Contains(res.err.Error(), "runagent init") {
		t.Errorf("folder without config: %v", res.err)
	}
	os.WriteFile(filepath.Join(dir, "runagent.config.json"), []byte(`{"agent_name": "x", "framework": "nope", "agent_id": "z"}`), 0o644)
	res = runCLI(t, "", args(dir)...)
	if res.err == nil || !strings.Contains(res.err.Error(), "cannot be deployed; fix these first:\n  runagent.config.json") {
		t.Errorf("invalid config: %v", res.err)
	}
	if len(p.calls()) != 0 {
		t.Errorf("a broken folder reached the server: %q", p.calls())
	}

	dir = newAgentDir(t)
	p.runOnly = true
	res = runCLI(t, "", args(dir)...)
	if res.err == nil || !strings.Contains(res.err.Error(), `the API key from --api-key ("ci") has the scopes run; deploying needs deploy or admin`) {
		t.Errorf("run-only key: %v", res.err)
	}
	if c := p.calls(); len(c) != 1 {
		t.Errorf("a run-only key went on past validation: %q", c)
	}
	p.runOnly = false

	p.startErr = true
	res = runCLI(t, "", args(dir)...)
	if res.err == nil || !strings.Contains(res.err.Error(), "start: VALIDATION_ERROR: requirements.txt: pip failed (HTTP 400)") ||
		!strings.Contains(res.err.Error(), "runagent logs ") {
		t.Errorf("start failure: %v", res.err)
	}
}

func TestDeployOnATerminal(t *testing.T) {
	isolate(t)
	p := newPlatform(t)
	dir := newAgentDir(t)
	old := isTerminal
	isTerminal = func(any) bool { return true }
	t.Cleanup(func() { isTerminal = old })

	res := runCLI(t, "", "deploy", dir, "--server", p.srv.URL, "--api-key", cliTestKey)
	if res.err != nil {
		t.Fatalf("deploy: %v\n%s", res.err, res.stderr)
	}
	for _, want := range []string{"Packing ", "Uploading", "\r", "Uploaded version 4", "Starting version 4…", "Started version 4"} {
		if !strings.Contains(res.stderr, want) {
			t.Errorf("stderr lacks %q:\n%q", want, res.stderr)
		}
	}
	if !strings.Contains(res.stdout, `Deployed "Demo Agent" version 4.`) {
		t.Errorf("stdout = %q", res.stdout)
	}

	// --json keeps to plain lines even on a terminal.
	res = runCLI(t, "", "deploy", dir, "--server", p.srv.URL, "--api-key", cliTestKey, "--json")
	if res.err != nil || strings.Contains(res.stderr, "\r") || strings.Count(res.stdout, "\n") != 1 {
		t.Errorf("--json on a terminal: %v\nstdout %q\nstderr %q", res.err, res.stdout, res.stderr)
	}
}
