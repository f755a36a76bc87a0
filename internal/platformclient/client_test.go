package platformclient_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/platformapi"
	"github.com/runagent-go/runagent/internal/platformclient"
)

const testKey = "ra_abcdefghijkl_0123456789012345678901234567890123456789"

// recorded is one request the fake server saw.
type recorded struct {
	Method, Path, RawQuery, Auth, ContentType string
	ContentLength                             int64
	Body                                      []byte
}

// fake is a platform server answering from a table of "METHOD /path" to
// handler, recording every request.
type fake struct {
	t      *testing.T
	mu     sync.Mutex
	reqs   []recorded
	routes map[string]http.HandlerFunc
	srv    *httptest.Server
}

func newFake(t *testing.T, routes map[string]http.HandlerFunc) *fake {
	t.Helper()
	f := &fake{t: t, routes: routes}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := recorded{Method: r.Method, Path: r.URL.EscapedPath(), RawQuery: r.URL.RawQuery,
			Auth: r.Header.Get("Authorization"), ContentType: r.Header.Get("Content-Type"), ContentLength: r.ContentLength}
		h, ok := f.routes[r.Method+" "+r.URL.EscapedPath()]
		if !ok || !strings.HasPrefix(rec.ContentType, "multipart/") {
			rec.Body, _ = io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(rec.Body))
		}
		f.mu.Lock()
		f.reqs = append(f.reqs, rec)
		f.mu.Unlock()
		if !ok {
			writeError(w, 404, "NOT_FOUND", "no route "+r.Method+" "+r.URL.Path, "")
			return
		}
		h(w, r)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fake) client() *platformclient.Client {
	return platformclient.New(f.srv.URL+"/", testKey, f.srv.Client())
}

func (f *fake) last() recorded {
	f.t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reqs) == 0 {
		f.t.Fatal("no request was sent")
	}
	return f.reqs[len(f.reqs)-1]
}

func writeData(w http.ResponseWriter, data any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"success": true, "data": data, "message": nil, "error": nil,
		"timestamp": "2026-11-24T10:00:00", "request_id": "r1"})
}

func writeError(w http.ResponseWriter, status int, code, msg, field string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	e := map[string]any{"code": code, "message": msg, "details": nil, "field": nil}
	if field != "" {
		e["field"] = field
	}
	json.NewEncoder(w).Encode(map[string]any{"success": false, "data": nil, "message": nil, "error": e,
		"timestamp": "2026-11-24T10:00:00", "request_id": "r1"})
}

func data(v any) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { writeData(w, v) }
}

