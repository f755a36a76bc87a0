package cli

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestKeysCreate(t *testing.T) {
	isolate(t)
	p := newPlatform(t)
	t.Setenv(EnvServer, p.srv.URL)
	t.Setenv(EnvAPIKey, cliTestKey)

	for _, tt := range []struct{ args, want string }{
		{"--scope run", "--name is required"},
		{"--name x", "--scope is required"},
		{"--name x --scope run,root", `--scope: "root" is not one of run, deploy, admin`},
		{"--name x --scope run --rate 0", "--rate: must be more than 0"},
		{"--name x --scope run --burst 0", "--burst: must be at least 1"},
		{"--name x --scope run --max-concurrency -1", "--max-concurrency: must be at least 1"},
		{"--name x --scope run stray", "unknown command"},
	} {
		res := runCLI(t, "", append([]string{"keys", "create"}, strings.Fields(tt.args)...)...)
		if res.err == nil || !strings.Contains(res.err.Error(), tt.want) {
			t.Errorf("keys create %s: %v, want %q", tt.args, res.err, tt.want)
		}
	}
	if len(p.calls()) != 0 {
		t.Errorf("invalid flags reached the server: %q", p.calls())
	}

	res := runCLI(t, "", "keys", "create", "--name", "app", "--scope", "run", "--scope", "deploy,run", "--agent", "a1", "--agent", "a2", "--rate", "2.5", "--burst", "5")
	if res.err != nil {
		t.Fatal(res.err)
	}
	if res.stdout != "ra_k2_NEWSECRET\n" {
		t.Errorf("stdout = %q, want the key alone", res.stdout)
	}
	if !strings.Contains(res.stderr, "not shown again") || !strings.Contains(res.stderr, `Created key k2 "app"`) || !strings.Contains(res.stderr, "2.5/s burst 5") {
		t.Errorf("stderr = %q", res.stderr)
	}
	if body := string(p.bodies["POST /api/v1/keys"]); body != `{"name":"app","scopes":["run","deploy"],"agents":["a1","a2"],"rate_per_second":2.5,"burst":5}` {
		t.Errorf("request body = %s", body)
	}

	res = runCLI(t, "", "keys", "create", "--name", "app", "--scope", "admin", "--tenant", "acme", "--json")
	var k map[string]any
	if res.err != nil || json.Unmarshal([]byte(res.stdout), &k) != nil || k["key"] != "ra_k2_NEWSECRET" || k["id"] != "k2" {
		t.Errorf("--json: %v %q", res.err, res.stdout)
	}
	if body := string(p.bodies["POST /api/v1/keys"]); body != `{"name":"app","tenant":"acme","scopes":["admin"],"agents":[]}` {
		t.Errorf("request body = %s", body)
	}
}

func TestKeysListRevoke(t *testing.T) {
	isolate(t)
	p := newPlatform(t)
	t.Setenv(EnvServer, p.srv.URL)
	t.Setenv(EnvAPIKey, cliTestKey)

	res := runCLI(t, "", "keys", "list")
	if res.err != nil {
		t.Fatal(res.err)
	}
	lines := strings.Split(strings.TrimSpace(res.stdout), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID ") || !strings.Contains(lines[0], "LIMITS") || !strings.Contains(lines[0], "REVOKED") {
		t.Fatalf("table:\n%s", res.stdout)
	}
	if f := strings.Fields(lines[1]); f[0] != "k1" || f[3] != "admin" || f[4] != "all" || f[5] != "default" || f[len(f)-1] != "-" {
		t.Errorf("row 1 = %q", lines[1])
	}
	if !strings.Contains(lines[2], "run,deploy") || !strings.Contains(lines[2], "0193a1b2…") || !strings.Contains(lines[2], "2.5/s burst 10 conc 3") ||
		!strings.Contains(lines[2], "acme") {
		t.Errorf("row 2 = %q", lines[2])
	}

	res = runCLI(t, "", "keys", "list", "--json")
	var keys []map[string]any
	if res.err != nil || json.Unmarshal([]byte(res.stdout), &keys) != nil || len(keys) != 2 || keys[1]["burst"] != 10.0 {
		t.Errorf("--json: %v %q", res.err, res.stdout)
	}

	res = runCLI(t, "", "keys", "revoke")
	if res.err == nil || !strings.Contains(res.err.Error(), "needs KEY_ID (list them with: runagent keys list)") {
		t.Errorf("revoke without id: %v", res.err)
	}
	res = runCLI(t, "", "keys", "revoke", "k1")
	if res.err != nil || res.stdout != "Revoked key k1: it no longer works.\n" || len(p.revoked) != 1 {
		t.Errorf("revoke: %v %q", res.err, res.stdout)
	}
	res = runCLI(t, "", "keys", "revoke", "k9")
	if res.err == nil || !strings.Contains(res.err.Error(), "NOT_FOUND: no key k9 (HTTP 404)\nList the keys with: runagent keys list") {
		t.Errorf("revoke unknown: %v", res.err)
	}
}
