package cli

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestAgentsListShow(t *testing.T) {
	isolate(t)
	p := newPlatform(t)
	t.Setenv(EnvServer, p.srv.URL)
	t.Setenv(EnvAPIKey, cliTestKey)

	res := runCLI(t, "", "agents", "list")
	if res.err != nil {
		t.Fatal(res.err)
	}
	lines := strings.Split(strings.TrimSpace(res.stdout), "\n")
	if len(lines) != 3 || strings.Join(strings.Fields(lines[0]), " ") != "AGENT NAME FRAMEWORK STATUS VERSION UPDATED" {
		t.Fatalf("table:\n%s", res.stdout)
	}
	if f := strings.Fields(lines[1]); f[0] != "a1" || f[4] != "running" || f[5] != "v3" {
		t.Errorf("row 1 = %q", lines[1])
	}
	if f := strings.Fields(lines[2]); f[0] != "a2" || f[4] != "-" {
		t.Errorf("row 2 = %q", lines[2])
	}

	res = runCLI(t, "", "agents", "list", "--json")
	var agents []map[string]any
	if res.err != nil || json.Unmarshal([]byte(res.stdout), &agents) != nil || len(agents) != 2 {
		t.Errorf("--json: %v %q", res.err, res.stdout)
	}

	res = runCLI(t, "", "agents", "show", "a1")
	if res.err != nil {
		t.Fatal(res.err)
	}
	for _, want := range []string{"agent      a1", "version    v3", "endpoint   " + p.srv.URL + "/api/v1/agents/a1", "minimal  main.py:mock_response",
		"v3  active", "max instances         4", "POOL"} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("show lacks %q:\n%s", want, res.stdout)
		}
	}
	res = runCLI(t, "", "agents", "show", "nope")
	if res.err == nil || !strings.Contains(res.err.Error(), "NOT_FOUND: Agent nope not found (HTTP 404)\nList the agents with: runagent agents list") {
		t.Errorf("show unknown: %v", res.err)
	}
	res = runCLI(t, "", "agents", "show", "a1", "a2")
	if res.err == nil || !strings.Contains(res.err.Error(), "takes one AGENT_ID") {
		t.Errorf("show two: %v", res.err)
	}
}

func TestAgentsDelete(t *testing.T) {
	isolate(t)
	p := newPlatform(t)
	t.Setenv(EnvServer, p.srv.URL)
	t.Setenv(EnvAPIKey, cliTestKey)

	res := runCLI(t, "y\n", "agents", "delete", "a1")
	if res.err == nil || !strings.Contains(res.err.Error(), "refusing to delete agent a1 without confirmation") || !strings.Contains(res.err.Error(), "--yes") {
		t.Errorf("delete without a terminal: %v", res.err)
	}
	if len(p.deleted) != 0 {
		t.Fatal("deleted without confirmation")
	}

	old := isTerminal
	isTerminal = func(any) bool { return true }
	t.Cleanup(func() { isTerminal = old })
	res = runCLI(t, "n\n", "agents", "delete", "a1")
	if res.err == nil || res.err.Error() != "not deleted" || !strings.Contains(res.stderr, `Delete agent "Demo Agent" (a1) and its 2 version(s)`) || len(p.deleted) != 0 {
		t.Errorf("answered no: %v %q %v", res.err, res.stderr, p.deleted)
	}
	res = runCLI(t, "yes\n", "agents", "delete", "a1")
	if res.err != nil || res.stdout != "Deleted agent a1.\n" || len(p.deleted) != 1 {
		t.Errorf("answered yes: %v %q %v", res.err, res.stdout, p.deleted)
	}
	isTerminal = old

	res = runCLI(t, "", "agents", "delete", "a1", "--yes", "--json")
	if res.err != nil || strings.TrimSpace(res.stdout) != `{"agent_id":"a1","deleted":true}` || len(p.deleted) != 2 {
		t.Errorf("--yes --json: %v %q", res.err, res.stdout)
	}
}
