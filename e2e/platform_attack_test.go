package e2e

// The platform tried the way an attacker and an operator would (issue 14):
// each test drives `runagent server` at one hole that was found, and fails
// if it opens again. docs/security.md is the threat model they check.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// hostileAgent is a default-template agent with entrypoints that return or
// stream a lot, take their time, and leave marks of having started.
const hostileAgent = `import os
import time


def big(mb):
    return "x" * (int(mb) << 20)


def chunks_stream(mb, n):
    block = "y" * (int(mb) << 20)
    for _ in range(int(n)):
        yield block


def slow(seconds, mark=""):
    if mark:
        with open(mark, "a") as f:
            f.write("started\n")
    time.sleep(float(seconds))
    return "done"


def echo(message):
    return message
`

func newHostileAgent(t testing.TB, deployment map[string]any, entrypoints ...map[string]any) string {
	t.Helper()
	dir, _ := newAgent(t, "default")
	if err := os.WriteFile(filepath.Join(dir, "hostile.py"), []byte(hostileAgent), 0o644); err != nil {
		t.Fatal(err)
	}
	editConfig(t, dir, func(cfg map[string]any) {
		arch := cfg["agent_architecture"].(map[string]any)
		eps := arch["entrypoints"].([]any)
		for _, fn := range []string{"big", "chunks_stream", "slow", "echo"} {
			eps = append(eps, map[string]any{"file": "hostile.py", "module": fn, "tag": fn})
		}
		for _, ep := range entrypoints {
			eps = append(eps, ep)
		}
		arch["entrypoints"] = eps
		if deployment != nil {
			cfg["deployment"] = deployment
		}
	})
	return dir
}

// rssMiB is a process's resident memory.
func rssMiB(t testing.TB, pid int) float64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			kb, _ := strconv.ParseFloat(strings.Fields(line)[1], 64)
			return kb / 1024
		}
	}
	t.Fatalf("no VmRSS for %d", pid)
	return 0
}

// 1. A public agent's history is not public: with --allow-public its
// architecture and runs need no key, its invocations and stats do.
func TestAttackPublicAgentHistoryIsPrivate(t *testing.T) {
	s := startPlatform(t, "", 0, "--allow-public")
	dir, _ := newAgent(t, "default")
	editConfig(t, dir, func(cfg map[string]any) { cfg["auth_settings"] = map[string]any{"type": "none"} })
	id := s.deploy(t, dir, s.Admin)
	secret := "card 4111-1111-1111-1111"
	if r := s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, runBody("minimal", map[string]any{"message": secret})); r.Status != 200 {
		t.Fatalf("authenticated call: %d %s", r.Status, r.Body)
	}
	if r := s.do(t, "POST", "/api/v1/agents/"+id+"/run", "", runBody("minimal", map[string]any{"message": "anon"})); r.Status != 200 {
		t.Errorf("anonymous run of a public agent: %d %s, want 200", r.Status, r.Body)
	}
	if r := s.do(t, "GET", "/api/v1/agents/"+id+"/architecture", "", nil); r.Status != 200 {
		t.Errorf("anonymous architecture of a public agent: %d %s, want 200", r.Status, r.Body)
	}
	for _, path := range []string{"/api/v1/agents/" + id + "/invocations", "/api/v1/agents/" + id + "/invocations/stats"} {
		r := s.do(t, "GET", path, "", nil)
		if r.Status != 401 || r.code() != "AUTHENTICATION_ERROR" || bytes.Contains(r.Body, []byte(secret)) {
			t.Errorf("anonymous GET %s: %d %s, want 401 without the history", path, r.Status, r.Body)
		}
	}
	if r := s.do(t, "GET", "/api/v1/agents/"+id+"/invocations", s.Admin, nil); r.Status != 200 || !bytes.Contains(r.Body, []byte(secret)) {
		t.Errorf("the owner's history read: %d %s", r.Status, r.Body)
	}
}

