package e2e

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
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

// verifySnippet is the receiver's check from docs/platform-api.md, in
// Python's standard library: it exits 0 only for a valid signature.
const verifySnippet = `import hashlib, hmac, sys, time

def verify(secret, timestamp, body, signature, tolerance=300):
    if abs(time.time() - int(timestamp)) > tolerance:
        return False
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest("v1=" + mac.hexdigest(), signature)

secret, timestamp, signature = sys.argv[1:4]
sys.exit(0 if verify(secret, timestamp, sys.stdin.buffer.read(), signature) else 1)
`

// A run's webhook: a receiver that fails twice then succeeds gets one
// signed delivery a receiver verifies with the agent's secret, every
// attempt recorded; a webhook to a loopback, private or metadata address
// is refused unless the operator allows its network.
func TestPlatformRunWebhooks(t *testing.T) {
	type delivery struct {
		header http.Header
		body   []byte
	}
	var mu sync.Mutex
	var got []delivery
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, delivery{r.Header.Clone(), b})
		n := len(got)
		mu.Unlock()
		if n <= 2 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer recv.Close()
	s := startPlatform(t, "", 0, "--webhook-allow", "127.0.0.0/8")
	dir, _ := newAgent(t, "showcase")
	id := s.deploy(t, dir, s.Admin)
	sec := s.do(t, "GET", "/api/v1/agents/"+id+"/webhook-secret", s.Admin, nil)
	var secret struct {
		Secret string `json:"secret"`
	}
	json.Unmarshal(sec.Env.Data, &secret)
	if sec.Status != 200 || !strings.HasPrefix(secret.Secret, "whsec_") {
		t.Fatalf("webhook secret: %d %s", sec.Status, sec.Body)
	}

	body := runBody("add", map[string]any{"a": 2, "b": 40})
	body["webhook"] = recv.URL + "/hook"
	rid := acceptedRun(t, s.do(t, "POST", "/api/v1/agents/"+id+"/runs", s.Admin, body))
	if rec := runOf(t, s.do(t, "GET", "/api/v1/runs/"+rid+"/wait", s.Admin, nil)); rec.Status != "completed" {
		t.Fatalf("the run: %+v", rec)
	}
	pollUntil(20*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(got) >= 3 })
	time.Sleep(200 * time.Millisecond) // a fourth delivery would show by now
	mu.Lock()
	deliveries := slices.Clone(got)
	mu.Unlock()
	if len(deliveries) != 3 {
		t.Fatalf("%d deliveries, want 3 (two refused, one taken)", len(deliveries))
	}
	last := deliveries[2]
	var rec runRecord
	json.Unmarshal(last.body, &rec)
	if rec.RunID != rid || rec.Status != "completed" || string(rec.OutputData) != "42" {
		t.Fatalf("the delivered body: %s", last.body)
	}
	if last.header.Get("RunAgent-Webhook-Id") != rid || last.header.Get("RunAgent-Webhook-Attempt") != "3" || last.header.Get("Content-Type") != "application/json" {
		t.Fatalf("the delivery's headers: %v", last.header)
	}
	verify := exec.Command("python3", "-c", verifySnippet, secret.Secret, last.header.Get("RunAgent-Timestamp"), last.header.Get("RunAgent-Signature"))
	verify.Stdin = bytes.NewReader(last.body)
	if out, err := verify.CombinedOutput(); err != nil {
		t.Fatalf("the documented verification refused the delivery (%v): %s", err, out)
	}
	verify = exec.Command("python3", "-c", verifySnippet, "whsec_wrong", last.header.Get("RunAgent-Timestamp"), last.header.Get("RunAgent-Signature"))
	verify.Stdin = bytes.NewReader(last.body)
	if verify.Run() == nil {
		t.Fatal("the documented verification took a wrong secret")
	}
	att := s.do(t, "GET", "/api/v1/runs/"+rid+"/webhook-attempts", s.Admin, nil)
	var attempts struct {
		Attempts []struct {
			Attempt    int     `json:"attempt"`
			StatusCode int     `json:"status_code"`
			Error      *string `json:"error"`
		} `json:"attempts"`
	}
	json.Unmarshal(att.Env.Data, &attempts)
	if a := attempts.Attempts; len(a) != 3 || a[0].StatusCode != 503 || a[1].StatusCode != 503 || a[2].StatusCode != 200 || a[2].Error != nil || a[0].Error == nil {
		t.Fatalf("webhook attempts: %s", att.Body)
	}

	// Refused at create: the metadata address even here; loopback on a
	// server that does not allow it.
	strict := startPlatform(t, "", 0)
	strictID := strict.deploy(t, dir, strict.Admin)
	for _, c := range []struct {
		s     *platformServer
		agent string
		hook  string
	}{
		{s, id, "http://169.254.169.254/latest/meta-data/"},
		{s, id, "http://10.0.0.1/hook"},
		{strict, strictID, recv.URL + "/hook"},
		{strict, strictID, "http://localhost:9/hook"},
		{strict, strictID, "http://[::1]:9/hook"},
		{strict, strictID, "file:///etc/passwd"},
	} {
		b := runBody("add", map[string]any{"a": 1, "b": 1})
		b["webhook"] = c.hook
		r := c.s.do(t, "POST", "/api/v1/agents/"+c.agent+"/runs", c.s.Admin, b)
		if r.Status != 400 || r.code() != "VALIDATION_ERROR" || !strings.Contains(string(r.Body), "webhook") {
			t.Errorf("a run with webhook %s: %d %s, want 400 naming webhook", c.hook, r.Status, r.Body)
		}
	}
}

