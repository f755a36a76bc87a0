package cli

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

const cliTestKey = "ra_abcdefghijkl_secret"

// platform is a fake platform server with the routes the commands use.
type platform struct {
	t   *testing.T
	srv *httptest.Server

	mu       sync.Mutex
	requests []string // "METHOD /path?query"
	auth     []string
	bodies   map[string][]byte // last body per "METHOD /path"

	// upload
	uploadAgentID string
	uploadFiles   []string
	uploadName    string
	startErr      bool
	runOnly       bool // the key validates with the run scope only

	logs     int // number of log lines kept (seq 1..logs)
	follow   []string
	deleted  []string
	revoked  []string
	agentIDs map[string]bool
}

func newPlatform(t *testing.T) *platform {
	t.Helper()
	p := &platform{t: t, bodies: map[string][]byte{}, agentIDs: map[string]bool{"a1": true}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v1/tokens/validate", func(w http.ResponseWriter, r *http.Request) {
		scopes := []string{"deploy"}
		if p.runOnly {
			scopes = []string{"run"}
		}
		envData(w, map[string]any{"valid": true, "key_id": "abcdefghijkl", "name": "ci", "tenant": "default", "scopes": scopes, "agents": []string{}})
	})
	mux.HandleFunc("POST /api/v1/agents/upload", p.upload)
	mux.HandleFunc("POST /api/v1/agents/{id}/start", func(w http.ResponseWriter, r *http.Request) {
		if p.startErr {
			envError(w, 400, "VALIDATION_ERROR", "requirements.txt: pip failed", "")
			return
		}
		id := r.PathValue("id")
		envData(w, map[string]any{"agent_id": id, "version": 4, "status": "deployed", "endpoint": "/agents/" + id, "url": "x"})
	})
	mux.HandleFunc("GET /api/v1/agents", func(w http.ResponseWriter, r *http.Request) {
		envData(w, map[string]any{"agents": []map[string]any{
			{"agent_id": "a1", "name": "Demo Agent", "framework": "default", "status": "running", "active_version": 3,
				"created_at": "2026-11-24T10:00:00Z", "updated_at": "2026-11-24T11:00:00Z"},
			{"agent_id": "a2", "name": "Other", "framework": "langgraph", "status": "uploaded", "active_version": nil,
				"created_at": "2026-11-24T10:00:00Z", "updated_at": "2026-11-24T11:00:00Z"}}})
	})
	mux.HandleFunc("GET /api/v1/agents/{id}", func(w http.ResponseWriter, r *http.Request) {
		if !p.agentIDs[r.PathValue("id")] {
			envError(w, 404, "NOT_FOUND", "Agent "+r.PathValue("id")+" not found", "")
			return
		}
		envData(w, map[string]any{"agent_id": "a1", "name": "Demo Agent", "framework": "default", "status": "running", "active_version": 3,
			"created_at": "2026-11-24T10:00:00Z", "updated_at": "2026-11-24T11:00:00Z",
			"entrypoints": []map[string]any{{"file": "main.py", "module": "mock_response", "tag": "minimal"}},
			"versions": []map[string]any{{"version": 2, "status": "retired", "uploaded_at": "2026-11-24T10:00:00Z"},
				{"version": 3, "status": "active", "uploaded_at": "2026-11-24T11:00:00Z"}},
			"limits": map[string]any{"max_instances": 4}, "pool": map[string]any{"ready": 1}})
	})
	mux.HandleFunc("DELETE /api/v1/agents/{id}", func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.deleted = append(p.deleted, r.PathValue("id"))
		p.mu.Unlock()
		envData(w, map[string]any{"agent_id": r.PathValue("id"), "deleted": true})
	})
	mux.HandleFunc("POST /api/v1/keys", func(w http.ResponseWriter, r *http.Request) {
		var req map[string]any
		json.Unmarshal(p.body(r), &req)
		envData(w, map[string]any{"id": "k2", "name": req["name"], "tenant": "default", "scopes": req["scopes"], "agents": req["agents"],
			"rate_per_second": req["rate_per_second"], "burst": req["burst"], "max_concurrency": nil, "created_at": "2026-11-24T10:00:00Z",
			"revoked_at": nil, "last_used_at": nil, "key": "ra_k2_NEWSECRET"})
	})
	mux.HandleFunc("GET /api/v1/keys", func(w http.ResponseWriter, r *http.Request) {
		envData(w, map[string]any{"keys": []map[string]any{
			{"id": "k1", "name": "admin", "tenant": "default", "scopes": []string{"admin"}, "agents": []string{},
				"rate_per_second": 0, "burst": nil, "max_concurrency": 0, "created_at": "2026-11-24T10:00:00Z"},
			{"id": "k2", "name": "app", "tenant": "acme", "scopes": []string{"run", "deploy"}, "agents": []string{"0193a1b2-0000-7000-8000-000000000000"},
				"rate_per_second": 2.5, "burst": 10, "max_concurrency": 3, "created_at": "2026-11-24T10:00:00Z", "revoked_at": "2026-11-24T12:00:00Z"}}})
	})
	mux.HandleFunc("DELETE /api/v1/keys/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") != "k1" {
			envError(w, 404, "NOT_FOUND", "no key "+r.PathValue("id"), "")
			return
		}
		p.mu.Lock()
		p.revoked = append(p.revoked, r.PathValue("id"))
		p.mu.Unlock()
		envData(w, map[string]any{"id": "k1", "revoked": true})
	})
	inv := map[string]any{"invocation_id": "i1", "agent_id": "0193a1b2-0000-7000-8000-000000000000", "input_data": map[string]any{"input_args": []any{}, "input_kwargs": map[string]any{}},
		"output_data": nil, "error_detail": "ValueError: boom\n  at line 3", "request_timestamp": "2026-11-24T10:00:00.123456", "response_timestamp": "2026-11-24T10:00:01",
		"execution_time_ms": 12.34, "status": "failed", "entrypoint_tag": "minimal", "sdk_type": "go", "client_info": nil}
	mux.HandleFunc("GET /api/v1/invocations", func(w http.ResponseWriter, r *http.Request) {
		envData(w, map[string]any{"invocations": []any{inv}, "total_count": 5})
	})
	mux.HandleFunc("GET /api/v1/invocations/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") != "i1" {
			envError(w, 404, "NOT_FOUND", "Invocation "+r.PathValue("id")+" not found", "")
			return
		}
		json.NewEncoder(w).Encode(inv) // the wire record, without an envelope
	})
	mux.HandleFunc("GET /api/v1/agents/{id}/logs", p.logsRoute)
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.requests = append(p.requests, r.Method+" "+r.URL.Path+"?"+r.URL.RawQuery)
		p.auth = append(p.auth, r.Header.Get("Authorization"))
		p.mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer "+cliTestKey {
			envError(w, 401, "AUTHENTICATION_ERROR", "invalid or revoked API key", "")
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *platform) body(r *http.Request) []byte {
	b, _ := io.ReadAll(r.Body)
	p.mu.Lock()
	p.bodies[r.Method+" "+r.URL.Path] = b
	p.mu.Unlock()
	return b
}