// uploadAs posts a bundle with an optional agent_id field.
func uploadAs(t testing.TB, s *platformServer, key, dir, agentID string) reply {
	t.Helper()
	files := map[string]string{}
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			b, _ := os.ReadFile(p)
			files[rel] = string(b)
		}
		return nil
	})
	return s.upload(t, key, zipOf(t, files), agentID)
}

func agentVersions(t testing.TB, s *platformServer, id string) (latest int, status int) {
	t.Helper()
	r := s.do(t, "GET", "/api/v1/agents/"+id, s.Admin, nil)
	var d struct {
		LatestVersion int `json:"latest_version"`
	}
	json.Unmarshal(r.Env.Data, &d)
	return d.LatestVersion, r.Status
}

// 2. A deploy key restricted to agent A can neither stage a version of
// agent B nor create agent C: the refusal comes before anything is kept.
func TestAttackRestrictedDeployKey(t *testing.T) {
	s := startPlatform(t, "", 0)
	dirA, idA := newAgent(t, "default")
	dirB, _ := newAgent(t, "default")
	s.deploy(t, dirA, s.Admin)
	idB := s.deploy(t, dirB, s.Admin)
	keyA := s.createKey(t, map[string]any{"name": "ci of A", "scopes": []string{"deploy"}, "agents": []string{idA}})
	before, _ := agentVersions(t, s, idB)

	// B's bundle, named by the form field and by its config alone.
	for name, formID := range map[string]string{"agent_id field": idB, "config only": ""} {
		r := uploadAs(t, s, keyA, dirB, formID)
		if r.Status != 403 || r.code() != "PERMISSION_ERROR" {
			t.Errorf("%s: upload of B with A's key: %d %s, want 403", name, r.Status, r.Body)
		}
	}
	if after, _ := agentVersions(t, s, idB); after != before {
		t.Errorf("agent B went from version %d to %d behind a 403", before, after)
	}
	// The owner's next start must not put anything new live.
	if r := s.do(t, "POST", "/api/v1/agents/"+idB+"/start", s.Admin, map[string]any{}); r.Status != 200 || !strings.Contains(string(r.Env.Data), fmt.Sprintf(`"version":%d`, before)) {
		t.Errorf("owner's start of B: %d %s, want version %d still", r.Status, r.Body, before)
	}

	// A new agent C, by upload and by metadata.
	dirC, idC := newAgent(t, "default")
	if r := uploadAs(t, s, keyA, dirC, ""); r.Status != 403 {
		t.Errorf("upload of a new agent with A's key: %d %s, want 403", r.Status, r.Body)
	}
	if r := s.do(t, "POST", "/api/v1/agents/metadata-upload", keyA, map[string]any{"agent_id": idC, "config": map[string]any{"agent_name": "c"}}); r.Status != 403 {
		t.Errorf("metadata-upload of a new agent with A's key: %d %s, want 403", r.Status, r.Body)
	}
	if _, st := agentVersions(t, s, idC); st != 404 {
		t.Errorf("agent C exists after two refusals: GET answers %d", st)
	}
	if r := s.do(t, "GET", "/api/v1/agents", s.Admin, nil); strings.Contains(string(r.Body), idC) {
		t.Errorf("agent C is listed after two refusals: %s", r.Body)
	}
	// A's own uploads still work.
	if r := uploadAs(t, s, keyA, dirA, idA); r.Status != 200 {
		t.Errorf("A's key uploading A: %d %s", r.Status, r.Body)
	}
}

