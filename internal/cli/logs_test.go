package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/platformapi"
)

func TestFormatLogLine(t *testing.T) {
	for _, tt := range []struct {
		l    platformapi.LogLine
		want string
	}{
		{platformapi.LogLine{Time: "2026-11-24T10:00:00.123456Z", Version: 3, Instance: "2", InvocationID: "0193a1b2-aaaa-7000-8000-000000000000", Stream: "stdout", Line: "hello\n"},
			"2026-11-24T10:00:00.123Z v3 inst-2 [inv 0193a1b2…] stdout: hello"},
		{platformapi.LogLine{Time: "2026-11-24T11:00:00+01:00", Version: 1, Instance: "inst-7", Stream: "stderr", Line: "oops"},
			"2026-11-24T10:00:00.000Z v1 inst-7 stderr: oops"},
		{platformapi.LogLine{Time: "later", Line: "x"}, "later log: x"},
	} {
		if got := formatLogLine(tt.l); got != tt.want {
			t.Errorf("formatLogLine(%+v) = %q, want %q", tt.l, got, tt.want)
		}
	}
}

// syncBuffer is a bytes.Buffer a test may read while a command writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// startCLI runs a command line in the background; its stdout can be read
// as it goes, and the result arrives on the channel.
func startCLI(args ...string) (*syncBuffer, <-chan error) {
	out := &syncBuffer{}
	a := &app{version: "test", stdout: out, stderr: io.Discard}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(strings.NewReader(""))
	root.SetOut(io.Discard)
	root.SetErr(io.Discard)
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(context.Background()) }()
	return out, done
}

// chatty.py: entrypoints that print lines, one that prints while it waits.
const chattyCode = `import os, time

def chatter(n):
    for i in range(1, int(n) + 1):
        print("line %d" % i)
    return n

def say(word):
    print(word)
    return word

def wait_for(marker):
    print("one")
    print("two")
    deadline = time.time() + 60
    while not os.path.exists(marker) and time.time() < deadline:
        time.sleep(0.02)
    print("three")
    return "done"
`