func (p *platform) upload(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseMultipartForm(1 << 20); err != nil {
		envError(w, 400, "VALIDATION_ERROR", err.Error(), "")
		return
	}
	f, hdr, err := r.FormFile("file")
	if err != nil {
		envError(w, 400, "VALIDATION_ERROR", "no file", "file")
		return
	}
	defer f.Close()
	zr, err := zip.NewReader(f, hdr.Size)
	if err != nil {
		envError(w, 400, "VALIDATION_ERROR", "not a zip: "+err.Error(), "file")
		return
	}
	p.mu.Lock()
	p.uploadAgentID = r.FormValue("agent_id")
	p.uploadName = hdr.Filename
	p.uploadFiles = nil
	for _, zf := range zr.File {
		p.uploadFiles = append(p.uploadFiles, zf.Name)
	}
	p.mu.Unlock()
	envData(w, map[string]any{"agent_id": r.FormValue("agent_id"), "version": 4, "status": "uploaded", "file_size": hdr.Size, "file_name": hdr.Filename})
}

// logsRoute serves p.logs lines with seq 1..p.logs; follow sends p.follow
// then closes.
func (p *platform) logsRoute(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	after, _ := strconv.ParseInt(q.Get("after"), 10, 64)
	line := func(seq int64) map[string]any {
		return map[string]any{"seq": seq, "time": "2026-11-24T10:00:00.123456789Z", "version": 3, "instance": 2,
			"invocation_id": "0193a1b2-aaaa-7000-8000-000000000000", "stream": "stdout", "line": fmt.Sprintf("line %d\n", seq)}
	}
	if q.Get("follow") == "true" {
		w.Header().Set("Content-Type", "application/x-ndjson")
		for _, l := range p.follow {
			io.WriteString(w, l+"\n")
		}
		return
	}
	limit, _ := strconv.Atoi(q.Get("limit"))
	if limit <= 0 {
		limit = 500
	}
	logs := []any{}
	next := after
	for seq := after + 1; seq <= int64(p.logs) && len(logs) < limit; seq++ {
		logs = append(logs, line(seq))
		next = seq
	}
	envData(w, map[string]any{"agent_id": r.PathValue("id"), "logs": logs, "next_after": next})
}

func (p *platform) calls() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.requests...)
}

func envData(w http.ResponseWriter, data any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"success": true, "data": data, "message": nil, "error": nil, "timestamp": "t", "request_id": "r"})
}

