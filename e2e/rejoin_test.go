package e2e

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

func getRunStream(t testing.TB, base, runID, key, lastID string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("GET", base+"/api/v1/runs/"+runID+"/stream", nil)
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Authorization", "Bearer "+key)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func postContinue(t testing.TB, s *platformServer, agent, tag string, kwargs map[string]any) *http.Response {
	t.Helper()
	body := runBody(tag, kwargs)
	body["on_disconnect"] = "continue"
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", "http://"+s.Addr+"/api/v1/agents/"+agent+"/run-stream", strings.NewReader(string(b)))
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Authorization", "Bearer "+s.Admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// A stream with "on_disconnect": "continue" outlives its client: dropped
// at random points 100 times and re-joined with the last event id each
// time, the chunks read add up to one uninterrupted stream's, none lost
// and none twice; it can be cancelled while no client reads it; a plain
// stream has no log to re-join.
func TestPlatformRejoinStream(t *testing.T) {
	s := startPlatform(t, "", 0)
	dir, _ := newAgent(t, "showcase")
	id := s.deploy(t, dir, s.Admin)
	base := "http://" + s.Addr
	// A key without the default rate limit: the test re-joins fast.
	key := s.createKey(t, map[string]any{"name": "rejoin", "scopes": []string{"run"}, "rate_per_second": 10000, "burst": 10000})

	const total = 1000 // 100 re-joins of 1 to 8 chunks each end well before it
	resp := postContinue(t, s, id, "count_stream", map[string]any{"n": total, "delay": 0.005})
	loc := resp.Header.Get("Content-Location")
	runID := strings.TrimPrefix(loc, "/api/v1/runs/")
	if resp.StatusCode != 200 || runID == "" || runID == loc {
		t.Fatalf("a continuing stream: %d %v", resp.StatusCode, resp.Header)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var chunks []string
	last := ""
	ended := false
	read := func(resp *http.Response) {
		t.Helper()
		want := 1 + rng.IntN(8)
		got := 0
		events, _, _ := readSSE(resp.Body, func(e sseEvent) bool {
			if e.Event == "chunk" {
				got++
			}
			return e.Event == "done" || e.Event == "error" || got == want
		})
		resp.Body.Close()
		for _, e := range events {
			switch e.Event {
			case "start":
				if !strings.Contains(e.Data, runID) {
					t.Fatalf("start event %q names another run", e.Data)
				}
			case "chunk":
				if want := strconv.Itoa(len(chunks)); e.ID != want {
					t.Fatalf("event id %s where %s was due (after %q)", e.ID, want, last)
				}
				chunks = append(chunks, e.Data)
				last = e.ID
			case "done":
				ended = true
				if !strings.Contains(e.Data, fmt.Sprintf(`"total_chunks":%d`, total)) {
					t.Fatalf("done: %s", e.Data)
				}
			default:
				t.Fatalf("event %+v", e)
			}
		}
	}
	read(resp)
	rejoins := 0
	for ; !ended; rejoins++ {
		if rejoins > 2000 {
			t.Fatalf("no end after %d re-joins (%d chunks)", rejoins, len(chunks))
		}
		r := getRunStream(t, base, runID, key, last)
		if r.StatusCode != 200 {
			t.Fatalf("re-join after %q: %d", last, r.StatusCode)
		}
		read(r)
	}
	if len(chunks) != total || rejoins < 100 {
		t.Fatalf("%d chunks after %d re-joins, want %d after at least 100", len(chunks), rejoins, total)
	}
	for i, c := range chunks {
		if strings.ReplaceAll(c, " ", "") != fmt.Sprintf(`{"i":%d}`, i) {
			t.Fatalf("chunk %d is %s", i, c)
		}
	}
	t.Logf("%d chunks over %d re-joins, none lost or twice", len(chunks), rejoins)
	// The whole log again from the start, once the run has ended.
	r := getRunStream(t, base, runID, s.Admin, "")
	events, _, _ := readSSE(r.Body, nil)
	r.Body.Close()
	if len(events) != total+2 || events[total+1].Event != "done" {
		t.Fatalf("the whole log: %d events", len(events))
	}
	if rec := runOf(t, s.do(t, "GET", "/api/v1/runs/"+runID, s.Admin, nil)); rec.Status != "completed" {
		t.Fatalf("the stream's run: %+v", rec)
	}

	// Cancelled while nobody reads it: the generator's finally runs.
	ticks := filepath.Join(t.TempDir(), "ticks")
	resp = postContinue(t, s, id, "tick_stream", map[string]any{"path": ticks, "interval": 0.05})
	tickRun := strings.TrimPrefix(resp.Header.Get("Content-Location"), "/api/v1/runs/")
	readSSE(resp.Body, func(e sseEvent) bool { return e.ID == "1" })
	resp.Body.Close()
	time.Sleep(300 * time.Millisecond)
	if b, _ := os.ReadFile(ticks); strings.Contains(string(b), "cancelled") {
		t.Fatalf("the stream stopped when its client left: %q", b)
	}
	c := s.do(t, "POST", "/api/v1/runs/"+tickRun+"/cancel", s.Admin, nil)
	if rec := runOf(t, c); c.Status != 200 || rec.Status != "cancelled" {
		t.Fatalf("cancel a continuing stream: %d %s", c.Status, c.Body)
	}
	pollUntil(10*time.Second, func() bool { b, _ := os.ReadFile(ticks); return strings.Contains(string(b), "cancelled") })
	if b, _ := os.ReadFile(ticks); !strings.Contains(string(b), "cancelled") {
		t.Fatalf("the cancelled stream's generator: %q", b)
	}
	r = getRunStream(t, base, tickRun, s.Admin, "")
	events, _, _ = readSSE(r.Body, nil)
	r.Body.Close()
	if n := len(events); n < 3 || events[n-1].Event != "error" || !strings.Contains(events[n-1].Data, "CANCELLED") {
		t.Fatalf("the cancelled stream's log ends with %+v", events[max(0, n-1):])
	}

	// A plain stream has no log; a bad on_disconnect is refused.
	plain := postSSE(t, base, id, s.Admin, "count_stream", map[string]any{"n": 1}, "text/event-stream")
	plainRun := strings.TrimPrefix(plain.Header.Get("Content-Location"), "/api/v1/runs/")
	readSSE(plain.Body, nil)
	plain.Body.Close()
	if r := getRunStream(t, base, plainRun, s.Admin, ""); r.StatusCode != 404 {
		t.Errorf("re-join a plain stream: %d, want 404", r.StatusCode)
	}
	b := runBody("count_stream", nil)
	b["on_disconnect"] = "later"
	if r := s.do(t, "POST", "/api/v1/agents/"+id+"/run-stream", s.Admin, b); r.Status != 400 || !strings.Contains(string(r.Body), "on_disconnect") {
		t.Errorf("on_disconnect later: %d %s", r.Status, r.Body)
	}
	if r := getRunStream(t, base, runID, s.Admin, "soon"); r.StatusCode != 400 {
		t.Errorf("Last-Event-ID soon: %d, want 400", r.StatusCode)
	}
}

// The WebSocket route's stream that outlives its client: dropped at random
// points and re-joined with resume_from (in the query, or in a first
// message), the chunks arrive exactly once and in order; the SSE re-join
// reads the same log; a plain stream's frames carry no ids (the wire).
func TestPlatformRejoinWebSocket(t *testing.T) {
	s := startPlatform(t, "", 0)
	dir, _ := newAgent(t, "showcase")
	id := s.deploy(t, dir, s.Admin)
	key := s.createKey(t, map[string]any{"name": "rejoin-ws", "scopes": []string{"run"}, "rate_per_second": 10000, "burst": 10000})
	const total = 300
	dial := func(path string) *websocket.Conn {
		t.Helper()
		c, resp, err := websocket.DefaultDialer.Dial("ws://"+s.Addr+path, http.Header{"Authorization": {"Bearer " + key}})
		if err != nil {
			t.Fatalf("dial %s: %v (%v)", path, err, resp)
		}
		return c
	}
	type frame struct {
		Type, Status, Content, Error, RunID string `json:"-"`
		ID                                  *int   `json:"id"`
		TotalChunks                         int    `json:"total_chunks"`
	}
	readFrame := func(c *websocket.Conn) (map[string]any, frame) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		_, msg, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		var m map[string]any
		var f frame
		json.Unmarshal(msg, &m)
		json.Unmarshal(msg, &f)
		f.Type, _ = m["type"].(string)
		f.Status, _ = m["status"].(string)
		f.Content, _ = m["content"].(string)
		f.RunID, _ = m["run_id"].(string)
		return m, f
	}

	c := dial("/api/v1/agents/" + id + "/run-stream")
	c.WriteJSON(map[string]any{"entrypoint_tag": "count_stream", "input_args": []any{}, "input_kwargs": map[string]any{"n": total, "delay": 0.005}, "on_disconnect": "continue"})
	_, started := readFrame(c)
	runID := started.RunID
	if started.Status != "stream_started" || runID == "" {
		t.Fatalf("the first frame: %+v", started)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	var chunks []string
	ended := false
	read := func(c *websocket.Conn) {
		t.Helper()
		for want := 1 + rng.IntN(8); want > 0; {
			m, f := readFrame(c)
			switch {
			case f.Type == "data":
				if f.ID == nil || *f.ID != len(chunks) {
					t.Fatalf("frame %v where id %d was due", m, len(chunks))
				}
				_, v := decodeStructured(t, f.Content)
				chunks = append(chunks, fmt.Sprint(v))
				want--
			case f.Status == "stream_started" && f.RunID == runID:
			case f.Status == "stream_completed":
				if f.TotalChunks != total {
					t.Fatalf("completed: %v", m)
				}
				ended = true
				c.Close()
				return
			default:
				t.Fatalf("frame %v", m)
			}
		}
		c.Close() // dropped, not closed: the run goes on
	}
	read(c)
	rejoins := 0
	for ; !ended; rejoins++ {
		if rejoins > 1000 {
			t.Fatalf("no end after %d re-joins (%d chunks)", rejoins, len(chunks))
		}
		last := len(chunks) - 1
		if rejoins%2 == 0 {
			read(dial(fmt.Sprintf("/api/v1/runs/%s/stream?resume_from=%d", runID, last)))
		} else {
			c := dial("/api/v1/runs/" + runID + "/stream")
			c.WriteJSON(map[string]any{"resume_from": last})
			read(c)
		}
	}
	if len(chunks) != total || rejoins < 20 {
		t.Fatalf("%d chunks after %d re-joins, want %d after at least 20", len(chunks), rejoins, total)
	}
	for i, ch := range chunks {
		if ch != fmt.Sprintf("map[i:%d]", i) {
			t.Fatalf("chunk %d is %s", i, ch)
		}
	}
	// The same log over SSE.
	r := getRunStream(t, "http://"+s.Addr, runID, s.Admin, "")
	events, _, _ := readSSE(r.Body, nil)
	r.Body.Close()
	if len(events) != total+2 || events[1].Data != `{"i": 0}` && events[1].Data != `{"i":0}` || events[total+1].Event != "done" {
		t.Fatalf("the WebSocket run's log over SSE: %d events, first chunk %+v", len(events), events[1])
	}
	// A bad resume_from is refused before the upgrade.
	if _, resp, err := websocket.DefaultDialer.Dial("ws://"+s.Addr+"/api/v1/runs/"+runID+"/stream?resume_from=x", http.Header{"Authorization": {"Bearer " + key}}); err == nil || resp == nil || resp.StatusCode != 400 {
		t.Fatalf("resume_from=x: %v %v, want 400", err, resp)
	}
	// A plain stream is the wire's, without ids.
	c = dial("/api/v1/agents/" + id + "/run-stream")
	c.WriteJSON(map[string]any{"entrypoint_tag": "count_stream", "input_args": []any{}, "input_kwargs": map[string]any{"n": 2}})
	readFrame(c)
	if m, f := readFrame(c); f.Type != "data" || m["id"] != nil {
		t.Fatalf("a plain stream's data frame: %v", m)
	}
	c.Close()
}
