package storetest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

func testHistory(t *testing.T, open Opener) {
	ctx := context.Background()

	// Reads see every Start and Finish made before them, whatever the
	// store does with them in between.
	t.Run("start, finish, get", func(t *testing.T) {
		s := open(t, "store")
		tests := []struct {
			name    string
			noStart bool
			finish  func(domain.Invocation) domain.Invocation // nil: only Start
		}{
			{name: "pending is visible"},
			{name: "completed", finish: func(i domain.Invocation) domain.Invocation { return completed(i, 12.5, `"hello"`) }},
			{name: "completed with null output", finish: func(i domain.Invocation) domain.Invocation { return completed(i, 1, `null`) }},
			// An empty output is none, like nil.
			{name: "completed without output", finish: func(i domain.Invocation) domain.Invocation { return completed(i, 1, ``) }},
			{name: "failed", finish: func(i domain.Invocation) domain.Invocation { return failed(i, 3.25, "ValueError: boom") }},
			{name: "finish without start", noStart: true, finish: func(i domain.Invocation) domain.Invocation { return completed(i, 2, `[1,2]`) }},
		}
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				start := pending(fmt.Sprintf("inv-%d", i), "agent-a", t0)
				want := start
				if !tt.noStart {
					s.Start(start)
				}
				if tt.finish != nil {
					want = tt.finish(start)
					s.Finish(want)
				}
				assertInvocation(t, mustGet(t, s, start.ID), want)
			})
		}
		t.Run("finish after the pending record was read", func(t *testing.T) {
			start := pending("inv-later", "agent-a", t0)
			s.Start(start)
			if got := mustGet(t, s, start.ID); got.Status != domain.StatusPending {
				t.Fatalf("status %q, want pending", got.Status)
			}
			s.Finish(failed(start, 7, "TIMEOUT: too slow"))
			assertInvocation(t, mustGet(t, s, start.ID), failed(start, 7, "TIMEOUT: too slow"))
		})
		t.Run("unknown id", func(t *testing.T) {
			if _, err := s.Get(ctx, "nope"); !errors.Is(err, domain.ErrNotFound) {
				t.Fatalf("Get(nope) = %v, want ErrNotFound", err)
			}
		})
	})

	// FinishDurable returns once the record is durable: it is read back at
	// once, and after a Close and a fresh open. Callers that arrive
	// together all return.
	t.Run("finish durable", func(t *testing.T) {
		s := open(t, "store")
		var wg sync.WaitGroup
		const n = 20
		for i := range n {
			wg.Go(func() {
				inv := pending(fmt.Sprintf("d%02d", i), "agent", t0)
				s.Start(inv)
				if err := s.FinishDurable(ctx, completed(inv, 1, `"ok"`)); err != nil {
					t.Errorf("FinishDurable(%s): %v", inv.ID, err)
					return
				}
				if got, err := s.Get(ctx, inv.ID); err != nil || got.Status != domain.StatusCompleted {
					t.Errorf("Get(%s) after FinishDurable: status %q, %v", inv.ID, got.Status, err)
				}
			})
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("FinishDurable has not returned after 10 s")
		}
		// Without a Start before it too.
		lone := completed(pending("lone", "agent", t0), 3, `{"a":1}`)
		if err := s.FinishDurable(ctx, lone); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = open(t, "store")
		for i := range n {
			id := fmt.Sprintf("d%02d", i)
			assertInvocation(t, mustGet(t, s, id), completed(pending(id, "agent", t0), 1, `"ok"`))
		}
		assertInvocation(t, mustGet(t, s, "lone"), lone)
	})

	t.Run("list", func(t *testing.T) {
		s := open(t, "store")
		// Request times are distinct except r4/r5, which tie: the later
		// recorded comes first.
		recs := []domain.Invocation{
			completed(pending("r1", "a", t0.Add(1*time.Second)), 1, `1`),
			failed(pending("r2", "a", t0.Add(2*time.Second)), 1, "boom"),
			pending("r3", "a", t0.Add(3*time.Second)),
			completed(pending("r4", "b", t0.Add(4*time.Second)), 1, `4`),
			completed(pending("r5", "a", t0.Add(4*time.Second)), 1, `5`),
			completed(pending("r0", "a", t0), 1, `0`), // recorded last, oldest
		}
		for _, r := range recs {
			s.Start(pending(r.ID, r.AgentID, r.RequestTime))
			if r.Status != domain.StatusPending {
				s.Finish(r)
			}
		}
		tests := []struct {
			agent  string
			status domain.Status
			limit  int
			want   string
		}{
			{"a", "", 50, "r5 r3 r2 r1 r0"},
			{"a", "", 2, "r5 r3"},
			{"a", "", 0, "r5 r3 r2 r1 r0"},
			{"a", "", -1, "r5 r3 r2 r1 r0"},
			{"a", domain.StatusCompleted, 50, "r5 r1 r0"},
			{"a", domain.StatusFailed, 50, "r2"},
			{"a", domain.StatusPending, 50, "r3"},
			{"b", "", 50, "r4"},
			{"", "", 50, "r5 r4 r3 r2 r1 r0"},
			{"", "", 3, "r5 r4 r3"},
			{"", domain.StatusCompleted, 2, "r5 r4"},
			{"nobody", "", 50, ""},
		}
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s/%s/%d", tt.agent, tt.status, tt.limit), func(t *testing.T) {
				got, err := s.List(ctx, tt.agent, tt.status, tt.limit)
				if err != nil {
					t.Fatal(err)
				}
				if g := ids(got); g != tt.want {
					t.Errorf("List = %q, want %q", g, tt.want)
				}
			})
		}
		t.Run("records read back whole", func(t *testing.T) {
			got, err := s.List(ctx, "a", domain.StatusFailed, 50)
			if err != nil || len(got) != 1 {
				t.Fatalf("List: %d, %v", len(got), err)
			}
			assertInvocation(t, got[0], recs[1])
		})
	})

	t.Run("list for agents", func(t *testing.T) {
		s := open(t, "store")
		recs := []domain.Invocation{
			completed(pending("r1", "a", t0.Add(1*time.Second)), 1, `1`),
			failed(pending("r2", "b", t0.Add(2*time.Second)), 1, "boom"),
			pending("r3", "c", t0.Add(3*time.Second)),
			completed(pending("r4", "b", t0.Add(4*time.Second)), 1, `4`),
			completed(pending("r5", "a", t0.Add(4*time.Second)), 1, `5`), // ties with r4, recorded later
			completed(pending("r0", "a", t0), 1, `0`),
		}
		for _, r := range recs {
			s.Start(pending(r.ID, r.AgentID, r.RequestTime))
			if r.Status != domain.StatusPending {
				s.Finish(r)
			}
		}
		tests := []struct {
			agents []string
			status domain.Status
			limit  int
			want   string
		}{
			{[]string{"a", "b"}, "", 50, "r5 r4 r2 r1 r0"},
			{[]string{"a", "zzz"}, "", 50, "r5 r1 r0"},
			{[]string{"b", "a", "c"}, "", 3, "r5 r4 r3"},
			{[]string{"a", "b", "c"}, "", 0, "r5 r4 r3 r2 r1 r0"},
			{[]string{"a", "b"}, domain.StatusCompleted, 50, "r5 r4 r1 r0"},
			{[]string{"b", "c"}, domain.StatusFailed, 50, "r2"},
			{[]string{"c"}, domain.StatusPending, 50, "r3"},
			{[]string{"zzz"}, "", 50, ""},
			{[]string{}, "", 50, ""},
		}
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%v/%s/%d", tt.agents, tt.status, tt.limit), func(t *testing.T) {
				got, err := s.ListForAgents(ctx, tt.agents, tt.status, tt.limit)
				if err != nil {
					t.Fatal(err)
				}
				if g := ids(got); g != tt.want {
					t.Errorf("ListForAgents = %q, want %q", g, tt.want)
				}
			})
		}
	})

	// limit <= 0 is 50.
	t.Run("default limit", func(t *testing.T) {
		s := open(t, "store")
		for i := range 60 {
			s.Start(pending(fmt.Sprintf("p%02d", i), "a", t0.Add(time.Duration(i)*time.Second)))
		}
		for _, limit := range []int{0, -1} {
			got, err := s.List(ctx, "a", "", limit)
			if err != nil || len(got) != 50 || got[0].ID != "p59" || got[49].ID != "p10" {
				t.Errorf("List(limit %d): %d records (%s), %v; want the newest 50, p59 to p10", limit, len(got), ends(got), err)
			}
			got, err = s.ListForAgents(ctx, []string{"a"}, "", limit)
			if err != nil || len(got) != 50 || got[0].ID != "p59" || got[49].ID != "p10" {
				t.Errorf("ListForAgents(limit %d): %d records (%s), %v; want the newest 50, p59 to p10", limit, len(got), ends(got), err)
			}
		}
		if got, err := s.List(ctx, "a", "", 60); err != nil || len(got) != 60 {
			t.Errorf("List(limit 60): %d records, %v", len(got), err)
		}
	})

	t.Run("stats", func(t *testing.T) {
		type rec struct {
			agent  string
			status domain.Status
			ms     float64
		}
		avg := func(v float64) *float64 { return &v }
		tests := []struct {
			name  string
			recs  []rec
			agent string
			want  domain.Stats
		}{
			{name: "empty", agent: "a", want: domain.Stats{AgentID: "a"}},
			{name: "no completed: no average", agent: "a",
				recs: []rec{{"a", domain.StatusFailed, 5}, {"a", domain.StatusPending, 0}},
				want: domain.Stats{Total: 2, Failed: 1, Pending: 1, AgentID: "a"}},
			{name: "rounding", agent: "a",
				// 2/3 = 66.666...%; the average is over completed ones only:
				// (1.005+2.0)/2 = 1.5025 -> 1.5
				recs: []rec{{"a", domain.StatusCompleted, 1.005}, {"a", domain.StatusCompleted, 2}, {"a", domain.StatusFailed, 1000}, {"b", domain.StatusCompleted, 99}},
				want: domain.Stats{Total: 3, Completed: 2, Failed: 1, SuccessRate: 66.67, AvgExecutionMS: avg(1.5), AgentID: "a"}},
			{name: "ties round to even like Python", agent: "a",
				// avg 0.125 -> 0.12 (Python round(0.125, 2) == 0.12); 1/8 completed = 12.5%
				recs: []rec{{"a", domain.StatusCompleted, 0.125}, {"a", domain.StatusFailed, 1}, {"a", domain.StatusFailed, 1}, {"a", domain.StatusFailed, 1},
					{"a", domain.StatusFailed, 1}, {"a", domain.StatusFailed, 1}, {"a", domain.StatusFailed, 1}, {"a", domain.StatusPending, 0}},
				want: domain.Stats{Total: 8, Completed: 1, Failed: 6, Pending: 1, SuccessRate: 12.5, AvgExecutionMS: avg(0.12), AgentID: "a"}},
			{name: "all agents", agent: "",
				recs: []rec{{"a", domain.StatusCompleted, 1}, {"b", domain.StatusCompleted, 2}},
				want: domain.Stats{Total: 2, Completed: 2, SuccessRate: 100, AvgExecutionMS: avg(1.5)}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				s := open(t, "store")
				for i, r := range tt.recs {
					inv := pending(fmt.Sprint("s", i), r.agent, t0.Add(time.Duration(i)*time.Second))
					s.Start(inv)
					switch r.status {
					case domain.StatusCompleted:
						s.Finish(completed(inv, r.ms, `null`))
					case domain.StatusFailed:
						s.Finish(failed(inv, r.ms, "err"))
					}
				}
				got, err := s.Stats(ctx, tt.agent)
				if err != nil {
					t.Fatal(err)
				}
				if !sameStats(got, tt.want) {
					t.Errorf("Stats(%q) = %s, want %s", tt.agent, showStats(got), showStats(tt.want))
				}
			})
		}
	})

	// FailStale fails only the pending sync calls requested before its
	// cutoff.
	t.Run("fail stale", func(t *testing.T) {
		s := open(t, "store")
		old, young := pending("old", "a", t0), pending("young", "a", t0.Add(time.Minute))
		s.Start(old)
		s.Start(young)
		queued := pending("queued", "a", t0)
		if err := s.EnqueueAsync(ctx, domain.AsyncJob{Invocation: queued, Tenant: "acme", TimeoutSeconds: 0}); err != nil {
			t.Fatal(err)
		}
		at := t0.Add(2 * time.Minute)
		if n, err := s.FailStale(ctx, t0.Add(30*time.Second), at); err != nil || n != 1 {
			t.Fatalf("FailStale = %d, %v; want the one call requested before the cutoff", n, err)
		}
		if got := mustGet(t, s, "old"); got.Status != domain.StatusFailed || !strings.Contains(got.ErrorDetail, "stopped") || !got.ResponseTime.Equal(at) {
			t.Errorf("the stale call: %q %q %v", got.Status, got.ErrorDetail, got.ResponseTime)
		}
		for _, id := range []string{"young", "queued"} {
			if got := mustGet(t, s, id); got.Status != domain.StatusPending {
				t.Errorf("%s: %q, want still pending", id, got.Status)
			}
		}
	})

	// FailAbandoned fails the pending invocations that are not queued
	// async ones, and only those.
	t.Run("fail abandoned", func(t *testing.T) {
		s := open(t, "store")
		sync1, sync2 := pending("sync1", "a", t0), pending("sync2", "b", t0.Add(time.Second))
		done := completed(pending("done", "a", t0), 4, `"ok"`)
		bad := failed(pending("bad", "a", t0), 4, "boom")
		s.Start(sync1)
		s.Start(sync2)
		s.Start(done)
		s.Finish(done)
		s.Start(bad)
		s.Finish(bad)
		queued, running := pending("queued", "a", t0), pending("running", "a", t0)
		for _, inv := range []domain.Invocation{queued, running} {
			if err := s.EnqueueAsync(ctx, domain.AsyncJob{Invocation: inv, Tenant: "acme", TimeoutSeconds: 0}); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.StartAsync(ctx, "running", t0); err != nil {
			t.Fatal(err)
		}
		at := now()
		n, err := s.FailAbandoned(ctx, at)
		if err != nil || n != 2 {
			t.Fatalf("FailAbandoned = %d, %v; want the 2 sync calls", n, err)
		}
		for _, inv := range []domain.Invocation{sync1, sync2} {
			got := mustGet(t, s, inv.ID)
			if got.Status != domain.StatusFailed || got.ErrorDetail == "" || !got.ResponseTime.Equal(at) {
				t.Errorf("abandoned %s: status %q, error %q, response time %v; want failed with an error at %v",
					inv.ID, got.Status, got.ErrorDetail, got.ResponseTime, at)
			}
		}
		for _, inv := range []domain.Invocation{queued, running} {
			if got := mustGet(t, s, inv.ID); got.Status != domain.StatusPending {
				t.Errorf("queued async %s: status %q, want pending", inv.ID, got.Status)
			}
		}
		assertInvocation(t, mustGet(t, s, "done"), done)
		assertInvocation(t, mustGet(t, s, "bad"), bad)
		if jobs, err := s.PendingAsync(ctx); err != nil || len(jobs) != 2 {
			t.Errorf("PendingAsync after FailAbandoned: %d jobs, %v; want 2", len(jobs), err)
		}
		if n, err := s.FailAbandoned(ctx, now()); err != nil || n != 0 {
			t.Errorf("second FailAbandoned = %d, %v; want 0", n, err)
		}
	})
}

// ends names the first and the last of invs.
func ends(invs []domain.Invocation) string {
	if len(invs) == 0 {
		return "none"
	}
	return invs[0].ID + " to " + invs[len(invs)-1].ID
}

func sameStats(a, b domain.Stats) bool {
	if (a.AvgExecutionMS == nil) != (b.AvgExecutionMS == nil) {
		return false
	}
	if a.AvgExecutionMS != nil && *a.AvgExecutionMS != *b.AvgExecutionMS {
		return false
	}
	a.AvgExecutionMS, b.AvgExecutionMS = nil, nil
	return a == b
}

func showStats(s domain.Stats) string {
	avg := "nil"
	if s.AvgExecutionMS != nil {
		avg = fmt.Sprint(*s.AvgExecutionMS)
	}
	return fmt.Sprintf("{Total:%d Completed:%d Failed:%d Pending:%d SuccessRate:%v AvgExecutionMS:%s AgentID:%q}",
		s.Total, s.Completed, s.Failed, s.Pending, s.SuccessRate, avg, s.AgentID)
}