func envError(w http.ResponseWriter, status int, code, msg, field string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"success": false, "data": nil, "message": nil,
		"error": map[string]any{"code": code, "message": msg, "details": nil, "field": field}, "timestamp": "t", "request_id": "r"})
}

// cliResult is what one command run printed.
type cliResult struct {
	stdout, stderr string
	err            error
}

// runCLI runs the command line with args (no signal handling) and stdin.
func runCLI(t *testing.T, stdin string, args ...string) cliResult {
	t.Helper()
	var out, errOut bytes.Buffer
	a := &app{version: "test", stdout: &out, stderr: &errOut}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&errOut)
	root.SetErr(&errOut)
	err := root.ExecuteContext(context.Background())
	return cliResult{out.String(), errOut.String(), err}
}

// isolate points the remote defaults at nothing: no env, an empty cache.
func isolate(t *testing.T) string {
	t.Helper()
	cache := t.TempDir()
	t.Setenv(EnvCacheDir, cache)
	t.Setenv(EnvServer, "")
	t.Setenv(EnvAPIKey, "")
	return cache
}

func TestRemoteDefaults(t *testing.T) {
	cache := isolate(t)
	r := &remoteFlags{}
	if u, err := r.serverURL(); err != nil || u != DefaultServerURL {
		t.Errorf("default server = %q, %v", u, err)
	}
	t.Setenv(EnvServer, "agents.example.com:8400/")
	if u, err := r.serverURL(); err != nil || u != "http://agents.example.com:8400" {
		t.Errorf("server from env = %q, %v", u, err)
	}
	r.server = "https://x.example.com/base/"
	if u, err := r.serverURL(); err != nil || u != "https://x.example.com/base" {
		t.Errorf("server from flag = %q, %v", u, err)
	}
	r.server = "ftp://x"
	if _, err := r.serverURL(); err == nil || !strings.Contains(err.Error(), `--server: "ftp://x" is not a server URL`) {
		t.Errorf("bad server error = %v", err)
	}

	if _, _, err := r.key(); err == nil || !strings.Contains(err.Error(), "no API key: pass --api-key KEY or set $RUNAGENT_API_KEY") ||
		!strings.Contains(err.Error(), filepath.Join(cache, "server", "admin-key")) {
		t.Errorf("no key error = %v", err)
	}
	os.MkdirAll(filepath.Join(cache, "server"), 0o700)
	os.WriteFile(filepath.Join(cache, "server", "admin-key"), []byte("ra_file_key\n"), 0o600)
	if k, src, err := r.key(); err != nil || k != "ra_file_key" || src != filepath.Join(cache, "server", "admin-key") {
		t.Errorf("key from file = %q %q %v", k, src, err)
	}
	t.Setenv(EnvAPIKey, "ra_env_key")
	if k, src, _ := r.key(); k != "ra_env_key" || src != "$RUNAGENT_API_KEY" {
		t.Errorf("key from env = %q %q", k, src)
	}
	r.apiKey = "ra_flag_key"
	if k, src, _ := r.key(); k != "ra_flag_key" || src != "--api-key" {
		t.Errorf("key from flag = %q %q", k, src)
	}
}

func TestHelpDoesNotPrintTheKey(t *testing.T) {
	isolate(t)
	t.Setenv(EnvAPIKey, "ra_secret_in_env")
	res := runCLI(t, "", "agents", "list", "--help")
	if res.err != nil || strings.Contains(res.stderr+res.stdout, "ra_secret_in_env") || !strings.Contains(res.stderr+res.stdout, "--api-key") {
		t.Errorf("help: %v\n%s%s", res.err, res.stdout, res.stderr)
	}
}

func TestAuthAndReachability(t *testing.T) {
	isolate(t)
	p := newPlatform(t)
	res := runCLI(t, "", "agents", "list", "--server", p.srv.URL, "--api-key", "ra_wrong")
	if res.err == nil || !strings.Contains(res.err.Error(), "AUTHENTICATION_ERROR: invalid or revoked API key (HTTP 401)") ||
		!strings.Contains(res.err.Error(), "refused the API key from --api-key") {
		t.Errorf("bad key: %v", res.err)
	}

	// The admin key file is used when nothing else is given.
	cache := isolate(t)
	os.MkdirAll(filepath.Join(cache, "server"), 0o700)
	os.WriteFile(filepath.Join(cache, "server", "admin-key"), []byte(cliTestKey+"\n"), 0o600)
	t.Setenv(EnvServer, p.srv.URL)
	if res := runCLI(t, "", "agents", "list"); res.err != nil {
		t.Errorf("with the admin key file: %v", res.err)
	}

	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	res = runCLI(t, "", "agents", "list", "--server", "http://"+addr)
	if res.err == nil || !strings.Contains(res.err.Error(), "http://"+addr+" is not reachable (connection refused): start it with `runagent server`") {
		t.Errorf("unreachable: %v", res.err)
	}
}
