package runagent_test

import (
	"context"
	"database/sql"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	_ "modernc.org/sqlite"

	runagent "github.com/runagent-go/runagent/sdk/go"
)

func TestNewValidation(t *testing.T) {
	clearEnv(t)
	_, err := runagent.New(runagent.Config{BaseURL: "ftp://x"})
	e := wantCode(t, err, runagent.CodeValidation)
	for _, want := range []string{"AgentID is required", "EntrypointTag is required", "BaseURL must be http or https"} {
		if !strings.Contains(e.Message, want) {
			t.Errorf("Message = %q, want it to contain %q", e.Message, want)
		}
	}
	t.Setenv("RUNAGENT_PORT", "eighty")
	_, err = runagent.New(runagent.Config{AgentID: testAgent, EntrypointTag: "minimal", Local: true, Host: "localhost"})
	wantCode(t, err, runagent.CodeValidation)
}

func TestNewResolution(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		cfg  runagent.Config
		want string // BaseURL()
	}{
		{"default remote", nil, runagent.Config{}, runagent.DefaultBaseURL},
		{"env base URL", map[string]string{"RUNAGENT_BASE_URL": "http://env.example:9000"}, runagent.Config{}, "http://env.example:9000"},
		{"explicit wins over env", map[string]string{"RUNAGENT_BASE_URL": "http://env.example"}, runagent.Config{BaseURL: "https://explicit.example"}, "https://explicit.example"},
		{"api prefix and slash trimmed", nil, runagent.Config{BaseURL: "https://h.example/api/v1/"}, "https://h.example"},
		{"scheme defaults to https", nil, runagent.Config{BaseURL: "h.example"}, "https://h.example"},
		{"path prefix kept", nil, runagent.Config{BaseURL: "https://h.example/runagent"}, "https://h.example/runagent"},
		{"local explicit", nil, runagent.Config{Local: true, Host: "127.0.0.1", Port: 8450}, "http://127.0.0.1:8450"},
		{"local from env", map[string]string{"RUNAGENT_LOCAL": "true", "RUNAGENT_HOST": "::1", "RUNAGENT_PORT": "8451"}, runagent.Config{}, "http://[::1]:8451"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			cfg := tt.cfg
			cfg.AgentID, cfg.EntrypointTag = testAgent, "minimal"
			c, err := runagent.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if c.BaseURL() != tt.want {
				t.Fatalf("BaseURL = %q, want %q", c.BaseURL(), tt.want)
			}
		})
	}
}

func TestAPIKeyFromEnv(t *testing.T) {
	var auth string
	srv := newRESTServer(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		auth = r.Header.Get("Authorization")
		writeJSON(w, 200, okEnvelope(structured("null", "null")))
	})
	for _, tt := range []struct{ explicit, env, want string }{
		{"", "env-key", "Bearer env-key"},
		{"explicit-key", "env-key", "Bearer explicit-key"},
	} {
		clearEnv(t)
		t.Setenv("RUNAGENT_API_KEY", tt.env)
		t.Setenv("RUNAGENT_BASE_URL", srv.URL)
		c, err := runagent.New(runagent.Config{AgentID: testAgent, EntrypointTag: "minimal", APIKey: tt.explicit})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Run(context.Background(), runagent.Input{}); err != nil {
			t.Fatal(err)
		}
		if auth != tt.want {
			t.Errorf("Authorization = %q, want %q", auth, tt.want)
		}
	}
}

// writeRegistry creates dir/runagent_local.db with one agent row, the way
// `runagent serve` does.
func writeRegistry(t *testing.T, dir, agentID, host string, port int) {
	t.Helper()
	dsn := (&url.URL{Scheme: "file", Path: filepath.ToSlash(filepath.Join(dir, "runagent_local.db"))}).String()
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_, err = db.Exec(`CREATE TABLE agents (
		agent_id TEXT PRIMARY KEY, agent_path TEXT, host TEXT, port INTEGER, framework TEXT,
		status TEXT, deployed_at TEXT, last_run TEXT, run_count INTEGER DEFAULT 0,
		success_count INTEGER DEFAULT 0, error_count INTEGER DEFAULT 0, created_at TEXT, updated_at TEXT)`)
	if err != nil {
		t.Fatal(err)
	}
	_, err = db.Exec(`INSERT INTO agents (agent_id, agent_path, host, port, framework, status) VALUES (?, '/tmp/agent', ?, ?, 'default', 'ready')`, agentID, host, port)
	if err != nil {
		t.Fatal(err)
	}
}

func TestLocalDiscovery(t *testing.T) {
	srv := newRESTServer(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, okEnvelope(structured("string", `"hello from local"`)))
	})
	u, _ := url.Parse(srv.URL)
	host, portStr, _ := net.SplitHostPort(u.Host)
	port, _ := strconv.Atoi(portStr)

	clearEnv(t)
	dir := filepath.Join(t.TempDir(), "cache dir?#") // characters a file: URI must escape
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeRegistry(t, dir, testAgent, host, port)
	t.Setenv("RUNAGENT_CACHE_DIR", dir)
	if p, err := runagent.LocalRegistryPath(); err != nil || p != filepath.Join(dir, "runagent_local.db") {
		t.Fatalf("LocalRegistryPath = %q, %v", p, err)
	}

	c, err := runagent.New(runagent.Config{AgentID: testAgent, EntrypointTag: "minimal", Local: true})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if c.BaseURL() != srv.URL {
		t.Fatalf("BaseURL = %q, want %q", c.BaseURL(), srv.URL)
	}
	got, err := c.Run(context.Background(), runagent.Input{})
	if err != nil || got != "hello from local" {
		t.Fatalf("Run = %v, %v", got, err)
	}

	// An explicit port with a discovered host.
	c, err = runagent.New(runagent.Config{AgentID: testAgent, EntrypointTag: "minimal", Local: true, Port: 1234})
	if err != nil || c.BaseURL() != "http://"+host+":1234" {
		t.Fatalf("New with Port: %v, %v", c, err)
	}

	// An agent missing from the registry.
	_, err = runagent.New(runagent.Config{AgentID: "00000000-0000-0000-0000-000000000001", EntrypointTag: "minimal", Local: true})
	e := wantCode(t, err, runagent.CodeNotFound)
	if !strings.Contains(e.Message, "runagent serve") {
		t.Errorf("Message = %q, want a hint to run `runagent serve`", e.Message)
	}

	// No registry at all: an error, and no file is created.
	empty := t.TempDir()
	t.Setenv("RUNAGENT_CACHE_DIR", empty)
	_, err = runagent.New(runagent.Config{AgentID: testAgent, EntrypointTag: "minimal", Local: true})
	e = wantCode(t, err, runagent.CodeNotFound)
	if !strings.Contains(e.Message, "runagent serve") {
		t.Errorf("Message = %q, want a hint to run `runagent serve`", e.Message)
	}
	if _, err := os.Stat(filepath.Join(empty, "runagent_local.db")); !os.IsNotExist(err) {
		t.Fatalf("the registry was created: %v", err)
	}
}

func TestLocalDiscoveryBadRegistry(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	db, err := sql.Open("sqlite", filepath.Join(dir, "runagent_local.db"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE other (x INTEGER)`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	t.Setenv("RUNAGENT_CACHE_DIR", dir)
	_, err = runagent.New(runagent.Config{AgentID: testAgent, EntrypointTag: "minimal", Local: true})
	if err == nil || !strings.Contains(err.Error(), "runagent serve") {
		t.Fatalf("New = %v, want an error with a hint", err)
	}
}
