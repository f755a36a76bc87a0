package e2e

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	runagent "github.com/runagent-go/runagent/sdk/go"
)

func sdkClient(t testing.TB, s *agentServer, tag string) *runagent.Client {
	t.Helper()
	host, port, _ := strings.Cut(s.Addr, ":")
	p, _ := strconv.Atoi(port)
	c, err := runagent.New(runagent.Config{AgentID: s.AgentID, EntrypointTag: tag, Local: true, Host: host, Port: p})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The Go SDK against the real server: values, streams, typed errors, and
// cancellation through the context.
func TestGoSDKEndToEnd(t *testing.T) {
	s := showcaseServer(t, "--timeout", "2s")
	ctx := ctxTimeout(t, 2*time.Minute)

	v, err := sdkClient(t, s, "add").Run(ctx, runagent.Args(40, 2))
	if err != nil || fmt.Sprint(v) != "42" {
		t.Fatalf("add = %v, %v", v, err)
	}
	var greeting struct{ Text, Lang string }
	if err := sdkClient(t, s, "greet").RunInto(ctx, runagent.Kwargs(map[string]any{"name": "Go"}), &greeting); err != nil || greeting.Text != "Hello, Go!" {
		t.Fatalf("greet = %+v, %v", greeting, err)
	}

	// Several MiB in and out, unicode intact.
	big := strings.Repeat("héllo wörld 🎉 ", 200_000) // ~3.4 MB
	v, err = sdkClient(t, s, "echo").Run(ctx, runagent.Args(big))
	if err != nil {
		t.Fatalf("echo of %d bytes: %v", len(big), err)
	}
	if got := v.(map[string]any)["args"].([]any)[0]; got != big {
		t.Fatalf("echo of a large string came back changed (%d bytes)", len(fmt.Sprint(got)))
	}

	errCases := []struct {
		tag  string
		in   runagent.Input
		code string
		has  string
	}{
		{"fail", runagent.Kwargs(map[string]any{"message": "sdk boom"}), runagent.CodeInternal, "sdk boom"},
		{"nope", runagent.Input{}, runagent.CodeNotFound, "nope"},
		{"slow", runagent.Kwargs(map[string]any{"seconds": 30}), runagent.CodeTimeout, "timeout"},
		{"crash", runagent.Input{}, runagent.CodeAgentCrashed, "exit status 1"},
	}
	for _, tt := range errCases {
		_, err := sdkClient(t, s, tt.tag).Run(ctx, tt.in)
		var e *runagent.Error
		if !errors.As(err, &e) || e.Code != tt.code || !strings.Contains(e.Message, tt.has) {
			t.Errorf("%s: err = %v, want code %s containing %q", tt.tag, err, tt.code, tt.has)
		}
	}

	// Streams: sync and async generators, and an error mid-stream.
	for _, tag := range []string{"count_stream", "count_async_stream"} {
		st, err := sdkClient(t, s, tag).RunStream(ctx, runagent.Kwargs(map[string]any{"n": 500}))
		if err != nil {
			t.Fatalf("%s: %v", tag, err)
		}
		n := 0
		for st.Next() {
			n++
		}
		if st.Err() != nil || n != 500 || st.InvocationID() == "" {
			t.Fatalf("%s: %d chunks, err %v", tag, n, st.Err())
		}
	}
	st, err := sdkClient(t, s, "fail_stream").RunStream(ctx, runagent.Kwargs(map[string]any{"after": 3}))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for st.Next() {
		n++
	}
	if n != 3 || !runagent.IsCode(st.Err(), runagent.CodeInternal) {
		t.Fatalf("fail_stream: %d chunks, err %v", n, st.Err())
	}

	// Cancelling the context mid-stream closes the generator on the server.
	marker := filepath.Join(t.TempDir(), "ticks.log")
	cctx, cancel := context.WithCancel(ctx)
	st, err = sdkClient(t, s, "tick_stream").RunStream(cctx, runagent.Kwargs(map[string]any{"path": marker, "n": 1000, "interval": 0.01}))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3 && st.Next(); i++ {
	}
	cancel()
	for st.Next() {
	}
	if got := waitForLine(t, marker, "cancelled", 10*time.Second); !strings.Contains(got, "cancelled") {
		t.Fatalf("ctx cancel did not stop the generator: %q", got)
	}
}

// 200 concurrent calls through one SDK client: every caller gets its own answer.
func TestGoSDKConcurrency(t *testing.T) {
	s := showcaseServer(t)
	c := sdkClient(t, s, "echo")
	ctx := ctxTimeout(t, time.Minute)
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			v, err := c.Run(ctx, runagent.Args(i))
			if err != nil {
				errs <- err
				return
			}
			if got := fmt.Sprint(v.(map[string]any)["args"].([]any)[0]); got != fmt.Sprint(i) {
				errs <- fmt.Errorf("call %d got %v", i, got)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