func TestValidateToken(t *testing.T) {
	f := newFake(t, map[string]http.HandlerFunc{
		"POST /api/v1/tokens/validate": data(map[string]any{"valid": true, "key_id": "abcdefghijkl", "name": "ops",
			"tenant": "default", "scopes": []string{"admin"}, "agents": []string{}, "user_id": 7, "user_email": nil}),
	})
	info, err := f.client().ValidateToken(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !info.Valid || info.KeyID != "abcdefghijkl" || info.Tenant != "default" || info.Scopes[0] != "admin" || info.UserID != "7" || info.UserEmail != nil {
		t.Errorf("info = %+v", info)
	}
	got := f.last()
	if got.Method != "POST" || got.Path != "/api/v1/tokens/validate" || got.RawQuery != "token="+testKey {
		t.Errorf("request = %s %s?%s", got.Method, got.Path, got.RawQuery)
	}
	if got.Auth != "Bearer "+testKey || got.ContentType != "application/json" || string(got.Body) != "{}" {
		t.Errorf("auth %q, content type %q, body %q", got.Auth, got.ContentType, got.Body)
	}
}

func TestErrors(t *testing.T) {
	f := newFake(t, map[string]http.HandlerFunc{
		"GET /api/v1/agents": func(w http.ResponseWriter, r *http.Request) {
			writeError(w, 401, "AUTHENTICATION_ERROR", "invalid or revoked API key", "")
		},
		"GET /api/v1/keys": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "3")
			writeError(w, 429, "RATE_LIMIT_EXCEEDED", "too many requests", "")
		},
		"POST /api/v1/keys": func(w http.ResponseWriter, r *http.Request) {
			writeError(w, 400, "VALIDATION_ERROR", "expected one of run, deploy, admin", "scopes[0]")
		},
		"GET /api/v1/agents/a/status": func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(502)
			io.WriteString(w, "<html>bad gateway</html>")
		},
		"GET /api/v1/agents/a": func(w http.ResponseWriter, r *http.Request) {
			// success:false with 200 is a failure too
			w.Write([]byte(`{"success":false,"data":null,"message":"agent is broken","error":null}`))
		},
	})
	c := f.client()
	ctx := context.Background()
	tests := []struct {
		call       func() error
		status     int
		code, text string
		retry      time.Duration
	}{
		{func() error { _, err := c.ListAgents(ctx); return err }, 401, "AUTHENTICATION_ERROR",
			"AUTHENTICATION_ERROR: invalid or revoked API key (HTTP 401)", 0},
		{func() error { _, err := c.ListKeys(ctx); return err }, 429, "RATE_LIMIT_EXCEEDED",
			"RATE_LIMIT_EXCEEDED: too many requests (HTTP 429, retry after 3s)", 3 * time.Second},
		{func() error {
			_, err := c.CreateKey(ctx, platformapi.KeyRequest{Name: "x", Scopes: []string{"root"}})
			return err
		}, 400, "VALIDATION_ERROR",
			"VALIDATION_ERROR: scopes[0]: expected one of run, deploy, admin (HTTP 400)", 0},
		{func() error { _, err := c.Status(ctx, "a"); return err }, 502, "", "Bad Gateway (HTTP 502)", 0},
		{func() error { _, err := c.GetAgent(ctx, "a"); return err }, 200, "", "agent is broken (HTTP 200)", 0},
	}
	for i, tt := range tests {
		err := tt.call()
		var ae *platformclient.APIError
		if !errors.As(err, &ae) {
			t.Errorf("%d: error %v (%T) is not an *APIError", i, err, err)
			continue
		}
		if ae.Status != tt.status || ae.Code != tt.code || ae.RetryAfter != tt.retry || err.Error() != tt.text {
			t.Errorf("%d: got %+v %q, want status %d code %q %q", i, ae, err.Error(), tt.status, tt.code, tt.text)
		}
	}
}

func TestDetailLines(t *testing.T) {
	for _, tt := range []struct{ details, want string }{
		{`["a.py: missing", "b: bad"]`, "a.py: missing|b: bad"},
		{`[{"field":"agent_id","message":"not a UUID"},{"message":"x"}]`, "agent_id: not a UUID|x"},
		{`"one"`, "one"},
		{`{"k":1}`, ""},
		{``, ""},
	} {
		e := &platformclient.APIError{Details: json.RawMessage(tt.details)}
		if got := strings.Join(e.DetailLines(), "|"); got != tt.want {
			t.Errorf("DetailLines(%s) = %q, want %q", tt.details, got, tt.want)
		}
	}
}

func TestUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c := platformclient.New("http://"+addr, testKey, nil)
	_, err = c.ListAgents(context.Background())
	var ue *platformclient.UnreachableError
	if !errors.As(err, &ue) {
		t.Fatalf("error %v (%T), want *UnreachableError", err, err)
	}
	want := fmt.Sprintf("the RunAgent server at http://%s is not reachable (connection refused): start it with `runagent server`, or pass --server", addr)
	if !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error = %q, want prefix %q", err, want)
	}
}

