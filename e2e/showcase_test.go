package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

func showcaseServer(t testing.TB, args ...string) *agentServer {
	t.Helper()
	dir, id := newAgent(t, "showcase")
	// .env values reach the agent beside env_vars.
	if err := os.WriteFile(filepath.Join(dir, ".env"), []byte("SHOWCASE_SECRET=from-dotenv\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return serve(t, dir, id, serveOpts{args: args})
}

func jsonEqual(t testing.TB, got, want any) bool {
	t.Helper()
	g, _ := json.Marshal(got)
	w, _ := json.Marshal(want)
	return string(g) == string(w)
}

func TestShowcaseFunctionShapes(t *testing.T) {
	s := showcaseServer(t)
	tests := []struct {
		tag    string
		args   []any
		kwargs map[string]any
		want   any
	}{
		{"echo", []any{1, "two", []any{3}}, map[string]any{"k": "v", "n": nil}, map[string]any{"args": []any{1, "two", []any{3}}, "kwargs": map[string]any{"k": "v", "n": nil}}},
		{"add", []any{2, 3}, nil, 5},
		{"add", []any{"ab"}, map[string]any{"b": "cd"}, "abcd"},
		{"greet", nil, map[string]any{"name": "Ada"}, map[string]any{"lang": "en", "text": "Hello, Ada!"}},
		{"getenv", []any{"SHOWCASE_GREETING"}, nil, "hello from env_vars"},
		{"getenv", []any{"SHOWCASE_SECRET"}, nil, "from-dotenv"},
		{"getenv", []any{"NOT_SET_ANYWHERE"}, nil, nil},
		{"echo", []any{"héllo wörld 世界 🎉"}, nil, map[string]any{"args": []any{"héllo wörld 世界 🎉"}, "kwargs": map[string]any{}}},
	}
	for _, tt := range tests {
		t.Run(tt.tag, func(t *testing.T) {
			got := s.result(t, tt.tag, tt.args, tt.kwargs)
			if !jsonEqual(t, got, tt.want) {
				t.Fatalf("%s(%v, %v) = %#v, want %#v", tt.tag, tt.args, tt.kwargs, got, tt.want)
			}
		})
	}
	// The extractor's keys come out in the config's order (text, then lang).
	st, env := s.run(t, "greet", nil, map[string]any{"name": "Ada"})
	var greetData string
	json.Unmarshal(env.Data, &greetData)
	if want := `"payload": "{\"text\": \"Hello, Ada!\", \"lang\": \"en\"}"`; !strings.Contains(greetData, want) {
		t.Errorf("greet structured string = %s, want the payload %s", greetData, want)
	}

	// A method of an object keeps its state between calls.
	first := s.result(t, "method", nil, map[string]any{"message": "a"}).(map[string]any)
	second := s.result(t, "method", nil, map[string]any{"message": "b"}).(map[string]any)
	if second["calls"].(float64) != first["calls"].(float64)+1 || second["message"] == nil {
		t.Fatalf("method calls: %v then %v", first, second)
	}

	// Rich values are encoded as the original does: NaN null, infinities strings.
	st, env = s.run(t, "rich", nil, nil)
	var data string
	json.Unmarshal(env.Data, &data)
	typ, v := decodeStructured(t, data)
	if st != 200 || typ != "object" {
		t.Fatalf("rich: %d %s %v", st, typ, v)
	}
	rich := v.(map[string]any)
	if rich["nan"] != nil || rich["inf"] != "inf" || rich["neg_inf"] != "-inf" {
		t.Fatalf("rich special floats = %v %v %v", rich["nan"], rich["inf"], rich["neg_inf"])
	}

	st, env = s.run(t, "fail", nil, map[string]any{"message": "kaboom"})
	if st != 200 || env.Success || env.Error.Code != "INTERNAL_ERROR" || !strings.HasSuffix(env.Error.Message, ": kaboom") {
		t.Fatalf("fail: %d %+v", st, env.Error)
	}
}

// streamTag opens a stream and returns data values, the last frame and the close code.
func streamTag(t testing.TB, s *agentServer, tag string, args []any, kwargs map[string]any) ([]any, map[string]any, int) {
	t.Helper()
	if args == nil {
		args = []any{}
	}
	if kwargs == nil {
		kwargs = map[string]any{}
	}
	frames, code := wsFrames(t, s, map[string]any{"entrypoint_tag": tag, "input_args": args, "input_kwargs": kwargs})
	var values []any
	for _, f := range frames {
		if f["type"] == "data" {
			_, v := decodeStructured(t, f["content"].(string))
			values = append(values, v)
		}
	}
	if len(frames) == 0 {
		t.Fatalf("%s: no frames", tag)
	}
	return values, frames[len(frames)-1], code
}

func TestShowcaseStreamShapes(t *testing.T) {
	s := showcaseServer(t)
	tests := []struct {
		tag    string
		args   []any
		kwargs map[string]any
		want   []any
	}{
		{"count_stream", nil, map[string]any{"n": 3}, []any{map[string]any{"i": 0}, map[string]any{"i": 1}, map[string]any{"i": 2}}},
		{"count_async_stream", nil, map[string]any{"n": 4}, []any{0, 1, 2, 3}},
		{"list_stream", []any{"x", "y"}, nil, []any{"x", "y"}},
		{"list_async_stream", nil, nil, []any{"a", "b", "c"}},
		{"count_stream", nil, map[string]any{"n": 0}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.tag, func(t *testing.T) {
			values, last, code := streamTag(t, s, tt.tag, tt.args, tt.kwargs)
			if !jsonEqual(t, values, tt.want) || last["status"] != "stream_completed" || code != websocket.CloseNormalClosure {
				t.Fatalf("%s: values %v last %v close %d; want %v", tt.tag, values, last, code, tt.want)
			}
		})
	}
	values, last, _ := streamTag(t, s, "fail_stream", nil, map[string]any{"after": 2})
	if len(values) != 2 || last["type"] != "error" || !strings.HasPrefix(last["error"].(string), "Streaming error: ") || last["code"] != "INTERNAL_ERROR" {
		t.Fatalf("fail_stream: values %v last %v", values, last)
	}
}

// waitForLine polls a file until it contains want.
func waitForLine(t testing.TB, path, want string, d time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), want) || time.Now().After(deadline) {
			return string(b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A client closing its WebSocket mid-stream stops the generator: its
// finally runs, for sync and async generators alike.
func TestStreamCancelRunsFinally(t *testing.T) {
	s := showcaseServer(t)
	for _, tag := range []string{"tick_stream", "tick_async_stream"} {
		t.Run(tag, func(t *testing.T) {
			marker := filepath.Join(t.TempDir(), "ticks.log")
			c, _, err := websocket.DefaultDialer.Dial("ws://"+s.Addr+"/api/v1/agents/"+s.AgentID+"/run-stream", nil)
			if err != nil {
				t.Fatal(err)
			}
			c.WriteJSON(map[string]any{"entrypoint_tag": tag, "input_args": []any{}, "input_kwargs": map[string]any{"path": marker, "n": 10000, "interval": 0.02}})
			data := 0
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			for data < 3 {
				var f map[string]any
				if err := c.ReadJSON(&f); err != nil {
					t.Fatalf("read: %v", err)
				}
				if f["type"] == "data" {
					data++
				}
			}
			c.Close() // drop the connection mid-stream
			got := waitForLine(t, marker, "cancelled", 10*time.Second)
			if !strings.Contains(got, "started") || !strings.Contains(got, "cancelled") {
				t.Fatalf("generator's finally did not record a cancellation; file:\n%s\nserver log:\n%s", got, s.Logs())
			}
		})
	}
	// The history records the stream as disconnected.
	_, body := s.get(t, "/api/v1/agents/"+s.AgentID+"/invocations?status=failed")
	if !strings.Contains(string(body), "WebSocket disconnected") {
		t.Fatalf("cancelled stream not recorded: %s", body)
	}
}

func TestCallTimeout(t *testing.T) {
	s := showcaseServer(t, "--timeout", "1s")
	for _, tag := range []string{"slow", "slow_async"} {
		start := time.Now()
		st, env := s.run(t, tag, nil, map[string]any{"seconds": 30})
		if st != 504 || env.Error == nil || env.Error.Code != "TIMEOUT" || !strings.Contains(env.Error.Message, "1s") {
			t.Fatalf("%s: %d %+v", tag, st, env.Error)
		}
		if took := time.Since(start); took > 10*time.Second {
			t.Fatalf("%s: timed out after %s", tag, took)
		}
	}
	// The request's timeout_seconds may lower the server's.
	st, env, _ := s.post(t, "/api/v1/agents/"+s.AgentID+"/run", map[string]any{"entrypoint_tag": "slow_async", "input_kwargs": map[string]any{"seconds": 30}, "timeout_seconds": 0.2})
	if st != 504 || env.Error.Code != "TIMEOUT" || !strings.Contains(env.Error.Message, "200ms") {
		t.Fatalf("timeout_seconds: %d %+v", st, env.Error)
	}
	// A stream past its timeout ends with a TIMEOUT error frame and its generator is closed.
	marker := filepath.Join(t.TempDir(), "ticks.log")
	_, last, _ := streamTag(t, s, "tick_stream", nil, map[string]any{"path": marker, "n": 1000, "interval": 0.05})
	if last["type"] != "error" || last["code"] != "TIMEOUT" {
		t.Fatalf("stream past its timeout: last frame %v", last)
	}
	if got := waitForLine(t, marker, "cancelled", 10*time.Second); !strings.Contains(got, "cancelled") {
		t.Fatalf("timed-out stream's generator not closed: %s", got)
	}
	// The runner still serves.
	if v := s.result(t, "add", []any{1, 1}, nil); v != float64(2) {
		t.Fatalf("after timeouts add = %v", v)
	}
}

func runnerPID(t testing.TB, s *agentServer) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		_, body := s.get(t, "/api/v1/health")
		var h struct {
			Runner    string `json:"runner"`
			RunnerPID int    `json:"runner_pid"`
		}
		json.Unmarshal(body, &h)
		if h.Runner == "ready" && h.RunnerPID > 0 {
			return h.RunnerPID
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no ready runner:\n%s", s.Logs())
	return 0
}

// os._exit in agent code and kill -9 of the runner end the in-flight calls
// with AGENT_CRASHED, and the next call is served by a fresh runner.
func TestRunnerCrashRecovery(t *testing.T) {
	s := showcaseServer(t)
	pid := runnerPID(t, s)

	st, env := s.run(t, "crash", nil, map[string]any{"code": 3})
	if st != 502 || env.Error == nil || env.Error.Code != "AGENT_CRASHED" || !strings.Contains(env.Error.Message, "exit status 3") {
		t.Fatalf("crash: %d %+v", st, env.Error)
	}
	if v := s.result(t, "add", []any{2, 2}, nil); v != float64(4) {
		t.Fatalf("after a crash add = %v", v)
	}
	pid2 := runnerPID(t, s)
	if pid2 == pid {
		t.Fatalf("runner pid unchanged after a crash: %d", pid)
	}

	// kill -9 with several calls in flight: all of them fail, none hangs.
	const inflight = 5
	var wg sync.WaitGroup
	results := make(chan string, inflight)
	for i := 0; i < inflight; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, env := s.run(t, "slow", nil, map[string]any{"seconds": 20})
			code := ""
			if env.Error != nil {
				code = env.Error.Code + " " + env.Error.Message
			}
			results <- fmt.Sprintf("%d %s", st, code)
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		_, body := s.get(t, "/api/v1/health")
		var h struct {
			InFlight int `json:"in_flight"`
		}
		json.Unmarshal(body, &h)
		if h.InFlight == inflight {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := syscall.Kill(pid2, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(results)
	for r := range results {
		if !strings.HasPrefix(r, "502 AGENT_CRASHED") || !strings.Contains(r, "killed by signal") {
			t.Errorf("in-flight call after kill -9: %s", r)
		}
	}
	if v := s.result(t, "add", []any{3, 4}, nil); v != float64(7) {
		t.Fatalf("after kill -9 add = %v", v)
	}
	if pid3 := runnerPID(t, s); pid3 == pid2 {
		t.Fatal("runner pid unchanged after kill -9")
	}
}
