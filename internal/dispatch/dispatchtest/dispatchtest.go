// Package dispatchtest is the conformance suite every dispatcher
// (domain.Dispatcher) passes: the in-process one now, the one over NATS
// next. It serves a real agent (Python, through the real runner) with the
// implementation under test and checks what the gateway relies on: results,
// streams in order, typed errors, cancellation that reaches the agent's
// code, timeouts, and flow control (a consumer that takes nothing pauses
// its own stream and no other call).
package dispatchtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

// AgentCode is the suite's agent (main.py).
const AgentCode = `import os
import time

MARKS = os.environ["MARK_DIR"]
produced = 0


def _mark(name, text):
    with open(os.path.join(MARKS, name), "w") as f:
        f.write(text)


def echo(value):
    return value


def fail(message):
    raise ValueError(message)


def nap(seconds, mark=""):
    try:
        time.sleep(float(seconds))
        return "rested"
    finally:
        if mark:
            _mark(mark, "done")


def count_stream(n):
    for i in range(int(n)):
        yield i


def endless_stream(mark):
    global produced
    produced = 0
    try:
        while True:
            produced += 1
            yield {"n": produced, "pad": "x" * 100}
    finally:
        _mark(mark, "closed after %d" % produced)


def how_many():
    return produced
`

// Tags are the suite agent's entrypoints (main.py, module = tag).
var Tags = []string{"echo", "fail", "nap", "count_stream", "endless_stream", "how_many"}

