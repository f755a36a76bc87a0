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
