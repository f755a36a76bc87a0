//go:build unix

package runagent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	runagent "github.com/runagent-go/runagent/sdk/go"
)

// The tests of this file drive background runs, persistent memory and the
// re-joinable SSE stream against a real `runagent server`: $RUNAGENT_BIN,
// else the binary built from ../../cmd/runagent (skipped, saying why, when
// it cannot be built). The server runs the showcase template with the
// entrypoints below added.

// napPy sleeps without blocking, and records its start and its
// cancellation in the file at path.
const napPy = `import asyncio


async def nap(path, seconds=30):
    with open(path, "a") as f:
        f.write("started\n")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        with open(path, "a") as f:
            f.write("cancelled\n")
        raise
    return "rested"
`

// memoryPy writes to the agent's persistent folder "memory", relative to
// the working directory as agents do.
const memoryPy = `import os


def remember(text=""):
    with open("memory/notes.txt", "a") as f:
        f.write(text)
    return open("memory/notes.txt").read()


def peek():
    path = "memory/notes.txt"
    return open(path).read() if os.path.exists(path) else ""


def remember_stream(text=""):
    yield remember(text)
`

// platform is a running `runagent server` with the showcase agent deployed.
type platform struct {
	cmd     *exec.Cmd
	port    int
	baseURL string
	key     string
	agentID string
	exited  chan struct{}

	mu   sync.Mutex
	logs bytes.Buffer
}

func (p *platform) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.Write(b)
}

func (p *platform) Logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

// runagentBinary returns $RUNAGENT_BIN, or builds the binary into dir; it
// skips the test when it cannot be built.
func runagentBinary(t *testing.T, dir string) string {
	t.Helper()
	if b := os.Getenv("RUNAGENT_BIN"); b != "" {
		if fi, err := os.Stat(b); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			t.Fatalf("RUNAGENT_BIN=%s is not an executable (%v)", b, err)
		}
		return b
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Skipf("the runagent binary cannot be built: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "cmd", "runagent")); err != nil {
		t.Skipf("the runagent binary cannot be built: no cmd/runagent in %s (set RUNAGENT_BIN)", root)
	}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("the runagent binary cannot be built: %v (set RUNAGENT_BIN, e.g. to bin/runagent after make build)", err)
	}
	out := filepath.Join(dir, "runagent")
	build := exec.Command(goCmd, "build", "-o", out, "./cmd/runagent")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		t.Skipf("the runagent binary cannot be built: go build ./cmd/runagent: %v\n%s(set RUNAGENT_BIN, e.g. to bin/runagent after make build)", err, b)
	}
	return out
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startPlatform starts `runagent server` on a free port with a fresh data
// directory and cache, waits for its health and admin key, and deploys the
// showcase agent with nap and the memory entrypoints (persistent folder
// "memory").
func startPlatform(t *testing.T) *platform {
	t.Helper()
	root := t.TempDir()
	bin := runagentBinary(t, root)
	env := append(os.Environ(), "RUNAGENT_CACHE_DIR="+filepath.Join(root, "cache"))
	data := filepath.Join(root, "data")
	p := &platform{port: freeTCPPort(t), exited: make(chan struct{})}
	p.baseURL = "http://127.0.0.1:" + strconv.Itoa(p.port)
	p.cmd = exec.Command(bin, "server", "--port", strconv.Itoa(p.port), "--data-dir", data)
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p, p
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its agents' processes with it
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start runagent server: %v", err)
	}
	go func() { p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(p.stop)

	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(p.baseURL + "/api/v1/health")
		if err == nil {
			resp.Body.Close()
			if key, kerr := os.ReadFile(filepath.Join(data, "admin-key")); resp.StatusCode == 200 && kerr == nil {
				p.key = strings.TrimSpace(string(key))
				break
			}
		}
		select {
		case <-p.exited:
			t.Fatalf("runagent server exited during start-up:\n%s", p.Logs())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("runagent server not ready after 60s:\n%s", p.Logs())
		}
	}

	agent := filepath.Join(root, "agent")
	cli := func(args ...string) []byte {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = env
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			t.Fatalf("runagent %s: %v\n%s%s\nserver:\n%s", strings.Join(args, " "), err, out.String(), errb.String(), p.Logs())
		}
		return out.Bytes()
	}
	cli("init", agent, "--template", "showcase", "--json")
	write := func(name, text string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(agent, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("nap.py", napPy)
	write("memory_agent.py", memoryPy)
	if err := os.MkdirAll(filepath.Join(agent, "memory"), 0o755); err != nil {
		t.Fatal(err)
	}
	write("memory/README", "each user's notes")
	cfgPath := filepath.Join(agent, "runagent.config.json")
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	arch := cfg["agent_architecture"].(map[string]any)
	eps := arch["entrypoints"].([]any)
	eps = append(eps, map[string]any{"file": "nap.py", "module": "nap", "tag": "nap"})
	for _, fn := range []string{"remember", "peek", "remember_stream"} {
		eps = append(eps, map[string]any{"file": "memory_agent.py", "module": fn, "tag": fn})
	}
	arch["entrypoints"] = eps
	cfg["persistent_folders"] = []any{"memory"}
	if b, err = json.Marshal(cfg); err != nil {
		t.Fatal(err)
	}
	write("runagent.config.json", string(b))

	var dep struct {
		AgentID string `json:"agent_id"`
	}
	out := cli("deploy", agent, "--server", p.baseURL, "--api-key", p.key, "--json")
	if err := json.Unmarshal(out, &dep); err != nil || dep.AgentID == "" {
		t.Fatalf("runagent deploy --json printed %q: %v", out, err)
	}
	p.agentID = dep.AgentID
	return p
}

// stop ends the server (SIGTERM, then SIGKILL of its process group).
func (p *platform) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
	}
}

