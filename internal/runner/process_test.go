package runner_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/pyrunner"
	"github.com/runagent-go/runagent/internal/runner"
	"github.com/runagent-go/runagent/internal/runproto"
)

const agentPy = `
import os, time
print("imported")
def hello(name="world"):
    print("saying hello to", name)
    return "hello " + name
def die():
    os._exit(7)
def nap(s):
    time.sleep(s)
    return s
def count_stream(n):
    for i in range(n):
        yield i
`

func startSpec(t *testing.T) (runner.Spec, *logs) {
	t.Helper()
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 is needed for runner tests:", err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "main.py"), []byte(agentPy), 0o644); err != nil {
		t.Fatal(err)
	}
	script, err := pyrunner.WriteScript(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	l := &logs{}
	eps := []runproto.InitEntrypoint{}
	for _, tag := range []string{"hello", "die", "nap", "count_stream", "missing"} {
		eps = append(eps, runproto.InitEntrypoint{Tag: tag, File: "main.py", Module: tag})
	}
	return runner.Spec{
		Python: python, Script: script, OnLog: l.add, ReadyTimeout: 30 * time.Second,
		Init: runproto.Init{AgentDir: dir, Entrypoints: eps, Env: map[string]string{"X": "1"}, Threads: 4},
	}, l
}

type logs struct {
	mu    sync.Mutex
	lines []string
}

func (l *logs) add(invocation, stream, text string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, invocation+"/"+stream+":"+strings.TrimSpace(text))
}

func (l *logs) joined() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "|")
}

func TestProcessLifecycle(t *testing.T) {
	spec, l := startSpec(t)
	ctx := context.Background()
	p, err := runner.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.Ready.Errors["missing"] == "" || p.Ready.Entrypoints["count_stream"] != "sync_generator" {
		t.Fatalf("READY = %+v", p.Ready)
	}
	v, err := p.Call(domain.WithInvocation(ctx, "inv-1"), "hello", []byte(`["go"]`), nil)
	if err != nil || string(v) != `{"type": "string", "payload": "\"hello go\""}` {
		t.Fatalf("hello = %s, %v", v, err)
	}
	if got := l.joined(); !strings.Contains(got, "/stdout:imported") || !strings.Contains(got, "inv-1/stdout:saying hello to go") {
		t.Fatalf("agent prints = %q", got)
	}
	n, err := p.Stream(ctx, "count_stream", []byte(`[3]`), nil, nil, func(domain.Chunk) error { return nil })
	if err != nil || n != 3 {
		t.Fatalf("count_stream = %d, %v", n, err)
	}
	_, err = p.Call(ctx, "die", nil, nil)
	var we *domain.Error
	if !errors.As(err, &we) || we.Code != domain.CodeAgentCrashed || !strings.Contains(we.Message, "exit status 7") {
		t.Fatalf("die = %v", err)
	}
	select {
	case <-p.Exited():
	case <-time.After(5 * time.Second):
		t.Fatal("the runner has not exited")
	}
}

func TestProcessStartFailureIsExplained(t *testing.T) {
	spec, _ := startSpec(t)
	spec.Script = filepath.Join(t.TempDir(), "nope.py")
	_, err := runner.Start(context.Background(), spec)
	if err == nil || !strings.Contains(err.Error(), "exited during start-up") || !strings.Contains(err.Error(), "nope.py") {
		t.Fatalf("Start with a missing script = %v", err)
	}
}
