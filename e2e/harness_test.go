// Package e2e drives the real runagent binary: it builds it once, creates
// agents from its templates and serves them on free ports, then talks to
// them with raw HTTP/WebSocket and the Go SDK.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/sandbox/microvm"
	"github.com/runagent-go/runagent/internal/store/pgstore/pgtest"
)

var (
	binary string // the built runagent
	// sharedCache is reused across tests so that virtualenvs (LangGraph) are
	// built once per run.
	sharedCache string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "runagent-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "runagent")
	build := exec.Command("go", "build", "-o", binary, "../cmd/runagent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build runagent: %v\n%s", err, out)
		os.Exit(1)
	}
	// The microVM image the tests boot is the one `make microvm-image`
	// built in the developer's cache, not one in the tests' fresh caches.
	if os.Getenv("RUNAGENT_MICROVM_IMAGE") == "" {
		os.Setenv("RUNAGENT_MICROVM_IMAGE", microvm.DefaultImageDir())
	}
	sharedCache = filepath.Join(dir, "cache")
	code := m.Run()
	pgtest.Stop() // the private PostgreSQL of the tests that use one
	os.RemoveAll(dir)
	os.Exit(code)
}

// wireChecker is the official SDKs' wire checker, check_wire.py in the
// shared folder beside the repository (../shared from its root). A clone of
// the repository alone has no such folder: then ok is false and the caller
// skips its check, naming path. RUNAGENT_TEST_REQUIRE_SHARED=1 makes a
// missing checker fail the test instead.
func wireChecker(t testing.TB) (path string, ok bool) {
	t.Helper()
	path, err := filepath.Abs(filepath.Join("..", "..", "shared", "tools", "check_wire.py"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("RUNAGENT_TEST_REQUIRE_SHARED") == "1" {
			t.Fatalf("the shared wire checker is missing (RUNAGENT_TEST_REQUIRE_SHARED=1): %v", err)
		}
		return path, false
	}
	return path, true
}

// runCLI runs the binary with an isolated cache and returns stdout, stderr.
func runCLI(t testing.TB, cache string, args ...string) (string, string, error) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), "RUNAGENT_CACHE_DIR="+cache)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// newAgent creates an agent folder from a template and returns its path and id.
func newAgent(t testing.TB, template string) (dir, id string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "agent")
	out, errOut, err := runCLI(t, t.TempDir(), "init", dir, "--template", template, "--json")
	if err != nil {
		t.Fatalf("runagent init --template %s: %v\n%s%s", template, err, out, errOut)
	}
	var res struct {
		AgentID string `json:"agent_id"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.AgentID == "" {
		t.Fatalf("runagent init --json printed %q: %v", out, err)
	}
	return dir, res.AgentID
}

// agentServer is a running `runagent serve`.
type agentServer struct {
	t       testing.TB
	cmd     *exec.Cmd
	Addr    string // host:port
	AgentID string
	Dir     string
	Cache   string
	mu      sync.Mutex
	logs    bytes.Buffer
	exited  chan struct{}
}

func (s *agentServer) URL(path string) string { return "http://" + s.Addr + path }

// Logs is what the server printed so far.
func (s *agentServer) Logs() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logs.String()
}

type serveOpts struct {
	cache string   // default: a fresh directory
	args  []string // extra serve flags
	env   []string
	wait  time.Duration // for the server to be ready
	port  int           // default: a free port
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// serve starts `runagent serve dir` on a free port and waits for health.
func serve(t testing.TB, dir, id string, o serveOpts) *agentServer {
	t.Helper()
	if o.cache == "" {
		o.cache = t.TempDir()
	}
	if o.wait == 0 {
		o.wait = 60 * time.Second
	}
	port := o.port
	if port == 0 {
		port = freePort(t)
	}
	args := append([]string{"serve", dir, "--port", fmt.Sprint(port)}, o.args...)
	cmd := exec.Command(binary, args...)
	cmd.Env = append(append(os.Environ(), "RUNAGENT_CACHE_DIR="+o.cache), o.env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	s := &agentServer{t: t, cmd: cmd, Addr: fmt.Sprintf("127.0.0.1:%d", port), AgentID: id, Dir: dir, Cache: o.cache, exited: make(chan struct{})}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			s.mu.Lock()
			s.logs.WriteString(sc.Text() + "\n")
			s.mu.Unlock()
		}
	}()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); pw.Close(); close(s.exited) }()
	t.Cleanup(s.Stop)

	deadline := time.Now().Add(o.wait)
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			t.Fatalf("runagent serve exited during start-up:\n%s", s.Logs())
		default:
		}
		resp, err := http.Get(s.URL("/api/v1/health"))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return s
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("runagent serve not healthy after %s:\n%s", o.wait, s.Logs())
	return nil
}

// Stop interrupts the server like Ctrl+C and waits for it.
func (s *agentServer) Stop() {
	select {
	case <-s.exited:
		return
	default:
	}
	syscall.Kill(s.cmd.Process.Pid, syscall.SIGINT)
	select {
	case <-s.exited:
	case <-time.After(15 * time.Second):
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.exited
		s.t.Errorf("runagent serve did not stop within 15s of SIGINT")
	}
}

// envelope is the wire response body.
type envelope struct {
	Success bool            `json:"success"`
	Data    json.RawMessage `json:"data"`
	Message *string         `json:"message"`
	Error   *struct {
		Code    string  `json:"code"`
		Message string  `json:"message"`
		Field   *string `json:"field"`
	} `json:"error"`
	Timestamp string `json:"timestamp"`
	RequestID string `json:"request_id"`
}

// post sends a JSON body (a string is sent as is) and decodes the envelope.
func (s *agentServer) post(t testing.TB, path string, body any) (int, envelope, []byte) {
	t.Helper()
	var raw []byte
	switch b := body.(type) {
	case string:
		raw = []byte(b)
	case []byte:
		raw = b
	default:
		raw, _ = json.Marshal(b)
	}
	resp, err := http.Post(s.URL(path), "application/json", bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	var env envelope
	json.Unmarshal(out, &env)
	return resp.StatusCode, env, out
}

func (s *agentServer) get(t testing.TB, path string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(s.URL(path))
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

// run calls /run for tag and returns the envelope.
func (s *agentServer) run(t testing.TB, tag string, args []any, kwargs map[string]any) (int, envelope) {
	t.Helper()
	if args == nil {
		args = []any{}
	}
	if kwargs == nil {
		kwargs = map[string]any{}
	}
	st, env, _ := s.post(t, "/api/v1/agents/"+s.AgentID+"/run", map[string]any{"entrypoint_tag": tag, "input_args": args, "input_kwargs": kwargs})
	return st, env
}

// decodeStructured decodes a structured string: outer JSON, then payload.
func decodeStructured(t testing.TB, s string) (string, any) {
	t.Helper()
	var outer struct {
		Type    string `json:"type"`
		Payload string `json:"payload"`
	}
	if err := json.Unmarshal([]byte(s), &outer); err != nil {
		t.Fatalf("not a structured string: %q: %v", s, err)
	}
	var v any
	if err := json.Unmarshal([]byte(outer.Payload), &v); err != nil {
		t.Fatalf("structured payload is not JSON: %q: %v", outer.Payload, err)
	}
	return outer.Type, v
}

// result runs tag and returns the decoded value, failing on any error.
func (s *agentServer) result(t testing.TB, tag string, args []any, kwargs map[string]any) any {
	t.Helper()
	st, env := s.run(t, tag, args, kwargs)
	if st != 200 || !env.Success {
		t.Fatalf("run %s: status %d, envelope %+v error %+v", tag, st, env, env.Error)
	}
	var data string
	if err := json.Unmarshal(env.Data, &data); err != nil {
		t.Fatalf("run %s: data is not a string: %s", tag, env.Data)
	}
	_, v := decodeStructured(t, data)
	return v
}

func contains(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