// client returns a client of the platform (or of baseURL, a proxy of it).
func (p *platform) client(t *testing.T, tag string, edit ...func(*runagent.Config)) *runagent.Client {
	t.Helper()
	cfg := runagent.Config{AgentID: p.agentID, EntrypointTag: tag, BaseURL: p.baseURL, APIKey: p.key}
	for _, f := range edit {
		f(&cfg)
	}
	c, err := runagent.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

func viaProxy(proxy *cuttingProxy) func(*runagent.Config) {
	return func(cfg *runagent.Config) {
		cfg.BaseURL = "http://" + proxy.Addr()
		// Quick retries: the proxy cuts often.
		cfg.Retry = runagent.RetryPolicy{MaxAttempts: 5, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}
	}
}

// cuttingProxy forwards TCP connections to a server and cuts connection n
// (from 0) once it has passed budget(n) bytes from the server (a negative
// budget: never), closing both sides: a stream through it drops again and
// again.
type cuttingProxy struct {
	ln     net.Listener
	target string
	budget func(n int) int
	n      atomic.Int32
	cuts   atomic.Int32

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newCuttingProxy(t *testing.T, target string, budget func(n int) int) *cuttingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cuttingProxy{ln: ln, target: target, budget: budget, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.serve(c, int(p.n.Add(1))-1)
			}()
		}
	}()
	t.Cleanup(p.Close)
	return p
}

func (p *cuttingProxy) Addr() string { return p.ln.Addr().String() }

// Cuts is how many connections the proxy cut.
func (p *cuttingProxy) Cuts() int { return int(p.cuts.Load()) }

