package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// cancellable is an agent entrypoint for the runs tests: it appends
// "started" to path, then waits; a cancel reaches it as asyncio's
// CancelledError, which it records.
const cancellable = `import asyncio


async def wait_here(path, seconds=30):
    with open(path, "a") as f:
        f.write("started\n")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        with open(path, "a") as f:
            f.write("cancelled\n")
        raise
    with open(path, "a") as f:
        f.write("finished\n")
    return "waited"
`

// runRecord is the data of a runs answer.
type runRecord struct {
	RunID          string          `json:"run_id"`
	Status         string          `json:"status"`
	OutputData     json.RawMessage `json:"output_data"`
	ErrorDetail    *string         `json:"error_detail"`
	Attempts       int             `json:"attempts"`
	Background     bool            `json:"background"`
	StartedAt      *string         `json:"started_at"`
	IdempotencyKey *string         `json:"idempotency_key"`
}

func runOf(t testing.TB, r reply) runRecord {
	t.Helper()
	var rec runRecord
	if err := json.Unmarshal(r.Env.Data, &rec); err != nil || rec.RunID == "" {
		t.Fatalf("not a run: %d %s", r.Status, r.Body)
	}
	return rec
}

func createRun(t testing.TB, s *platformServer, key, agent, tag string, kwargs map[string]any, headers map[string]string) reply {
	t.Helper()
	return s.doHeaders(t, "POST", "/api/v1/agents/"+agent+"/runs", key, runBody(tag, kwargs), headers)
}

// acceptedRun checks a create's 202 (with the run's Location) and returns
// the run id.
func acceptedRun(t testing.TB, r reply) string {
	t.Helper()
	var acc struct {
		RunID string `json:"run_id"`
	}
	json.Unmarshal(r.Env.Data, &acc)
	if r.Status != 202 || acc.RunID == "" || r.Header.Get("Location") != "/api/v1/runs/"+acc.RunID {
		t.Fatalf("create a run: %d %s (Location %q), want 202 with the run's Location", r.Status, r.Body, r.Header.Get("Location"))
	}
	return acc.RunID
}

func waitFile(t testing.TB, path, want string) string {
	t.Helper()
	var got string
	pollUntil(15*time.Second, func() bool {
		b, _ := os.ReadFile(path)
		got = string(b)
		return strings.Contains(got, want)
	})
	return got
}

