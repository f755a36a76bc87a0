package runagent_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	runagent "github.com/runagent-go/runagent/sdk/go"
)

const testAgent = "841debad-7433-46ae-a0ec-0540d0df7314"

// fakeClock is the retry loop's clock in tests: Sleep records the delay and
// advances Now instead of sleeping.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	sleeps []time.Duration
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Now()} }

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sleeps = append(f.sleeps, d)
	f.now = f.now.Add(d)
	return nil
}

func (f *fakeClock) Sleeps() []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Duration(nil), f.sleeps...)
}

// clearEnv makes the RUNAGENT_* environment empty for the test.
func clearEnv(t testing.TB) {
	t.Helper()
	for _, k := range []string{"RUNAGENT_API_KEY", "RUNAGENT_BASE_URL", "RUNAGENT_LOCAL", "RUNAGENT_HOST", "RUNAGENT_PORT", "RUNAGENT_TIMEOUT", "RUNAGENT_CACHE_DIR"} {
		t.Setenv(k, "")
	}
}

// newClient returns a client of baseURL using clk (nil: the real clock).
func newClient(t *testing.T, baseURL, tag string, clk *fakeClock, edit ...func(*runagent.Config)) *runagent.Client {
	t.Helper()
	clearEnv(t)
	cfg := runagent.Config{AgentID: testAgent, EntrypointTag: tag, BaseURL: baseURL, APIKey: "secret-key"}
	if clk != nil {
		runagent.SetClock(&cfg, clk.Now, clk.Sleep)
	}
	for _, f := range edit {
		f(&cfg)
	}
	c, err := runagent.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

// structured encodes a value the way the server does: {"type","payload"}
// with the payload as a JSON string.
func structured(typ, payloadJSON string) string {
	p, _ := json.Marshal(payloadJSON)
	return `{"type": "` + typ + `", "payload": ` + string(p) + `}`
}

func okEnvelope(data string) string {
	d, _ := json.Marshal(data)
	return `{"success":true,"data":` + string(d) + `,"message":"Agent execution completed successfully","error":null,"timestamp":"2025-06-25T13:42:03.123456","request_id":"rid-1"}`
}

func errEnvelope(code, msg string) string {
	m, _ := json.Marshal(msg)
	return `{"success":false,"data":null,"message":null,"error":{"code":"` + code + `","message":` + string(m) + `,"details":null,"field":null},"timestamp":"2025-06-25T13:42:03","request_id":"rid-2"}`
}

// restServer answers POST /run with respond(attempt, w, r), attempt counting
// from 1.
type restServer struct {
	*httptest.Server
	hits atomic.Int32
}

func newRESTServer(t testing.TB, respond func(attempt int, w http.ResponseWriter, r *http.Request)) *restServer {
	t.Helper()
	s := &restServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		respond(int(s.hits.Add(1)), w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func writeJSON(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

// wsServer speaks the run-stream protocol: it upgrades, reads the request
// frame and runs script(attempt, conn, request). A non-nil pre(attempt, w)
// that returns true has answered the handshake itself.
type wsServer struct {
	*httptest.Server
	hits atomic.Int32
	mu   sync.Mutex
	reqs []wsRequest
}

type wsRequest struct {
	Token, Auth string
	Body        map[string]any
	RawBody     string
}

func newWSServer(t *testing.T, pre func(attempt int, w http.ResponseWriter) bool, script func(attempt int, conn *websocket.Conn)) *wsServer {
	t.Helper()
	s := &wsServer{}
	up := websocket.Upgrader{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/agents/"+testAgent+"/run-stream" {
			writeJSON(w, http.StatusNotFound, `{"detail":"Not Found"}`)
			return
		}
		attempt := int(s.hits.Add(1))
		if pre != nil && pre(attempt, w) {
			return
		}
		conn, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		_, msg, err := conn.ReadMessage()
		if err != nil {
			return
		}
		req := wsRequest{Token: r.URL.Query().Get("token"), Auth: r.Header.Get("Authorization"), RawBody: string(msg)}
		_ = json.Unmarshal(msg, &req.Body)
		s.mu.Lock()
		s.reqs = append(s.reqs, req)
		s.mu.Unlock()
		script(attempt, conn)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *wsServer) requests() []wsRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]wsRequest(nil), s.reqs...)
}

func send(conn *websocket.Conn, frame string) {
	_ = conn.WriteMessage(websocket.TextMessage, []byte(frame))
}

func started() string { return `{"type":"status","status":"stream_started","invocation_id":"inv-1"}` }

func dataFrame(s string) string {
	c, _ := json.Marshal(s)
	return `{"type":"data","content":` + string(c) + `}`
}

func completed(n int) string {
	b, _ := json.Marshal(n)
	return `{"type":"status","status":"stream_completed","total_chunks":` + string(b) + `,"execution_time":0.01,"invocation_id":"inv-1"}`
}

func closeNormally(conn *websocket.Conn) {
	_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
}

// wantCode fails unless err is an *Error with code and returns it.
func wantCode(t *testing.T, err error, code string) *runagent.Error {
	t.Helper()
	var e *runagent.Error
	if !errors.As(err, &e) {
		t.Fatalf("error = %v (%T), want *runagent.Error with code %s", err, err, code)
	}
	if e.Code != code {
		t.Fatalf("code = %s, want %s (error: %v)", e.Code, code, err)
	}
	return e
}