// 3. Idle keep-alive connections and unfinished request headers are closed
// after their timeouts.
func TestAttackIdleConnectionsAreClosed(t *testing.T) {
	s := startPlatform(t, "", 0, "--http-idle-timeout", "1s", "--http-header-timeout", "1s")
	closedWithin := func(c net.Conn, d time.Duration) bool {
		c.SetReadDeadline(time.Now().Add(d))
		_, err := io.Copy(io.Discard, c)
		return err == nil // EOF: the server closed it; a timeout is an error
	}
	// Idle after one request.
	c, err := net.Dial("tcp", s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("health on a raw connection: %v %v", resp, err)
	}
	resp.Body.Close()
	if !closedWithin(c, 5*time.Second) {
		t.Error("an idle keep-alive connection was still open 5s after a 1s idle timeout")
	}
	// Headers that never end.
	c2, err := net.Dial("tcp", s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	fmt.Fprintf(c2, "GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
	if !closedWithin(c2, 5*time.Second) {
		t.Error("a connection with unfinished headers was still open 5s after a 1s header timeout")
	}
	// Many idle connections do not keep others out: they are all closed.
	var conns []net.Conn
	for range 200 {
		c, err := net.Dial("tcp", s.Addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	time.Sleep(2500 * time.Millisecond)
	open := 0
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err != nil && strings.Contains(err.Error(), "timeout") {
			open++
		}
	}
	if open > 0 {
		t.Errorf("%d of 200 silent connections were still open 2.5s after a 1s header timeout", open)
	}
}

// 4. One call cannot grow the server: a 200 MB result is refused naming
// the limit, and 20 WebSocket clients that never read a stream of 1 MB
// chunks hold a bounded amount of memory, then are cut off.
func TestAttackServerMemoryIsBounded(t *testing.T) {
	s := startPlatform(t, "", 0, "--stream-stall-timeout", "3s")
	id := s.deploy(t, newHostileAgent(t, map[string]any{"max_instances": 1, "max_concurrency": 24, "memory_mb": 1024}), s.Admin)
	pid := s.cmd.Process.Pid
	base := rssMiB(t, pid)

	r := s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, runBody("big", map[string]any{"mb": 200}))
	if r.Status != 502 || r.code() != "RESOURCE_LIMIT" || !strings.Contains(r.Env.Error.Message, "--max-result") {
		t.Errorf("a 200 MB result: %d %.300s, want 502 RESOURCE_LIMIT naming --max-result", r.Status, r.Body)
	}
	if rss := rssMiB(t, pid); rss > base+100 {
		t.Errorf("the server grew from %.0f to %.0f MiB for a refused 200 MB result", base, rss)
	}
	if r := s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, runBody("big", map[string]any{"mb": 8})); r.Status != 200 || !r.Env.Success {
		t.Errorf("an 8 MB result, under the limit: %d %.200s", r.Status, r.Body)
	}
	if st, frames := s.stream(t, id, s.Admin, "chunks_stream", map[string]any{"mb": 6, "n": 2}); st != 101 ||
		len(frames) == 0 || !strings.Contains(fmt.Sprint(frames[len(frames)-1]), "RESOURCE_LIMIT") {
		t.Errorf("a 6 MB chunk: %d, last frame %v, want an error naming RESOURCE_LIMIT", st, frames[max(0, len(frames)-1):])
	}

	// 20 readers that never read.
	var conns []*websocket.Conn
	for range 20 {
		c, _, err := websocket.DefaultDialer.Dial("ws://"+s.Addr+"/api/v1/agents/"+id+"/run-stream?token="+s.Admin, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.WriteJSON(runBody("chunks_stream", map[string]any{"mb": 1, "n": 1000}))
		conns = append(conns, c)
	}
	peak := 0.0
	for range 20 {
		peak = max(peak, rssMiB(t, pid))
		time.Sleep(100 * time.Millisecond)
	}
	if peak > base+250 {
		t.Errorf("20 stalled streams of 1 MB chunks took the server from %.0f to %.0f MiB", base, peak)
	}
	// After the stall timeout they are cut off and recorded as such.
	if !pollUntil(20*time.Second, func() bool {
		l := s.do(t, "GET", "/api/v1/agents/"+id+"/invocations?status=failed&limit=100", s.Admin, nil)
		return strings.Count(string(l.Body), "WebSocket disconnected") >= 20
	}) {
		l := s.do(t, "GET", "/api/v1/agents/"+id+"/invocations?status=failed&limit=100", s.Admin, nil)
		t.Errorf("the 20 stalled streams were not cut off: %.500s", l.Body)
	}
}

// 5. A stream whose reader stalls pauses its own generator: the instance
// keeps serving everyone else, nothing balloons, nothing is replaced.
func TestAttackStalledStreamHoldsNoInstance(t *testing.T) {
	s := startPlatform(t, "", 0, "--stream-stall-timeout", "8s")
	id := s.deploy(t, newHostileAgent(t, map[string]any{"max_instances": 1, "min_instances": 1, "max_concurrency": 8, "memory_mb": 300}), s.Admin)
	_, pids, _ := s.agentDetail(t, id)
	if len(pids) != 1 {
		t.Fatalf("want one ready instance, got %v", pids)
	}
	stalled, _, err := websocket.DefaultDialer.Dial("ws://"+s.Addr+"/api/v1/agents/"+id+"/run-stream?token="+s.Admin, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	stalled.WriteJSON(runBody("chunks_stream", map[string]any{"mb": 1, "n": 2000}))
	// Long enough for the socket buffers and any queue to fill (the
	// generator makes a chunk in a few ms): the window holds, the
	// generator pauses.
	time.Sleep(3 * time.Second)
	if rss := rssMiB(t, pids[0]); rss > 200 {
		t.Errorf("the runner behind a stalled stream of 1 MB chunks holds %.0f MiB", rss)
	}
	var slowest time.Duration
	for i := range 20 {
		start := time.Now()
		r := s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, runBody("echo", map[string]any{"message": i}))
		slowest = max(slowest, time.Since(start))
		if r.Status != 200 || !r.Env.Success {
			t.Fatalf("call %d beside a stalled stream: %d %s", i, r.Status, r.Body)
		}
	}
	if slowest > 2*time.Second {
		t.Errorf("calls beside a stalled stream took up to %s", slowest)
	}
	// Cut off after the stall timeout; the instance is the same one.
	stalled.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		if _, _, err := stalled.ReadMessage(); err != nil {
			break // the server closed it (after what the socket held)
		}
	}
	if _, after, _ := s.agentDetail(t, id); len(after) != 1 || after[0] != pids[0] {
		t.Errorf("instances after the stalled stream: %v, want the same one %v", after, pids)
	}
	if got := metricValue(t, s, `runagent_instance_failures_total{agent="`+id+`"`); got != 0 {
		t.Errorf("%v instance failures counted", got)
	}
}

// waitInvocation polls one invocation until it leaves pending.
func waitInvocation(t testing.TB, s *platformServer, id string, timeout time.Duration) (status, detail string) {
	t.Helper()
	var inv struct {
		Status      string
		ErrorDetail string `json:"error_detail"`
	}
	pollUntil(timeout, func() bool {
		r := s.do(t, "GET", "/api/v1/invocations/"+id, s.Admin, nil)
		json.Unmarshal(r.Body, &inv)
		return inv.Status != "" && inv.Status != "pending"
	})
	return inv.Status, inv.ErrorDetail
}

func asyncRun(t testing.TB, s *platformServer, key, agent, tag string, kwargs map[string]any) reply {
	t.Helper()
	body := runBody(tag, kwargs)
	body["async_execution"] = true
	return s.do(t, "POST", "/api/v1/agents/"+agent+"/run", key, body)
}

func acceptedID(t testing.TB, r reply) string {
	t.Helper()
	var acc struct {
		InvocationID string `json:"invocation_id"`
	}
	json.Unmarshal(r.Env.Data, &acc)
	if r.Status != 202 || acc.InvocationID == "" {
		t.Fatalf("async run: %d %s, want 202 with an invocation id", r.Status, r.Body)
	}
	return acc.InvocationID
}

func markLines(path string) int {
	b, _ := os.ReadFile(path)
	return strings.Count(string(b), "started\n")
}

// 6. An async invocation interrupted by a crash is not run again silently:
// it fails naming why, unless its entrypoint is declared idempotent, when
// it runs again; one accepted but not started runs after the restart.
func TestAttackAsyncInterruptedNotRunTwice(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	port := freePort(t)
	s := startPlatform(t, data, port, "--async-workers", "2", "--async-tenant-workers", "2")
	id := s.deploy(t, newHostileAgent(t, nil,
		map[string]any{"file": "hostile.py", "module": "slow", "tag": "slow_idempotent", "idempotent": true}), s.Admin)
	marks := t.TempDir()
	once, again, queued := filepath.Join(marks, "once"), filepath.Join(marks, "again"), filepath.Join(marks, "queued")
	onceID := acceptedID(t, asyncRun(t, s, s.Admin, id, "slow", map[string]any{"seconds": 3, "mark": once}))
	againID := acceptedID(t, asyncRun(t, s, s.Admin, id, "slow_idempotent", map[string]any{"seconds": 3, "mark": again}))
	// Both workers are busy: this one waits, never started.
	queuedID := acceptedID(t, asyncRun(t, s, s.Admin, id, "slow", map[string]any{"seconds": 0.1, "mark": queued}))
	if !pollUntil(20*time.Second, func() bool { return markLines(once) == 1 && markLines(again) == 1 }) {
		t.Fatalf("the two async calls did not start:\n%s", s.Logs())
	}
	syscall.Kill(s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.exited
	s2 := startPlatform(t, data, port, "--async-workers", "2")

	if st, detail := waitInvocation(t, s2, onceID, 30*time.Second); st != "failed" ||
		!strings.Contains(detail, "not run again") || !strings.Contains(detail, "not declared idempotent") {
		t.Errorf("the interrupted non-idempotent call: %s %q, want failed saying it was not run again", st, detail)
	}
	if st, detail := waitInvocation(t, s2, againID, 30*time.Second); st != "completed" {
		t.Errorf("the interrupted idempotent call: %s %q, want completed after a retry", st, detail)
	}
	if st, detail := waitInvocation(t, s2, queuedID, 30*time.Second); st != "completed" {
		t.Errorf("the accepted, never started call: %s %q, want completed after the restart", st, detail)
	}
	if n := markLines(once); n != 1 {
		t.Errorf("the non-idempotent call ran %d times", n)
	}
	if n := markLines(again); n != 2 {
		t.Errorf("the idempotent call ran %d times, want 2 (the interrupted run and its retry)", n)
	}
	if n := markLines(queued); n != 1 {
		t.Errorf("the queued call ran %d times", n)
	}
}

// 7. Every call answered 200 is in the history after kill -9.
func TestAttackAnsweredCallsSurviveKill(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	port := freePort(t)
	s := startPlatform(t, data, port)
	id := s.deploy(t, newHostileAgent(t, map[string]any{"min_instances": 1, "max_concurrency": 32}), s.Admin)
	key := s.createKey(t, map[string]any{"name": "load", "scopes": []string{"run"}, "rate_per_second": 100000, "burst": 100000, "max_concurrency": 1000})
	var answered sync.Map
	var n atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 10 * time.Second}
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				msg := fmt.Sprintf("w%d-%d", w, i)
				b, _ := json.Marshal(runBody("echo", map[string]any{"message": msg}))
				req, _ := http.NewRequest("POST", "http://"+s.Addr+"/api/v1/agents/"+id+"/run", bytes.NewReader(b))
				req.Header.Set("Authorization", "Bearer "+key)
				resp, err := client.Do(req)
				if err != nil {
					return // the server is gone
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err == nil && resp.StatusCode == 200 && bytes.Contains(body, []byte(`"success":true`)) {
					answered.Store(msg, true)
					n.Add(1)
				}
			}
		}()
	}
	pollUntil(20*time.Second, func() bool { return n.Load() >= 500 })
	syscall.Kill(s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.exited
	close(stop)
	wg.Wait()
	s2 := startPlatform(t, data, port)
	r := s2.do(t, "GET", "/api/v1/agents/"+id+"/invocations?limit=10000&status=completed", s2.Admin, nil)
	var list struct {
		Invocations []struct {
			InputData struct {
				InputKwargs struct{ Message string } `json:"input_kwargs"`
			} `json:"input_data"`
		}
	}
	json.Unmarshal(r.Body, &list)
	recorded := map[string]bool{}
	for _, inv := range list.Invocations {
		recorded[inv.InputData.InputKwargs.Message] = true
	}
	missing, total := 0, 0
	answered.Range(func(k, _ any) bool {
		total++
		if !recorded[k.(string)] {
			missing++
		}
		return true
	})
	if total < 500 || missing > 0 {
		t.Errorf("%d of %d calls answered 200 before kill -9 are missing from the history", missing, total)
	}
}

