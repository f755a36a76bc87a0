package e2e

import (
	"archive/zip"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/runagent-go/runagent/internal/store/pgstore/pgtest"
)

// platformServer is a running `runagent server`.
type platformServer struct {
	t       testing.TB
	cmd     *exec.Cmd
	Addr    string
	DataDir string
	Admin   string // the first admin key
	mu      sync.Mutex
	logs    bytes.Buffer
	exited  chan struct{}
	args    []string
}

// Fast scaling so tests see scale-up and scale-to-zero in seconds.
var fastScale = []string{"--scale-tick", "200ms", "--scale-window", "3s", "--panic-window", "1s",
	"--idle-timeout", "3s", "--health-interval", "1s"}

func startPlatform(t testing.TB, dataDir string, port int, args ...string) *platformServer {
	t.Helper()
	return startPlatformOn(t, "127.0.0.1", nil, dataDir, port, args...)
}

// startPlatformOn starts `runagent server` listening on host, its command
// line after wrap (such as ip netns exec NAME).
func startPlatformOn(t testing.TB, host string, wrap []string, dataDir string, port int, args ...string) *platformServer {
	t.Helper()
	if dataDir == "" {
		dataDir = filepath.Join(t.TempDir(), "data")
	}
	if port == 0 {
		port = freePort(t)
	}
	s := &platformServer{t: t, Addr: fmt.Sprintf("%s:%d", host, port), DataDir: dataDir, exited: make(chan struct{}), args: args}
	full := append([]string{"server", "--host", host, "--port", strconv.Itoa(port), "--data-dir", dataDir}, fastScale...)
	if os.Getenv("RUNAGENT_TEST_PLATFORM_DB") == "postgres" && !slices.Contains(args, "--db") {
		// The whole platform suite on PostgreSQL: one schema per data
		// directory, so that a restart finds its state again.
		full = append(full, "--db", pgtest.Schema(t, dataDir))
	}
	full = append(full, args...)
	s.cmd = exec.Command(binary, full...)
	if len(wrap) > 0 {
		s.cmd = exec.Command(wrap[0], append(append(wrap[1:], binary), full...)...)
	}
	s.cmd.Env = append(os.Environ(), "RUNAGENT_CACHE_DIR="+sharedCache)
	s.cmd.Stdout, s.cmd.Stderr = s, s
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(s.Stop)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + s.Addr + "/api/v1/health")
		if err == nil {
			resp.Body.Close()
			key, err := os.ReadFile(filepath.Join(dataDir, "admin-key"))
			if err != nil && slices.Contains(args, "--role") {
				return s // a node, or a gateway after the first: the key is the first gateway's
			}
			if err != nil {
				t.Fatalf("admin key: %v", err)
			}
			s.Admin = strings.TrimSpace(string(key))
			return s
		}
		select {
		case <-s.exited:
			t.Fatalf("runagent server exited:\n%s", s.Logs())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("runagent server not healthy:\n%s", s.Logs())
	return nil
}

func (s *platformServer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logs.Write(p)
}

func (s *platformServer) Logs() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logs.String()
}

func (s *platformServer) Stop() {
	select {
	case <-s.exited:
		return
	default:
	}
	syscall.Kill(s.cmd.Process.Pid, syscall.SIGINT)
	select {
	case <-s.exited:
	case <-time.After(20 * time.Second):
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.exited
		s.t.Errorf("runagent server did not stop within 20s of SIGINT")
	}
}

type reply struct {
	Status int
	Header http.Header
	Env    envelope
	Body   []byte
}

// do sends a request with key (if any) and a JSON body (if any).
func (s *platformServer) do(t testing.TB, method, path, key string, body any) reply {
	t.Helper()
	return s.doHeaders(t, method, path, key, body, nil)
}

// doHeaders is do with more request headers.
func (s *platformServer) doHeaders(t testing.TB, method, path, key string, body any, headers map[string]string) reply {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://"+s.Addr+path, rd)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	var env envelope
	json.Unmarshal(out, &env)
	return reply{resp.StatusCode, resp.Header, env, out}
}