// Background runs on one server: create (202, Location), wait for the
// outcome, replay a create by Idempotency-Key (run once), refuse a key
// reused for another input, cancel a queued run (it never runs) and a
// running one (the Python task is cancelled), list by status, and keep
// other tenants out.
func TestPlatformRuns(t *testing.T) {
	s := startPlatform(t, "", 0, "--async-workers", "1")
	dir, _ := newAgent(t, "showcase")
	addPyEntrypoint(t, dir, "cancellable.py", cancellable, "wait_here", "wait_here")
	id := s.deploy(t, dir, s.Admin)
	marks := t.TempDir()

	// Created, then waited for.
	rid := acceptedRun(t, createRun(t, s, s.Admin, id, "add", map[string]any{"a": 2, "b": 40}, nil))
	w := s.do(t, "GET", "/api/v1/runs/"+rid+"/wait?timeout_seconds=30", s.Admin, nil)
	if rec := runOf(t, w); w.Status != 200 || rec.Status != "completed" || string(rec.OutputData) != "42" || rec.Attempts != 1 || !rec.Background || rec.StartedAt == nil {
		t.Fatalf("wait: %d %s", w.Status, w.Body)
	}

	// The same create twice with an Idempotency-Key: one run, run once.
	once := filepath.Join(marks, "once")
	key := map[string]string{"Idempotency-Key": "order-1234"}
	first := createRun(t, s, s.Admin, id, "wait_here", map[string]any{"path": once, "seconds": 0}, key)
	again := createRun(t, s, s.Admin, id, "wait_here", map[string]any{"path": once, "seconds": 0}, key)
	if a, b := acceptedRun(t, first), acceptedRun(t, again); a != b || again.Header.Get("Idempotent-Replayed") != "true" || first.Header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("a replayed create: runs %s and %s, Idempotent-Replayed %q then %q", a, b, first.Header.Get("Idempotent-Replayed"), again.Header.Get("Idempotent-Replayed"))
	}
	if rec := runOf(t, s.do(t, "GET", "/api/v1/runs/"+acceptedRun(t, first)+"/wait", s.Admin, nil)); rec.Status != "completed" || rec.IdempotencyKey == nil || *rec.IdempotencyKey != "order-1234" {
		t.Fatalf("the idempotent run: %+v", rec)
	}
	if got, _ := os.ReadFile(once); string(got) != "started\nfinished\n" {
		t.Fatalf("the idempotent run ran: %q, want once", got)
	}
	if r := createRun(t, s, s.Admin, id, "add", map[string]any{"a": 1, "b": 1}, key); r.Status != 409 || r.code() != "RESOURCE_ALREADY_EXISTS" || !strings.Contains(string(r.Body), "Idempotency-Key") {
		t.Fatalf("a key reused for another input: %d %s, want 409 naming Idempotency-Key", r.Status, r.Body)
	}

	// One worker: a long run holds it, so the next waits in the queue.
	long, queued := filepath.Join(marks, "long"), filepath.Join(marks, "queued")
	longID := acceptedRun(t, createRun(t, s, s.Admin, id, "wait_here", map[string]any{"path": long, "seconds": 60}, nil))
	waitFile(t, long, "started")
	if rec := runOf(t, s.do(t, "GET", "/api/v1/runs/"+longID, s.Admin, nil)); rec.Status != "running" {
		t.Fatalf("a started run: %+v, want running", rec)
	}
	queuedID := acceptedRun(t, createRun(t, s, s.Admin, id, "wait_here", map[string]any{"path": queued, "seconds": 0}, nil))
	if r := s.do(t, "POST", "/api/v1/runs/"+queuedID+"/cancel", s.Admin, nil); r.Status != 200 || runOf(t, r).Status != "cancelled" {
		t.Fatalf("cancel a queued run: %d %s, want 200 cancelled", r.Status, r.Body)
	}
	began := time.Now()
	c := s.do(t, "POST", "/api/v1/runs/"+longID+"/cancel", s.Admin, nil)
	if rec := runOf(t, c); c.Status != 200 || rec.Status != "cancelled" || rec.ErrorDetail == nil || !strings.Contains(*rec.ErrorDetail, "cancelled while it ran") {
		t.Fatalf("cancel a running run: %d %s, want 200 cancelled", c.Status, c.Body)
	}
	t.Logf("a running run cancelled in %s", time.Since(began).Round(time.Millisecond))
	if got := waitFile(t, long, "cancelled"); got != "started\ncancelled\n" {
		t.Fatalf("the cancelled run's function: %q, want its task cancelled", got)
	}
	if r := s.do(t, "POST", "/api/v1/runs/"+longID+"/cancel", s.Admin, nil); r.Status != 200 || runOf(t, r).Status != "cancelled" {
		t.Fatalf("cancel an ended run: %d %s, want 200 with the run as it ended", r.Status, r.Body)
	}
	// The worker is free again: a run after them runs; the cancelled
	// queued one never did.
	after := acceptedRun(t, createRun(t, s, s.Admin, id, "add", map[string]any{"a": 1, "b": 2}, nil))
	if rec := runOf(t, s.do(t, "GET", "/api/v1/runs/"+after+"/wait", s.Admin, nil)); rec.Status != "completed" {
		t.Fatalf("a run after the cancels: %+v", rec)
	}
	if _, err := os.Stat(queued); !os.IsNotExist(err) {
		t.Fatalf("the run cancelled in the queue ran: %v", err)
	}

	// Listing by status.
	list := func(query string) []string {
		t.Helper()
		r := s.do(t, "GET", "/api/v1/runs?agent_id="+id+query, s.Admin, nil)
		var l struct {
			Runs []runRecord `json:"runs"`
		}
		json.Unmarshal(r.Env.Data, &l)
		if r.Status != 200 {
			t.Fatalf("list %s: %d %s", query, r.Status, r.Body)
		}
		var ids []string
		for _, run := range l.Runs {
			ids = append(ids, run.RunID)
		}
		return ids
	}
	if got := list("&status=cancelled"); strings.Join(got, ",") != queuedID+","+longID {
		t.Errorf("cancelled runs: %v, want %s then %s", got, queuedID, longID)
	}
	if got := list("&status=completed"); len(got) != 3 || got[0] != after {
		t.Errorf("completed runs: %v, want 3, newest first", got)
	}
	if r := s.do(t, "GET", "/api/v1/runs?status=lost", s.Admin, nil); r.Status != 400 || !strings.Contains(string(r.Body), "status") {
		t.Errorf("an unknown status: %d %s", r.Status, r.Body)
	}

	// A sync call is a run too (one that ended is answered as such); a streaming
	// entrypoint does not run in the background; another tenant sees
	// no run; the wire route's async_execution names its run.
	if r := s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, runBody("add", map[string]any{"a": 1, "b": 1})); r.Status != 200 {
		t.Fatalf("a sync call: %d %s", r.Status, r.Body)
	}
	invs := s.do(t, "GET", "/api/v1/agents/"+id+"/invocations?limit=1", s.Admin, nil)
	var hist struct {
		Invocations []struct {
			InvocationID string `json:"invocation_id"`
		} `json:"invocations"`
	}
	json.Unmarshal(invs.Body, &hist)
	if len(hist.Invocations) == 1 {
		syncID := hist.Invocations[0].InvocationID
		if rec := runOf(t, s.do(t, "GET", "/api/v1/runs/"+syncID, s.Admin, nil)); rec.Background || rec.Status != "completed" {
			t.Errorf("a sync call as a run: %+v", rec)
		}
		if r := s.do(t, "POST", "/api/v1/runs/"+syncID+"/cancel", s.Admin, nil); r.Status != 200 || !strings.Contains(string(r.Body), "already ended") {
			t.Errorf("cancel a sync call that ended: %d %s, want 200 saying it had ended", r.Status, r.Body)
		}
	} else {
		t.Errorf("history: %s", invs.Body)
	}
	if r := createRun(t, s, s.Admin, id, "count_stream", nil, nil); r.Status != 400 || !strings.Contains(string(r.Body), "entrypoint_tag") {
		t.Errorf("a streaming entrypoint in the background: %d %s, want 400 naming entrypoint_tag", r.Status, r.Body)
	}
	other := s.createKey(t, map[string]any{"name": "other", "tenant": "other", "scopes": []string{"run", "deploy"}})
	if r := s.do(t, "GET", "/api/v1/runs/"+rid, other, nil); r.Status != 404 {
		t.Errorf("another tenant's run: %d %s, want 404", r.Status, r.Body)
	}
	if r := s.do(t, "POST", "/api/v1/runs/"+rid+"/cancel", other, nil); r.Status != 404 {
		t.Errorf("another tenant cancels a run: %d %s, want 404", r.Status, r.Body)
	}
	if r := s.do(t, "GET", "/api/v1/runs/nope", s.Admin, nil); r.Status != 404 {
		t.Errorf("an unknown run: %d %s, want 404", r.Status, r.Body)
	}
	wireAsync := asyncRun(t, s, s.Admin, id, "add", map[string]any{"a": 3, "b": 4})
	var acc struct {
		RunID string `json:"run_id"`
	}
	json.Unmarshal(wireAsync.Env.Data, &acc)
	if wireAsync.Status != 202 || acc.RunID == "" || wireAsync.Header.Get("Location") != "/api/v1/runs/"+acc.RunID {
		t.Errorf("the wire route's async_execution: %d %s", wireAsync.Status, wireAsync.Body)
	}
}