// logLine matches one printed log line of version 1.
func logLinePattern(inv, text string) *regexp.Regexp {
	return regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z v1 v1-\d+ \[inv ` + regexp.QuoteMeta(short(inv, 8)) + `\] stdout: ` + regexp.QuoteMeta(text) + `$`)
}

func TestLogs(t *testing.T) {
	isolate(t)
	p := newPlatform(t)
	t.Setenv(EnvServer, p.url)
	t.Setenv(EnvAPIKey, p.admin)
	dir := newAgentDir(t)
	for _, fn := range []string{"chatter", "say", "wait_for"} {
		addEntrypoint(t, dir, "chatty.py", chattyCode, fn, fn)
	}
	id := p.deploy(t, dir, p.admin)
	c := p.client(p.admin)
	ctx := context.Background()

	// One invocation prints 1203 lines.
	p.run(t, p.admin, id, "chatter", map[string]any{"n": 1203}, false)
	invs, err := c.ListInvocations(ctx, id, "", 1)
	if err != nil || len(invs.Invocations) != 1 {
		t.Fatalf("invocations: %+v %v", invs, err)
	}
	inv := invs.Invocations[0].InvocationID
	var lines []platformapi.LogLine
	waitFor(t, 30*time.Second, "the 1203 lines in the log", func() bool {
		page, err := c.Logs(ctx, id, inv, 0, 10000)
		if err != nil {
			t.Fatal(err)
		}
		lines = page.Logs
		return len(lines) >= 1203
	})

	// The last 3 lines: every page is read, the tail kept.
	p.reset()
	res := runCLI(t, "", "logs", id, "--limit", "3", "--invocation", inv)
	if res.err != nil {
		t.Fatal(res.err)
	}
	got := strings.Split(strings.TrimSuffix(res.stdout, "\n"), "\n")
	if len(got) != 3 {
		t.Fatalf("stdout = %q, want 3 lines", res.stdout)
	}
	for i, seq := range []int{1201, 1202, 1203} {
		if want := logLinePattern(inv, fmt.Sprintf("line %d", seq)); !want.MatchString(got[i]) {
			t.Errorf("line %d = %q, want %s", i, got[i], want)
		}
	}
	after := func(n int) string { return strconv.FormatInt(lines[n-1].Seq, 10) }
	wantCalls := []string{"GET /api/v1/agents/" + id + "/logs?invocation_id=" + inv + "&limit=500",
		"GET /api/v1/agents/" + id + "/logs?after=" + after(500) + "&invocation_id=" + inv + "&limit=500",
		"GET /api/v1/agents/" + id + "/logs?after=" + after(1000) + "&invocation_id=" + inv + "&limit=500"}
	if calls := p.calls(); strings.Join(calls, "\n") != strings.Join(wantCalls, "\n") {
		t.Errorf("calls:\n%s\nwant:\n%s", strings.Join(calls, "\n"), strings.Join(wantCalls, "\n"))
	}

	// --after: the next lines, one page of --limit.
	res = runCLI(t, "", "logs", id, "--after", "10", "-n", "2", "--json")
	var l1, l2 map[string]any
	dec := json.NewDecoder(strings.NewReader(res.stdout))
	if res.err != nil || dec.Decode(&l1) != nil || dec.Decode(&l2) != nil || l1["seq"] != 11.0 || l2["seq"] != 12.0 || l1["agent_id"] != id || dec.More() {
		t.Errorf("--after --json: %v %q", res.err, res.stdout)
	}
	if c := p.calls(); c[len(c)-1] != "GET /api/v1/agents/"+id+"/logs?after=10&limit=2" {
		t.Errorf("last call = %q", c[len(c)-1])
	}

	// --follow goes on from the last line read, filters by invocation, and
	// reports a stream the server closed. The invocation followed prints
	// two lines, waits for a marker file, then prints a third; another
	// invocation prints in between.
	marker := filepath.Join(t.TempDir(), "go-on")
	var waiting struct {
		InvocationID string `json:"invocation_id"`
	}
	json.Unmarshal(p.run(t, p.admin, id, "wait_for", map[string]any{"marker": marker}, true), &waiting)
	var two int64
	waitFor(t, 30*time.Second, "the waiting invocation's first lines", func() bool {
		page, _ := c.Logs(ctx, id, waiting.InvocationID, 0, 0)
		if page != nil && len(page.Logs) == 2 {
			two = page.Logs[1].Seq
			return true
		}
		return false
	})
	p.reset()
	out, done := startCLI("logs", id, "-f", "--invocation", waiting.InvocationID)
	waitFor(t, 30*time.Second, "logs -f to print the past lines and follow", func() bool {
		return strings.Contains(out.String(), "stdout: two\n") && slices.ContainsFunc(p.calls(), func(c string) bool { return strings.Contains(c, "follow=true") })
	})
	p.run(t, p.admin, id, "say", map[string]any{"word": "four"}, false)
	os.WriteFile(marker, nil, 0o644)
	waitFor(t, 30*time.Second, "the followed line", func() bool { return strings.Contains(out.String(), "stdout: three\n") })
	p.srv.CloseClientConnections()
	var followErr error
	select {
	case followErr = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("logs -f did not end when the server closed the stream")
	}
	if followErr == nil || !strings.Contains(followErr.Error(), "the server at "+p.url+" closed the log stream") {
		t.Errorf("follow end: %v", followErr)
	}
	printed := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(printed) != 3 || !logLinePattern(waiting.InvocationID, "one").MatchString(printed[0]) || !logLinePattern(waiting.InvocationID, "two").MatchString(printed[1]) ||
		!logLinePattern(waiting.InvocationID, "three").MatchString(printed[2]) || strings.Contains(out.String(), "four") {
		t.Errorf("follow stdout = %q", out.String())
	}
	if c := p.calls(); len(c) < 2 || c[1] != "GET /api/v1/agents/"+id+"/logs?after="+strconv.FormatInt(two, 10)+"&follow=true" {
		t.Errorf("calls of logs -f = %q", c)
	}

	for _, args := range [][]string{{"logs"}, {"logs", id, "--limit", "0"}, {"logs", id, "--after", "-1"}} {
		if res := runCLI(t, "", args...); res.err == nil {
			t.Errorf("%q did not fail", args)
		}
	}
}

func TestInvocations(t *testing.T) {
	isolate(t)
	p := newPlatform(t)
	t.Setenv(EnvServer, p.url)
	t.Setenv(EnvAPIKey, p.admin)
	dir := newAgentDir(t)
	addEntrypoint(t, dir, "fail.py", "def fail():\n    raise ValueError(\"boom\\n  at line 3\")\n", "fail", "fail")
	id := p.deploy(t, dir, p.admin)
	p.run(t, p.admin, id, "minimal", map[string]any{"message": "hi"}, false)
	if _, ok, _ := p.post(t, p.admin, id, map[string]any{"entrypoint_tag": "fail", "input_args": []any{}, "input_kwargs": map[string]any{}}); ok {
		t.Fatal("the failing entrypoint succeeded")
	}
	failed, err := p.client(p.admin).ListInvocations(context.Background(), id, "failed", 0)
	if err != nil || len(failed.Invocations) != 1 || failed.Invocations[0].ExecutionTimeMS == nil {
		t.Fatalf("failed invocations: %+v %v", failed, err)
	}
	inv := failed.Invocations[0]
	if inv.ErrorDetail == nil || !strings.HasSuffix(*inv.ErrorDetail, ": boom\n  at line 3") {
		t.Fatalf("error detail = %v", inv.ErrorDetail)
	}

	p.reset()
	res := runCLI(t, "", "invocations", "--agent", id, "--status", "failed", "--limit", "1")
	if res.err != nil {
		t.Fatal(res.err)
	}
	lines := strings.Split(strings.TrimSpace(res.stdout), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "INVOCATION") || !strings.Contains(lines[1], inv.InvocationID) ||
		!strings.Contains(lines[1], fmt.Sprintf("%.1fms", *inv.ExecutionTimeMS)) || !strings.Contains(lines[1], "fail") ||
		!strings.HasSuffix(lines[1], "  "+short("Server error running agent "+id+": boom at line 3", 60)) {
		t.Errorf("table (the error on one line, cut at 60 characters):\n%s", res.stdout)
	}
	if c := p.calls(); len(c) != 1 || c[0] != "GET /api/v1/invocations?agent_id="+id+"&limit=1&status=failed" {
		t.Errorf("calls = %q", c)
	}

	res = runCLI(t, "", "invocations", "--status", "done")
	if res.err == nil || !strings.Contains(res.err.Error(), `--status: "done" is not pending, completed or failed`) {
		t.Errorf("bad status: %v", res.err)
	}

	res = runCLI(t, "", "invocations", "show", inv.InvocationID, "--json")
	var got map[string]any
	if res.err != nil || json.Unmarshal([]byte(res.stdout), &got) != nil || got["invocation_id"] != inv.InvocationID ||
		got["execution_time_ms"] != *inv.ExecutionTimeMS || got["status"] != "failed" {
		t.Errorf("show --json: %v %q", res.err, res.stdout)
	}
	res = runCLI(t, "", "invocations", "show", "i9")
	if res.err == nil || !strings.Contains(res.err.Error(), "no invocation i9 on "+p.url+"; list them with: runagent invocations") {
		t.Errorf("show unknown: %v", res.err)
	}
}

// The platform server's total_count is the number of invocations it lists,
// so only a server that counts more than it sends (the original cloud) makes
// the table say there are more. This one case therefore has a handler of its
// own instead of the real platform.
func TestInvocationsMoreThanListed(t *testing.T) {
	isolate(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"success":true,"data":{"invocations":[{"invocation_id":"i1","agent_id":"0193a1b2-0000-7000-8000-000000000000",`+
			`"input_data":{"input_args":[],"input_kwargs":{}},"output_data":null,"error_detail":null,"request_timestamp":"2026-11-24T10:00:00",`+
			`"response_timestamp":"2026-11-24T10:00:01","execution_time_ms":12.34,"status":"completed","entrypoint_tag":"minimal","sdk_type":"go","client_info":null}],`+
			`"total_count":5},"message":null,"error":null,"timestamp":"t","request_id":"r"}`)
	}))
	t.Cleanup(srv.Close)
	res := runCLI(t, "", "invocations", "--limit", "1", "--server", srv.URL, "--api-key", "ra_k")
	lines := strings.Split(strings.TrimSpace(res.stdout), "\n")
	if res.err != nil || len(lines) != 3 || !strings.Contains(lines[1], "12.3ms") || lines[2] != "(1 of 5; see more with --limit)" {
		t.Errorf("table: %v\n%s", res.err, res.stdout)
	}
}