// The runs of a thread run one at a time, in order: a second one is
// refused while the first runs (multitask reject, the default) or waits
// for it (enqueue); another thread's run does not wait.
func TestPlatformRunThreads(t *testing.T) {
	s := startPlatform(t, "", 0)
	dir, _ := newAgent(t, "showcase")
	addPyEntrypoint(t, dir, "cancellable.py", cancellable, "wait_here", "wait_here")
	id := s.deploy(t, dir, s.Admin)
	marks := t.TempDir()
	create := func(path string, seconds float64, fields map[string]any) reply {
		t.Helper()
		b := runBody("wait_here", map[string]any{"path": filepath.Join(marks, path), "seconds": seconds})
		for k, v := range fields {
			b[k] = v
		}
		return s.do(t, "POST", "/api/v1/agents/"+id+"/runs", s.Admin, b)
	}
	first := acceptedRun(t, create("a", 1.5, map[string]any{"thread_id": "chat-1"}))
	waitFile(t, filepath.Join(marks, "a"), "started")
	if r := create("b", 0, map[string]any{"thread_id": "chat-1"}); r.Status != 409 || r.code() != "RESOURCE_ALREADY_EXISTS" || !strings.Contains(string(r.Body), "thread_id") {
		t.Fatalf("a second run of a busy thread: %d %s, want 409 naming thread_id", r.Status, r.Body)
	}
	queued := acceptedRun(t, create("c", 0, map[string]any{"thread_id": "chat-1", "multitask": "enqueue"}))
	other := acceptedRun(t, create("d", 0, map[string]any{"thread_id": "chat-2"}))
	if rec := runOf(t, s.do(t, "GET", "/api/v1/runs/"+other+"/wait", s.Admin, nil)); rec.Status != "completed" {
		t.Fatalf("another thread's run: %+v", rec)
	}
	if rec := runOf(t, s.do(t, "GET", "/api/v1/runs/"+first, s.Admin, nil)); rec.Status != "running" {
		t.Fatalf("another thread's run waited for the first: the first is %s", rec.Status)
	}
	if rec := runOf(t, s.do(t, "GET", "/api/v1/runs/"+queued, s.Admin, nil)); rec.Status != "pending" {
		t.Fatalf("the enqueued run of the busy thread: %s, want pending", rec.Status)
	}
	a := s.do(t, "GET", "/api/v1/runs/"+first+"/wait", s.Admin, nil)
	c := s.do(t, "GET", "/api/v1/runs/"+queued+"/wait", s.Admin, nil)
	var ra, rc struct {
		Status            string  `json:"status"`
		ResponseTimestamp *string `json:"response_timestamp"`
		StartedAt         *string `json:"started_at"`
		ThreadID          *string `json:"thread_id"`
	}
	json.Unmarshal(a.Env.Data, &ra)
	json.Unmarshal(c.Env.Data, &rc)
	if ra.Status != "completed" || rc.Status != "completed" || ra.ResponseTimestamp == nil || rc.StartedAt == nil || *rc.StartedAt < *ra.ResponseTimestamp {
		t.Fatalf("the enqueued run started before the first ended: first %s, queued %s", a.Body, c.Body)
	}
	if rc.ThreadID == nil || *rc.ThreadID != "chat-1" {
		t.Errorf("the run's thread_id: %s", c.Body)
	}
	for _, bad := range []map[string]any{{"multitask": "enqueue"}, {"thread_id": 7}, {"thread_id": "chat-1", "multitask": "interrupt"}, {"thread_id": strings.Repeat("x", 200)}} {
		if r := create("z", 0, bad); r.Status != 400 {
			t.Errorf("a create with %v: %d %s, want 400", bad, r.Status, r.Body)
		}
	}
}

