package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/manager"
	platformserver "github.com/runagent-go/runagent/internal/platform"
	"github.com/runagent-go/runagent/internal/platformapi"
	"github.com/runagent-go/runagent/internal/platformclient"
	"github.com/runagent-go/runagent/internal/pyenv"
	"github.com/runagent-go/runagent/internal/pyrunner"
	"github.com/runagent-go/runagent/internal/ratelimit"
)

// livePlatform is the real platform server (runagent server's code, the
// process sandbox, the real Python) on an httptest server, behind a
// recorder that keeps every request the commands send.
type livePlatform struct {
	srv   *httptest.Server
	url   string
	admin string // the first admin key

	mu   sync.Mutex
	reqs []recordedRequest
}

// recordedRequest is one request the platform got.
type recordedRequest struct {
	Method, Path, RawQuery, Auth, ContentType string
	Body                                      []byte
}

func (r recordedRequest) String() string { return r.Method + " " + r.Path + "?" + r.RawQuery }

// newPlatform opens a platform on a fresh data directory for the test
// (skipped without Python). Its agents run with the server's default
// deployment settings; nothing scales down while a test runs.
func newPlatform(t *testing.T) *livePlatform {
	t.Helper()
	ctx := context.Background()
	py, err := pyenv.Find(ctx, "")
	if err != nil {
		t.Skipf("no Python for the agents' instances: %v", err)
	}
	dir := t.TempDir()
	cache := filepath.Join(dir, "cache")
	script, err := pyrunner.WriteScript(cache)
	if err != nil {
		t.Fatal(err)
	}
	lp := &livePlatform{}
	lp.srv = httptest.NewUnstartedServer(nil)
	port := lp.srv.Listener.Addr().(*net.TCPAddr).Port
	p, err := platformserver.Open(ctx, platformserver.Config{
		DataDir: filepath.Join(dir, "data"), CacheDir: cache, Python: py, Script: script, Host: "127.0.0.1", Port: port,
		Defaults: manager.DefaultDeployment, DefaultPolicy: ratelimit.Policy{},
		Tick: 200 * time.Millisecond, HealthInterval: time.Second, StableWindow: 3 * time.Second, PanicWindow: time.Second,
		Version: "test",
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	go p.Run(runCtx)
	lp.srv.Config.Handler = lp.record(p.Handler(true))
	lp.srv.Start()
	lp.url = lp.srv.URL
	t.Cleanup(func() {
		lp.srv.Close()
		stop()
		p.Close()
	})
	b, err := os.ReadFile(p.AdminKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	lp.admin = strings.TrimSpace(string(b))
	return lp
}

// record keeps each request (with its body) before the platform serves it.
func (lp *livePlatform) record(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 64<<20))
		r.Body = io.NopCloser(bytes.NewReader(body))
		lp.mu.Lock()
		lp.reqs = append(lp.reqs, recordedRequest{Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery,
			Auth: r.Header.Get("Authorization"), ContentType: r.Header.Get("Content-Type"), Body: body})
		lp.mu.Unlock()
		next.ServeHTTP(w, r)
	})
}

// reset forgets the requests so far: calls and requests then show what the
// next command sends.
func (lp *livePlatform) reset() {
	lp.mu.Lock()
	lp.reqs = nil
	lp.mu.Unlock()
}

// requests returns the requests since the last reset.
func (lp *livePlatform) requests() []recordedRequest {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	return append([]recordedRequest(nil), lp.reqs...)
}

// calls is requests as "METHOD /path?query".
func (lp *livePlatform) calls() []string {
	var out []string
	for _, r := range lp.requests() {
		out = append(out, r.String())
	}
	return out
}

// lastBody is the body of the last "METHOD /path" request since the reset.
func (lp *livePlatform) lastBody(t *testing.T, methodPath string) []byte {
	t.Helper()
	reqs := lp.requests()
	for i := len(reqs) - 1; i >= 0; i-- {
		if reqs[i].Method+" "+reqs[i].Path == methodPath {
			return reqs[i].Body
		}
	}
	t.Fatalf("no %s was sent; calls: %q", methodPath, lp.calls())
	return nil
}

// client is a platform client with key (as the tests' own hands, not a
// command).
func (lp *livePlatform) client(key string) *platformclient.Client {
	return platformclient.New(lp.url, key, nil)
}

// createKey makes a key with the admin key and returns the whole key and
// its record.
func (lp *livePlatform) createKey(t *testing.T, req platformapi.KeyRequest) (string, *platformapi.Key) {
	t.Helper()
	k, err := lp.client(lp.admin).CreateKey(context.Background(), req)
	if err != nil {
		t.Fatalf("create key %+v: %v", req, err)
	}
	return k.Key, k
}

// deploy deploys the agent folder with `runagent deploy --json` and returns
// the agent's id.
func (lp *livePlatform) deploy(t *testing.T, dir, key string, more ...string) string {
	t.Helper()
	res := runCLI(t, "", append([]string{"deploy", dir, "--server", lp.url, "--api-key", key, "--json"}, more...)...)
	if res.err != nil {
		t.Fatalf("deploy %s: %v\n%s", dir, res.err, res.stderr)
	}
	var out struct {
		AgentID string `json:"agent_id"`
	}
	if err := json.Unmarshal([]byte(res.stdout), &out); err != nil || out.AgentID == "" {
		t.Fatalf("deploy --json printed %q: %v", res.stdout, err)
	}
	return out.AgentID
}

// post sends body (JSON) to the agent's REST route /run with key and
// returns the status and the envelope's success and data.
func (lp *livePlatform) post(t *testing.T, key, agentID string, body map[string]any) (int, bool, json.RawMessage) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, lp.url+"/api/v1/agents/"+agentID+"/run", bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ = io.ReadAll(resp.Body)
	var env struct {
		Success bool            `json:"success"`
		Data    json.RawMessage `json:"data"`
	}
	json.Unmarshal(b, &env)
	return resp.StatusCode, env.Success, env.Data
}

// run calls the agent's entrypoint tag and returns the answer's data: the
// result, or for an async call (202) the accepted invocation.
func (lp *livePlatform) run(t *testing.T, key, agentID, tag string, kwargs map[string]any, async bool) json.RawMessage {
	t.Helper()
	status, ok, data := lp.post(t, key, agentID, map[string]any{"entrypoint_tag": tag, "input_args": []any{}, "input_kwargs": kwargs, "async_execution": async})
	if want := map[bool]int{false: 200, true: 202}[async]; status != want || !ok {
		t.Fatalf("run %s: HTTP %d (success %v), want %d: %s", tag, status, ok, want, data)
	}
	return data
}

// addEntrypoint writes file (Python code) into the agent folder and adds the
// entrypoint tag calling its function fn.
func addEntrypoint(t *testing.T, dir, file, code, fn, tag string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, file), []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	editConfig(t, dir, func(cfg map[string]any) {
		arch := cfg["agent_architecture"].(map[string]any)
		arch["entrypoints"] = append(arch["entrypoints"].([]any), map[string]any{"file": file, "module": fn, "tag": tag})
	})
}

// editConfig rewrites the folder's runagent.config.json through fn.
func editConfig(t *testing.T, dir string, fn func(cfg map[string]any)) {
	t.Helper()
	path := filepath.Join(dir, "runagent.config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	fn(cfg)
	b, _ = json.MarshalIndent(cfg, "", "  ")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls cond for up to timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