func (r reply) code() string {
	if r.Env.Error == nil {
		return ""
	}
	return r.Env.Error.Code
}

// deploy deploys dir with the CLI and returns the agent id.
func (s *platformServer) deploy(t testing.TB, dir, key string) string {
	t.Helper()
	out, errOut, err := runCLI(t, sharedCache, "deploy", dir, "--server", "http://"+s.Addr, "--api-key", key, "--json")
	if err != nil {
		t.Fatalf("runagent deploy: %v\n%s\n%s\nserver:\n%s", err, out, errOut, s.Logs())
	}
	var res struct {
		AgentID  string `json:"agent_id"`
		Version  int    `json:"version"`
		Endpoint string `json:"endpoint"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.AgentID == "" {
		t.Fatalf("deploy --json printed %q: %v", out, err)
	}
	return res.AgentID
}

func (s *platformServer) createKey(t testing.TB, body map[string]any) string {
	t.Helper()
	r := s.do(t, "POST", "/api/v1/keys", s.Admin, body)
	if r.Status != http.StatusCreated {
		t.Fatalf("create key %v: %d %s", body, r.Status, r.Body)
	}
	var k struct{ Key, ID string }
	json.Unmarshal(r.Env.Data, &k)
	return k.Key
}

// setDeployment writes a "deployment" section into the agent's config.
func setDeployment(t testing.TB, dir string, dep map[string]any) {
	t.Helper()
	path := filepath.Join(dir, "runagent.config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	json.Unmarshal(b, &cfg)
	cfg["deployment"] = dep
	b, _ = json.MarshalIndent(cfg, "", "  ")
	os.WriteFile(path, b, 0o644)
}

func runBody(tag string, kwargs map[string]any) map[string]any {
	return map[string]any{"entrypoint_tag": tag, "input_args": []any{}, "input_kwargs": kwargs}
}

// wsStatus dials the stream route and returns the handshake's HTTP status
// (101 when it upgraded) and, when it did, the frames until the close.
func (s *platformServer) stream(t testing.TB, agent, token, tag string, kwargs map[string]any) (int, []map[string]any) {
	t.Helper()
	u := "ws://" + s.Addr + "/api/v1/agents/" + agent + "/run-stream"
	if token != "" {
		u += "?token=" + token
	}
	c, resp, err := websocket.DefaultDialer.Dial(u, nil)
	if err != nil {
		if resp != nil {
			return resp.StatusCode, nil
		}
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	c.WriteJSON(runBody(tag, kwargs))
	var frames []map[string]any
	for {
		var f map[string]any
		if err := c.ReadJSON(&f); err != nil {
			return 101, frames
		}
		frames = append(frames, f)
	}
}

// TestPlatformAuthMatrix deploys two agents of two tenants and calls them
// with keys of every kind, over REST and WebSocket.
func TestPlatformAuthMatrix(t *testing.T) {
	s := startPlatform(t, "", 0)
	dirA, _ := newAgent(t, "default")
	dirB, _ := newAgent(t, "showcase")
	agentA := s.deploy(t, dirA, s.Admin) // tenant "default"
	acmeDeploy := s.createKey(t, map[string]any{"name": "acme ci", "tenant": "acme", "scopes": []string{"deploy"}})
	agentB := s.deploy(t, dirB, acmeDeploy) // tenant "acme"

	runDefault := s.createKey(t, map[string]any{"name": "default app", "scopes": []string{"run"}})
	runAcme := s.createKey(t, map[string]any{"name": "acme app", "tenant": "acme", "scopes": []string{"run"}})
	otherAgent := "7d4f3a2b-1c0e-4f5a-9b8c-7d6e5f4a3b2c"
	restricted := s.createKey(t, map[string]any{"name": "one agent", "scopes": []string{"run"}, "agents": []string{otherAgent}})
	revoked := s.createKey(t, map[string]any{"name": "gone", "scopes": []string{"run"}})
	revokedID := strings.Split(revoked, "_")[1]
	if r := s.do(t, "DELETE", "/api/v1/keys/"+revokedID, s.Admin, nil); r.Status != 200 {
		t.Fatalf("revoke: %d %s", r.Status, r.Body)
	}

	minimal := runBody("minimal", map[string]any{"message": "hi"})
	echo := runBody("echo", map[string]any{"x": 1})
	cases := []struct {
		name   string
		agent  string
		key    string
		body   map[string]any
		status int
		code   string
	}{
		{"no key", agentA, "", minimal, 401, "AUTHENTICATION_ERROR"},
		{"malformed key", agentA, "not-a-key", minimal, 401, "AUTHENTICATION_ERROR"},
		{"unknown key", agentA, "ra_aaaaaaaaaaaa_" + strings.Repeat("A", 40), minimal, 401, "AUTHENTICATION_ERROR"},
		{"revoked key", agentA, revoked, minimal, 401, "AUTHENTICATION_ERROR"},
		{"run key, own tenant", agentA, runDefault, minimal, 200, ""},
		{"admin key", agentA, s.Admin, minimal, 200, ""},
		{"run key, other tenant's agent", agentB, runDefault, echo, 404, "NOT_FOUND"},
		{"missing agent", otherAgent, runDefault, echo, 404, "NOT_FOUND"},
		{"acme run key", agentB, runAcme, echo, 200, ""},
		{"acme run key, default's agent", agentA, runAcme, minimal, 404, "NOT_FOUND"},
		{"deploy-only key may not run", agentB, acmeDeploy, echo, 403, "PERMISSION_ERROR"},
		{"key restricted to another agent", agentA, restricted, minimal, 403, "PERMISSION_ERROR"},
	}
	for _, c := range cases {
		r := s.do(t, "POST", "/api/v1/agents/"+c.agent+"/run", c.key, c.body)
		if r.Status != c.status || r.code() != c.code {
			t.Errorf("%s: %d %q, want %d %q: %s", c.name, r.Status, r.code(), c.status, c.code, r.Body)
		}
	}
	// The other tenant's agent and a missing one answer exactly alike.
	a := s.do(t, "POST", "/api/v1/agents/"+agentB+"/run", runDefault, echo)
	m := s.do(t, "POST", "/api/v1/agents/"+otherAgent+"/run", runDefault, echo)
	if strings.ReplaceAll(a.Env.Error.Message, agentB, "X") != strings.ReplaceAll(m.Env.Error.Message, otherAgent, "X") {
		t.Errorf("another tenant's agent is distinguishable: %q vs %q", a.Env.Error.Message, m.Env.Error.Message)
	}
	// Reads: a deploy key may read its agents; a run key sees only its tenant.
	if r := s.do(t, "GET", "/api/v1/agents/"+agentB+"/architecture", acmeDeploy, nil); r.Status != 200 {
		t.Errorf("deploy key reading architecture: %d %s", r.Status, r.Body)
	}
	if r := s.do(t, "GET", "/api/v1/agents", runAcme, nil); r.Status != 200 || strings.Contains(string(r.Body), agentA) || !strings.Contains(string(r.Body), agentB) {
		t.Errorf("acme's agent list: %d %s", r.Status, r.Body)
	}
	if r := s.do(t, "GET", "/api/v1/keys", runDefault, nil); r.Status != 403 {
		t.Errorf("run key listing keys: %d %s", r.Status, r.Body)
	}
	if r := s.do(t, "POST", "/api/v1/tokens/validate?token="+runAcme, "", map[string]any{}); r.Status != 200 || !strings.Contains(string(r.Env.Data), `"valid":true`) {
		t.Errorf("tokens/validate: %d %s", r.Status, r.Body)
	}
	if r := s.do(t, "POST", "/api/v1/tokens/validate?token="+revoked, "", map[string]any{}); r.Status != 401 {
		t.Errorf("tokens/validate of a revoked key: %d %s", r.Status, r.Body)
	}

	// An invocation of another tenant's agent is not found.
	r := s.do(t, "POST", "/api/v1/agents/"+agentB+"/run", runAcme, echo)
	var inv string
	if r2 := s.do(t, "GET", "/api/v1/invocations?agent_id="+agentB+"&limit=1", runAcme, nil); r2.Status == 200 {
		var d struct {
			Invocations []struct {
				InvocationID string `json:"invocation_id"`
			}
		}
		json.Unmarshal(r2.Env.Data, &d)
		if len(d.Invocations) > 0 {
			inv = d.Invocations[0].InvocationID
		}
	}
	if r.Status != 200 || inv == "" {
		t.Fatalf("invocation list: %d %s", r.Status, r.Body)
	}
	if r := s.do(t, "GET", "/api/v1/invocations/"+inv, runAcme, nil); r.Status != 200 {
		t.Errorf("own invocation: %d %s", r.Status, r.Body)
	}
	if r := s.do(t, "GET", "/api/v1/invocations/"+inv, runDefault, nil); r.Status != 404 {
		t.Errorf("another tenant's invocation: %d %s", r.Status, r.Body)
	}
	if r := s.do(t, "GET", "/api/v1/invocations/"+inv, "", nil); r.Status != 401 {
		t.Errorf("invocation without a key: %d %s", r.Status, r.Body)
	}

	// WebSocket: ?token= as the official SDKs send it.
	if st, frames := s.stream(t, agentB, runAcme, "count_stream", map[string]any{"n": 3}); st != 101 || len(frames) != 5 || frames[4]["status"] != "stream_completed" {
		t.Errorf("stream with ?token=: %d %v", st, frames)
	}
	if st, _ := s.stream(t, agentB, "", "count_stream", nil); st != 401 {
		t.Errorf("stream without a key: %d, want 401", st)
	}
	if st, _ := s.stream(t, agentB, runDefault, "count_stream", nil); st != 404 {
		t.Errorf("stream on another tenant's agent: %d, want 404", st)
	}
	if st, _ := s.stream(t, agentB, acmeDeploy, "count_stream", nil); st != 403 {
		t.Errorf("stream with a deploy-only key: %d, want 403", st)
	}

	// The official SDKs' wire check, with a run key, against this server,
	// when the shared checker is beside the repository.
	t.Run("wire_check", func(t *testing.T) {
		checker, ok := wireChecker(t)
		if !ok {
			t.Skipf("the shared wire checker is not at %s: the official SDKs' wire check against the platform is skipped (the rest of TestPlatformAuthMatrix ran)", checker)
		}
		wireKey := s.createKey(t, map[string]any{"name": "wire", "scopes": []string{"run"}, "rate_per_second": 10000, "burst": 10000, "max_concurrency": 1000})
		out, err := exec.Command("python3", checker, s.Addr, agentA, wireKey).CombinedOutput()
		// /health is the platform's, not one agent's: the checker's
		// single-agent health case is the one allowed failure.
		if !strings.Contains(string(out), "wire: 16 passed, 1 failed") || !strings.Contains(string(out), "FAIL health") {
			t.Errorf("check_wire against the platform (%v):\n%s", err, out)
		}
	})
}

// zipOf builds a zip from entries (name → content); a name starting with
// "link:" becomes a symlink entry.
func zipOf(t testing.TB, entries map[string]string) []byte {
	var b bytes.Buffer
	zw := zip.NewWriter(&b)
	for name, body := range entries {
		if n, ok := strings.CutPrefix(name, "link:"); ok {
			h := &zip.FileHeader{Name: n}
			h.SetMode(os.ModeSymlink | 0o777)
			w, _ := zw.CreateHeader(h)
			w.Write([]byte(body))
			continue
		}
		w, _ := zw.Create(name)
		w.Write([]byte(body))
	}
	zw.Close()
	return b.Bytes()
}

func (s *platformServer) upload(t testing.TB, key string, zipBytes []byte, agentID string) reply {
	t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	if agentID != "" {
		mw.WriteField("agent_id", agentID)
	}
	fw, _ := mw.CreateFormFile("file", "agent.zip")
	fw.Write(zipBytes)
	mw.Close()
	req, _ := http.NewRequest("POST", "http://"+s.Addr+"/api/v1/agents/upload", &body)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	var env envelope
	json.Unmarshal(out, &env)
	return reply{resp.StatusCode, resp.Header, env, out}
}

func TestPlatformHostileUploads(t *testing.T) {
	s := startPlatform(t, "", 0, "--max-files", "50", "--max-bundle", "1000000")
	dir, id := newAgent(t, "default")
	good := map[string]string{}
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			b, _ := os.ReadFile(p)
			rel, _ := filepath.Rel(dir, p)
			good[rel] = string(b)
		}
		return nil
	})
	with := func(extra map[string]string) map[string]string {
		m := map[string]string{}
		for k, v := range good {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	many := map[string]string{}
	for i := range 60 {
		many[fmt.Sprintf("f%d.txt", i)] = "x"
	}
	cases := []struct {
		name    string
		entries map[string]string
		want    string
	}{
		{"zip slip", with(map[string]string{"../../evil.py": "x"}), "../../evil.py"},
		{"absolute path", with(map[string]string{"/etc/evil": "x"}), "/etc/evil"},
		{"symlink", with(map[string]string{"link:secrets": "/etc/shadow"}), "secrets"},
		{"too many files", with(many), "50"},
		{"bomb", with(map[string]string{"zeros.bin": strings.Repeat("\x00", 2_000_000)}), "1000000"},
		{"invalid config", with(map[string]string{"runagent.config.json": `{"agent_name": 5}`}), "runagent.config.json"},
		{"entrypoint file missing", func() map[string]string { m := with(nil); delete(m, "agent.py"); delete(m, "main.py"); return m }(), "file"},
		{"not a zip", nil, "zip"},
	}
	for _, c := range cases {
		var z []byte
		if c.entries != nil {
			z = zipOf(t, c.entries)
		} else {
			z = []byte("this is not a zip file")
		}
		r := s.upload(t, s.Admin, z, id)
		if r.Status != 400 || r.code() != "VALIDATION_ERROR" || !strings.Contains(string(r.Body), c.want) {
			t.Errorf("%s: %d %s (want 400 VALIDATION_ERROR mentioning %q)", c.name, r.Status, r.Body, c.want)
		}
	}
	// Nothing was left behind: no agent, no files.
	if r := s.do(t, "GET", "/api/v1/agents", s.Admin, nil); strings.Contains(string(r.Body), id) {
		t.Errorf("a rejected upload left an agent: %s", r.Body)
	}
	ents, _ := os.ReadDir(filepath.Join(s.DataDir, "agents", ".incoming"))
	leftovers, _ := filepath.Glob(filepath.Join(s.DataDir, "upload-*"))
	if len(ents) > 0 || len(leftovers) > 0 {
		t.Errorf("rejected uploads left files: %v %v", ents, leftovers)
	}
	if _, err := os.Stat(filepath.Join(s.DataDir, "agents", id)); err == nil {
		t.Errorf("a rejected upload left the agent's folder")
	}
	// The good bundle goes through.
	if r := s.upload(t, s.Admin, zipOf(t, good), id); r.Status != 200 {
		t.Errorf("good bundle: %d %s", r.Status, r.Body)
	}
}

func TestPlatformRateLimitAndOverload(t *testing.T) {
	s := startPlatform(t, "", 0)
	dir, _ := newAgent(t, "showcase")
	setDeployment(t, dir, map[string]any{"max_instances": 1, "max_concurrency": 1, "max_queue": 1, "min_instances": 1})
	id := s.deploy(t, dir, s.Admin)

	limited := s.createKey(t, map[string]any{"name": "slow client", "scopes": []string{"run"}, "rate_per_second": 0.5, "burst": 2})
	var last reply
	for i := range 3 {
		last = s.do(t, "POST", "/api/v1/agents/"+id+"/run", limited, runBody("echo", nil))
		if i < 2 && last.Status != 200 {
			t.Fatalf("call %d within the burst: %d %s", i, last.Status, last.Body)
		}
		if i == 0 && (last.Header.Get("RateLimit-Limit") != "2" || last.Header.Get("RateLimit-Remaining") != "1") {
			t.Errorf("first call's headers: %v", last.Header)
		}
	}
	if last.Status != 429 || last.code() != "RATE_LIMIT_EXCEEDED" || last.Header.Get("Retry-After") == "" ||
		last.Header.Get("RateLimit-Remaining") != "0" || last.Header.Get("RateLimit-Reset") == "" {
		t.Errorf("over the rate: %d %v %s", last.Status, last.Header, last.Body)
	}

	// One instance, one call at a time, one waiting: the third is refused.
	var wg sync.WaitGroup
	results := make([]reply, 3)
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, runBody("slow", map[string]any{"seconds": 1.5}))
		}()
		time.Sleep(150 * time.Millisecond)
	}
	wg.Wait()
	var ok, overloaded int
	for _, r := range results {
		switch {
		case r.Status == 200 && r.Env.Success:
			ok++
		case r.Status == 503 && r.code() == "OVERLOADED" && r.Header.Get("Retry-After") != "":
			overloaded++
		default:
			t.Errorf("unexpected: %d %s", r.Status, r.Body)
		}
	}
	if ok != 2 || overloaded != 1 {
		t.Errorf("%d ok, %d overloaded; want 2 and 1", ok, overloaded)
	}
}

// agentDetail reads GET /api/v1/agents/{id}.
func (s *platformServer) agentDetail(t testing.TB, id string) (ready int, pids []int, version int) {
	t.Helper()
	r := s.do(t, "GET", "/api/v1/agents/"+id, s.Admin, nil)
	var d struct {
		ActiveVersion int `json:"active_version"`
		Pool          struct {
			Instances []struct {
				State string
				PID   int
			}
		}
	}
	json.Unmarshal(r.Env.Data, &d)
	for _, in := range d.Pool.Instances {
		if in.State == "ready" {
			ready++
			pids = append(pids, in.PID)
		}
	}
	return ready, pids, d.ActiveVersion
}

func metricValue(t testing.TB, s *platformServer, prefix string) float64 {
	t.Helper()
	r := s.do(t, "GET", "/metrics", s.Admin, nil)
	if r.Status != 200 {
		t.Fatalf("GET /metrics: %d %s", r.Status, r.Body)
	}
	b := r.Body
	sum := 0.0
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, prefix) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}

// A burst on a slow entrypoint scales the pool up; idle, it goes back to
// zero; the call that arrives at zero waits for an instance and succeeds.
func TestPlatformAutoscaleAndCrash(t *testing.T) {
	s := startPlatform(t, "", 0)
	dir, _ := newAgent(t, "showcase")
	setDeployment(t, dir, map[string]any{"max_instances": 3, "target_concurrency": 1, "max_concurrency": 2, "max_queue": 50})
	id := s.deploy(t, dir, s.Admin)
	callsBefore := metricValue(t, s, `runagent_calls_total{agent="`+id+`",code="OK",tag="slow"}`)

	var wg sync.WaitGroup
	var failed sync.Map
	for i := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r := s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, runBody("slow", map[string]any{"seconds": 2})); r.Status != 200 {
				failed.Store(i, string(r.Body))
			}
		}()
	}
	peak := 0
	for range 20 {
		ready, _, _ := s.agentDetail(t, id)
		peak = max(peak, ready)
		time.Sleep(200 * time.Millisecond)
	}
	wg.Wait()
	failed.Range(func(k, v any) bool { t.Errorf("burst call %v failed: %v", k, v); return true })
	if peak < 2 {
		t.Errorf("the pool did not scale up under the burst: peak %d ready instances", peak)
	}
	if got := metricValue(t, s, `runagent_calls_total{agent="`+id+`",code="OK",tag="slow"}`) - callsBefore; got != 12 {
		t.Errorf("runagent_calls_total for slow moved by %v, want 12", got)
	}
	if metricValue(t, s, `runagent_scale_events_total{agent="`+id+`",direction="up"`) < 1 {
		t.Errorf("no scale-up event in /metrics")
	}

	deadline := time.Now().Add(30 * time.Second)
	for {
		ready, _, _ := s.agentDetail(t, id)
		if ready == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %d instances 30s after the burst; want scale to zero", ready)
		}
		time.Sleep(250 * time.Millisecond)
	}
	if metricValue(t, s, `runagent_instances{agent="`+id+`",state="ready"}`) != 0 {
		t.Errorf("/metrics still shows ready instances after scale to zero")
	}
	if r := s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, runBody("echo", map[string]any{"at": "zero"})); r.Status != 200 || !r.Env.Success {
		t.Fatalf("the call at zero instances: %d %s", r.Status, r.Body)
	}

	// kill -9 of an instance mid-call: that call fails, the next succeeds.
	done := make(chan reply, 1)
	go func() {
		done <- s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, runBody("slow", map[string]any{"seconds": 5}))
	}()
	time.Sleep(500 * time.Millisecond)
	_, pids, _ := s.agentDetail(t, id)
	if len(pids) == 0 {
		t.Fatal("no instance to kill")
	}
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	r := <-done
	if r.Status != 502 || r.code() != "AGENT_CRASHED" {
		t.Errorf("call on a killed instance: %d %s", r.Status, r.Body)
	}
	if r := s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, runBody("echo", nil)); r.Status != 200 {
		t.Errorf("call after the kill: %d %s", r.Status, r.Body)
	}
}

// Redeploying under load: every call succeeds, the new version takes over.
func TestPlatformRedeployUnderLoad(t *testing.T) {
	s := startPlatform(t, "", 0)
	dir, _ := newAgent(t, "showcase")
	id := s.deploy(t, dir, s.Admin)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var calls, failures sync.Map
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				r := s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, runBody("slow", map[string]any{"seconds": 0.05}))
				calls.Store(fmt.Sprint(w, i), true)
				if r.Status != 200 || !r.Env.Success {
					failures.Store(fmt.Sprint(w, i), string(r.Body))
				}
			}
		}()
	}
	time.Sleep(500 * time.Millisecond)
	os.WriteFile(filepath.Join(dir, "v2.txt"), []byte("second version"), 0o644)
	s.deploy(t, dir, s.Admin)
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	n := 0
	calls.Range(func(any, any) bool { n++; return true })
	failures.Range(func(k, v any) bool { t.Errorf("call %v failed during the redeploy: %v", k, v); return true })
	if _, _, v := s.agentDetail(t, id); v != 2 || n < 10 {
		t.Errorf("after redeploy: active version %d, %d calls", v, n)
	}
}

// An accepted async invocation survives a server restart and runs after it
// (it may have started before the kill: its entrypoint is declared
// idempotent, so it runs again; see TestAttackAsyncInterruptedNotRunTwice).
func TestPlatformAsyncSurvivesRestart(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	port := freePort(t)
	s := startPlatform(t, data, port)
	dir, _ := newAgent(t, "showcase")
	editConfig(t, dir, func(cfg map[string]any) {
		for _, ep := range cfg["agent_architecture"].(map[string]any)["entrypoints"].([]any) {
			if e := ep.(map[string]any); e["tag"] == "slow" {
				e["idempotent"] = true
			}
		}
	})
	id := s.deploy(t, dir, s.Admin)
	body := runBody("slow", map[string]any{"seconds": 1})
	body["async_execution"] = true
	r := s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, body)
	if r.Status != 202 {
		t.Fatalf("async run: %d %s", r.Status, r.Body)
	}
	var acc struct {
		InvocationID string `json:"invocation_id"`
		Status       string
	}
	json.Unmarshal(r.Env.Data, &acc)
	if acc.InvocationID == "" || acc.Status != "pending" {
		t.Fatalf("async answer: %s", r.Body)
	}
	// Kill the server at once (no graceful drain), then start it again.
	syscall.Kill(s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.exited
	s2 := startPlatform(t, data, port)
	deadline := time.Now().Add(30 * time.Second)
	for {
		g := s2.do(t, "GET", "/api/v1/invocations/"+acc.InvocationID, s2.Admin, nil)
		var inv struct {
			Status     string
			OutputData any `json:"output_data"`
		}
		json.Unmarshal(g.Body, &inv)
		if inv.Status == "completed" {
			break
		}
		if inv.Status == "failed" || time.Now().After(deadline) {
			t.Fatalf("async invocation after restart: %s\n%s", g.Body, s2.Logs())
		}
		time.Sleep(200 * time.Millisecond)
	}
	// What an instance prints is in the agent's logs, with the invocation.
	dirD, _ := newAgent(t, "default")
	idD := s2.deploy(t, dirD, s2.Admin)
	if r := s2.do(t, "POST", "/api/v1/agents/"+idD+"/run", s2.Admin, runBody("minimal", map[string]any{"message": "hi"})); r.Status != 200 {
		t.Errorf("minimal: %d %s", r.Status, r.Body)
	}
	for i := 0; ; i++ {
		out, errOut, err := runCLI(t, sharedCache, "logs", idD, "--server", "http://"+s2.Addr, "--api-key", s2.Admin)
		if err == nil && strings.Contains(out, "mock_response") && strings.Contains(out, "[inv ") && strings.Contains(out, "version 1 is serving") {
			break
		}
		if i == 20 {
			t.Errorf("runagent logs: %v\n%s%s\nserver:\n%s", err, out, errOut, s2.Logs())
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// An instance over its memory limit is killed: its call ends with
// RESOURCE_LIMIT naming the limit, the event is counted, and the next call
// runs on a fresh instance.
func TestPlatformMemoryLimit(t *testing.T) {
	s := startPlatform(t, "", 0)
	dir, _ := newAgent(t, "default")
	os.WriteFile(filepath.Join(dir, "hog.py"), []byte(
		"import time\n\ndef hog(mb):\n    block = bytearray(int(mb) * 1024 * 1024)\n    time.sleep(5)\n    return len(block)\n"), 0o644)
	path := filepath.Join(dir, "runagent.config.json")
	b, _ := os.ReadFile(path)
	var cfg map[string]any
	json.Unmarshal(b, &cfg)
	arch := cfg["agent_architecture"].(map[string]any)
	arch["entrypoints"] = append(arch["entrypoints"].([]any), map[string]any{"file": "hog.py", "module": "hog", "tag": "hog"})
	cfg["deployment"] = map[string]any{"memory_mb": 100}
	b, _ = json.Marshal(cfg)
	os.WriteFile(path, b, 0o644)
	id := s.deploy(t, dir, s.Admin)

	r := s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, runBody("hog", map[string]any{"mb": 300}))
	if r.Status != 502 || r.code() != "RESOURCE_LIMIT" || !strings.Contains(r.Env.Error.Message, "memory 100 MiB exceeded") {
		t.Errorf("over the memory limit: %d %s", r.Status, r.Body)
	}
	if got := metricValue(t, s, `runagent_resource_limit_kills_total{agent="`+id+`",limit="memory"}`); got != 1 {
		t.Errorf("runagent_resource_limit_kills_total = %v, want 1", got)
	}
	if r := s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, runBody("minimal", map[string]any{"message": "after"})); r.Status != 200 {
		t.Errorf("call after the kill: %d %s", r.Status, r.Body)
	}
}
