package e2e

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	_ "modernc.org/sqlite"
)

func defaultServer(t testing.TB) *agentServer {
	t.Helper()
	dir, id := newAgent(t, "default")
	return serve(t, dir, id, serveOpts{args: []string{"--max-body", "65536"}})
}

// The official SDKs' view of the wire contract, checked by the shared tool
// when it is beside the repository (wireChecker).
func TestWireContractCheck(t *testing.T) {
	checker, ok := wireChecker(t)
	if !ok {
		t.Skipf("the shared wire checker is not at %s: the official SDKs' wire check is skipped", checker)
	}
	s := defaultServer(t)
	out, err := exec.Command("python3", checker, s.Addr, s.AgentID).CombinedOutput()
	if err != nil {
		t.Fatalf("check_wire.py failed: %v\n%s\nserver log:\n%s", err, out, s.Logs())
	}
	if !strings.Contains(string(out), " 0 failed") {
		t.Fatalf("check_wire.py: %s", out)
	}
}

func TestRunAndErrorEnvelopes(t *testing.T) {
	s := defaultServer(t)
	run := "/api/v1/agents/" + s.AgentID + "/run"

	v := s.result(t, "minimal", nil, map[string]any{"message": "Hello there", "role": "user"})
	if str, ok := v.(string); !ok || str == "" {
		t.Fatalf("minimal returned %#v, want a non-empty string", v)
	}
	// What the agent printed is in the server's log, with the invocation's id.
	_, body := s.get(t, "/api/v1/agents/"+s.AgentID+"/invocations?limit=1")
	var last struct {
		Invocations []struct {
			ID string `json:"invocation_id"`
		} `json:"invocations"`
	}
	json.Unmarshal(body, &last)
	if len(last.Invocations) != 1 || !waitFor(func() bool {
		return strings.Contains(s.Logs(), "invocation_id="+last.Invocations[0].ID) && strings.Contains(s.Logs(), "mock_response:")
	}) {
		t.Errorf("the agent's print is not in the log with its invocation id:\n%s", s.Logs())
	}

	// Positional arguments reach the function too.
	if v := s.result(t, "minimal", []any{"positional hello"}, nil); v == "" {
		t.Fatalf("minimal with a positional arg returned %#v", v)
	}

	tests := []struct {
		name    string
		body    any
		status  int
		code    string
		success bool
		msgHas  []string
		field   string
		path    string
	}{
		{name: "unknown tag", body: map[string]any{"entrypoint_tag": "nope"}, status: 404, code: "NOT_FOUND", msgHas: []string{"Entrypoint nope not found"}},
		{name: "stream tag on /run", body: map[string]any{"entrypoint_tag": "minimal_stream"}, status: 400, code: "VALIDATION_ERROR", msgHas: []string{"Streaming Entrypoint `minimal_stream`"}},
		{name: "agent raised", body: map[string]any{"entrypoint_tag": "minimal", "input_kwargs": map[string]any{"bogus_kw": 1}}, status: 200, code: "INTERNAL_ERROR",
			msgHas: []string{"Agent execution failed: Server error running agent " + s.AgentID + ": ", "unexpected keyword argument 'bogus_kw'"}},
		{name: "malformed JSON", body: "{not json", status: 400, code: "VALIDATION_ERROR", msgHas: []string{"not valid JSON", "at byte"}},
		{name: "empty body", body: "", status: 400, code: "VALIDATION_ERROR", msgHas: []string{"request body is empty"}},
		{name: "body not an object", body: "[1,2]", status: 400, code: "VALIDATION_ERROR", msgHas: []string{"must be a JSON object, got an array"}},
		{name: "missing tag", body: map[string]any{"input_args": []any{}}, status: 400, code: "VALIDATION_ERROR", field: "entrypoint_tag", msgHas: []string{"required"}},
		{name: "tag not a string", body: map[string]any{"entrypoint_tag": 5}, status: 400, code: "VALIDATION_ERROR", field: "entrypoint_tag", msgHas: []string{"expected a string, got a number"}},
		{name: "args not a list", body: map[string]any{"entrypoint_tag": "minimal", "input_args": map[string]any{}}, status: 400, code: "VALIDATION_ERROR", field: "input_args", msgHas: []string{"expected a list, got an object"}},
		{name: "kwargs not an object", body: map[string]any{"entrypoint_tag": "minimal", "input_kwargs": []any{1}}, status: 400, code: "VALIDATION_ERROR", field: "input_kwargs", msgHas: []string{"expected an object, got a list"}},
		{name: "too large", body: `{"entrypoint_tag":"minimal","input_kwargs":{"message":"` + strings.Repeat("x", 70000) + `"}}`, status: 413, code: "VALIDATION_ERROR", msgHas: []string{"larger than the limit of 64 KiB"}},
		{name: "other agent", path: "/api/v1/agents/00000000-0000-0000-0000-000000000001/run", body: map[string]any{"entrypoint_tag": "minimal"}, status: 404, code: "NOT_FOUND", msgHas: []string{"Agent 00000000-0000-0000-0000-000000000001 not found"}},
		{name: "extra SDK fields", body: map[string]any{"entrypoint_tag": "minimal", "input_kwargs": map[string]any{"message": "x"}, "timeout_seconds": 300, "async_execution": false, "user_id": "u", "persistent_memory": false, "id": "run_start"}, status: 200, success: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := run
			if tt.path != "" {
				path = tt.path
			}
			st, env, raw := s.post(t, path, tt.body)
			if st != tt.status || env.Success != tt.success {
				t.Fatalf("status %d success %v, want %d %v: %s", st, env.Success, tt.status, tt.success, raw)
			}
			for _, k := range []string{`"success"`, `"data"`, `"message"`, `"error"`, `"timestamp"`, `"request_id"`} {
				if !strings.Contains(string(raw), k) {
					t.Errorf("envelope lacks %s: %s", k, raw)
				}
			}
			if tt.success {
				return
			}
			if env.Error == nil || env.Error.Code != tt.code || !contains(env.Error.Message, tt.msgHas...) {
				t.Fatalf("error = %s, want code %s and message with %q", raw, tt.code, tt.msgHas)
			}
			if tt.field != "" && (env.Error.Field == nil || *env.Error.Field != tt.field) {
				t.Fatalf("error.field = %v, want %s", env.Error.Field, tt.field)
			}
		})
	}
}

