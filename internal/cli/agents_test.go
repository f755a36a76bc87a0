package cli

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/runagent-go/runagent/internal/platformclient"
)

func TestAgentsListShow(t *testing.T) {
	isolate(t)
	p := newPlatform(t)
	t.Setenv(EnvServer, p.url)
	t.Setenv(EnvAPIKey, p.admin)

	// One agent serving, one uploaded whose version did not start.
	a1 := p.deploy(t, newAgentDir(t), p.admin)
	dir := newAgentDir(t)
	editConfig(t, dir, func(cfg map[string]any) { cfg["agent_name"] = "Other" })
	os.WriteFile(filepath.Join(dir, "main.py"), []byte("raise RuntimeError('broken on purpose')\n"), 0o644)
	res := runCLI(t, "", "deploy", dir, "--server", p.url, "--api-key", p.admin)
	if res.err == nil {
		t.Fatal("a broken agent started")
	}
	ag, err := p.client(p.admin).ListAgents(context.Background())
	if err != nil || len(ag) != 2 {
		t.Fatalf("agents: %+v %v", ag, err)
	}
	a2 := ag[0].AgentID
	if a2 == a1 {
		a2 = ag[1].AgentID
	}

	res = runCLI(t, "", "agents", "list")
	if res.err != nil {
		t.Fatal(res.err)
	}
	lines := strings.Split(strings.TrimSpace(res.stdout), "\n")
	if len(lines) != 3 || strings.Join(strings.Fields(lines[0]), " ") != "AGENT NAME FRAMEWORK STATUS VERSION UPDATED" {
		t.Fatalf("table:\n%s", res.stdout)
	}
	rows := map[string][]string{}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		rows[f[0]] = f
	}
	if f := rows[a1]; len(f) < 6 || strings.Join(f[1:5], " ") != "Demo Agent default deployed" || f[5] != "v1" {
		t.Errorf("row of %s = %q", a1, f)
	}
	if f := rows[a2]; len(f) < 5 || strings.Join(f[1:4], " ") != "Other default uploaded" || f[4] != "-" {
		t.Errorf("row of %s = %q", a2, f)
	}

	res = runCLI(t, "", "agents", "list", "--json")
	var agents []map[string]any
	if res.err != nil || json.Unmarshal([]byte(res.stdout), &agents) != nil || len(agents) != 2 {
		t.Errorf("--json: %v %q", res.err, res.stdout)
	}

	res = runCLI(t, "", "agents", "show", a1)
	if res.err != nil {
		t.Fatal(res.err)
	}
	for _, want := range []string{"agent      " + a1, "version    v1", "endpoint   " + p.url + "/api/v1/agents/" + a1, "v1  active", "POOL"} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("show lacks %q:\n%s", want, res.stdout)
		}
	}
	for _, want := range []string{`\n  minimal +main.py:mock_response\n`, `\n  max instances +4\n`, `\n  instances +\[\{[^\n]*"id":"v1-1"[^\n]*"state":"ready"`} {
		if !regexp.MustCompile(want).MatchString(res.stdout) {
			t.Errorf("show lacks %s:\n%s", want, res.stdout)
		}
	}
	res = runCLI(t, "", "agents", "show", "nope")
	if res.err == nil || !strings.Contains(res.err.Error(), "NOT_FOUND: Agent nope not found (HTTP 404)\nList the agents with: runagent agents list") {
		t.Errorf("show unknown: %v", res.err)
	}
	res = runCLI(t, "", "agents", "show", a1, a2)
	if res.err == nil || !strings.Contains(res.err.Error(), "takes one AGENT_ID") {
		t.Errorf("show two: %v", res.err)
	}
}

func TestAgentsDelete(t *testing.T) {
	isolate(t)
	p := newPlatform(t)
	t.Setenv(EnvServer, p.url)
	t.Setenv(EnvAPIKey, p.admin)
	dir := newAgentDir(t)
	a1 := p.deploy(t, dir, p.admin)
	p.deploy(t, dir, p.admin) // version 2
	a2 := p.deploy(t, newAgentDir(t), p.admin)
	exists := func(id string) bool {
		_, err := p.client(p.admin).GetAgent(context.Background(), id)
		var ae *platformclient.APIError
		if errors.As(err, &ae) && ae.Status == 404 {
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		return true
	}
	deletes := func() (n int) {
		for _, c := range p.calls() {
			if strings.HasPrefix(c, "DELETE ") {
				n++
			}
		}
		return n
	}

	p.reset()
	res := runCLI(t, "y\n", "agents", "delete", a1)
	if res.err == nil || !strings.Contains(res.err.Error(), "refusing to delete agent "+a1+" without confirmation") || !strings.Contains(res.err.Error(), "--yes") {
		t.Errorf("delete without a terminal: %v", res.err)
	}
	if deletes() != 0 || !exists(a1) {
		t.Fatal("deleted without confirmation")
	}

	old := isTerminal
	isTerminal = func(any) bool { return true }
	t.Cleanup(func() { isTerminal = old })
	res = runCLI(t, "n\n", "agents", "delete", a1)
	if res.err == nil || res.err.Error() != "not deleted" || !strings.Contains(res.stderr, `Delete agent "Demo Agent" (`+a1+`) and its 2 version(s)`) || deletes() != 0 || !exists(a1) {
		t.Errorf("answered no: %v %q %q", res.err, res.stderr, p.calls())
	}
	res = runCLI(t, "yes\n", "agents", "delete", a1)
	if res.err != nil || res.stdout != "Deleted agent "+a1+".\n" || deletes() != 1 || exists(a1) {
		t.Errorf("answered yes: %v %q %q", res.err, res.stdout, p.calls())
	}
	isTerminal = old

	res = runCLI(t, "", "agents", "delete", a2, "--yes", "--json")
	if res.err != nil || strings.TrimSpace(res.stdout) != `{"agent_id":"`+a2+`","deleted":true}` || deletes() != 2 || exists(a2) {
		t.Errorf("--yes --json: %v %q", res.err, res.stdout)
	}
	res = runCLI(t, "", "agents", "delete", a2, "--yes")
	if res.err == nil || !strings.Contains(res.err.Error(), "NOT_FOUND: Agent "+a2+" not found (HTTP 404)\nList the agents with: runagent agents list") {
		t.Errorf("delete again: %v", res.err)
	}
}
