package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The CLI's run, run-stream and db commands against a served agent, found
// through the local registry by id alone.
func TestCLIRunAndDB(t *testing.T) {
	dir, id := newAgent(t, "showcase")
	s := serve(t, dir, id, serveOpts{})
	cli := func(args ...string) (string, string, error) { return runCLI(t, s.Cache, args...) }

	out, errOut, err := cli("run", "--id", id, "--tag", "echo", "--message=hi", "--who", "me")
	if err != nil {
		t.Fatalf("run: %v %s", err, errOut)
	}
	var echoed map[string]any
	if json.Unmarshal([]byte(out), &echoed) != nil || !jsonEqual(t, echoed["kwargs"], map[string]any{"message": "hi", "who": "me"}) {
		t.Fatalf("run printed %q", out)
	}

	input := filepath.Join(t.TempDir(), "in.json")
	os.WriteFile(input, []byte(`{"input_args": [20, 22]}`), 0o644)
	out, errOut, err = cli("run", "--host", "127.0.0.1", "--port", strings.Split(s.Addr, ":")[1], "--id", id, "--tag", "add", "--input", input, "--json")
	if err != nil || strings.TrimSpace(out) != "42" {
		t.Fatalf("run --input: %q %q %v", out, errOut, err)
	}

	os.WriteFile(input, []byte(`{"n": 3}`), 0o644)
	out, errOut, err = cli("run-stream", "--id", id, "--tag", "count_stream", "--input", input, "--json")
	if err != nil || strings.Count(out, "\n") != 3 || !strings.Contains(out, `{"i":2}`) {
		t.Fatalf("run-stream: %q %q %v", out, errOut, err)
	}

	_, errOut, err = cli("run", "--id", id, "--tag", "fail", "--message=boom")
	if err == nil || !strings.Contains(errOut, "INTERNAL_ERROR") || !strings.Contains(errOut, "boom") {
		t.Fatalf("run of a failing entrypoint: %q %v", errOut, err)
	}
	_, errOut, err = cli("run", "--id", id, "--tag", "count_stream")
	if err == nil || !strings.Contains(errOut, "use runagent run-stream") {
		t.Fatalf("run of a stream tag: %q %v", errOut, err)
	}
	_, errOut, err = cli("run", "--id", "00000000-0000-0000-0000-00000000abcd", "--tag", "echo")
	if err == nil || !strings.Contains(errOut, "runagent serve") {
		t.Fatalf("run of an unknown agent: %q %v", errOut, err)
	}

	out, errOut, err = cli("db", "invocations", "--json", "--limit", "100")
	var invs []map[string]any
	if err != nil || json.Unmarshal([]byte(out), &invs) != nil || len(invs) < 4 {
		t.Fatalf("db invocations: %q %q %v", out, errOut, err)
	}
	first := invs[0]["invocation_id"].(string)
	out, _, err = cli("db", "invocation", first)
	if err != nil || !strings.Contains(out, first) || !strings.Contains(out, `"input_data"`) {
		t.Fatalf("db invocation: %q %v", out, err)
	}
	_, errOut, err = cli("db", "invocation", "nope")
	if err == nil || !strings.Contains(errOut, "no invocation nope") {
		t.Fatalf("db invocation of a missing id: %q %v", errOut, err)
	}
	out, _, err = cli("db", "status")
	if err != nil || !strings.Contains(out, "total invocations") {
		t.Fatalf("db status: %q %v", out, err)
	}
}

func TestCLIInitAndVersion(t *testing.T) {
	out, _, err := runCLI(t, t.TempDir(), "--version")
	if err != nil || !strings.HasPrefix(out, "runagent version ") {
		t.Fatalf("--version: %q %v", out, err)
	}
	out, _, err = runCLI(t, t.TempDir(), "init", "--list")
	if err != nil || !contains(out, "default", "showcase", "langgraph") {
		t.Fatalf("init --list: %q %v", out, err)
	}
	dir := filepath.Join(t.TempDir(), "a")
	runCLI(t, t.TempDir(), "init", dir)
	_, errOut, err := runCLI(t, t.TempDir(), "init", dir)
	if err == nil || errOut == "" {
		t.Fatalf("init into a non-empty folder succeeded")
	}
	_, errOut, err = runCLI(t, t.TempDir(), "init", filepath.Join(t.TempDir(), "b"), "--template", "nope")
	if err == nil || !strings.Contains(errOut, "no template \"nope\"") {
		t.Fatalf("init --template nope: %q", errOut)
	}
	// serve of a broken config names the file, the field and what is expected.
	bad := filepath.Join(t.TempDir(), "bad")
	runCLI(t, t.TempDir(), "init", bad)
	cfg := filepath.Join(bad, "runagent.config.json")
	b, _ := os.ReadFile(cfg)
	os.WriteFile(cfg, []byte(strings.Replace(string(b), `"framework": "default"`, `"framework": "lang-graph"`, 1)), 0o644)
	_, errOut, err = runCLI(t, t.TempDir(), "serve", bad)
	if err == nil || !contains(errOut, "runagent.config.json", "framework", "lang-graph") {
		t.Fatalf("serve of a bad config: %q", errOut)
	}
}