func TestUpload(t *testing.T) {
	zip := bytes.Repeat([]byte("PK\x03\x04zipdata"), 100_000) // 1.2 MB
	var gotFile []byte
	var gotAgentID, gotName, gotPartType string
	var formNames []string
	f := newFake(t, map[string]http.HandlerFunc{
		"POST /api/v1/agents/upload": func(w http.ResponseWriter, r *http.Request) {
			mr, err := r.MultipartReader()
			if err != nil {
				writeError(w, 400, "VALIDATION_ERROR", err.Error(), "")
				return
			}
			for {
				p, err := mr.NextPart()
				if err == io.EOF {
					break
				}
				if err != nil {
					writeError(w, 400, "VALIDATION_ERROR", err.Error(), "")
					return
				}
				formNames = append(formNames, p.FormName())
				b, _ := io.ReadAll(p)
				switch p.FormName() {
				case "agent_id":
					gotAgentID = string(b)
				case "file":
					gotFile, gotName, gotPartType = b, p.FileName(), p.Header.Get("Content-Type")
				}
			}
			writeData(w, map[string]any{"agent_id": "A", "version": 3, "status": "uploaded", "file_size": len(gotFile), "file_name": gotName})
		},
	})
	var mu sync.Mutex
	var calls int
	var last int64
	up, err := f.client().Upload(context.Background(), "A", bytes.NewReader(zip), int64(len(zip)), "my-agent.zip", func(sent int64) {
		mu.Lock()
		defer mu.Unlock()
		if sent < last {
			t.Errorf("progress went back from %d to %d", last, sent)
		}
		calls++
		last = sent
	})
	if err != nil {
		t.Fatal(err)
	}
	if *up != (platformapi.Upload{AgentID: "A", Version: 3, Status: "uploaded", FileSize: int64(len(zip)), FileName: "my-agent.zip"}) {
		t.Errorf("upload = %+v", up)
	}
	if !bytes.Equal(gotFile, zip) || gotAgentID != "A" || gotPartType != "application/zip" || strings.Join(formNames, ",") != "agent_id,file" {
		t.Errorf("server got agent_id %q, %d file bytes, type %q, parts %v", gotAgentID, len(gotFile), gotPartType, formNames)
	}
	if calls < 2 || last != int64(len(zip)) {
		t.Errorf("progress called %d times, last %d, want several ending at %d", calls, last, len(zip))
	}
	got := f.last()
	if got.Path != "/api/v1/agents/upload" || got.Auth != "Bearer "+testKey || !strings.HasPrefix(got.ContentType, "multipart/form-data; boundary=") {
		t.Errorf("request = %+v", got)
	}
	if got.ContentLength <= int64(len(zip)) {
		t.Errorf("Content-Length = %d, want the exact multipart length", got.ContentLength)
	}

	// Without an agent id and with an unknown size: no agent_id field, chunked.
	formNames = nil
	if _, err := f.client().Upload(context.Background(), "", bytes.NewReader(zip[:10]), -1, "b.zip", nil); err != nil {
		t.Fatal(err)
	}
	if strings.Join(formNames, ",") != "file" || f.last().ContentLength != -1 {
		t.Errorf("parts %v, Content-Length %d", formNames, f.last().ContentLength)
	}

	// A size that does not match the reader fails instead of sending garbage.
	if _, err := f.client().Upload(context.Background(), "A", bytes.NewReader(zip[:10]), 20, "b.zip", nil); err == nil {
		t.Error("a short body did not fail")
	}
}