// Kill -9 the server while background runs run, start it again: every run
// created is in the record once; the idempotent one ran again and
// completed, the other ended failed naming why, and neither ran unseen.
func TestPlatformRunsSurviveKill(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	port := freePort(t)
	s := startPlatform(t, data, port, "--async-workers", "4")
	dir, _ := newAgent(t, "showcase")
	addPyEntrypoint(t, dir, "cancellable.py", cancellable, "wait_here", "wait_here")
	addPyEntrypoint(t, dir, "cancellable.py", cancellable, "wait_here", "wait_again")
	editConfig(t, dir, func(cfg map[string]any) {
		for _, ep := range cfg["agent_architecture"].(map[string]any)["entrypoints"].([]any) {
			if e := ep.(map[string]any); e["tag"] == "wait_again" {
				e["idempotent"] = true
			}
		}
	})
	id := s.deploy(t, dir, s.Admin)
	marks := t.TempDir()
	plain, idem := filepath.Join(marks, "plain"), filepath.Join(marks, "idem")
	plainID := acceptedRun(t, createRun(t, s, s.Admin, id, "wait_here", map[string]any{"path": plain, "seconds": 30}, nil))
	idemID := acceptedRun(t, createRun(t, s, s.Admin, id, "wait_again", map[string]any{"path": idem, "seconds": 3}, nil))
	waitFile(t, plain, "started")
	waitFile(t, idem, "started")
	syscall.Kill(s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.exited

	s = startPlatform(t, data, port, "--async-workers", "4")
	if rec := runOf(t, s.do(t, "GET", "/api/v1/runs/"+idemID+"/wait?timeout_seconds=60", s.Admin, nil)); rec.Status != "completed" || rec.Attempts != 2 {
		t.Fatalf("the idempotent run after the kill: %+v", rec)
	}
	if got, _ := os.ReadFile(idem); string(got) != "started\nstarted\nfinished\n" {
		t.Fatalf("the idempotent run's marks: %q, want its first start cut, then one whole run", got)
	}
	rec := runOf(t, s.do(t, "GET", "/api/v1/runs/"+plainID+"/wait?timeout_seconds=60", s.Admin, nil))
	if rec.Status != "failed" || rec.ErrorDetail == nil || !strings.Contains(*rec.ErrorDetail, "idempotent") || rec.Attempts != 1 {
		marks, _ := os.ReadFile(plain)
		t.Fatalf("the non-idempotent run after the kill: %+v (%s); want failed, saying it is not declared idempotent; its marks %q\n%s", rec, deref(rec.ErrorDetail), marks, s.Logs())
	}
	// It never ran again (its process died with the server: no "finished").
	if got, _ := os.ReadFile(plain); string(got) != "started\n" {
		t.Fatalf("the non-idempotent run's marks: %q, want one cut start", got)
	}
	list := s.do(t, "GET", "/api/v1/runs?agent_id="+id, s.Admin, nil)
	var got struct{ Runs []runRecord }
	json.Unmarshal(list.Env.Data, &got)
	runs := got.Runs
	seen := map[string]int{}
	for _, r := range runs {
		seen[r.RunID]++
	}
	if len(runs) != 2 || seen[plainID] != 1 || seen[idemID] != 1 {
		t.Fatalf("the runs recorded: %s; want each of %s and %s once", list.Body, plainID, idemID)
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// A webhook whose receiver was down when the server was killed -9 is
// delivered after the restart, its attempts numbered on from the last.
func TestPlatformRunWebhooksAfterRestart(t *testing.T) {
	var mu sync.Mutex
	down := true
	var taken []http.Header
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		mu.Lock()
		defer mu.Unlock()
		if down {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		taken = append(taken, r.Header.Clone())
	}))
	defer recv.Close()
	data := filepath.Join(t.TempDir(), "data")
	port := freePort(t)
	s := startPlatform(t, data, port, "--webhook-allow", "127.0.0.0/8")
	dir, _ := newAgent(t, "showcase")
	id := s.deploy(t, dir, s.Admin)
	body := runBody("add", map[string]any{"a": 2, "b": 40})
	body["webhook"] = recv.URL + "/hook"
	rid := acceptedRun(t, s.do(t, "POST", "/api/v1/agents/"+id+"/runs", s.Admin, body))
	if rec := runOf(t, s.do(t, "GET", "/api/v1/runs/"+rid+"/wait", s.Admin, nil)); rec.Status != "completed" {
		t.Fatalf("the run: %+v", rec)
	}
	type attempts struct {
		Attempts []struct {
			Attempt    int `json:"attempt"`
			StatusCode int `json:"status_code"`
		} `json:"attempts"`
	}
	read := func(s *platformServer) attempts {
		var a attempts
		json.Unmarshal(s.do(t, "GET", "/api/v1/runs/"+rid+"/webhook-attempts", s.Admin, nil).Env.Data, &a)
		return a
	}
	pollUntil(20*time.Second, func() bool { return len(read(s).Attempts) >= 1 })
	syscall.Kill(s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.exited
	mu.Lock()
	down = false
	mu.Unlock()
	s = startPlatform(t, data, port, "--webhook-allow", "127.0.0.0/8")
	pollUntil(20*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(taken) >= 1 })
	time.Sleep(200 * time.Millisecond) // a second delivery would show by now
	mu.Lock()
	n := len(taken)
	var hdr http.Header
	if n > 0 {
		hdr = taken[0]
	}
	mu.Unlock()
	a := read(s).Attempts
	if n != 1 || len(a) < 2 || a[len(a)-1].StatusCode != 200 || a[len(a)-1].Attempt != len(a) || a[0].StatusCode != 503 {
		t.Fatalf("after the restart: %d deliveries taken, attempts %+v; want one taken, numbered after the refused ones", n, a)
	}
	if hdr.Get("RunAgent-Webhook-Id") != rid || hdr.Get("RunAgent-Webhook-Attempt") != strconv.Itoa(len(a)) {
		t.Fatalf("the delivery's headers: %v", hdr)
	}
}