func TestInfoRoutesAndCORS(t *testing.T) {
	s := defaultServer(t)
	st, body := s.get(t, "/api/v1/health")
	var health map[string]any
	json.Unmarshal(body, &health)
	for _, k := range []string{"status", "server", "timestamp", "uptime_seconds", "version", "agent_id", "agent_name", "framework"} {
		if _, ok := health[k]; !ok {
			t.Errorf("health lacks %q: %s", k, body)
		}
	}
	if st != 200 || health["status"] != "healthy" || health["agent_id"] != s.AgentID || health["runner"] != "ready" {
		t.Fatalf("health = %d %s", st, body)
	}

	st, body = s.get(t, "/api/v1")
	var info map[string]any
	json.Unmarshal(body, &info)
	cfg, _ := info["config"].(map[string]any)
	if st != 200 || cfg == nil || cfg["agent_id"] != s.AgentID || info["message"] == nil || info["endpoints"] == nil {
		t.Fatalf("GET /api/v1 = %d %s", st, body)
	}
	if _, leaked := cfg["env_vars"]; leaked {
		t.Fatalf("GET /api/v1 exposes env_vars: %s", body)
	}

	st, body = s.get(t, "/api/v1/agents/"+s.AgentID+"/architecture")
	var arch struct {
		Success bool
		Data    struct {
			AgentID     string `json:"agent_id"`
			Entrypoints []map[string]any
		}
	}
	json.Unmarshal(body, &arch)
	if st != 200 || !arch.Success || arch.Data.AgentID != s.AgentID || len(arch.Data.Entrypoints) != 2 {
		t.Fatalf("architecture = %d %s", st, body)
	}
	for _, ep := range arch.Data.Entrypoints {
		for _, k := range []string{"file", "module", "tag", "extractor"} {
			if _, ok := ep[k]; !ok {
				t.Errorf("architecture entrypoint lacks %q: %v", k, ep)
			}
		}
	}

	req, _ := http.NewRequest(http.MethodOptions, s.URL("/api/v1/agents/"+s.AgentID+"/run"), nil)
	req.Header.Set("Origin", "http://app.example")
	req.Header.Set("Access-Control-Request-Method", "POST")
	req.Header.Set("Access-Control-Request-Headers", "authorization, content-type")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Access-Control-Allow-Origin") != "http://app.example" ||
		!strings.Contains(resp.Header.Get("Access-Control-Allow-Methods"), "POST") ||
		resp.Header.Get("Access-Control-Allow-Headers") != "authorization, content-type" {
		t.Fatalf("CORS preflight: %d %v", resp.StatusCode, resp.Header)
	}
}

