package runagent_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	runagent "github.com/runagent-go/runagent/sdk/go"
)

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestConfigPersistentMemory(t *testing.T) {
	tests := []struct {
		name   string
		userID string
		pm     bool
		ok     bool
	}{
		{"persistent memory needs a user", "", true, false},
		{"user with persistent memory", "ana@example.com", true, true},
		{"user without persistent memory", "ana@example.com", false, true},
		{"neither", "", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t)
			_, err := runagent.New(runagent.Config{AgentID: testAgent, EntrypointTag: "minimal", BaseURL: "http://127.0.0.1:1", UserID: tt.userID, PersistentMemory: tt.pm})
			if tt.ok {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				return
			}
			if e := wantCode(t, err, runagent.CodeValidation); !strings.Contains(e.Message, "PersistentMemory needs a UserID") {
				t.Fatalf("Message = %q", e.Message)
			}
		})
	}
}

// bodyRecorder is a server answering every route of a run with a fixed
// success and recording each request's body and Idempotency-Key.
type bodyRecorder struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []recorded
}

type recorded struct {
	Method, Path, Body, Key string
}

func newBodyRecorder(t *testing.T) *bodyRecorder {
	t.Helper()
	s := &bodyRecorder{}
	up := websocket.Upgrader{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if websocket.IsWebSocketUpgrade(r) {
			conn, err := up.Upgrade(w, r, nil)
			if err != nil {
				return
			}
			defer conn.Close()
			_, msg, _ := conn.ReadMessage()
			s.record(recorded{Method: "WS", Path: r.URL.Path, Body: string(msg)})
			send(conn, started())
			send(conn, completed(0))
			closeNormally(conn)
			return
		}
		b, _ := io.ReadAll(r.Body)
		s.record(recorded{Method: r.Method, Path: r.URL.Path, Body: strings.TrimSpace(string(b)), Key: r.Header.Get("Idempotency-Key")})
		switch {
		case strings.HasSuffix(r.URL.Path, "/run-stream"):
			w.Header().Set("Content-Type", "text/event-stream")
			w.Header().Set("Content-Location", "/api/v1/runs/run-1")
			io.WriteString(w, "event: done\ndata: {}\n\n")
		case strings.HasSuffix(r.URL.Path, "/runs"):
			writeJSON(w, 202, `{"success":true,"data":{"run_id":"run-1","invocation_id":"run-1","agent_id":"a","status":"pending","status_url":"/api/v1/runs/run-1"}}`)
		default:
			writeJSON(w, 200, okEnvelope(structured("null", "null")))
		}
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *bodyRecorder) record(r recorded) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reqs = append(s.reqs, r)
}

func (s *bodyRecorder) last(t *testing.T) recorded {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.reqs) == 0 {
		t.Fatal("no request")
	}
	return s.reqs[len(s.reqs)-1]
}

