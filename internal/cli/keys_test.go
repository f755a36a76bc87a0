package cli

import (
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/runagent-go/runagent/internal/platformapi"
	"github.com/runagent-go/runagent/internal/platformclient"
)

// keyPattern is a whole API key (docs/platform-api.md).
var keyPattern = regexp.MustCompile(`^ra_[a-z2-7]{12}_[A-Za-z0-9]{40}$`)

func TestKeysCreate(t *testing.T) {
	isolate(t)
	p := newPlatform(t)
	t.Setenv(EnvServer, p.url)
	t.Setenv(EnvAPIKey, p.admin)

	p.reset()
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

	const a1, a2 = "0193a1b2-0000-7000-8000-0000000000a1", "0193a1b2-0000-7000-8000-0000000000a2"
	res := runCLI(t, "", "keys", "create", "--name", "app", "--scope", "run", "--scope", "deploy,run", "--agent", a1, "--agent", a2, "--rate", "2.5", "--burst", "5")
	if res.err != nil {
		t.Fatal(res.err)
	}
	key := strings.TrimSuffix(res.stdout, "\n")
	if !keyPattern.MatchString(key) || res.stdout != key+"\n" {
		t.Errorf("stdout = %q, want the key alone", res.stdout)
	}
	id := strings.Split(key, "_")[1]
	if !strings.Contains(res.stderr, "not shown again") || !strings.Contains(res.stderr, `Created key `+id+` "app"`) || !strings.Contains(res.stderr, "2.5/s burst 5") {
		t.Errorf("stderr = %q", res.stderr)
	}
	if body := string(p.lastBody(t, "POST /api/v1/keys")); body != `{"name":"app","scopes":["run","deploy"],"agents":["`+a1+`","`+a2+`"],"rate_per_second":2.5,"burst":5}` {
		t.Errorf("request body = %s", body)
	}
	// The printed key works, with what was asked for.
	info, err := p.client(key).ValidateToken(context.Background())
	if err != nil || info.KeyID != id || strings.Join(info.Scopes, ",") != "run,deploy" || strings.Join(info.Agents, ",") != a1+","+a2 {
		t.Errorf("the created key: %+v %v", info, err)
	}

	res = runCLI(t, "", "keys", "create", "--name", "app", "--scope", "admin", "--tenant", "acme", "--json")
	var k map[string]any
	if res.err != nil || json.Unmarshal([]byte(res.stdout), &k) != nil || !keyPattern.MatchString(k["key"].(string)) || k["id"] != strings.Split(k["key"].(string), "_")[1] ||
		k["tenant"] != "acme" {
		t.Errorf("--json: %v %q", res.err, res.stdout)
	}
	if body := string(p.lastBody(t, "POST /api/v1/keys")); body != `{"name":"app","tenant":"acme","scopes":["admin"],"agents":[]}` {
		t.Errorf("request body = %s", body)
	}

	// What the server refuses comes back with its field.
	res = runCLI(t, "", "keys", "create", "--name", "app", "--scope", "run", "--agent", "a1")
	if res.err == nil || !strings.Contains(res.err.Error(), "VALIDATION_ERROR: agents[0]: ") || !strings.Contains(res.err.Error(), "(HTTP 400)") {
		t.Errorf("an agent id that is not a UUID: %v", res.err)
	}
}

// columns splits a table row on the tabwriter's padding (2 spaces or more),
// so that names with a space stay one column.
func columns(row string) []string {
	return regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(row), -1)
}

func TestKeysListRevoke(t *testing.T) {
	isolate(t)
	p := newPlatform(t)
	t.Setenv(EnvServer, p.url)
	t.Setenv(EnvAPIKey, p.admin)
	rate, burst, conc := 2.5, 10, 3
	const agent = "0193a1b2-0000-7000-8000-000000000000"
	_, app := p.createKey(t, platformapi.KeyRequest{Name: "app", Tenant: "acme", Scopes: []string{"run", "deploy"}, Agents: []string{agent},
		RatePerSecond: &rate, Burst: &burst, MaxConcurrency: &conc})
	if err := p.client(p.admin).RevokeKey(context.Background(), app.ID); err != nil {
		t.Fatal(err)
	}
	adminID := strings.Split(p.admin, "_")[1]

	res := runCLI(t, "", "keys", "list")
	if res.err != nil {
		t.Fatal(res.err)
	}
	lines := strings.Split(strings.TrimSpace(res.stdout), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID ") || !strings.Contains(lines[0], "LIMITS") || !strings.Contains(lines[0], "REVOKED") {
		t.Fatalf("table:\n%s", res.stdout)
	}
	rows := map[string][]string{}
	for _, l := range lines[1:] {
		c := columns(l)
		rows[c[0]] = c
	}
	if c := rows[adminID]; len(c) != 8 || c[1] != "admin (created at first start)" || c[2] != "default" || c[3] != "admin" || c[4] != "all" || c[5] != "default" || c[7] != "-" {
		t.Errorf("admin row = %q", c)
	}
	if c := rows[app.ID]; len(c) != 8 || c[1] != "app" || c[2] != "acme" || c[3] != "run,deploy" || c[4] != "0193a1b2…" || c[5] != "2.5/s burst 10 conc 3" || c[7] == "-" {
		t.Errorf("app row = %q", c)
	}

	res = runCLI(t, "", "keys", "list", "--json")
	var keys []map[string]any
	if res.err != nil || json.Unmarshal([]byte(res.stdout), &keys) != nil || len(keys) != 2 {
		t.Fatalf("--json: %v %q", res.err, res.stdout)
	}
	for _, k := range keys {
		if k["id"] == app.ID && (k["burst"] != 10.0 || k["revoked_at"] == nil) {
			t.Errorf("--json app key = %v", k)
		}
	}

	res = runCLI(t, "", "keys", "revoke")
	if res.err == nil || !strings.Contains(res.err.Error(), "needs KEY_ID (list them with: runagent keys list)") {
		t.Errorf("revoke without id: %v", res.err)
	}
	doomed, k := p.createKey(t, platformapi.KeyRequest{Name: "doomed", Scopes: []string{"run"}})
	p.reset()
	res = runCLI(t, "", "keys", "revoke", k.ID)
	if res.err != nil || res.stdout != "Revoked key "+k.ID+": it no longer works.\n" || strings.Join(p.calls(), ",") != "DELETE /api/v1/keys/"+k.ID+"?" {
		t.Errorf("revoke: %v %q %q", res.err, res.stdout, p.calls())
	}
	var ae *platformclient.APIError
	if _, err := p.client(doomed).ValidateToken(context.Background()); !errors.As(err, &ae) || ae.Status != 401 {
		t.Errorf("a revoked key still validates: %v", err)
	}
	res = runCLI(t, "", "keys", "revoke", "k9")
	if res.err == nil || !strings.Contains(res.err.Error(), "NOT_FOUND: API key k9 not found (HTTP 404)\nList the keys with: runagent keys list") {
		t.Errorf("revoke unknown: %v", res.err)
	}
}