// wsFrames streams tag and returns every frame and the close code.
func wsFrames(t testing.TB, s *agentServer, first any) ([]map[string]any, int) {
	t.Helper()
	c, _, err := websocket.DefaultDialer.Dial("ws://"+s.Addr+"/api/v1/agents/"+s.AgentID+"/run-stream", nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	if str, ok := first.(string); ok {
		c.WriteMessage(websocket.TextMessage, []byte(str))
	} else {
		c.WriteJSON(first)
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	var frames []map[string]any
	for {
		_, msg, err := c.ReadMessage()
		if err != nil {
			if ce, ok := err.(*websocket.CloseError); ok {
				return frames, ce.Code
			}
			t.Fatalf("read after %d frames: %v", len(frames), err)
		}
		var f map[string]any
		if err := json.Unmarshal(msg, &f); err != nil {
			t.Fatalf("frame is not JSON: %q", msg)
		}
		frames = append(frames, f)
	}
}

func TestStreamFrames(t *testing.T) {
	s := defaultServer(t)
	frames, code := wsFrames(t, s, map[string]any{"entrypoint_tag": "minimal_stream", "input_args": []any{}, "input_kwargs": map[string]any{"message": "stream me please"}})
	if len(frames) < 3 || frames[0]["status"] != "stream_started" || frames[len(frames)-1]["status"] != "stream_completed" || code != websocket.CloseNormalClosure {
		t.Fatalf("frames %v close %d", frames, code)
	}
	var text strings.Builder
	for _, f := range frames[1 : len(frames)-1] {
		if f["type"] != "data" {
			t.Fatalf("middle frame %v is not data", f)
		}
		typ, v := decodeStructured(t, f["content"].(string))
		if typ != "string" {
			t.Fatalf("chunk type %s", typ)
		}
		text.WriteString(v.(string))
	}
	last := frames[len(frames)-1]
	if int(last["total_chunks"].(float64)) != len(frames)-2 || last["invocation_id"] != frames[0]["invocation_id"] || last["execution_time"] == nil {
		t.Fatalf("stream_completed = %v (data frames %d)", last, len(frames)-2)
	}
	if text.Len() == 0 {
		t.Fatal("stream produced no text")
	}

	rejects := []struct {
		name   string
		first  any
		detail string
		code   string
	}{
		{"unknown tag", map[string]any{"entrypoint_tag": "nope_stream", "input_args": []any{}, "input_kwargs": map[string]any{}}, "Entrypoint nope_stream not found", "NOT_FOUND"},
		{"not a stream tag", map[string]any{"entrypoint_tag": "minimal", "input_args": []any{}, "input_kwargs": map[string]any{}}, "is not a streaming entrypoint", "VALIDATION_ERROR"},
		{"missing field", map[string]any{"entrypoint_tag": "minimal_stream", "input_args": []any{}}, "Missing required field: input_kwargs", "VALIDATION_ERROR"},
		{"invalid JSON", "{nope", "Invalid JSON format", "VALIDATION_ERROR"},
		{"args not a list", map[string]any{"entrypoint_tag": "minimal_stream", "input_args": "x", "input_kwargs": map[string]any{}}, "input_args: expected a list, got a string", "VALIDATION_ERROR"},
	}
	for _, tt := range rejects {
		t.Run(tt.name, func(t *testing.T) {
			frames, code := wsFrames(t, s, tt.first)
			if len(frames) != 1 || frames[0]["type"] != "error" || !strings.Contains(fmt.Sprint(frames[0]["detail"]), tt.detail) ||
				frames[0]["code"] != tt.code || code != websocket.CloseUnsupportedData {
				t.Fatalf("frames %v close %d; want one error frame with %q (%s) and close 1003", frames, code, tt.detail, tt.code)
			}
		})
	}

	// The agent raising mid-stream: an error frame, after the chunks so far.
	frames, _ = wsFrames(t, s, map[string]any{"entrypoint_tag": "minimal_stream", "input_args": []any{}, "input_kwargs": map[string]any{"bogus": 1}})
	lastF := frames[len(frames)-1]
	if lastF["type"] != "error" || !strings.HasPrefix(fmt.Sprint(lastF["error"]), "Streaming error: ") {
		t.Fatalf("agent error mid-stream: %v", frames)
	}
}

func TestConcurrentCallsAndHistory(t *testing.T) {
	s := defaultServer(t)
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			st, env := s.run(t, "minimal", nil, map[string]any{"message": fmt.Sprintf("call %d", i)})
			if st != 200 || !env.Success {
				errs <- fmt.Sprintf("call %d: %d %+v", i, st, env.Error)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	s.run(t, "minimal", nil, map[string]any{"oops": true}) // one failure

	st, body := s.get(t, "/api/v1/agents/"+s.AgentID+"/invocations?limit=500")
	var list struct {
		AgentID     string           `json:"agent_id"`
		Invocations []map[string]any `json:"invocations"`
		TotalCount  int              `json:"total_count"`
	}
	json.Unmarshal(body, &list)
	if st != 200 || list.TotalCount != n+1 || len(list.Invocations) != n+1 {
		t.Fatalf("invocations: %d total_count %d", st, list.TotalCount)
	}
	newest := list.Invocations[0]
	for _, k := range []string{"invocation_id", "agent_id", "input_data", "output_data", "error_detail", "request_timestamp", "response_timestamp", "execution_time_ms", "status", "entrypoint_tag", "sdk_type", "client_info"} {
		if _, ok := newest[k]; !ok {
			t.Errorf("invocation record lacks %q: %v", k, newest)
		}
	}
	if newest["status"] != "failed" || !strings.Contains(fmt.Sprint(newest["error_detail"]), "oops") {
		t.Errorf("newest invocation = %v, want the failed one", newest)
	}

	st, body = s.get(t, "/api/v1/agents/"+s.AgentID+"/invocations?status=failed")
	json.Unmarshal(body, &list)
	if st != 200 || list.TotalCount != 1 {
		t.Fatalf("failed invocations: %d %s", st, body)
	}
	st, body = s.get(t, "/api/v1/agents/"+s.AgentID+"/invocations?limit=abc")
	if st != 400 || !strings.Contains(string(body), "limit") {
		t.Fatalf("bad limit: %d %s", st, body)
	}

	st, body = s.get(t, "/api/v1/agents/"+s.AgentID+"/invocations/stats")
	var stats struct {
		Stats map[string]any `json:"stats"`
	}
	json.Unmarshal(body, &stats)
	if st != 200 || stats.Stats["total_invocations"] != float64(n+1) || stats.Stats["failed_invocations"] != float64(1) || stats.Stats["completed_invocations"] != float64(n) {
		t.Fatalf("stats: %d %s", st, body)
	}

	id := fmt.Sprint(newest["invocation_id"])
	st, body = s.get(t, "/api/v1/invocations/"+id)
	if st != 200 || !strings.Contains(string(body), id) {
		t.Fatalf("invocation %s: %d %s", id, st, body)
	}
	st, body = s.get(t, "/api/v1/invocations/00000000-0000-0000-0000-000000000000")
	if st != 404 || !strings.Contains(string(body), "NOT_FOUND") {
		t.Fatalf("missing invocation: %d %s", st, body)
	}
}

// The local registry row that official SDKs read for local=true discovery,
// scanned the way the official Go SDK scans it.
func TestLocalRegistryRow(t *testing.T) {
	s := defaultServer(t)
	s.result(t, "minimal", nil, map[string]any{"message": "count me"})
	db, err := sql.Open("sqlite", filepath.Join(s.Cache, "runagent_local.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var (
		agentID, agentPath, host, framework, status string
		port                                        int
		deployedAt, createdAt, updatedAt            time.Time
		lastRun                                     sql.NullTime
		runCount, successCount, errorCount          int64
	)
	err = db.QueryRow(`SELECT agent_id, agent_path, host, port, framework, status,
		deployed_at, last_run, run_count, success_count, error_count,
		created_at, updated_at FROM agents WHERE agent_id = ?`, s.AgentID).Scan(
		&agentID, &agentPath, &host, &port, &framework, &status, &deployedAt, &lastRun,
		&runCount, &successCount, &errorCount, &createdAt, &updatedAt)
	if err != nil {
		t.Fatalf("scan the registry row like the official Go SDK: %v", err)
	}
	if fmt.Sprintf("%s:%d", host, port) != s.Addr || framework != "default" || deployedAt.IsZero() {
		t.Fatalf("registry row: host %s port %d framework %s deployed %v", host, port, framework, deployedAt)
	}
}

// waitFor polls cond for up to five seconds.
func waitFor(cond func() bool) bool {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}
