package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/store/pgstore/pgtest"
)

// TestPlatformOnPostgres runs the platform server with its state in a real
// PostgreSQL (--db): deploy, sync, stream and async calls, the history,
// keys; a kill -9 and a restart keep all of it; a second server on the
// same database is refused with a clear error.
func TestPlatformOnPostgres(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	db := pgtest.Schema(t, data) // a new schema for each run
	port := freePort(t)
	s := startPlatform(t, data, port, "--db", db)
	if _, err := os.Stat(filepath.Join(data, "platform.db")); err == nil {
		t.Errorf("a SQLite platform.db was created beside --db")
	}

	dir, _ := newAgent(t, "showcase")
	id := s.deploy(t, dir, s.Admin)
	r := s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, runBody("add", map[string]any{"a": 2, "b": 3}))
	if r.Status != 200 || !strings.Contains(string(r.Env.Data), `\"payload\": \"5\"`) {
		t.Fatalf("sync call: %d %s\n%s", r.Status, r.Body, s.Logs())
	}
	if st, frames := s.stream(t, id, s.Admin, "count_stream", map[string]any{"n": 3}); st != 101 || len(frames) != 5 || frames[4]["status"] != "stream_completed" {
		t.Errorf("stream: %d %v", st, frames)
	}
	async := acceptedID(t, asyncRun(t, s, s.Admin, id, "add", map[string]any{"a": 40, "b": 2}))
	if st, detail := waitInvocation(t, s, async, 30*time.Second); st != "completed" {
		t.Fatalf("async call: %s %s\n%s", st, detail, s.Logs())
	}
	key := s.createKey(t, map[string]any{"name": "runner", "scopes": []string{"run"}})

	// A second server on the same database is refused, naming the problem.
	out, err := exec.Command(binary, "server", "--port", strconv.Itoa(freePort(t)), "--data-dir", t.TempDir(), "--db", db).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "another runagent server is using this database") {
		t.Errorf("a second server on the same database: %v\n%s", err, out)
	}

	// kill -9, then the same data directory and database again.
	syscall.Kill(s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.exited
	s2 := startPlatform(t, data, port, "--db", db)
	if r := s2.do(t, "POST", "/api/v1/agents/"+id+"/run", key, runBody("add", map[string]any{"a": 1, "b": 1})); r.Status != 200 || !strings.Contains(string(r.Env.Data), `\"payload\": \"2\"`) {
		t.Fatalf("after the restart, with the key made before it: %d %s\n%s", r.Status, r.Body, s2.Logs())
	}
	g := s2.do(t, "GET", "/api/v1/agents/"+id+"/invocations?limit=10", s2.Admin, nil)
	var list struct {
		Invocations []struct {
			EntrypointTag string          `json:"entrypoint_tag"`
			Status        string          `json:"status"`
			OutputData    json.RawMessage `json:"output_data"`
		} `json:"invocations"`
	}
	if err := json.Unmarshal(g.Body, &list); err != nil || g.Status != 200 {
		t.Fatalf("history: %d %s", g.Status, g.Body)
	}
	outputs := map[string]bool{}
	for _, inv := range list.Invocations {
		if inv.Status == "completed" {
			outputs[inv.EntrypointTag+"="+string(inv.OutputData)] = true
		}
	}
	for _, want := range []string{"add=5", "add=42", "add=2"} {
		if !outputs[want] {
			t.Errorf("history after the restart lacks %s: %s", want, g.Body)
		}
	}
}

// PostgreSQL restarts under a running server: what needs the database
// answers 503 CONNECTION_ERROR with a Retry-After while it is down (never a
// 500), calls keep being answered, and afterwards every call is in the
// history.
func TestPlatformPostgresRestart(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	s := startPlatform(t, data, 0, "--db", pgtest.Schema(t, data))
	dir, _ := newAgent(t, "showcase")
	id := s.deploy(t, dir, s.Admin)
	call := func() reply {
		return s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, runBody("add", map[string]any{"a": 1, "b": 2}))
	}
	if r := call(); r.Status != 200 {
		t.Fatalf("call: %d %s", r.Status, r.Body)
	}
	restarted := make(chan struct{})
	go func() { defer close(restarted); pgtest.Restart(t, 2*time.Second) }()
	sawDown := false
	calls := 1
	for i := 0; i < 30 && !sawDown; i++ {
		time.Sleep(50 * time.Millisecond)
		r := s.do(t, "GET", "/api/v1/agents/"+id+"/invocations?limit=1", s.Admin, nil)
		switch {
		case r.Status == 503 && r.code() == "CONNECTION_ERROR" && r.Header.Get("Retry-After") != "":
			sawDown = true
		case r.Status != 200:
			t.Fatalf("history while the database restarts: %d %s (want 200 or 503 CONNECTION_ERROR with Retry-After)", r.Status, r.Body)
		}
	}
	if !sawDown {
		t.Fatalf("the history never answered 503 while the database was down\n%s", s.Logs())
	}
	// A call while it is down is answered (once its row is written).
	if r := call(); r.Status != 200 {
		t.Errorf("a call while the database restarts: %d %s", r.Status, r.Body)
	}
	calls++
	<-restarted
	for range 3 {
		if r := call(); r.Status != 200 {
			t.Fatalf("a call after the restart: %d %s\n%s", r.Status, r.Body, s.Logs())
		}
		calls++
	}
	g := s.do(t, "GET", "/api/v1/agents/"+id+"/invocations?limit=50", s.Admin, nil)
	var list struct {
		Invocations []struct{ Status string } `json:"invocations"`
	}
	json.Unmarshal(g.Body, &list)
	if g.Status != 200 || len(list.Invocations) != calls {
		t.Errorf("history after the restart: %d with %d invocations, want %d\n%s", g.Status, len(list.Invocations), calls, g.Body)
	}
}