func TestAgentsAndKeys(t *testing.T) {
	f := newFake(t, map[string]http.HandlerFunc{
		"POST /api/v1/agents/A%2FB/start": data(map[string]any{"agent_id": "A/B", "version": 2, "status": "deployed", "endpoint": "/agents/A/B", "url": "http://x/api/v1/agents/A/B"}),
		"GET /api/v1/agents/A/status": data(map[string]any{"agent_id": "A", "name": "n", "status": "running", "active_version": 2,
			"latest_version": 3, "instances": map[string]int{"starting": 1, "ready": 2, "draining": 0}, "error": nil}),
		"GET /api/v1/agents": data(map[string]any{"agents": []map[string]any{{"agent_id": "A", "name": "n", "framework": "langgraph",
			"status": "running", "active_version": 2, "created_at": "2026-11-24T10:00:00Z", "updated_at": "2026-11-24T11:00:00Z"}}}),
		"GET /api/v1/agents/A": data(map[string]any{"agent_id": "A", "name": "n", "active_version": 2,
			"entrypoints": []map[string]any{{"file": "main.py", "module": "run", "tag": "minimal"}},
			"versions":    []map[string]any{{"version": 1, "status": "retired", "uploaded_at": "t1", "error": nil}, {"version": 2, "status": "active", "uploaded_at": "t2"}},
			"limits":      map[string]any{"max_instances": 4}, "pool": map[string]any{"ready": 1}}),
		"DELETE /api/v1/agents/A": data(map[string]any{"agent_id": "A", "deleted": true}),
		"POST /api/v1/keys": func(w http.ResponseWriter, r *http.Request) {
			var req map[string]any
			json.NewDecoder(r.Body).Decode(&req)
			writeData(w, map[string]any{"id": "k1", "name": req["name"], "tenant": "default", "scopes": req["scopes"], "agents": req["agents"],
				"rate_per_second": req["rate_per_second"], "burst": nil, "max_concurrency": nil, "created_at": "t", "revoked_at": nil, "key": "ra_k1_secret"})
		},
		"GET /api/v1/keys": data(map[string]any{"keys": []map[string]any{{"id": "k1", "name": "a", "tenant": "t", "scopes": []string{"run"},
			"agents": []string{"A"}, "rate_per_second": 2.5, "burst": 5, "max_concurrency": nil, "created_at": "c", "revoked_at": "r", "last_used_at": nil}}}),
		"DELETE /api/v1/keys/k1": data(map[string]any{"id": "k1", "revoked": true}),
	})
	c, ctx := f.client(), context.Background()

	d, err := c.Start(ctx, "A/B")
	if err != nil || d.Version != 2 || d.Status != "deployed" || d.URL != "http://x/api/v1/agents/A/B" {
		t.Errorf("Start = %+v, %v", d, err)
	}
	if r := f.last(); r.Method != "POST" || r.Path != "/api/v1/agents/A%2FB/start" || string(r.Body) != "{}" {
		t.Errorf("start request = %+v", r)
	}

	st, err := c.Status(ctx, "A")
	if err != nil || st.ActiveVersion != 2 || st.LatestVersion != 3 || st.Instances != (platformapi.Instances{Starting: 1, Ready: 2}) {
		t.Errorf("Status = %+v, %v", st, err)
	}

	agents, err := c.ListAgents(ctx)
	if err != nil || len(agents) != 1 || agents[0].Framework != "langgraph" || agents[0].UpdatedAt != "2026-11-24T11:00:00Z" {
		t.Errorf("ListAgents = %+v, %v", agents, err)
	}

	ag, err := c.GetAgent(ctx, "A")
	if err != nil || ag.AgentID != "A" || ag.Entrypoints[0].Fields().Tag != "minimal" || len(ag.Versions) != 2 || ag.Versions[1].Status != "active" || ag.Limits.MaxInstances != 4 {
		t.Errorf("GetAgent = %+v, %v", ag, err)
	}

	if err := c.DeleteAgent(ctx, "A"); err != nil {
		t.Error(err)
	}
	if r := f.last(); r.Method != "DELETE" || r.Path != "/api/v1/agents/A" || len(r.Body) != 0 {
		t.Errorf("delete request = %+v", r)
	}

	rate := 2.5
	k, err := c.CreateKey(ctx, platformapi.KeyRequest{Name: "ci", Scopes: []string{"run", "deploy"}, RatePerSecond: &rate})
	if err != nil || k.Key != "ra_k1_secret" || k.ID != "k1" || k.RatePerSecond != 2.5 || k.Burst != 0 {
		t.Errorf("CreateKey = %+v, %v", k, err)
	}
	if body := string(f.last().Body); body != `{"name":"ci","scopes":["run","deploy"],"agents":[],"rate_per_second":2.5}` {
		t.Errorf("create key body = %s", body)
	}

	keys, err := c.ListKeys(ctx)
	if err != nil || len(keys) != 1 || keys[0].Burst != 5 || keys[0].MaxConcurrency != 0 || *keys[0].RevokedAt != "r" {
		t.Errorf("ListKeys = %+v, %v", keys, err)
	}

	if err := c.RevokeKey(ctx, "k1"); err != nil {
		t.Error(err)
	}
	if r := f.last(); r.Method != "DELETE" || r.Path != "/api/v1/keys/k1" {
		t.Errorf("revoke request = %+v", r)
	}
}

func TestInvocations(t *testing.T) {
	rec := map[string]any{"invocation_id": "I1", "agent_id": "A", "input_data": map[string]any{"input_args": []any{}, "input_kwargs": map[string]any{"m": "hi"}},
		"output_data": "ok", "error_detail": nil, "request_timestamp": "2026-11-24T10:00:00.123456", "response_timestamp": nil,
		"execution_time_ms": nil, "status": "pending", "entrypoint_tag": "minimal", "sdk_type": "go", "client_info": nil}
	f := newFake(t, map[string]http.HandlerFunc{
		// The wire invocation routes answer without an envelope; the client takes both.
		"GET /api/v1/invocations/I1": func(w http.ResponseWriter, r *http.Request) { json.NewEncoder(w).Encode(rec) },
		"GET /api/v1/invocations":    data(map[string]any{"invocations": []any{rec}, "total_count": 7}),
	})
	c, ctx := f.client(), context.Background()
	inv, err := c.GetInvocation(ctx, "I1")
	if err != nil || inv.InvocationID != "I1" || string(inv.OutputData) != `"ok"` || inv.ResponseTimestamp != nil || string(inv.InputData.InputKwargs) != `{"m":"hi"}` {
		t.Errorf("GetInvocation = %+v, %v", inv, err)
	}
	list, err := c.ListInvocations(ctx, "A", "failed", 5)
	if err != nil || list.TotalCount != 7 || len(list.Invocations) != 1 {
		t.Errorf("ListInvocations = %+v, %v", list, err)
	}
	if q := f.last().RawQuery; q != "agent_id=A&limit=5&status=failed" {
		t.Errorf("query = %q", q)
	}
	if _, err := c.ListInvocations(ctx, "", "", 0); err != nil {
		t.Fatal(err)
	}
	if q := f.last().RawQuery; q != "" {
		t.Errorf("query without filters = %q", q)
	}
}