// Every kind of run sends the client's user, and the body of each is
// exactly what the server reads.
func TestRunBodies(t *testing.T) {
	ctx := context.Background()
	in := runagent.Args("hi").With("n", 1)
	type call func(c *runagent.Client) error
	runCall := func(c *runagent.Client) error { _, err := c.Run(ctx, in); return err }
	startRun := func(opts *runagent.RunOptions) call {
		return func(c *runagent.Client) error { _, err := c.StartRun(ctx, in, opts); return err }
	}
	resumable := func(c *runagent.Client) error {
		st, err := c.WithEntrypoint("minimal_stream").RunStreamResumable(ctx, in)
		if err != nil {
			return err
		}
		for st.Next() {
		}
		return st.Err()
	}
	wsStream := func(c *runagent.Client) error {
		st, err := c.WithEntrypoint("minimal_stream").RunStream(ctx, in)
		if err != nil {
			return err
		}
		for st.Next() {
		}
		return st.Err()
	}
	const input = `"input_args":["hi"],"input_kwargs":{"n":1}`
	tests := []struct {
		name   string
		userID string
		pm     bool
		call   call
		method string
		path   string
		want   string
	}{
		{"run", "", false, runCall, "POST", "/run", `{"entrypoint_tag":"minimal",` + input + `,"timeout_seconds":300}`},
		{"run with memory", "ana", true, runCall, "POST", "/run", `{"entrypoint_tag":"minimal",` + input + `,"timeout_seconds":300,"user_id":"ana","persistent_memory":true}`},
		{"run with a user only", "ana", false, runCall, "POST", "/run", `{"entrypoint_tag":"minimal",` + input + `,"timeout_seconds":300,"user_id":"ana","persistent_memory":false}`},
		{"start run", "", false, startRun(nil), "POST", "/runs", `{"entrypoint_tag":"minimal",` + input + `,"timeout_seconds":300}`},
		{"start run with options and memory", "ana", true, startRun(&runagent.RunOptions{Webhook: "https://hooks.example.com/x", ThreadID: "t-1", Multitask: runagent.MultitaskEnqueue}), "POST", "/runs",
			`{"entrypoint_tag":"minimal",` + input + `,"timeout_seconds":300,"user_id":"ana","persistent_memory":true,"webhook":"https://hooks.example.com/x","thread_id":"t-1","multitask":"enqueue"}`},
		{"resumable stream", "", false, resumable, "POST", "/run-stream", `{"entrypoint_tag":"minimal_stream",` + input + `,"on_disconnect":"continue"}`},
		{"resumable stream with memory", "ana", true, resumable, "POST", "/run-stream", `{"entrypoint_tag":"minimal_stream",` + input + `,"user_id":"ana","persistent_memory":true,"on_disconnect":"continue"}`},
		{"websocket stream with memory", "ana", true, wsStream, "WS", "/run-stream", `{"entrypoint_tag":"minimal_stream",` + input + `,"user_id":"ana","persistent_memory":true}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newBodyRecorder(t)
			c := newClient(t, srv.URL, "minimal", nil, func(cfg *runagent.Config) { cfg.UserID, cfg.PersistentMemory = tt.userID, tt.pm })
			if err := tt.call(c); err != nil {
				t.Fatalf("call: %v", err)
			}
			r := srv.last(t)
			if r.Method != tt.method || r.Path != "/api/v1/agents/"+testAgent+tt.path {
				t.Errorf("request = %s %s", r.Method, r.Path)
			}
			if r.Body != tt.want {
				t.Errorf("body\n got %s\nwant %s", r.Body, tt.want)
			}
		})
	}
}

func TestStartRunIdempotencyKey(t *testing.T) {
	ctx := context.Background()
	t.Run("generated once per call, kept across retries", func(t *testing.T) {
		var keys []string
		srv := newRESTServer(t, func(attempt int, w http.ResponseWriter, r *http.Request) {
			keys = append(keys, r.Header.Get("Idempotency-Key"))
			if attempt%2 == 1 {
				w.Header().Set("Retry-After", "1")
				writeJSON(w, 503, errEnvelope("OVERLOADED", "busy"))
				return
			}
			w.Header().Set("Idempotent-Replayed", "true")
			writeJSON(w, 202, `{"success":true,"data":{"run_id":"r","invocation_id":"r","agent_id":"a","status":"pending","status_url":"/api/v1/runs/r"}}`)
		})
		clk := newFakeClock()
		c := newClient(t, srv.URL, "minimal", clk)
		a, err := c.StartRun(ctx, runagent.Input{}, nil)
		if err != nil {
			t.Fatalf("StartRun: %v", err)
		}
		b, err := c.StartRun(ctx, runagent.Input{}, &runagent.RunOptions{})
		if err != nil {
			t.Fatalf("StartRun: %v", err)
		}
		if len(keys) != 4 || keys[0] != keys[1] || keys[2] != keys[3] || keys[0] == keys[2] || !uuidV4.MatchString(keys[0]) || !uuidV4.MatchString(keys[2]) {
			t.Fatalf("keys = %q; want one UUID per call, the same on its retry", keys)
		}
		if a.IdempotencyKey != keys[0] || b.IdempotencyKey != keys[2] || !a.Replayed || a.RunID != "r" || a.Status != runagent.RunPending || a.StatusURL != "/api/v1/runs/r" {
			t.Fatalf("runs = %+v, %+v", a, b)
		}
		if s := clk.Sleeps(); len(s) != 2 || s[0] < time.Second {
			t.Fatalf("sleeps = %v; want one Retry-After per call", s)
		}
	})
	t.Run("given key", func(t *testing.T) {
		srv := newBodyRecorder(t)
		c := newClient(t, srv.URL, "minimal", nil)
		run, err := c.StartRun(ctx, runagent.Input{}, &runagent.RunOptions{IdempotencyKey: "order 12/01"})
		if err != nil {
			t.Fatalf("StartRun: %v", err)
		}
		if got := srv.last(t).Key; got != "order 12/01" || run.IdempotencyKey != got || run.Replayed {
			t.Fatalf("key sent %q, run %+v", got, run)
		}
	})
	for name, bad := range map[string]string{"newline": "a\nb", "not ASCII": "é", "padded": " padded", "too long": strings.Repeat("k", 256)} {
		t.Run("refused "+name, func(t *testing.T) {
			srv := newBodyRecorder(t)
			c := newClient(t, srv.URL, "minimal", nil)
			_, err := c.StartRun(ctx, runagent.Input{}, &runagent.RunOptions{IdempotencyKey: bad})
			if e := wantCode(t, err, runagent.CodeValidation); e.Field != "Idempotency-Key" {
				t.Fatalf("Field = %q", e.Field)
			}
			if len(srv.reqs) != 0 {
				t.Fatalf("%d requests made", len(srv.reqs))
			}
		})
	}
}

func TestRunRoutes(t *testing.T) {
	const record = `{"run_id":"r/1","invocation_id":"r/1","agent_id":"a","input_data":{"input_args":[2,40],"input_kwargs":{"k":"v"}},` +
		`"output_data":{"n":12345678901234567890,"x":1.5},"error_detail":null,"request_timestamp":"2026-12-02T18:29:30.986305",` +
		`"response_timestamp":"2026-12-02T18:29:31","execution_time_ms":0.5,"status":"completed","entrypoint_tag":"add","sdk_type":"async",` +
		`"client_info":{},"background":true,"attempts":1,"started_at":"2026-12-02T18:29:30.986806","idempotency_key":"k","webhook":null,"thread_id":"t","user_id":"ana"}`
	var mu sync.Mutex
	var urls []string
	srv := newRESTServer(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		urls = append(urls, r.Method+" "+r.URL.EscapedPath()+"?"+r.URL.RawQuery)
		mu.Unlock()
		writeJSON(w, 200, `{"success":true,"data":`+record+`}`)
	})
	c := newClient(t, srv.URL, "add", nil)
	ctx := context.Background()
	calls := []struct {
		name string
		call func() (*runagent.Run, error)
		url  string
	}{
		{"GetRun", func() (*runagent.Run, error) { return c.GetRun(ctx, "r/1") }, "GET /api/v1/runs/r%2F1?"},
		{"WaitRun", func() (*runagent.Run, error) { return c.WaitRun(ctx, "r/1", 1500*time.Millisecond) }, "GET /api/v1/runs/r%2F1/wait?timeout_seconds="},
		{"CancelRun", func() (*runagent.Run, error) { return c.CancelRun(ctx, "r/1") }, "POST /api/v1/runs/r%2F1/cancel?"},
	}
	want := &runagent.Run{
		RunID: "r/1", InvocationID: "r/1", AgentID: "a", EntrypointTag: "add", Status: runagent.RunCompleted,
		Input:      runagent.Input{Args: []any{int64(2), int64(40)}, Kwargs: map[string]any{"k": "v"}},
		Output:     map[string]any{"n": bigInt("12345678901234567890"), "x": 1.5},
		OutputJSON: json.RawMessage(`{"n":12345678901234567890,"x":1.5}`),
		Background: true, Attempts: 1, IdempotencyKey: "k", ThreadID: "t", UserID: "ana", SDKType: "async",
		RequestTime:   time.Date(2026, 12, 2, 18, 29, 30, 986305000, time.UTC),
		StartedAt:     time.Date(2026, 12, 2, 18, 29, 30, 986806000, time.UTC),
		ResponseTime:  time.Date(2026, 12, 2, 18, 29, 31, 0, time.UTC),
		ExecutionTime: 500 * time.Microsecond,
	}
	for _, tt := range calls {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.call()
			if err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("run\n got %+v\nwant %+v", got, want)
			}
			mu.Lock()
			last := urls[len(urls)-1]
			mu.Unlock()
			if !strings.HasPrefix(last, tt.url) {
				t.Fatalf("request %s, want %s...", last, tt.url)
			}
		})
	}
	var out struct{ X float64 }
	if err := want.DecodeOutput(&out); err != nil || out.X != 1.5 {
		t.Fatalf("DecodeOutput = %+v, %v", out, err)
	}
	for _, id := range []string{""} {
		_, err := c.GetRun(ctx, id)
		wantCode(t, err, runagent.CodeValidation)
	}
}

func TestRunErr(t *testing.T) {
	tests := []struct {
		status, detail string
		code           string // "" for no error
	}{
		{runagent.RunCompleted, "", ""},
		{runagent.RunPending, "", ""},
		{runagent.RunRunning, "", ""},
		{runagent.RunFailed, "Server error running agent a: ValueError: boom", runagent.CodeInternal},
		{runagent.RunFailed, "AGENT_CRASHED: the agent process exited", runagent.CodeAgentCrashed},
		{runagent.RunFailed, "", runagent.CodeInternal},
		{runagent.RunCancelled, "CANCELLED: the run was cancelled", runagent.CodeCancelled},
		{runagent.RunTimeout, "TIMEOUT: 5s", runagent.CodeTimeout},
	}
	for _, tt := range tests {
		t.Run(tt.status+" "+tt.detail, func(t *testing.T) {
			r := &runagent.Run{RunID: "r", Status: tt.status, ErrorDetail: tt.detail}
			err := r.Err()
			if tt.code == "" {
				if err != nil || r.Ended() != (tt.status == runagent.RunCompleted) {
					t.Fatalf("Err = %v, Ended = %v", err, r.Ended())
				}
				return
			}
			if e := wantCode(t, err, tt.code); !r.Ended() || (tt.detail != "" && e.Message != tt.detail) {
				t.Fatalf("Err = %v, Ended = %v", e, r.Ended())
			}
		})
	}
}

func TestParseRunMalformed(t *testing.T) {
	tests := []struct{ name, data string }{
		{"not an object", `[1]`},
		{"no run id", `{"status":"pending"}`},
		{"bad timestamp", `{"run_id":"r","status":"pending","request_timestamp":"yesterday"}`},
		{"wrong type", `{"run_id":"r","status":"pending","attempts":"one"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newRESTServer(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
				writeJSON(w, 200, `{"success":true,"data":`+tt.data+`}`)
			})
			_, err := newClient(t, srv.URL, "add", nil).GetRun(context.Background(), "r")
			if e := wantCode(t, err, runagent.CodeInternal); !errors.Is(e, runagent.ErrMalformed) || e.Status != 200 {
				t.Fatalf("error = %#v", e)
			}
		})
	}
}
