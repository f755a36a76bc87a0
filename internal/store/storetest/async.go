package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

func testAsync(t *testing.T, open Opener) {
	ctx := context.Background()

	// An accepted invocation is pending in the history at once, and leaves
	// the queue with its outcome.
	t.Run("enqueue, start, finish", func(t *testing.T) {
		s := open(t, "store")
		inv := pending("job", "a", t0)
		inv.SDKType = "async"
		inv.InputKwargs = json.RawMessage(`{"message": "héllo <b>",  "n": 1.50}`)
		if err := s.EnqueueAsync(ctx, domain.AsyncJob{Invocation: inv, Tenant: "acme", TimeoutSeconds: 2.5}); err != nil {
			t.Fatal(err)
		}
		assertInvocation(t, mustGet(t, s, "job"), inv)
		if got, err := s.List(ctx, "a", domain.StatusPending, 10); err != nil || ids(got) != "job" {
			t.Fatalf("List of pending: %q, %v", ids(got), err)
		}
		jobs, err := s.PendingAsync(ctx)
		if err != nil || len(jobs) != 1 {
			t.Fatalf("PendingAsync: %s, %v", showJobs(jobs), err)
		}
		j := jobs[0]
		assertInvocation(t, j.Invocation, inv)
		if j.Tenant != "acme" || j.TimeoutSeconds != 2.5 || j.Attempts != 0 || !j.StartedAt.IsZero() {
			t.Fatalf("queued job: %s", showJobs([]domain.AsyncJob{j}))
		}
		for attempt, at := range []time.Time{t0.Add(time.Second), t0.Add(2 * time.Second)} {
			if err := s.StartAsync(ctx, "job", at); err != nil {
				t.Fatal(err)
			}
			jobs, _ = s.PendingAsync(ctx)
			if len(jobs) != 1 || jobs[0].Attempts != attempt+1 || !jobs[0].StartedAt.Equal(at) {
				t.Fatalf("after start %d: %s", attempt+1, showJobs(jobs))
			}
		}
		// Starting is not an outcome: the history still says pending.
		if got := mustGet(t, s, "job"); got.Status != domain.StatusPending {
			t.Fatalf("a started job's status: %q", got.Status)
		}
		if err := s.RequeueAsync(ctx, "job"); err != nil {
			t.Fatal(err)
		}
		jobs, _ = s.PendingAsync(ctx)
		if len(jobs) != 1 || jobs[0].Attempts != 2 || !jobs[0].StartedAt.IsZero() {
			t.Fatalf("requeued: %s; want not started, its 2 attempts counted", showJobs(jobs))
		}
		done := failed(inv, 25, "TIMEOUT: the call outlasted 2.5 s")
		if err := s.FinishAsync(ctx, done); err != nil {
			t.Fatal(err)
		}
		assertInvocation(t, mustGet(t, s, "job"), done)
		if jobs, err := s.PendingAsync(ctx); err != nil || len(jobs) != 0 {
			t.Fatalf("still queued after FinishAsync: %s, %v", showJobs(jobs), err)
		}
		if err := s.StartAsync(ctx, "job", now()); !errors.Is(err, domain.ErrNotFound) {
			t.Fatalf("StartAsync of a finished job = %v, want ErrNotFound", err)
		}
		if err := s.StartAsync(ctx, "nope", now()); !errors.Is(err, domain.ErrNotFound) {
			t.Fatalf("StartAsync of an unknown invocation = %v, want ErrNotFound", err)
		}
		// A sync call is not queued either.
		s.Start(pending("sync", "a", t0))
		if err := s.StartAsync(ctx, "sync", now()); !errors.Is(err, domain.ErrNotFound) {
			t.Fatalf("StartAsync of a sync call = %v, want ErrNotFound", err)
		}
	})

	t.Run("one job and the backlog", func(t *testing.T) {
		s := open(t, "store")
		for i, q := range []struct{ id, agent, tenant string }{{"b1", "x", "acme"}, {"b2", "x", "acme"}, {"b3", "y", "acme"}, {"b4", "z", "other"}} {
			inv := pending(q.id, q.agent, t0.Add(time.Duration(i)*time.Second))
			inv.InputKwargs = json.RawMessage(`{"i": ` + fmt.Sprint(i) + `}`)
			if err := s.EnqueueAsync(ctx, domain.AsyncJob{Invocation: inv, Tenant: q.tenant, TimeoutSeconds: 1.5}); err != nil {
				t.Fatal(err)
			}
		}
		s.Start(pending("sync", "x", t0)) // not queued
		for _, tc := range []struct {
			tenant, agent string
			want          domain.AsyncBacklog
		}{
			{"acme", "x", domain.AsyncBacklog{Total: 4, Tenant: 3, Agent: 2}},
			{"other", "y", domain.AsyncBacklog{Total: 4, Tenant: 1, Agent: 1}},
			{"nobody", "nothing", domain.AsyncBacklog{Total: 4}},
		} {
			if got, err := s.AsyncBacklog(ctx, tc.tenant, tc.agent); err != nil || got != tc.want {
				t.Errorf("AsyncBacklog(%s, %s) = %+v, %v; want %+v", tc.tenant, tc.agent, got, err, tc.want)
			}
		}
		if err := s.StartAsync(ctx, "b2", t0.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		j, err := s.AsyncJob(ctx, "b2")
		if err != nil || j.ID != "b2" || j.AgentID != "x" || j.Tenant != "acme" || j.TimeoutSeconds != 1.5 ||
			j.Attempts != 1 || !j.StartedAt.Equal(t0.Add(time.Minute)) || string(j.InputKwargs) != `{"i": 1}` {
			t.Fatalf("AsyncJob(b2) = %s, %v", showJobs([]domain.AsyncJob{j}), err)
		}
		if err := s.FinishAsync(ctx, completed(pending("b2", "x", t0.Add(time.Second)), 1, `1`)); err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{"b2", "sync", "nope"} {
			if _, err := s.AsyncJob(ctx, id); !errors.Is(err, domain.ErrNotFound) {
				t.Errorf("AsyncJob(%s) = %v, want ErrNotFound (ended, sync, unknown)", id, err)
			}
		}
		if got, _ := s.AsyncBacklog(ctx, "acme", "x"); got != (domain.AsyncBacklog{Total: 3, Tenant: 2, Agent: 1}) {
			t.Errorf("backlog after a finish: %+v", got)
		}
	})

	// The ones enqueued before a time and not started since, oldest
	// first: what a cluster checks its queue still holds.
	t.Run("unstarted before a time", func(t *testing.T) {
		s := open(t, "store")
		enqueue := func(id string) {
			t.Helper()
			if err := s.EnqueueAsync(ctx, domain.AsyncJob{Invocation: pending(id, "a", t0), Tenant: "t", TimeoutSeconds: 0}); err != nil {
				t.Fatal(err)
			}
		}
		for _, id := range []string{"u1", "u2", "u3"} {
			enqueue(id)
		}
		if err := s.StartAsync(ctx, "u2", now()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond)
		before := time.Now()
		time.Sleep(2 * time.Millisecond)
		enqueue("u4")
		s.Start(pending("sync", "a", t0)) // not queued
		firstAt := time.Time{}
		if jobs, _ := s.UnstartedAsync(ctx, time.Time{}, before, 1); len(jobs) == 1 {
			firstAt = jobs[0].EnqueuedAt
		}
		for _, tc := range []struct {
			after, before time.Time
			limit         int
			want          string
		}{
			{time.Time{}, before, 10, "u1,u3"},
			{time.Time{}, before, 1, "u1"},
			{firstAt, before, 10, "u3"}, // the next page
			{time.Time{}, time.Now().Add(time.Minute), 10, "u1,u3,u4"},
			{time.Time{}, t0, 10, ""},
		} {
			jobs, err := s.UnstartedAsync(ctx, tc.after, tc.before, tc.limit)
			var got []string
			for _, j := range jobs {
				got = append(got, j.ID)
			}
			if err != nil || strings.Join(got, ",") != tc.want {
				t.Errorf("UnstartedAsync(%s, %d) = %v, %v; want %s", tc.before.Format(time.StampMicro), tc.limit, got, err, tc.want)
			}
		}
		if err := s.FinishAsync(ctx, completed(pending("u1", "a", t0), 1, `1`)); err != nil {
			t.Fatal(err)
		}
		if err := s.RequeueAsync(ctx, "u2"); err != nil {
			t.Fatal(err)
		}
		if jobs, err := s.UnstartedAsync(ctx, time.Time{}, before, 10); err != nil || len(jobs) != 2 || jobs[0].ID != "u2" || jobs[0].Attempts != 1 || jobs[1].ID != "u3" {
			t.Errorf("after u1 finished and u2 was requeued: %s, %v; want u2 (1 attempt), u3", showJobs(jobs), err)
		}
	})

	t.Run("pending oldest first", func(t *testing.T) {
		s := open(t, "store")
		var want []string
		for i := range 12 {
			id := fmt.Sprintf("j%02d", i)
			// Request times run backwards: the queue's order is the
			// order of EnqueueAsync.
			if err := s.EnqueueAsync(ctx, domain.AsyncJob{Invocation: pending(id, fmt.Sprint("agent", i%3), t0.Add(-time.Duration(i)*time.Second)), Tenant: "t", TimeoutSeconds: 0}); err != nil {
				t.Fatal(err)
			}
			want = append(want, id)
		}
		finish := func(id string) {
			t.Helper()
			if err := s.FinishAsync(ctx, completed(pending(id, "agent0", t0), 1, `1`)); err != nil {
				t.Fatal(err)
			}
		}
		finish("j03")
		finish("j07")
		want = append(append(want[:3:3], want[4:7]...), want[8:]...)
		if err := s.StartAsync(ctx, "j05", now()); err != nil {
			t.Fatal(err)
		}
		jobs, err := s.PendingAsync(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, j := range jobs {
			got = append(got, j.ID)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("PendingAsync = %v, want %v", got, want)
		}
	})

	t.Run("finish writes the outcome whole", func(t *testing.T) {
		s := open(t, "store")
		inv := pending("job", "a", t0)
		if err := s.EnqueueAsync(ctx, domain.AsyncJob{Invocation: inv, Tenant: "acme", TimeoutSeconds: 0}); err != nil {
			t.Fatal(err)
		}
		if err := s.StartAsync(ctx, "job", t0); err != nil {
			t.Fatal(err)
		}
		done := completed(inv, 12.25, `{"answer": [1, 2, 3]}`)
		if err := s.FinishAsync(ctx, done); err != nil {
			t.Fatal(err)
		}
		assertInvocation(t, mustGet(t, s, "job"), done)
		st, err := s.Stats(ctx, "a")
		if err != nil || st.Total != 1 || st.Completed != 1 || st.Pending != 0 {
			t.Errorf("stats after FinishAsync: %s, %v", showStats(st), err)
		}
	})

	// An outcome is written once: a late second finish (a worker that
	// lost its lease, a retry of the write) never overwrites it.
	t.Run("finish once", func(t *testing.T) {
		s := open(t, "store")
		inv := pending("job", "a", t0)
		if err := s.EnqueueAsync(ctx, domain.AsyncJob{Invocation: inv, Tenant: "acme", TimeoutSeconds: 0}); err != nil {
			t.Fatal(err)
		}
		done := completed(inv, 3, `"first"`)
		if err := s.FinishAsync(ctx, done); err != nil {
			t.Fatal(err)
		}
		if err := s.FinishAsync(ctx, failed(inv, 4, "AGENT_CRASHED: late")); !errors.Is(err, domain.ErrNotFound) {
			t.Errorf("second FinishAsync = %v, want ErrNotFound", err)
		}
		assertInvocation(t, mustGet(t, s, "job"), done)
		if err := s.FinishAsync(ctx, completed(pending("nope", "a", t0), 1, `1`)); !errors.Is(err, domain.ErrNotFound) {
			t.Errorf("FinishAsync of an unknown invocation = %v, want ErrNotFound", err)
		}
		if _, err := s.Get(ctx, "nope"); !errors.Is(err, domain.ErrNotFound) {
			t.Errorf("FinishAsync of an unknown invocation created it: %v", err)
		}
		if err := s.RequeueAsync(ctx, "job"); !errors.Is(err, domain.ErrNotFound) {
			t.Errorf("RequeueAsync of a finished job = %v, want ErrNotFound", err)
		}
	})

	// Deleting an agent ends its queued invocations in the history (none
	// stays pending for ever); one already running is still finished.
	t.Run("delete agent with a backlog", func(t *testing.T) {
		s := open(t, "store")
		if _, err := s.AddVersion(ctx, "acme", "ag", "default", domain.Version{AgentID: "ag", Dir: "/d"}); err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{"running", "queued"} {
			if err := s.EnqueueAsync(ctx, domain.AsyncJob{Invocation: pending(id, "ag", t0), Tenant: "acme", TimeoutSeconds: 0}); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.EnqueueAsync(ctx, domain.AsyncJob{Invocation: pending("other", "ag2", t0), Tenant: "acme", TimeoutSeconds: 0}); err != nil {
			t.Fatal(err)
		}
		if err := s.StartAsync(ctx, "running", t0); err != nil {
			t.Fatal(err)
		}
		if err := s.DeletePlatformAgent(ctx, "ag"); err != nil {
			t.Fatal(err)
		}
		if got := mustGet(t, s, "queued"); got.Status != domain.StatusFailed || !strings.HasPrefix(got.ErrorDetail, string(domain.CodeNotFound)+": ") || got.ResponseTime.IsZero() {
			t.Errorf("a queued invocation of a deleted agent: %s %q (ended %v); want failed, NOT_FOUND: why", got.Status, got.ErrorDetail, got.ResponseTime)
		}
		done := completed(pending("running", "ag", t0), 2, `"ran"`)
		if err := s.FinishAsync(ctx, done); err != nil {
			t.Fatalf("finishing the invocation that ran while its agent was deleted: %v", err)
		}
		assertInvocation(t, mustGet(t, s, "running"), done)
		if jobs, err := s.PendingAsync(ctx); err != nil || len(jobs) != 1 || jobs[0].ID != "other" {
			t.Errorf("queue after the delete: %s, %v; want only another agent's", showJobs(jobs), err)
		}
	})
}

// showJobs names each job with its queue fields.
func showJobs(jobs []domain.AsyncJob) string {
	out := make([]string, len(jobs))
	for i, j := range jobs {
		started := "not started"
		if !j.StartedAt.IsZero() {
			started = "started " + j.StartedAt.Format(time.RFC3339Nano)
		}
		out[i] = fmt.Sprintf("{%s %s of %s, timeout %v s, %d attempts, %s}", j.ID, j.Status, j.Tenant, j.TimeoutSeconds, j.Attempts, started)
	}
	return "[" + strings.Join(out, " ") + "]"
}
