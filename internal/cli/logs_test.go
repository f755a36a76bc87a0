package cli

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

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

func TestLogs(t *testing.T) {
	isolate(t)
	p := newPlatform(t)
	t.Setenv(EnvServer, p.srv.URL)
	t.Setenv(EnvAPIKey, cliTestKey)
	p.logs = 1203

	// The last 3 lines: every page is read, the tail kept.
	res := runCLI(t, "", "logs", "a1", "--limit", "3", "--invocation", "I")
	if res.err != nil {
		t.Fatal(res.err)
	}
	want := ""
	for seq := 1201; seq <= 1203; seq++ {
		want += fmt.Sprintf("2026-11-24T10:00:00.123Z v3 inst-2 [inv 0193a1b2…] stdout: line %d\n", seq)
	}
	if res.stdout != want {
		t.Errorf("stdout = %q, want %q", res.stdout, want)
	}
	calls := p.calls()
	wantCalls := []string{"GET /api/v1/agents/a1/logs?invocation_id=I&limit=500", "GET /api/v1/agents/a1/logs?after=500&invocation_id=I&limit=500",
		"GET /api/v1/agents/a1/logs?after=1000&invocation_id=I&limit=500"}
	if strings.Join(calls, "\n") != strings.Join(wantCalls, "\n") {
		t.Errorf("calls:\n%s\nwant:\n%s", strings.Join(calls, "\n"), strings.Join(wantCalls, "\n"))
	}

	// --after: the next lines, one page of --limit.
	res = runCLI(t, "", "logs", "a1", "--after", "10", "-n", "2", "--json")
	var l1, l2 map[string]any
	dec := json.NewDecoder(strings.NewReader(res.stdout))
	if res.err != nil || dec.Decode(&l1) != nil || dec.Decode(&l2) != nil || l1["seq"] != 11.0 || l2["seq"] != 12.0 || dec.More() {
		t.Errorf("--after --json: %v %q", res.err, res.stdout)
	}
	if c := p.calls(); c[len(c)-1] != "GET /api/v1/agents/a1/logs?after=10&limit=2" {
		t.Errorf("last call = %q", c[len(c)-1])
	}

	// --follow goes on from the last line read, filters by invocation, and
	// reports a stream the server closed.
	p.logs = 2
	p.follow = []string{
		`{"seq":3,"time":"2026-11-24T10:00:01Z","version":3,"instance":"inst-1","invocation_id":"I","stream":"stdout","line":"three"}`,
		`{"seq":4,"time":"2026-11-24T10:00:02Z","version":3,"instance":"inst-1","invocation_id":"J","stream":"stdout","line":"four"}`,
	}
	res = runCLI(t, "", "logs", "a1", "-f", "--invocation", "I")
	if res.err == nil || !strings.Contains(res.err.Error(), "closed the log stream") {
		t.Errorf("follow end: %v", res.err)
	}
	if !strings.HasSuffix(res.stdout, "line 2\n2026-11-24T10:00:01.000Z v3 inst-1 [inv I] stdout: three\n") || strings.Contains(res.stdout, "four") {
		t.Errorf("follow stdout = %q", res.stdout)
	}
	if c := p.calls(); c[len(c)-1] != "GET /api/v1/agents/a1/logs?after=2&follow=true" {
		t.Errorf("follow call = %q", c[len(c)-1])
	}

	for _, args := range [][]string{{"logs"}, {"logs", "a1", "--limit", "0"}, {"logs", "a1", "--after", "-1"}} {
		if res := runCLI(t, "", args...); res.err == nil {
			t.Errorf("%q did not fail", args)
		}
	}
}

func TestInvocations(t *testing.T) {
	isolate(t)
	p := newPlatform(t)
	t.Setenv(EnvServer, p.srv.URL)
	t.Setenv(EnvAPIKey, cliTestKey)

	res := runCLI(t, "", "invocations", "--agent", "a1", "--status", "failed", "--limit", "1")
	if res.err != nil {
		t.Fatal(res.err)
	}
	lines := strings.Split(strings.TrimSpace(res.stdout), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "INVOCATION") || !strings.Contains(lines[1], "i1") || !strings.Contains(lines[1], "12.3ms") ||
		!strings.Contains(lines[1], "ValueError: boom at line 3") || lines[2] != "(1 of 5; see more with --limit)" {
		t.Errorf("table:\n%s", res.stdout)
	}
	if c := p.calls(); c[0] != "GET /api/v1/invocations?agent_id=a1&limit=1&status=failed" {
		t.Errorf("call = %q", c[0])
	}

	res = runCLI(t, "", "invocations", "--status", "done")
	if res.err == nil || !strings.Contains(res.err.Error(), `--status: "done" is not pending, completed or failed`) {
		t.Errorf("bad status: %v", res.err)
	}

	res = runCLI(t, "", "invocations", "show", "i1", "--json")
	var inv map[string]any
	if res.err != nil || json.Unmarshal([]byte(res.stdout), &inv) != nil || inv["invocation_id"] != "i1" || inv["execution_time_ms"] != 12.34 {
		t.Errorf("show --json: %v %q", res.err, res.stdout)
	}
	res = runCLI(t, "", "invocations", "show", "i9")
	if res.err == nil || !strings.Contains(res.err.Error(), "no invocation i9 on "+p.srv.URL+"; list them with: runagent invocations") {
		t.Errorf("show unknown: %v", res.err)
	}
}