func (p *cuttingProxy) track(c net.Conn, on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if on {
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
}

func (p *cuttingProxy) serve(c net.Conn, n int) {
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.track(c, true)
	p.track(up, true)
	defer func() {
		c.Close()
		up.Close()
		p.track(c, false)
		p.track(up, false)
	}()
	go func() {
		buf := make([]byte, 32<<10)
		for {
			k, err := c.Read(buf)
			if k > 0 {
				if _, werr := up.Write(buf[:k]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	budget := p.budget(n)
	passed := 0
	buf := make([]byte, 4096)
	for {
		k, err := up.Read(buf)
		if k > 0 {
			if budget >= 0 && passed+k > budget {
				c.Write(buf[:budget-passed])
				p.cuts.Add(1)
				return
			}
			if _, werr := c.Write(buf[:k]); werr != nil {
				return
			}
			passed += k
		}
		if err != nil {
			return
		}
	}
}

func (p *cuttingProxy) Close() {
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// TestPlatformRuns drives StartRun, GetRun, WaitRun, CancelRun, the
// persistent-memory options and RunStreamResumable / ResumeRunStream
// against a real runagent server.
func TestPlatformRuns(t *testing.T) {
	clearEnv(t)
	p := startPlatform(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server logs:\n%s", p.Logs())
		}
	})

	t.Run("StartWait", func(t *testing.T) {
		tests := []struct {
			name, tag  string
			in         runagent.Input
			status     string
			want       any    // Output when completed
			errCode    string // Err's code otherwise
			errHas     string
			wantTyped  int // DecodeOutput into an int, when non-zero
			wantEchoed runagent.Input
		}{
			{name: "args", tag: "add", in: runagent.Args(2, 40), status: runagent.RunCompleted, want: int64(42), wantTyped: 42, wantEchoed: runagent.Input{Args: []any{int64(2), int64(40)}, Kwargs: map[string]any{}}},
			{name: "kwargs", tag: "add", in: runagent.Kwargs(map[string]any{"a": 20, "b": 22}), status: runagent.RunCompleted, want: int64(42), wantTyped: 42, wantEchoed: runagent.Input{Args: []any{}, Kwargs: map[string]any{"a": int64(20), "b": int64(22)}}},
			{name: "structured", tag: "echo", in: runagent.Args("héllo", 1.5).With("k", []any{true, nil}), status: runagent.RunCompleted,
				want: map[string]any{"args": []any{"héllo", 1.5}, "kwargs": map[string]any{"k": []any{true, nil}}}},
			{name: "agent raised", tag: "fail", in: runagent.Kwargs(map[string]any{"message": "go sdk boom"}), status: runagent.RunFailed, errCode: runagent.CodeInternal, errHas: "go sdk boom"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				c := p.client(t, tt.tag)
				run, err := c.StartRun(ctx, tt.in, nil)
				if err != nil {
					t.Fatalf("StartRun: %v", err)
				}
				if run.Status != runagent.RunPending || run.RunID == "" || run.Replayed || !uuidV4.MatchString(run.IdempotencyKey) {
					t.Fatalf("StartRun = %+v; want pending, a run id, not replayed, a generated UUID key", run)
				}
				done, err := c.WaitRun(ctx, run.RunID, 30*time.Second)
				if err != nil {
					t.Fatalf("WaitRun: %v", err)
				}
				if done.Status != tt.status || done.RunID != run.RunID || done.Attempts != 1 || !done.Background ||
					done.EntrypointTag != tt.tag || done.IdempotencyKey != run.IdempotencyKey || done.AgentID != p.agentID {
					t.Fatalf("WaitRun = %+v", done)
				}
				if done.RequestTime.IsZero() || done.ResponseTime.IsZero() || done.StartedAt.IsZero() || done.ResponseTime.Before(done.RequestTime) {
					t.Errorf("timestamps: requested %v, started %v, ended %v", done.RequestTime, done.StartedAt, done.ResponseTime)
				}
				if !reflect.DeepEqual(done.Output, tt.want) {
					t.Errorf("Output = %#v, want %#v", done.Output, tt.want)
				}
				if tt.wantEchoed.Args != nil && !reflect.DeepEqual(done.Input, tt.wantEchoed) {
					t.Errorf("Input = %#v, want %#v", done.Input, tt.wantEchoed)
				}
				if tt.wantTyped != 0 {
					var n int
					if err := done.DecodeOutput(&n); err != nil || n != tt.wantTyped {
						t.Errorf("DecodeOutput = %d, %v", n, err)
					}
				}
				if tt.errCode == "" {
					if err := done.Err(); err != nil {
						t.Errorf("Err = %v", err)
					}
				} else if e := wantCode(t, done.Err(), tt.errCode); !strings.Contains(e.Message, tt.errHas) || done.ErrorDetail != e.Message {
					t.Errorf("Err = %v; ErrorDetail %q", e, done.ErrorDetail)
				}
				got, err := c.GetRun(ctx, run.RunID)
				if err != nil || got.Status != tt.status || !reflect.DeepEqual(got.Output, tt.want) {
					t.Fatalf("GetRun = %+v, %v", got, err)
				}
				// Cancelling a run that has ended answers it as it is.
				ended, err := c.CancelRun(ctx, run.RunID)
				if err != nil || ended.Status != tt.status {
					t.Fatalf("CancelRun of an ended run = %+v, %v", ended, err)
				}
			})
		}
	})

	t.Run("Errors", func(t *testing.T) {
		tests := []struct {
			name string
			call func() error
			code string
		}{
			{"unknown run", func() error { _, err := p.client(t, "add").GetRun(ctx, "no-such-run"); return err }, runagent.CodeNotFound},
			{"wait unknown run", func() error { _, err := p.client(t, "add").WaitRun(ctx, "no-such-run", time.Second); return err }, runagent.CodeNotFound},
			{"unknown entrypoint", func() error { _, err := p.client(t, "nope").StartRun(ctx, runagent.Input{}, nil); return err }, runagent.CodeNotFound},
			{"multitask without thread", func() error {
				_, err := p.client(t, "add").StartRun(ctx, runagent.Args(1, 2), &runagent.RunOptions{Multitask: runagent.MultitaskEnqueue})
				return err
			}, runagent.CodeValidation},
			{"webhook to loopback", func() error {
				_, err := p.client(t, "add").StartRun(ctx, runagent.Args(1, 2), &runagent.RunOptions{Webhook: "http://127.0.0.1:9/hook"})
				return err
			}, runagent.CodeValidation},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) { wantCode(t, tt.call(), tt.code) })
		}
	})

	t.Run("IdempotencyKey", func(t *testing.T) {
		c := p.client(t, "add")
		opts := &runagent.RunOptions{IdempotencyKey: "go-sdk-" + strconv.FormatInt(time.Now().UnixNano(), 36), ThreadID: "go-thread-1"}
		a, err := c.StartRun(ctx, runagent.Args(1, 2), opts)
		if err != nil {
			t.Fatalf("StartRun: %v", err)
		}
		b, err := c.StartRun(ctx, runagent.Args(1, 2), opts)
		if err != nil {
			t.Fatalf("StartRun again: %v", err)
		}
		if a.RunID != b.RunID || a.Replayed || !b.Replayed || b.IdempotencyKey != opts.IdempotencyKey {
			t.Fatalf("the same key gave %+v then %+v; want the same run, the second replayed", a, b)
		}
		_, err = c.StartRun(ctx, runagent.Args(5, 5), opts)
		if e := wantCode(t, err, runagent.CodeAlreadyExists); e.Status != http.StatusConflict || e.Field != "Idempotency-Key" {
			t.Fatalf("the same key with another input: %+v", e)
		}
		done, err := c.WaitRun(ctx, a.RunID, 30*time.Second)
		if err != nil || done.Status != runagent.RunCompleted || done.Output != int64(3) || done.ThreadID != "go-thread-1" || done.IdempotencyKey != opts.IdempotencyKey {
			t.Fatalf("WaitRun = %+v, %v", done, err)
		}
	})

	t.Run("RetriedCreateIsIdempotent", func(t *testing.T) {
		// The first connection is cut as the server answers the create
		// (the run exists): the SDK retries with the same key, and the
		// server answers the run it has.
		proxy := newCuttingProxy(t, "127.0.0.1:"+strconv.Itoa(p.port), func(n int) int {
			if n == 0 {
				return 0
			}
			return -1
		})
		c := p.client(t, "add", viaProxy(proxy))
		run, err := c.StartRun(ctx, runagent.Args(40, 2), nil)
		if err != nil {
			t.Fatalf("StartRun through the proxy: %v", err)
		}
		if proxy.Cuts() != 1 || !run.Replayed {
			t.Fatalf("cuts = %d, run = %+v; want the first answer cut and the retry replayed", proxy.Cuts(), run)
		}
		done, err := p.client(t, "add").WaitRun(ctx, run.RunID, 30*time.Second)
		if err != nil || done.Status != runagent.RunCompleted || done.Output != int64(42) || done.Attempts != 1 || done.IdempotencyKey != run.IdempotencyKey {
			t.Fatalf("WaitRun = %+v, %v", done, err)
		}
	})

	t.Run("CancelRunning", func(t *testing.T) {
		marks := filepath.Join(t.TempDir(), "nap")
		c := p.client(t, "nap")
		run, err := c.StartRun(ctx, runagent.Args(marks, 60), nil)
		if err != nil {
			t.Fatalf("StartRun: %v", err)
		}
		read := func() string { b, _ := os.ReadFile(marks); return string(b) }
		deadline := time.Now().Add(20 * time.Second)
		for {
			cur, err := c.GetRun(ctx, run.RunID)
			if err != nil {
				t.Fatalf("GetRun: %v", err)
			}
			if cur.Status == runagent.RunRunning && read() == "started\n" {
				break
			}
			if cur.Ended() || time.Now().After(deadline) {
				t.Fatalf("the run did not start: %+v, marks %q", cur, read())
			}
			time.Sleep(20 * time.Millisecond)
		}
		cancelled, err := c.CancelRun(ctx, run.RunID)
		if err != nil {
			t.Fatalf("CancelRun: %v", err)
		}
		if !cancelled.Ended() { // the cancel is on its way
			if cancelled, err = c.WaitRun(ctx, run.RunID, 30*time.Second); err != nil {
				t.Fatalf("WaitRun: %v", err)
			}
		}
		if cancelled.Status != runagent.RunCancelled || !strings.HasPrefix(cancelled.ErrorDetail, "CANCELLED:") || cancelled.Output != nil {
			t.Fatalf("cancelled run = %+v", cancelled)
		}
		wantCode(t, cancelled.Err(), runagent.CodeCancelled)
		for deadline := time.Now().Add(10 * time.Second); !strings.Contains(read(), "cancelled") && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
		}
		if got := read(); got != "started\ncancelled\n" {
			t.Fatalf("the task recorded %q; want it started and cancelled", got)
		}
	})

	t.Run("PersistentMemory", func(t *testing.T) {
		user := func(id string, pm bool) func(*runagent.Config) {
			return func(cfg *runagent.Config) { cfg.UserID, cfg.PersistentMemory = id, pm }
		}
		if _, err := runagent.New(runagent.Config{AgentID: p.agentID, EntrypointTag: "remember", BaseURL: p.baseURL, PersistentMemory: true}); !runagent.IsCode(err, runagent.CodeValidation) {
			t.Fatalf("New with PersistentMemory and no UserID: %v; want VALIDATION_ERROR", err)
		}
		ana := p.client(t, "remember", user("ana@example.com", true))
		// Every kind of run of ana's client sees what the ones before wrote.
		steps := []struct {
			name string
			call func(text string) (any, error)
		}{
			{"Run", func(text string) (any, error) { return ana.Run(ctx, runagent.Kwargs(map[string]any{"text": text})) }},
			{"StartRun", func(text string) (any, error) {
				run, err := ana.StartRun(ctx, runagent.Kwargs(map[string]any{"text": text}), nil)
				if err != nil {
					return nil, err
				}
				if run, err = ana.WaitRun(ctx, run.RunID, 30*time.Second); err != nil {
					return nil, err
				}
				if run.UserID != "ana@example.com" {
					return nil, fmt.Errorf("the run's user is %q", run.UserID)
				}
				return run.Output, run.Err()
			}},
			{"RunStreamResumable", func(text string) (any, error) {
				st, err := ana.WithEntrypoint("remember_stream").RunStreamResumable(ctx, runagent.Kwargs(map[string]any{"text": text}))
				if err != nil {
					return nil, err
				}
				defer st.Close()
				got := collectResumable(st)
				if len(got) != 1 {
					return got, st.Err()
				}
				return got[0], st.Err()
			}},
			{"RunStream", func(text string) (any, error) {
				st, err := ana.WithEntrypoint("remember_stream").RunStream(ctx, runagent.Kwargs(map[string]any{"text": text}))
				if err != nil {
					return nil, err
				}
				defer st.Close()
				var got []any
				for v, err := range st.Chunks() {
					if err != nil {
						return nil, err
					}
					got = append(got, v)
				}
				if len(got) != 1 {
					return got, nil
				}
				return got[0], nil
			}},
		}
		notes := ""
		for i, step := range steps {
			text := fmt.Sprintf("[%d]", i)
			notes += text
			got, err := step.call(text)
			if err != nil || got != notes {
				t.Fatalf("%s as ana: %#v, %v; want her notes %q", step.name, got, err, notes)
			}
		}
		if got, err := p.client(t, "remember", user("bob", true)).Run(ctx, runagent.Kwargs(map[string]any{"text": "b"})); err != nil || got != "b" {
			t.Fatalf("bob's run = %#v, %v; want his own notes only", got, err)
		}
		// A user without persistent memory runs on the shared instances,
		// which see the bundle's folder.
		if got, err := p.client(t, "peek", user("ana@example.com", false)).Run(ctx, runagent.Input{}); err != nil || got != "" {
			t.Fatalf("peek without persistent memory = %#v, %v; want nothing", got, err)
		}
		if got, err := p.client(t, "peek", user("ana@example.com", true)).Run(ctx, runagent.Input{}); err != nil || got != notes {
			t.Fatalf("peek as ana = %#v, %v; want %q", got, err, notes)
		}
	})

	t.Run("ResumableStreamThroughCuttingProxy", func(t *testing.T) {
		in := runagent.Kwargs(map[string]any{"n": 600, "delay": 0.002})
		st, err := p.client(t, "count_stream").RunStreamResumable(ctx, in)
		if err != nil {
			t.Fatalf("RunStreamResumable: %v", err)
		}
		direct := collectResumable(st)
		if err := st.Err(); err != nil || !reflect.DeepEqual(direct, counts(600)) {
			t.Fatalf("uninterrupted stream: %d chunks, %v", len(direct), err)
		}

		proxy := newCuttingProxy(t, "127.0.0.1:"+strconv.Itoa(p.port), func(int) int { return 3000 })
		c := p.client(t, "count_stream", viaProxy(proxy))
		st, err = c.RunStreamResumable(ctx, in)
		if err != nil {
			t.Fatalf("RunStreamResumable through the proxy: %v", err)
		}
		defer st.Close()
		got := collectResumable(st)
		if err := st.Err(); err != nil {
			t.Fatalf("stream through the proxy ended with %v after %d chunks (%d cuts)", err, len(got), proxy.Cuts())
		}
		if !reflect.DeepEqual(got, direct) {
			t.Fatalf("through the proxy: %d chunks, not those of the uninterrupted stream (%d)", len(got), len(direct))
		}
		if proxy.Cuts() < 5 {
			t.Fatalf("the proxy cut the stream %d times: the test would prove nothing", proxy.Cuts())
		}
		t.Logf("%d chunks through %d connections, %d of them cut", len(got), proxy.n.Load(), proxy.Cuts())
		if st.LastEventID() != "599" || st.RunID() == "" || st.InvocationID() != st.RunID() {
			t.Fatalf("LastEventID %q, RunID %q, InvocationID %q", st.LastEventID(), st.RunID(), st.InvocationID())
		}
		// One run, streamed once to its end.
		run, err := p.client(t, "count_stream").WaitRun(ctx, st.RunID(), 30*time.Second)
		if err != nil || run.Status != runagent.RunCompleted || run.Background {
			t.Fatalf("the stream's run: %+v, %v", run, err)
		}
	})

	t.Run("ResumableStream", func(t *testing.T) {
		tests := []struct {
			name     string
			tag      string
			in       runagent.Input
			startErr string // RunStreamResumable's error code
			want     []any
			errCode  string // Err's code
			errHas   string
		}{
			{name: "chunks", tag: "count_stream", in: runagent.Kwargs(map[string]any{"n": 3}), want: counts(3)},
			{name: "no chunks", tag: "count_stream", in: runagent.Kwargs(map[string]any{"n": 0}), want: []any{}},
			{name: "async generator", tag: "count_async_stream", in: runagent.Kwargs(map[string]any{"n": 3}), want: []any{int64(0), int64(1), int64(2)}},
			{name: "agent raised", tag: "fail_stream", in: runagent.Kwargs(map[string]any{"after": 2}), want: []any{"chunk 0", "chunk 1"}, errCode: runagent.CodeInternal, errHas: "failed after 2 chunks"},
			{name: "unknown entrypoint", tag: "nope_stream", startErr: runagent.CodeNotFound},
			{name: "plain entrypoint", tag: "add", startErr: runagent.CodeValidation},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				st, err := p.client(t, tt.tag).RunStreamResumable(ctx, tt.in)
				if tt.startErr != "" {
					wantCode(t, err, tt.startErr)
					return
				}
				if err != nil {
					t.Fatalf("RunStreamResumable: %v", err)
				}
				defer st.Close()
				got := collectResumable(st)
				if !reflect.DeepEqual(got, tt.want) {
					t.Fatalf("chunks = %#v, want %#v", got, tt.want)
				}
				if tt.errCode == "" {
					if err := st.Err(); err != nil {
						t.Fatalf("Err = %v", err)
					}
				} else if e := wantCode(t, st.Err(), tt.errCode); !strings.Contains(e.Message, tt.errHas) {
					t.Fatalf("Err = %v; want it to say %q", e, tt.errHas)
				}
			})
		}
	})

	t.Run("ResumeRunStream", func(t *testing.T) {
		c := p.client(t, "count_stream")
		st, err := c.RunStreamResumable(ctx, runagent.Kwargs(map[string]any{"n": 5}))
		if err != nil {
			t.Fatalf("RunStreamResumable: %v", err)
		}
		// Read two chunks and leave: the run goes on without its client.
		if !st.Next() || !st.Next() || st.LastEventID() != "1" {
			t.Fatalf("the first two chunks: LastEventID %q, %v", st.LastEventID(), st.Err())
		}
		st.Close()
		tests := []struct {
			after string
			want  []any
		}{
			{"1", counts(5)[2:]},
			{"3", counts(5)[4:]},
			{"", counts(5)},
			{"4", []any{}},
		}
		for _, tt := range tests {
			t.Run("after "+tt.after, func(t *testing.T) {
				again, err := c.ResumeRunStream(ctx, st.RunID(), tt.after)
				if err != nil {
					t.Fatalf("ResumeRunStream: %v", err)
				}
				defer again.Close()
				if got := collectResumable(again); !reflect.DeepEqual(got, tt.want) || again.Err() != nil {
					t.Fatalf("chunks = %#v, %v; want %#v", got, again.Err(), tt.want)
				}
			})
		}
		// A WebSocket stream keeps no event log; an unknown run is unknown.
		ws, err := c.RunStream(ctx, runagent.Kwargs(map[string]any{"n": 1}))
		if err != nil {
			t.Fatalf("RunStream: %v", err)
		}
		for ws.Next() {
		}
		if ws.Err() != nil || ws.InvocationID() == "" {
			t.Fatalf("RunStream: %v, invocation %q", ws.Err(), ws.InvocationID())
		}
		for _, id := range []string{ws.InvocationID(), "no-such-run"} {
			_, err := c.ResumeRunStream(ctx, id, "")
			wantCode(t, err, runagent.CodeNotFound)
		}
	})

	t.Run("CancelResumableStream", func(t *testing.T) {
		marks := filepath.Join(t.TempDir(), "ticks")
		c := p.client(t, "tick_stream")
		st, err := c.RunStreamResumable(ctx, runagent.Kwargs(map[string]any{"path": marks, "n": 1000, "interval": 0.05}))
		if err != nil {
			t.Fatalf("RunStreamResumable: %v", err)
		}
		defer st.Close()
		if !st.Next() || !reflect.DeepEqual(st.Value(), map[string]any{"tick": int64(0)}) {
			t.Fatalf("first chunk %#v, %v", st.Value(), st.Err())
		}
		if _, err := c.CancelRun(ctx, st.RunID()); err != nil {
			t.Fatalf("CancelRun: %v", err)
		}
		n := 1
		for st.Next() {
			n++
		}
		wantCode(t, st.Err(), runagent.CodeCancelled)
		if n >= 1000 {
			t.Fatalf("the stream ran to its end (%d chunks) despite the cancel", n)
		}
		read := func() string { b, _ := os.ReadFile(marks); return string(b) }
		for deadline := time.Now().Add(10 * time.Second); !strings.Contains(read(), "cancelled") && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
		}
		if got := read(); !strings.HasPrefix(got, "started\ncancelled ") {
			t.Fatalf("the generator recorded %q; want it started and cancelled", got)
		}
	})
}