// 8. One tenant's async backlog does not hold another's invocation, and a
// tenant's backlog is bounded (429 with Retry-After beyond).
func TestAttackAsyncTenantFairness(t *testing.T) {
	s := startPlatform(t, "", 0, "--async-workers", "4", "--async-tenant-backlog", "40")
	deployA := s.createKey(t, map[string]any{"name": "a", "tenant": "tenant-a", "scopes": []string{"deploy", "run"}, "rate_per_second": 10000, "burst": 10000})
	deployB := s.createKey(t, map[string]any{"name": "b", "tenant": "tenant-b", "scopes": []string{"deploy", "run"}})
	idA := s.deploy(t, newHostileAgent(t, map[string]any{"max_instances": 2, "max_concurrency": 8}), deployA)
	idB := s.deploy(t, newHostileAgent(t, nil), deployB)
	accepted := 0
	var refused reply
	for range 45 {
		r := asyncRun(t, s, deployA, idA, "slow", map[string]any{"seconds": 3})
		if r.Status == 202 {
			accepted++
			continue
		}
		refused = r
		break
	}
	if accepted != 40 || refused.Status != 429 || refused.code() != "RATE_LIMIT_EXCEEDED" ||
		refused.Header.Get("Retry-After") == "" || !strings.Contains(refused.Env.Error.Message, "--async-tenant-backlog") {
		t.Errorf("tenant A's backlog: %d accepted, then %d %s (Retry-After %q); want 40, then 429 naming the limit",
			accepted, refused.Status, refused.Body, refused.Header.Get("Retry-After"))
	}
	start := time.Now()
	fast := acceptedID(t, asyncRun(t, s, deployB, idB, "echo", map[string]any{"message": "fast"}))
	if st, detail := waitInvocation(t, s, fast, 30*time.Second); st != "completed" {
		t.Fatalf("tenant B's call: %s %s", st, detail)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("tenant B's fast async call took %s behind tenant A's backlog of slow ones", took)
	}
}