// WriteAgent writes the suite's agent into dir: main.py and a
// runagent.config.json naming Tags, with id agentID. Its env_vars point
// MARK_DIR at marks, where the agent leaves files for the suite.
func WriteAgent(t *testing.T, dir, agentID, marks string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "main.py"), []byte(AgentCode), 0o644); err != nil {
		t.Fatal(err)
	}
	var eps []map[string]any
	for _, tag := range Tags {
		eps = append(eps, map[string]any{"file": "main.py", "module": tag, "tag": tag})
	}
	cfg := map[string]any{
		"agent_name": "dispatchtest", "description": "the dispatcher conformance suite's agent", "framework": "default",
		"template": "default", "version": "1.0.0", "created_at": "2025-06-25 13:42:03",
		"template_source": map[string]any{"repo_url": "https://example.com", "author": "runagent", "path": "dispatchtest"},
		"agent_id":        agentID, "agent_architecture": map[string]any{"entrypoints": eps},
		"env_vars": map[string]any{"MARK_DIR": marks},
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "runagent.config.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Serve serves the agent WriteAgent wrote in dir with the dispatcher under
// test, and returns the dispatcher and the target of the agent's version.
// The implementation stops it at the test's cleanup.
type Serve func(t *testing.T, dir string) (domain.Dispatcher, domain.Target)

// AgentID is the id WriteAgent gives the suite's agent.
const AgentID = "5b3f2a1c-7d4e-4f6a-9b8c-0d1e2f3a4b5c"

// Run runs the suite against the dispatcher serve returns.
func Run(t *testing.T, serve Serve) {
	dir := t.TempDir()
	marks := t.TempDir()
	WriteAgent(t, dir, AgentID, marks)
	d, target := serve(t, dir)
	ctx := func(t *testing.T, timeout time.Duration) context.Context {
		c, cancel := context.WithTimeout(context.Background(), timeout)
		t.Cleanup(cancel)
		return c
	}
	value := func(t *testing.T, structured []byte) any {
		t.Helper()
		var outer struct{ Type, Payload string }
		if err := json.Unmarshal(structured, &outer); err != nil {
			t.Fatalf("not a structured string: %s", structured)
		}
		var v any
		json.Unmarshal([]byte(outer.Payload), &v)
		return v
	}
	waitMark := func(t *testing.T, name string) string {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if b, err := os.ReadFile(filepath.Join(marks, name)); err == nil {
				return string(b)
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("the agent did not write %s", name)
		return ""
	}

	t.Run("call", func(t *testing.T) {
		out, err := d.Call(ctx(t, 30*time.Second), target, "echo", []byte(`[{"a": [1, "é"]}]`), nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(value(t, out)); got != "map[a:[1 é]]" {
			t.Fatalf("echo = %s", got)
		}
	})

	t.Run("stream in order", func(t *testing.T) {
		var got []string
		started := false
		n, err := d.Stream(ctx(t, 30*time.Second), target, "count_stream", []byte(`[5]`), nil, func() { started = true }, func(c domain.Chunk) error {
			if !started {
				return errors.New("a chunk before started")
			}
			got = append(got, fmt.Sprint(value(t, c.Body)))
			return nil
		})
		if err != nil || n != 5 || strings.Join(got, ",") != "0,1,2,3,4" {
			t.Fatalf("count_stream: %d %v %v", n, got, err)
		}
	})

	t.Run("agent exception", func(t *testing.T) {
		_, err := d.Call(ctx(t, 30*time.Second), target, "fail", []byte(`["boom"]`), nil)
		var ae *domain.AgentError
		if !errors.As(err, &ae) || ae.Type != "ValueError" || ae.Message != "boom" {
			t.Fatalf("fail = %v, want an AgentError ValueError: boom", err)
		}
	})

	t.Run("unknown entrypoint", func(t *testing.T) {
		_, err := d.Call(ctx(t, 30*time.Second), target, "nope", nil, nil)
		if domain.CodeOf(err) != domain.CodeNotFound {
			t.Fatalf("an unknown tag = %v, want NOT_FOUND", err)
		}
	})

	t.Run("unknown target", func(t *testing.T) {
		other := domain.Target{AgentID: "00000000-0000-4000-8000-000000000001", Version: 1}
		if _, err := d.Call(ctx(t, 30*time.Second), other, "echo", []byte(`[1]`), nil); domain.CodeOf(err) != domain.CodeNotFound {
			t.Fatalf("a call for an agent that does not run = %v, want NOT_FOUND", err)
		}
	})

	t.Run("timeout is the context's cause", func(t *testing.T) {
		timeout := &domain.Error{Code: domain.CodeTimeout, Message: "the agent did not finish within 200ms"}
		c, cancel := context.WithTimeoutCause(context.Background(), 200*time.Millisecond, timeout)
		defer cancel()
		start := time.Now()
		_, err := d.Call(c, target, "nap", []byte(`[5]`), nil)
		if !errors.Is(err, timeout) || time.Since(start) > 3*time.Second {
			t.Fatalf("nap past its deadline = %v after %s, want the deadline's cause at once", err, time.Since(start))
		}
	})

	t.Run("a stopped stream stops the agent", func(t *testing.T) {
		stop := errors.New("the client went away")
		_, err := d.Stream(ctx(t, 30*time.Second), target, "endless_stream", []byte(`["stopped"]`), nil, nil, func(c domain.Chunk) error {
			return stop
		})
		if !errors.Is(err, stop) {
			t.Fatalf("stopped stream = %v", err)
		}
		if got := waitMark(t, "stopped"); !strings.HasPrefix(got, "closed after") {
			t.Fatalf("the generator's finally wrote %q", got)
		}
	})

	t.Run("a cancelled stream stops the agent", func(t *testing.T) {
		c, cancel := context.WithCancel(context.Background())
		first := make(chan struct{})
		var once sync.Once
		errc := make(chan error, 1)
		go func() {
			_, err := d.Stream(c, target, "endless_stream", []byte(`["cancelled"]`), nil, nil, func(domain.Chunk) error {
				once.Do(func() { close(first) })
				return nil
			})
			errc <- err
		}()
		<-first
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled stream = %v", err)
		}
		if got := waitMark(t, "cancelled"); !strings.HasPrefix(got, "closed after") {
			t.Fatalf("the generator's finally wrote %q", got)
		}
	})

	// The consumer of one stream takes nothing for 10 s: its generator is
	// paused (it produced no more than a window), and calls beside it keep
	// their latency.
	t.Run("a stalled consumer holds only its own stream", func(t *testing.T) {
		release := make(chan struct{})
		errc := make(chan error, 1)
		taken := 0
		go func() {
			_, err := d.Stream(ctx(t, time.Minute), target, "endless_stream", []byte(`["stalled"]`), nil, nil, func(domain.Chunk) error {
				taken++
				if taken == 1 {
					<-release // a client that stopped reading
				}
				if taken == 50 {
					return errors.New("enough")
				}
				return nil
			})
			errc <- err
		}()
		stallEnd := time.Now().Add(10 * time.Second)
		var slowest time.Duration
		calls := 0
		for time.Now().Before(stallEnd) {
			start := time.Now()
			out, err := d.Call(ctx(t, 30*time.Second), target, "echo", []byte(fmt.Sprintf(`[%d]`, calls)), nil)
			if err != nil || fmt.Sprint(value(t, out)) != fmt.Sprint(calls) {
				t.Fatalf("call %d beside a stalled stream: %s %v", calls, out, err)
			}
			slowest = max(slowest, time.Since(start))
			calls++
			time.Sleep(50 * time.Millisecond)
		}
		out, err := d.Call(ctx(t, 30*time.Second), target, "how_many", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		produced, _ := value(t, out).(float64)
		close(release)
		<-errc
		if slowest > time.Second {
			t.Errorf("calls beside a stalled stream took up to %s", slowest)
		}
		// A window is 256 chunks (1 MiB): a generator that was not paused
		// makes hundreds of thousands of these in 10 s.
		if produced > 1000 {
			t.Errorf("the stalled stream's generator produced %v chunks in 10 s: it was not paused", produced)
		}
	})
}
