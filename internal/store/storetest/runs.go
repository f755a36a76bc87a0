package storetest

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

func testRuns(t *testing.T, open Opener) {
	ctx := context.Background()
	enqueue := func(t *testing.T, s domain.Store, id, agent, key string, at time.Time) error {
		t.Helper()
		inv := pending(id, agent, at)
		inv.SDKType = "async"
		return s.EnqueueAsync(ctx, domain.AsyncJob{Invocation: inv, Tenant: "acme", IdempotencyKey: key})
	}
	run := func(t *testing.T, s domain.Store, id string) domain.Run {
		t.Helper()
		r, err := s.Run(ctx, id)
		if err != nil {
			t.Fatalf("Run(%s): %v", id, err)
		}
		return r
	}

	// A background run through its life: pending, running, completed,
	// its attempts kept after it ends.
	t.Run("a run's life", func(t *testing.T) {
		s := open(t, "store")
		if err := enqueue(t, s, "r1", "a", "", t0); err != nil {
			t.Fatal(err)
		}
		r := run(t, s, "r1")
		if !r.Background || r.Attempts != 0 || r.Running || r.Status() != domain.RunPending || r.Ended() {
			t.Fatalf("queued: %+v (%s)", r, r.Status())
		}
		started := now()
		if err := s.StartAsync(ctx, "r1", started); err != nil {
			t.Fatal(err)
		}
		r = run(t, s, "r1")
		if !r.Running || r.Attempts != 1 || !r.StartedAt.Equal(started) || r.Status() != domain.RunRunning {
			t.Fatalf("started: %+v (%s)", r, r.Status())
		}
		if err := s.FinishAsync(ctx, completed(pending("r1", "a", t0), 2, `42`)); err != nil {
			t.Fatal(err)
		}
		r = run(t, s, "r1")
		if r.Running || r.Attempts != 1 || !r.StartedAt.Equal(started) || r.Status() != domain.RunCompleted || string(r.Output) != "42" {
			t.Fatalf("ended: %+v (%s)", r, r.Status())
		}
		// A sync call is a run too, with no background fields.
		s.Start(pending("sync", "a", t0))
		s.Finish(completed(pending("sync", "a", t0), 1, `1`))
		if r := run(t, s, "sync"); r.Background || r.Attempts != 0 || r.Status() != domain.RunCompleted {
			t.Fatalf("a sync call as a run: %+v (%s)", r, r.Status())
		}
		if _, err := s.Run(ctx, "nope"); !errors.Is(err, domain.ErrNotFound) {
			t.Fatalf("Run(nope) = %v, want ErrNotFound", err)
		}
	})

	// One run per agent and Idempotency-Key: a second create is
	// ErrDuplicate and changes nothing.
	t.Run("idempotency keys", func(t *testing.T) {
		s := open(t, "store")
		if err := enqueue(t, s, "k1", "a", "key-1", t0); err != nil {
			t.Fatal(err)
		}
		if err := enqueue(t, s, "k2", "a", "key-1", t0); !errors.Is(err, domain.ErrDuplicate) {
			t.Fatalf("a second run with key-1 = %v, want ErrDuplicate", err)
		}
		if _, err := s.Get(ctx, "k2"); !errors.Is(err, domain.ErrNotFound) {
			t.Fatalf("the refused run's invocation: %v, want ErrNotFound", err)
		}
		if b, _ := s.AsyncBacklog(ctx, "acme", "a"); b.Agent != 1 {
			t.Fatalf("backlog after a refused duplicate: %+v, want 1", b)
		}
		for _, c := range []struct{ id, agent, key string }{{"k3", "b", "key-1"}, {"k4", "a", "key-2"}, {"k5", "a", ""}, {"k6", "a", ""}} {
			if err := enqueue(t, s, c.id, c.agent, c.key, t0); err != nil {
				t.Fatalf("run %s (agent %s, key %q): %v", c.id, c.agent, c.key, err)
			}
		}
		if r, err := s.IdempotentRun(ctx, "a", "key-1"); err != nil || r.ID != "k1" || r.IdempotencyKey != "key-1" {
			t.Fatalf("IdempotentRun(a, key-1) = %+v, %v; want k1", r, err)
		}
		if r, err := s.IdempotentRun(ctx, "b", "key-1"); err != nil || r.ID != "k3" {
			t.Fatalf("IdempotentRun(b, key-1) = %+v, %v; want k3", r, err)
		}
		if _, err := s.IdempotentRun(ctx, "a", "key-9"); !errors.Is(err, domain.ErrNotFound) {
			t.Fatalf("IdempotentRun of an unknown key = %v, want ErrNotFound", err)
		}
		// A dropped key is free for a new run.
		if err := s.DropIdempotencyKey(ctx, "k1"); err != nil {
			t.Fatal(err)
		}
		if err := enqueue(t, s, "k7", "a", "key-1", t0); err != nil {
			t.Fatalf("a run with a dropped key: %v", err)
		}
		if r, err := s.IdempotentRun(ctx, "a", "key-1"); err != nil || r.ID != "k7" {
			t.Fatalf("IdempotentRun after a drop = %+v, %v; want k7", r, err)
		}
		// A cancel request is seen by whoever picks the run up.
		if err := s.RequestCancel(ctx, "k4"); err != nil {
			t.Fatal(err)
		}
		if j, err := s.AsyncJob(ctx, "k4"); err != nil || !j.CancelRequested {
			t.Fatalf("a run whose cancel was requested: %+v, %v", j, err)
		}
		if j, _ := s.AsyncJob(ctx, "k5"); j.CancelRequested {
			t.Fatal("another run's cancel requested")
		}
		if err := s.RequestCancel(ctx, "nope"); !errors.Is(err, domain.ErrNotFound) {
			t.Fatalf("RequestCancel of an unknown run = %v, want ErrNotFound", err)
		}
	})

	// Cancelling a queued run that has not started ends it at once; one
	// that started, ended or is unknown is ErrNotFound and unchanged.
	t.Run("cancel queued", func(t *testing.T) {
		s := open(t, "store")
		for _, id := range []string{"c1", "c2"} {
			if err := enqueue(t, s, id, "a", "", t0); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.StartAsync(ctx, "c2", now()); err != nil {
			t.Fatal(err)
		}
		cancelled := failed(pending("c1", "a", t0), 0, "CANCELLED: cancelled before it started")
		if err := s.CancelQueuedAsync(ctx, cancelled); err != nil {
			t.Fatal(err)
		}
		if r := run(t, s, "c1"); r.Status() != domain.RunCancelled || r.Running {
			t.Fatalf("cancelled: %+v (%s)", r, r.Status())
		}
		if _, err := s.AsyncJob(ctx, "c1"); !errors.Is(err, domain.ErrNotFound) {
			t.Fatalf("a cancelled run still queued: %v", err)
		}
		if err := s.StartAsync(ctx, "c1", now()); !errors.Is(err, domain.ErrNotFound) {
			t.Fatalf("StartAsync of a cancelled run = %v, want ErrNotFound", err)
		}
		for _, id := range []string{"c1", "c2", "nope"} {
			inv := failed(pending(id, "a", t0), 0, "CANCELLED: x")
			if err := s.CancelQueuedAsync(ctx, inv); !errors.Is(err, domain.ErrNotFound) {
				t.Errorf("CancelQueuedAsync(%s) = %v, want ErrNotFound (ended, started, unknown)", id, err)
			}
		}
		if r := run(t, s, "c2"); r.Status() != domain.RunRunning {
			t.Fatalf("a started run after a refused cancel: %s", r.Status())
		}
	})

	// Listing: background runs only, newest first, by status and agent.
	t.Run("list", func(t *testing.T) {
		s := open(t, "store")
		outcomes := []struct {
			id, agent string
			end       func(t *testing.T, id string)
			status    domain.RunStatus
		}{
			{"l0", "a", nil, domain.RunPending},
			{"l1", "a", func(t *testing.T, id string) { s.StartAsync(ctx, id, now()) }, domain.RunRunning},
			{"l2", "a", func(t *testing.T, id string) { s.FinishAsync(ctx, completed(pending(id, "a", t0), 1, `1`)) }, domain.RunCompleted},
			{"l3", "a", func(t *testing.T, id string) {
				s.FinishAsync(ctx, failed(pending(id, "a", t0), 1, "Server error running agent a: boom"))
			}, domain.RunFailed},
			{"l4", "b", func(t *testing.T, id string) {
				s.FinishAsync(ctx, failed(pending(id, "b", t0), 1, "TIMEOUT: too long"))
			}, domain.RunTimeout},
			{"l5", "b", func(t *testing.T, id string) {
				s.CancelQueuedAsync(ctx, failed(pending(id, "b", t0), 0, "CANCELLED: by the client"))
			}, domain.RunCancelled},
			{"l6", "c", nil, domain.RunPending},
		}
		for i, o := range outcomes {
			if err := enqueue(t, s, o.id, o.agent, "", t0.Add(time.Duration(i)*time.Second)); err != nil {
				t.Fatal(err)
			}
			if o.end != nil {
				o.end(t, o.id)
			}
		}
		s.Start(pending("sync", "a", t0.Add(time.Hour))) // not a background run
		list := func(agents []string, st domain.RunStatus, limit int) string {
			t.Helper()
			runs, err := s.ListRuns(ctx, agents, st, limit)
			if err != nil {
				t.Fatalf("ListRuns(%v, %q): %v", agents, st, err)
			}
			var ids []string
			for _, r := range runs {
				ids = append(ids, r.ID)
				if want := outcomes[r.ID[1]-'0'].status; r.Status() != want {
					t.Errorf("%s listed as %s, want %s", r.ID, r.Status(), want)
				}
			}
			return strings.Join(ids, ",")
		}
		for _, c := range []struct {
			agents []string
			status domain.RunStatus
			limit  int
			want   string
		}{
			{[]string{"a", "b"}, "", 100, "l5,l4,l3,l2,l1,l0"},
			{[]string{"a", "b", "c"}, "", 2, "l6,l5"},
			{[]string{"a"}, domain.RunPending, 100, "l0"},
			{[]string{"a"}, domain.RunRunning, 100, "l1"},
			{[]string{"a"}, domain.RunCompleted, 100, "l2"},
			{[]string{"a", "b"}, domain.RunFailed, 100, "l3"},
			{[]string{"a", "b"}, domain.RunTimeout, 100, "l4"},
			{[]string{"a", "b"}, domain.RunCancelled, 100, "l5"},
			{[]string{"c"}, domain.RunCompleted, 100, ""},
			{nil, "", 100, ""},
		} {
			if got := list(c.agents, c.status, c.limit); got != c.want {
				t.Errorf("ListRuns(%v, %q, %d) = %s, want %s", c.agents, c.status, c.limit, got, c.want)
			}
		}
	})

	// A run's webhook URL is kept with it; each agent has one secret,
	// made on first use; every attempt is kept, in order.
	t.Run("webhooks", func(t *testing.T) {
		s := open(t, "store")
		inv := pending("w1", "a", t0)
		if err := s.EnqueueAsync(ctx, domain.AsyncJob{Invocation: inv, Tenant: "acme", Webhook: "https://example.com/hook?x=1"}); err != nil {
			t.Fatal(err)
		}
		if r := run(t, s, "w1"); r.Webhook != "https://example.com/hook?x=1" {
			t.Fatalf("the run's webhook: %q", r.Webhook)
		}
		if j, err := s.AsyncJob(ctx, "w1"); err != nil || j.Webhook != "https://example.com/hook?x=1" {
			t.Fatalf("the queued job's webhook: %q, %v", j.Webhook, err)
		}
		first, err := s.WebhookSecret(ctx, "a", "secret-1")
		if err != nil || first != "secret-1" {
			t.Fatalf("first WebhookSecret = %q, %v", first, err)
		}
		if again, err := s.WebhookSecret(ctx, "a", "secret-2"); err != nil || again != "secret-1" {
			t.Fatalf("second WebhookSecret = %q, %v; want the first kept", again, err)
		}
		if other, _ := s.WebhookSecret(ctx, "b", "secret-b"); other != "secret-b" {
			t.Fatalf("another agent's secret: %q", other)
		}
		at := now()
		for i, a := range []domain.WebhookAttempt{
			{RunID: "w1", Attempt: 1, At: at, URL: "https://example.com/hook?x=1", Error: "dial tcp: connection refused", DurationMS: 1.5},
			{RunID: "w1", Attempt: 2, At: at.Add(time.Second), URL: "https://example.com/hook?x=1", StatusCode: 503, Error: "503 Service Unavailable", DurationMS: 2},
			{RunID: "w1", Attempt: 3, At: at.Add(3 * time.Second), URL: "https://example.com/hook?x=1", StatusCode: 200, DurationMS: 3.25},
		} {
			if err := s.RecordWebhookAttempt(ctx, a); err != nil {
				t.Fatalf("attempt %d: %v", i+1, err)
			}
		}
		got, err := s.WebhookAttempts(ctx, "w1")
		if err != nil || len(got) != 3 || got[0].Error != "dial tcp: connection refused" || got[1].StatusCode != 503 ||
			got[2].StatusCode != 200 || got[2].Error != "" || got[2].DurationMS != 3.25 || !got[2].At.Equal(at.Add(3*time.Second)) {
			t.Fatalf("WebhookAttempts = %+v, %v", got, err)
		}
		if none, err := s.WebhookAttempts(ctx, "nope"); err != nil || len(none) != 0 {
			t.Fatalf("attempts of an unknown run: %+v, %v", none, err)
		}
	})

	// What a stopped server left to deliver: ended runs with a webhook
	// that no attempt delivered, ended since then.
	t.Run("undelivered webhooks", func(t *testing.T) {
		s := open(t, "store")
		hook := "https://example.com/hook"
		for i, c := range []struct {
			id, webhook string
			end         bool
			status      int // an attempt's, 0: none
			at          time.Time
		}{
			{"u-retrying", hook, true, 503, t0.Add(time.Minute)},
			{"u-none", hook, true, 0, t0.Add(2 * time.Minute)},
			{"u-taken", hook, true, 200, t0.Add(time.Minute)},
			{"u-queued", hook, false, 0, t0},
			{"u-nohook", "", true, 0, t0.Add(time.Minute)},
			{"u-old", hook, true, 0, t0.Add(-time.Hour)},
		} {
			inv := pending(c.id, "a", c.at.Add(-time.Second))
			if err := s.EnqueueAsync(ctx, domain.AsyncJob{Invocation: inv, Tenant: "acme", Webhook: c.webhook}); err != nil {
				t.Fatal(err)
			}
			if c.end {
				if err := s.FinishAsync(ctx, completed(inv, 1000, `"ok"`)); err != nil {
					t.Fatal(err)
				}
			}
			if c.status != 0 {
				if err := s.RecordWebhookAttempt(ctx, domain.WebhookAttempt{RunID: c.id, Attempt: 1, At: c.at, URL: hook, StatusCode: c.status}); err != nil {
					t.Fatalf("case %d: %v", i, err)
				}
			}
		}
		got, err := s.UndeliveredWebhooks(ctx, t0, 10)
		var ids []string
		for _, r := range got {
			ids = append(ids, r.ID)
		}
		if err != nil || len(ids) != 2 || ids[0] != "u-retrying" || ids[1] != "u-none" || got[0].Webhook != hook {
			t.Fatalf("UndeliveredWebhooks = %v, %v; want u-retrying then u-none", ids, err)
		}
		if one, err := s.UndeliveredWebhooks(ctx, t0, 1); err != nil || len(one) != 1 {
			t.Fatalf("with limit 1: %d, %v", len(one), err)
		}
	})

	// A run's user comes back with its queued job and its record.
	t.Run("user", func(t *testing.T) {
		s := open(t, "store")
		if err := s.EnqueueAsync(ctx, domain.AsyncJob{Invocation: pending("u1", "a", t0), Tenant: "acme", UserID: "ana@example.com"}); err != nil {
			t.Fatal(err)
		}
		if err := s.EnqueueAsync(ctx, domain.AsyncJob{Invocation: pending("u2", "a", t0), Tenant: "acme"}); err != nil {
			t.Fatal(err)
		}
		if j, err := s.AsyncJob(ctx, "u1"); err != nil || j.UserID != "ana@example.com" {
			t.Fatalf("AsyncJob(u1) = user %q, %v", j.UserID, err)
		}
		if j, err := s.AsyncJob(ctx, "u2"); err != nil || j.UserID != "" {
			t.Fatalf("AsyncJob(u2) = user %q, %v; want none", j.UserID, err)
		}
		if r := run(t, s, "u1"); r.UserID != "ana@example.com" {
			t.Fatalf("the run's user: %q", r.UserID)
		}
	})

	// A thread: a reject-mode create is refused while a run of it is
	// queued or running; the runs of a thread wait for the earlier ones.
	t.Run("threads", func(t *testing.T) {
		s := open(t, "store")
		add := func(id, thread string, reject bool) error {
			t.Helper()
			return s.EnqueueAsync(ctx, domain.AsyncJob{Invocation: pending(id, "a", t0), Tenant: "acme", ThreadID: thread, ThreadReject: reject})
		}
		if err := add("t1", "chat-1", true); err != nil {
			t.Fatal(err)
		}
		if err := add("t2", "chat-1", true); !errors.Is(err, domain.ErrThreadBusy) {
			t.Fatalf("a second run of a busy thread (reject) = %v, want ErrThreadBusy", err)
		}
		if _, err := s.Get(ctx, "t2"); !errors.Is(err, domain.ErrNotFound) {
			t.Fatalf("the refused run was recorded: %v", err)
		}
		time.Sleep(2 * time.Millisecond)
		for _, c := range []struct {
			id, thread string
		}{{"t3", "chat-1"}, {"t4", "chat-2"}, {"t5", "chat-1"}} {
			if err := add(c.id, c.thread, false); err != nil {
				t.Fatalf("run %s (enqueue): %v", c.id, err)
			}
			time.Sleep(2 * time.Millisecond)
		}
		ahead := func(id string) bool {
			t.Helper()
			j, err := s.AsyncJob(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if j.ThreadID == "" {
				t.Fatalf("%s lost its thread", id)
			}
			// As a single server's queue holds it: only its id and thread.
			busy, err := s.ThreadAhead(ctx, domain.AsyncJob{Invocation: domain.Invocation{ID: j.ID, AgentID: j.AgentID}, ThreadID: j.ThreadID})
			if err != nil {
				t.Fatal(err)
			}
			return busy
		}
		if ahead("t1") || !ahead("t3") || ahead("t4") || !ahead("t5") {
			t.Fatalf("ahead: t1 %v, t3 %v, t4 %v, t5 %v; want false, true, false, true", ahead("t1"), ahead("t3"), ahead("t4"), ahead("t5"))
		}
		if r := run(t, s, "t3"); r.ThreadID != "chat-1" {
			t.Fatalf("the run's thread: %q", r.ThreadID)
		}
		if err := s.FinishAsync(ctx, completed(pending("t1", "a", t0), 1, `1`)); err != nil {
			t.Fatal(err)
		}
		if ahead("t3") || !ahead("t5") {
			t.Fatal("after t1 ended: want t3 free, t5 still behind t3")
		}
		if err := s.FinishAsync(ctx, completed(pending("t3", "a", t0), 1, `1`)); err != nil {
			t.Fatal(err)
		}
		if ahead("t5") {
			t.Fatal("after t3 ended, t5 still waits")
		}
		if err := add("t6", "chat-1", true); !errors.Is(err, domain.ErrThreadBusy) {
			t.Fatalf("reject while t5 is queued = %v, want ErrThreadBusy", err)
		}
		// A replayed create of the busy thread's own run is a duplicate,
		// not a refusal.
		if err := s.EnqueueAsync(ctx, domain.AsyncJob{Invocation: pending("t7", "a", t0), ThreadID: "chat-3", ThreadReject: true, IdempotencyKey: "k-chat-3"}); err != nil {
			t.Fatal(err)
		}
		if err := s.EnqueueAsync(ctx, domain.AsyncJob{Invocation: pending("t8", "a", t0), ThreadID: "chat-3", ThreadReject: true, IdempotencyKey: "k-chat-3"}); !errors.Is(err, domain.ErrDuplicate) {
			t.Fatalf("a replay in a busy thread = %v, want ErrDuplicate", err)
		}
	})
}