// 9. /metrics needs a key; a tenant's key sees only its own agents.
func TestAttackMetricsNeedAKey(t *testing.T) {
	metricsPort := freePort(t)
	s := startPlatform(t, "", 0)
	acme := s.createKey(t, map[string]any{"name": "acme", "tenant": "acme", "scopes": []string{"deploy", "run"}})
	dirD, _ := newAgent(t, "default")
	dirA, _ := newAgent(t, "default")
	idD := s.deploy(t, dirD, s.Admin)
	idA := s.deploy(t, dirA, acme)
	for _, id := range []string{idD, idA} {
		s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, runBody("minimal", map[string]any{"message": "m"}))
	}
	if r := s.do(t, "GET", "/metrics", "", nil); r.Status != 401 || strings.Contains(string(r.Body), idD) {
		t.Errorf("/metrics without a key: %d %.200s, want 401", r.Status, r.Body)
	}
	r := s.do(t, "GET", "/metrics", acme, nil)
	if r.Status != 200 || !strings.Contains(string(r.Body), idA) || strings.Contains(string(r.Body), idD) || strings.Contains(string(r.Body), "go_goroutines") {
		t.Errorf("/metrics with tenant acme's key: %d; has acme's agent %v, the other tenant's %v, server metrics %v",
			r.Status, strings.Contains(string(r.Body), idA), strings.Contains(string(r.Body), idD), strings.Contains(string(r.Body), "go_goroutines"))
	}
	if r := s.do(t, "GET", "/metrics", s.Admin, nil); r.Status != 200 || !strings.Contains(string(r.Body), idA) || !strings.Contains(string(r.Body), idD) {
		t.Errorf("/metrics with the admin key: %d, want every agent", r.Status)
	}
	// On its own listener (the operator's network) it needs none.
	s.Stop()
	s = startPlatform(t, s.DataDir, 0, "--metrics-addr", fmt.Sprintf("127.0.0.1:%d", metricsPort))
	var body []byte
	pollUntil(10*time.Second, func() bool {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ = io.ReadAll(resp.Body)
		return resp.StatusCode == 200
	})
	if !strings.Contains(string(body), "runagent_http_requests_total") {
		t.Errorf("--metrics-addr: %.200s", body)
	}
	if r := s.do(t, "GET", "/metrics", s.Admin, nil); r.Status != 404 {
		t.Errorf("/metrics on the main listener with --metrics-addr: %d, want 404", r.Status)
	}
}

