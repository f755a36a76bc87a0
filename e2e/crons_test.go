package e2e

import (
	"encoding/json"
	"net/url"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cronRuns lists the runs a cron created, oldest first, with their ticks.
func cronRuns(t testing.TB, s *platformServer, agent, cronID string) (ticks []time.Time, statuses []string) {
	t.Helper()
	r := s.do(t, "GET", "/api/v1/runs?limit=1000&agent_id="+url.QueryEscape(agent), s.Admin, nil)
	var l struct {
		Runs []struct {
			Status      string  `json:"status"`
			ErrorDetail *string `json:"error_detail"`
			SDKType     string  `json:"sdk_type"`
			ClientInfo  struct {
				CronID string `json:"cron_id"`
				Tick   string `json:"tick"`
			} `json:"client_info"`
		} `json:"runs"`
	}
	if err := json.Unmarshal(r.Env.Data, &l); err != nil || r.Status != 200 {
		t.Fatalf("list runs: %d %s", r.Status, r.Body)
	}
	for i := len(l.Runs) - 1; i >= 0; i-- {
		run := l.Runs[i]
		if run.ClientInfo.CronID != cronID {
			continue
		}
		tick, err := time.Parse(time.RFC3339, run.ClientInfo.Tick)
		if err != nil || run.SDKType != "cron" {
			t.Fatalf("a cron's run: %+v", run)
		}
		st := run.Status
		if run.ErrorDetail != nil && strings.Contains(*run.ErrorDetail, "stopped while it ran") {
			st = "interrupted"
		}
		ticks, statuses = append(ticks, tick), append(statuses, st)
	}
	return ticks, statuses
}

// A cron every 2 s creates one run per tick, also across a kill -9 and a
// restart (a tick is never created twice; ticks missed while the server
// was down are skipped); paused it creates none, resumed it goes on,
// deleted it is gone; a bad schedule, zone, entrypoint or end time is a
// 400 naming the field.
func TestPlatformCrons(t *testing.T) {
	data, port := t.TempDir(), freePort(t)
	s := startPlatform(t, data, port)
	dir, _ := newAgent(t, "showcase")
	id := s.deploy(t, dir, s.Admin)

	create := func(s *platformServer, body map[string]any) reply {
		t.Helper()
		return s.do(t, "POST", "/api/v1/agents/"+id+"/crons", s.Admin, body)
	}
	for _, c := range []struct {
		body  map[string]any
		field string
	}{
		{map[string]any{"schedule": "every minute", "entrypoint_tag": "add"}, "schedule"},
		{map[string]any{"schedule": "* * * * *", "timezone": "Mars/Olympus", "entrypoint_tag": "add"}, "timezone"},
		{map[string]any{"schedule": "* * * * *", "entrypoint_tag": "count_stream"}, "entrypoint_tag"},
		{map[string]any{"schedule": "* * * * *", "entrypoint_tag": "add", "end_time": "2020-01-01T00:00:00Z"}, "end_time"},
		{map[string]any{"schedule": "* * * * *", "entrypoint_tag": "add", "end_time": "tomorrow"}, "end_time"},
		{map[string]any{"schedule": "* * * * *", "entrypoint_tag": "add", "webhook": "http://169.254.169.254/"}, "webhook"},
		{map[string]any{"schedule": "* * * * *", "entrypoint_tag": "add", "input_kwargs": []int{1}}, "input_kwargs"},
		{map[string]any{"schedule": "* * * * *", "entrypoint_tag": "add", "cron": "typo"}, "cron"},
	} {
		if r := create(s, c.body); r.Status != 400 || !strings.Contains(string(r.Body), c.field) {
			t.Errorf("create %v: %d %s, want 400 naming %s", c.body, r.Status, r.Body, c.field)
		}
	}

	r := create(s, map[string]any{"schedule": "*/2 * * * * *", "timezone": "Europe/Paris", "entrypoint_tag": "add", "input_kwargs": map[string]any{"a": 1, "b": 2}})
	var cr struct {
		CronID    string  `json:"cron_id"`
		NextRunAt *string `json:"next_run_at"`
		Paused    bool    `json:"paused"`
		LastRunID *string `json:"last_run_id"`
	}
	json.Unmarshal(r.Env.Data, &cr)
	if r.Status != 201 || cr.CronID == "" || cr.NextRunAt == nil || r.Header.Get("Location") != "/api/v1/crons/"+cr.CronID {
		t.Fatalf("create a cron: %d %s", r.Status, r.Body)
	}
	countRuns := func(s *platformServer) int { ticks, _ := cronRuns(t, s, id, cr.CronID); return len(ticks) }
	eventually(t, 15*time.Second, "two runs of the cron", func() bool { return countRuns(s) >= 2 })

	// kill -9 and start again on the same data.
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.exited
	down := time.Now()
	time.Sleep(3 * time.Second) // a tick or more passes while no server fires
	s2 := startPlatform(t, data, port)
	before := countRuns(s2)
	eventually(t, 20*time.Second, "runs after the restart", func() bool { return countRuns(s2) >= before+2 })

	// Paused: no run; resumed: runs again.
	if r := s2.do(t, "POST", "/api/v1/crons/"+cr.CronID+"/pause", s2.Admin, nil); r.Status != 200 || !strings.Contains(string(r.Body), `"paused":true`) {
		t.Fatalf("pause: %d %s", r.Status, r.Body)
	}
	time.Sleep(500 * time.Millisecond) // a tick being fired as it was paused lands now
	paused := countRuns(s2)
	time.Sleep(3 * time.Second)
	if n := countRuns(s2); n != paused {
		t.Fatalf("a paused cron created %d runs", n-paused)
	}
	if r := s2.do(t, "POST", "/api/v1/crons/"+cr.CronID+"/resume", s2.Admin, nil); r.Status != 200 {
		t.Fatalf("resume: %d %s", r.Status, r.Body)
	}
	eventually(t, 10*time.Second, "a run after the resume", func() bool { return countRuns(s2) > paused })
	if r := s2.do(t, "DELETE", "/api/v1/crons/"+cr.CronID, s2.Admin, nil); r.Status != 200 {
		t.Fatalf("delete: %d %s", r.Status, r.Body)
	}
	time.Sleep(500 * time.Millisecond)

	// Every tick once, 2 s apart or a whole number of periods (skipped
	// while the server was down or the cron paused), each run completed.
	ticks, statuses := cronRuns(t, s2, id, cr.CronID)
	for i, tick := range ticks {
		if tick.Second()%2 != 0 || tick.Nanosecond() != 0 {
			t.Errorf("tick %s is not on the schedule", tick)
		}
		if i > 0 && !tick.After(ticks[i-1]) {
			t.Errorf("tick %s fired twice or out of order (after %s)", tick, ticks[i-1])
		}
	}
	// Each run completed, but one running at the kill: it ended failed,
	// not run again (add is not declared idempotent).
	pollUntil(10*time.Second, func() bool {
		_, statuses = cronRuns(t, s2, id, cr.CronID)
		return !slices.Contains(statuses, "pending") && !slices.Contains(statuses, "running")
	})
	interrupted := 0
	for i, st := range statuses {
		switch st {
		case "completed":
		case "interrupted":
			interrupted++
		default:
			t.Errorf("the run of tick %s: %s", ticks[i], st)
		}
	}
	if interrupted > 1 {
		t.Errorf("%d runs interrupted by one kill", interrupted)
	}
	t.Logf("%d runs; the server was down from %s", len(ticks), down.Format("15:04:05.000"))

	if r := s2.do(t, "GET", "/api/v1/crons/"+cr.CronID, s2.Admin, nil); r.Status != 404 {
		t.Errorf("a deleted cron: %d %s", r.Status, r.Body)
	}
	other := s2.createKey(t, map[string]any{"name": "other", "tenant": "other", "scopes": []string{"run"}})
	c2 := create(s2, map[string]any{"schedule": "@hourly", "entrypoint_tag": "add"})
	json.Unmarshal(c2.Env.Data, &cr)
	if r := s2.do(t, "GET", "/api/v1/crons/"+cr.CronID, other, nil); r.Status != 404 {
		t.Errorf("another tenant's cron: %d %s, want 404", r.Status, r.Body)
	}
	if r := s2.do(t, "GET", "/api/v1/agents/"+id+"/crons", s2.Admin, nil); r.Status != 200 || !strings.Contains(string(r.Body), cr.CronID) {
		t.Errorf("list crons: %d %s", r.Status, r.Body)
	}
}
