package e2e

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// sseEvent is one Server-Sent Event.
type sseEvent struct {
	ID, Event, Data string
}

// readSSE reads events until the stream ends (or stop says so).
func readSSE(r io.Reader, stop func(sseEvent) bool) (events []sseEvent, comments int, err error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	var cur sseEvent
	var data []string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if cur.Event != "" || len(data) > 0 {
				cur.Data = strings.Join(data, "\n")
				events = append(events, cur)
				if stop != nil && stop(cur) {
					return events, comments, nil
				}
			}
			cur, data = sseEvent{}, nil
		case strings.HasPrefix(line, ":"):
			comments++
		case strings.HasPrefix(line, "id: "):
			cur.ID = line[4:]
		case strings.HasPrefix(line, "event: "):
			cur.Event = line[7:]
		case strings.HasPrefix(line, "data: "):
			data = append(data, line[6:])
		}
	}
	return events, comments, sc.Err()
}

func postSSE(t testing.TB, base, agent, key, tag string, kwargs map[string]any, accept string) *http.Response {
	t.Helper()
	b, _ := json.Marshal(runBody(tag, kwargs))
	req, _ := http.NewRequest("POST", base+"/api/v1/agents/"+agent+"/run-stream", strings.NewReader(string(b)))
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// idleCutProxy forwards TCP to target and cuts a connection on which
// nothing has passed for idle, as proxies and load balancers do.
func idleCutProxy(t testing.TB, target string, idle time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer up.Close()
				var once sync.Once
				done := make(chan struct{})
				pipe := func(dst, src net.Conn) {
					buf := make([]byte, 32<<10)
					for {
						src.SetReadDeadline(time.Now().Add(idle))
						n, err := src.Read(buf)
						if n > 0 {
							dst.Write(buf[:n])
						}
						if err != nil {
							once.Do(func() { close(done) })
							return
						}
					}
				}
				// The cut counts silence in the server's direction: a
				// client reading a stream sends nothing.
				go pipe(up, &quietConn{Conn: c})
				go pipe(c, up)
				<-done
			}()
		}
	}()
	return ln.Addr().String()
}

// quietConn reads without a deadline: only the server's silence counts.
type quietConn struct{ net.Conn }

func (q *quietConn) SetReadDeadline(time.Time) error { return nil }

// The SSE route of runagent serve: chunks with ids, then done; an error
// mid-stream as an event, one before the first chunk as the wire
// envelope; a client that goes away stops the generator; heartbeats keep
// a quiet stream alive through a proxy that cuts idle connections.
func TestSSEStream(t *testing.T) {
	dir, id := newAgent(t, "showcase")
	s := serve(t, dir, id, serveOpts{args: []string{"--stream-heartbeat", "200ms"}})
	base := "http://" + s.Addr

	resp := postSSE(t, base, id, "", "count_stream", map[string]any{"n": 3}, "text/event-stream")
	events, _, err := readSSE(resp.Body, nil)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" ||
		!strings.HasPrefix(resp.Header.Get("Content-Location"), "/api/v1/runs/") {
		t.Fatalf("a stream: %d %v %v", resp.StatusCode, resp.Header, err)
	}
	want := []sseEvent{{"", "start", ""}, {"0", "chunk", `{"i": 0}`}, {"1", "chunk", `{"i": 1}`}, {"2", "chunk", `{"i": 2}`}, {"", "done", ""}}
	if len(events) != len(want) {
		t.Fatalf("events: %+v", events)
	}
	for i, e := range events {
		if e.ID != want[i].ID || e.Event != want[i].Event || (want[i].Data != "" && strings.ReplaceAll(e.Data, " ", "") != strings.ReplaceAll(want[i].Data, " ", "")) {
			t.Errorf("event %d: %+v, want %+v", i, e, want[i])
		}
	}
	var done struct {
		TotalChunks  int    `json:"total_chunks"`
		InvocationID string `json:"invocation_id"`
	}
	json.Unmarshal([]byte(events[4].Data), &done)
	if done.TotalChunks != 3 || "/api/v1/runs/"+done.InvocationID != resp.Header.Get("Content-Location") {
		t.Errorf("done: %s (Content-Location %s)", events[4].Data, resp.Header.Get("Content-Location"))
	}

	// An error after two chunks ends the stream with an error event.
	resp = postSSE(t, base, id, "", "fail_stream", map[string]any{"after": 2}, "")
	events, _, _ = readSSE(resp.Body, nil)
	resp.Body.Close()
	if n := len(events); n != 4 || events[3].Event != "error" || !strings.Contains(events[3].Data, `"code":"INTERNAL_ERROR"`) {
		t.Fatalf("a stream failing after two chunks: %+v", events)
	}
	// Before the first chunk: the wire envelope with its status.
	for _, c := range []struct {
		tag    string
		kwargs map[string]any
		accept string
		status int
		code   string
	}{
		{"fail_stream", map[string]any{"after": 0}, "text/event-stream", 500, "INTERNAL_ERROR"},
		{"no_such_stream", nil, "text/event-stream", 404, "NOT_FOUND"},
		{"echo", nil, "text/event-stream", 400, "VALIDATION_ERROR"},
		{"count_stream", nil, "application/json", 406, "VALIDATION_ERROR"},
	} {
		resp := postSSE(t, base, id, "", c.tag, c.kwargs, c.accept)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var env envelope
		json.Unmarshal(b, &env)
		if resp.StatusCode != c.status || env.Error == nil || env.Error.Code != c.code {
			t.Errorf("%s (Accept %s): %d %s, want %d %s", c.tag, c.accept, resp.StatusCode, b, c.status, c.code)
		}
	}

	// A client that goes away stops the generator (its finally runs).
	ticks := filepath.Join(t.TempDir(), "ticks")
	resp = postSSE(t, base, id, "", "tick_stream", map[string]any{"path": ticks, "interval": 0.05}, "text/event-stream")
	readSSE(resp.Body, func(e sseEvent) bool { return e.ID == "2" })
	resp.Body.Close()
	pollUntil(10*time.Second, func() bool { b, _ := os.ReadFile(ticks); return strings.Contains(string(b), "cancelled") })
	if b, _ := os.ReadFile(ticks); !strings.Contains(string(b), "cancelled") {
		t.Fatalf("the generator after its client left: %q", b)
	}

	// Through a proxy that cuts 1 s of silence: a stream with 1.5 s
	// between chunks lives on heartbeats, and dies without them.
	quiet := map[string]any{"n": 3, "interval": 1.5, "path": filepath.Join(t.TempDir(), "quiet")}
	resp = postSSE(t, "http://"+idleCutProxy(t, s.Addr, time.Second), id, "", "tick_stream", quiet, "text/event-stream")
	events, comments, _ := readSSE(resp.Body, nil)
	resp.Body.Close()
	if len(events) != 5 || events[4].Event != "done" || comments < 3 {
		t.Fatalf("a quiet stream through an idle-cutting proxy, with heartbeats: %d events %+v, %d heartbeats", len(events), events, comments)
	}
	bare := serve(t, dir, id, serveOpts{cache: s.Cache, args: []string{"--stream-heartbeat", "0"}})
	quiet["path"] = filepath.Join(t.TempDir(), "quiet2")
	resp = postSSE(t, "http://"+idleCutProxy(t, bare.Addr, time.Second), id, "", "tick_stream", quiet, "text/event-stream")
	events, _, _ = readSSE(resp.Body, nil)
	resp.Body.Close()
	if len(events) > 0 && events[len(events)-1].Event == "done" {
		t.Fatalf("without heartbeats the proxy let the quiet stream through: %+v (the test proves nothing)", events)
	}
}