// 10. The smaller holes: keys in REST URLs, an overflowing timeout, the
// server's paths in errors, CORS with credentials, and a flag that keeps
// agents off the network.
func TestAttackSmallerHoles(t *testing.T) {
	s := startPlatform(t, "", 0)
	dir := newHostileAgent(t, nil)
	id := s.deploy(t, dir, s.Admin)

	t.Run("key in a REST URL", func(t *testing.T) {
		for _, path := range []string{"/api/v1/keys?token=" + s.Admin, "/api/v1/agents?token=" + s.Admin} {
			r := s.do(t, "GET", path, "", nil)
			if r.Status != 401 || !strings.Contains(r.Env.Error.Message, "WebSocket") {
				t.Errorf("GET %s: %d %s, want 401 saying keys go in the header", strings.Split(path, "?")[0], r.Status, r.Body)
			}
		}
		if st, frames := s.stream(t, id, s.Admin, "minimal_stream", map[string]any{"message": "hi"}); st != 101 || len(frames) < 2 {
			t.Errorf("WebSocket with ?token=: %d %v", st, frames)
		}
	})

	t.Run("huge timeout_seconds", func(t *testing.T) {
		body := runBody("echo", map[string]any{"message": "hi"})
		body["timeout_seconds"] = 1e308
		if r := s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, body); r.Status != 200 || !r.Env.Success {
			t.Errorf("timeout_seconds 1e308: %d %s, want the call to run", r.Status, r.Body)
		}
	})

	t.Run("no server paths in errors", func(t *testing.T) {
		bad, _ := newAgent(t, "default")
		editConfig(t, bad, func(cfg map[string]any) {
			cfg["agent_architecture"].(map[string]any)["entrypoints"] = []any{map[string]any{"file": "main.py", "module": "no_such_function", "tag": "x"}}
		})
		out, errOut, _ := runCLI(t, sharedCache, "deploy", bad, "--server", "http://"+s.Addr, "--api-key", s.Admin, "--json")
		agentID := ""
		var cfg struct {
			AgentID string `json:"agent_id"`
		}
		b, _ := os.ReadFile(filepath.Join(bad, "runagent.config.json"))
		json.Unmarshal(b, &cfg)
		agentID = cfg.AgentID
		status := s.do(t, "GET", "/api/v1/agents/"+agentID+"/status", s.Admin, nil)
		for what, text := range map[string]string{"deploy output": out + errOut, "status": string(status.Body)} {
			if strings.Contains(text, s.DataDir) || strings.Contains(text, sharedCache) {
				t.Errorf("%s shows the server's folders: %.600s", what, text)
			}
		}
		if !strings.Contains(out+errOut, "no_such_function") {
			t.Errorf("the start error does not say what is wrong: %.600s", out+errOut)
		}
	})

	t.Run("CORS without credentials", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodOptions, "http://"+s.Addr+"/api/v1/agents/"+id+"/run", nil)
		req.Header.Set("Origin", "https://evil.example")
		req.Header.Set("Access-Control-Request-Method", "POST")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.Header.Get("Access-Control-Allow-Credentials") != "" || resp.Header.Get("Access-Control-Allow-Origin") != "*" {
			t.Errorf("preflight from any page: Allow-Origin %q, Allow-Credentials %q; want * without credentials",
				resp.Header.Get("Access-Control-Allow-Origin"), resp.Header.Get("Access-Control-Allow-Credentials"))
		}
	})

	t.Run("--cors-origin", func(t *testing.T) {
		s := startPlatform(t, "", 0, "--cors-origin", "https://app.example")
		id := s.deploy(t, newHostileAgent(t, nil), s.Admin)
		for origin, want := range map[string]string{"https://app.example": "https://app.example", "https://evil.example": ""} {
			req, _ := http.NewRequest(http.MethodOptions, "http://"+s.Addr+"/api/v1/agents/"+id+"/run", nil)
			req.Header.Set("Origin", origin)
			req.Header.Set("Access-Control-Request-Method", "POST")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if got := resp.Header.Get("Access-Control-Allow-Origin"); got != want {
				t.Errorf("preflight from %s: Allow-Origin %q, want %q", origin, got, want)
			}
			h := http.Header{"Origin": {origin}}
			c, resp, err := websocket.DefaultDialer.Dial("ws://"+s.Addr+"/api/v1/agents/"+id+"/run-stream?token="+s.Admin, h)
			if err == nil {
				c.Close()
			}
			if ok := err == nil; ok != (want != "") {
				status := 0
				if resp != nil {
					status = resp.StatusCode
				}
				t.Errorf("WebSocket from %s: opened %v (status %d), want %v", origin, ok, status, want != "")
			}
		}
	})

	t.Run("--allow-agent-network=false", func(t *testing.T) {
		cmd := exec.Command(binary, "server", "--allow-agent-network=false", "--port", strconv.Itoa(freePort(t)), "--data-dir", t.TempDir())
		cmd.Env = append(os.Environ(), "RUNAGENT_CACHE_DIR="+sharedCache)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "--sandbox namespace") {
			t.Errorf("--allow-agent-network=false with the process sandbox: %v %s, want a refusal naming the sandboxes that can", err, out)
		}
		if _, err := exec.LookPath("bwrap"); err != nil {
			if os.Getenv("RUNAGENT_TEST_NO_BWRAP") == "1" {
				t.Skip("bubblewrap is not installed (RUNAGENT_TEST_NO_BWRAP=1)")
			}
			t.Fatalf("bubblewrap is not installed (set RUNAGENT_TEST_NO_BWRAP=1 to skip): %v", err)
		}
		s := startPlatform(t, "", 0, "--sandbox", "namespace", "--allow-agent-network=false")
		netDir := newHostileAgent(t, map[string]any{"network": true})
		r := uploadAs(t, s, s.Admin, netDir, "")
		if r.Status != 400 || !strings.Contains(r.Env.Error.Message, "deployment.network") {
			t.Errorf("an agent asking for the network: %d %s, want 400 naming deployment.network", r.Status, r.Body)
		}
	})
}