func TestLogs(t *testing.T) {
	f := newFake(t, map[string]http.HandlerFunc{
		"GET /api/v1/agents/A/logs": func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Query().Get("follow") != "true" {
				writeData(w, map[string]any{"agent_id": "A", "next_after": 12, "logs": []map[string]any{
					{"seq": 12, "time": "2026-11-24T10:00:00.123Z", "version": 3, "instance": 2, "invocation_id": nil, "stream": "stdout", "line": "hi"}}})
				return
			}
			w.Header().Set("Content-Type", "application/x-ndjson")
			for i := 1; i <= 3; i++ {
				fmt.Fprintf(w, `{"seq":%d,"time":"t","version":1,"instance":"inst-1","invocation_id":"I","stream":"stderr","line":"l%d"}`+"\n", 10+i, i)
				w.(http.Flusher).Flush()
			}
		},
	})
	c, ctx := f.client(), context.Background()
	page, err := c.Logs(ctx, "A", "I9", 11, 100)
	if err != nil || page.NextAfter != 12 || len(page.Logs) != 1 || page.Logs[0].Instance != "2" || page.Logs[0].InvocationID != "" || page.Logs[0].Line != "hi" {
		t.Errorf("Logs = %+v, %v", page, err)
	}
	if q := f.last().RawQuery; q != "after=11&invocation_id=I9&limit=100" {
		t.Errorf("query = %q", q)
	}

	var lines []string
	err = c.FollowLogs(ctx, "A", 10, func(l platformapi.LogLine) error {
		lines = append(lines, fmt.Sprintf("%d %s %s %s", l.Seq, l.Instance, l.Stream, l.Line))
		return nil
	})
	if err != nil || strings.Join(lines, "|") != "11 inst-1 stderr l1|12 inst-1 stderr l2|13 inst-1 stderr l3" {
		t.Errorf("FollowLogs = %q, %v", lines, err)
	}
	if q := f.last().RawQuery; q != "after=10&follow=true" {
		t.Errorf("follow query = %q", q)
	}

	stop := errors.New("stop")
	n := 0
	err = c.FollowLogs(ctx, "A", 0, func(platformapi.LogLine) error { n++; return stop })
	if !errors.Is(err, stop) || n != 1 {
		t.Errorf("FollowLogs with a failing fn = %v after %d lines", err, n)
	}
}

func TestFollowLogsEndsWithContext(t *testing.T) {
	f := newFake(t, map[string]http.HandlerFunc{
		"GET /api/v1/agents/A/logs": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/x-ndjson")
			io.WriteString(w, `{"seq":1,"line":"first"}`+"\n")
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	err := f.client().FollowLogs(ctx, "A", 0, func(l platformapi.LogLine) error {
		cancel() // like Ctrl-C after the first line
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("FollowLogs after cancel = %v, want context.Canceled", err)
	}

	f2 := newFake(t, map[string]http.HandlerFunc{
		"GET /api/v1/agents/A/logs": func(w http.ResponseWriter, r *http.Request) {
			writeError(w, 403, "PERMISSION_ERROR", "key may not read agent A", "")
		},
	})
	err = f2.client().FollowLogs(context.Background(), "A", 0, func(platformapi.LogLine) error { return nil })
	var ae *platformclient.APIError
	if !errors.As(err, &ae) || ae.Code != "PERMISSION_ERROR" {
		t.Errorf("FollowLogs refused = %v", err)
	}
}
