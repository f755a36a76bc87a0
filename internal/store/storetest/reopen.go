package storetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

func testReopen(t *testing.T, open Opener) {
	ctx := context.Background()

	// An accepted async invocation is durable at once, survives a reopen,
	// and leaves the queue in the step that writes its outcome.
	t.Run("async queue", func(t *testing.T) {
		s := open(t, "store")
		inv := pending("async1", "a", t0)
		inv.SDKType = "async"
		if err := s.EnqueueAsync(ctx, domain.AsyncJob{Invocation: inv, Tenant: "acme", TimeoutSeconds: 30}); err != nil {
			t.Fatal(err)
		}
		started := pending("async2", "a", t0)
		if err := s.EnqueueAsync(ctx, domain.AsyncJob{Invocation: started, Tenant: "acme", TimeoutSeconds: 0}); err != nil {
			t.Fatal(err)
		}
		if err := s.StartAsync(ctx, "async2", t0); err != nil {
			t.Fatal(err)
		}
		if err := s.StartAsync(ctx, "nope", t0); !errors.Is(err, domain.ErrNotFound) {
			t.Fatalf("StartAsync of an unknown invocation: %v", err)
		}
		s.Start(pending("sync1", "a", t0)) // a sync call the server was running
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}

		s = open(t, "store")
		n, err := s.FailAbandoned(ctx, now())
		if err != nil || n != 1 {
			t.Fatalf("FailAbandoned: %d, %v (want the one sync call)", n, err)
		}
		jobs, err := s.PendingAsync(ctx)
		if err != nil || len(jobs) != 2 || jobs[0].ID != "async1" || jobs[0].TimeoutSeconds != 30 || jobs[0].SDKType != "async" ||
			jobs[0].Tenant != "acme" || !jobs[0].StartedAt.IsZero() || jobs[0].Attempts != 0 {
			t.Fatalf("pending async: %s, %v", showJobs(jobs), err)
		}
		// The one that was started when the server stopped says so.
		if j := jobs[1]; j.ID != "async2" || !j.StartedAt.Equal(t0) || j.Attempts != 1 {
			t.Fatalf("interrupted async job: %s", showJobs([]domain.AsyncJob{j}))
		}
		if err := s.RequeueAsync(ctx, "async2"); err != nil {
			t.Fatal(err)
		}
		if jobs, _ := s.PendingAsync(ctx); len(jobs) != 2 || !jobs[1].StartedAt.IsZero() || jobs[1].Attempts != 1 {
			t.Fatalf("requeued: %s", showJobs(jobs))
		}
		interrupted := jobs[1].Invocation
		interrupted.Status, interrupted.ResponseTime = domain.StatusFailed, now()
		if err := s.FinishAsync(ctx, interrupted); err != nil {
			t.Fatal(err)
		}
		done := jobs[0].Invocation
		done.Status, done.Output, done.ResponseTime, done.ExecutionMS = domain.StatusCompleted, []byte(`"ok"`), now(), 12
		if err := s.FinishAsync(ctx, done); err != nil {
			t.Fatal(err)
		}
		if jobs, _ := s.PendingAsync(ctx); len(jobs) != 0 {
			t.Fatalf("still queued: %s", showJobs(jobs))
		}
		got := mustGet(t, s, "async1")
		if got.Status != domain.StatusCompleted || string(got.Output) != `"ok"` {
			t.Fatalf("finished async: %+v", got)
		}
		if s := mustGet(t, s, "sync1"); s.Status != domain.StatusFailed {
			t.Fatalf("abandoned sync call: %+v", s)
		}
		list, _ := s.ListForAgents(ctx, []string{"a", "zzz"}, "", 10)
		if len(list) != 3 {
			t.Fatalf("ListForAgents: %d", len(list))
		}
		if list, _ := s.ListForAgents(ctx, []string{}, "", 10); len(list) != 0 {
			t.Fatalf("ListForAgents(none): %d", len(list))
		}
		// And the outcome survives a reopen too.
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = open(t, "store")
		assertInvocation(t, mustGet(t, s, "async1"), done)
		if jobs, _ := s.PendingAsync(ctx); len(jobs) != 0 {
			t.Fatalf("queued again after a reopen: %s", showJobs(jobs))
		}
	})

	// Close writes what is pending: Starts and Finishes nobody read back.
	t.Run("close writes what is pending", func(t *testing.T) {
		s := open(t, "store")
		const n = 300
		for i := range n {
			inv := pending(fmt.Sprintf("c%03d", i), "agent", t0.Add(time.Duration(i)*time.Second))
			s.Start(inv)
			if i%2 == 0 {
				s.Finish(completed(inv, 1, `{"i":1}`))
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = open(t, "store")
		st, err := s.Stats(ctx, "agent")
		if err != nil {
			t.Fatal(err)
		}
		if st.Total != n || st.Completed != n/2 || st.Pending != n/2 {
			t.Errorf("after reopen: %s, want %d records, half completed", showStats(st), n)
		}
		assertInvocation(t, mustGet(t, s, "c000"), completed(pending("c000", "agent", t0), 1, `{"i":1}`))
		assertInvocation(t, mustGet(t, s, "c299"), pending("c299", "agent", t0.Add(299*time.Second)))
	})

	// Every kind of record survives, and Seq keeps growing.
	t.Run("everything", func(t *testing.T) {
		s := open(t, "store")
		meta := json.RawMessage(`{"agent_name": "demo"}`)
		if _, err := s.PutAgentMetadata(ctx, "ag", "acme", "demo", "default", meta); err != nil {
			t.Fatal(err)
		}
		for range 2 {
			if _, err := s.AddVersion(ctx, "acme", "demo", "default", domain.Version{AgentID: "ag", Dir: "/d", FileName: "b.zip", FileSize: 9, SHA256: "ff"}); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.ActivateVersion(ctx, "ag", 2); err != nil {
			t.Fatal(err)
		}
		if err := s.SetVersionStatus(ctx, "ag", 1, domain.VersionFailed, "pip failed"); err != nil {
			t.Fatal(err)
		}
		key := domain.Key{ID: "k", Name: "ci", Tenant: "acme", Scopes: []domain.Scope{domain.ScopeDeploy}, Agents: []string{"ag"},
			Hash: []byte("hash"), RatePerSecond: 1.5, Burst: 2, MaxConcurrency: 4, CreatedAt: t0}
		if err := s.InsertAPIKey(ctx, key); err != nil {
			t.Fatal(err)
		}
		if err := s.RevokeAPIKey(ctx, "k", t0.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		lines := logLines("ag", "l", "inv", 4)
		if err := s.AppendLogs(ctx, lines); err != nil {
			t.Fatal(err)
		}
		hist := failed(pending("h1", "ag", t0), 5, "boom")
		s.Start(hist)
		s.Finish(hist)
		agentBefore, _ := s.PlatformAgent(ctx, "ag")
		versionsBefore, _ := s.Versions(ctx, "ag")
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}

		s = open(t, "store")
		a, err := s.PlatformAgent(ctx, "ag")
		if err != nil || a.Tenant != "acme" || a.Name != "demo" || a.ActiveVersion != 2 || a.LatestVersion != 2 || !bytes.Equal(a.Metadata, meta) ||
			!a.CreatedAt.Equal(agentBefore.CreatedAt) || !a.UpdatedAt.Equal(agentBefore.UpdatedAt) {
			t.Errorf("agent after a reopen: %+v, %v; before: %+v", a, err, agentBefore)
		}
		vs, err := s.Versions(ctx, "ag")
		if err != nil || len(vs) != 2 {
			t.Fatalf("versions after a reopen: %+v, %v", vs, err)
		}
		for i, v := range vs {
			b := versionsBefore[i]
			if v.Version != b.Version || v.Status != b.Status || v.Error != b.Error || v.Dir != b.Dir || v.FileName != b.FileName ||
				v.FileSize != b.FileSize || v.SHA256 != b.SHA256 || !v.UploadedAt.Equal(b.UploadedAt) || !v.ActivatedAt.Equal(b.ActivatedAt) {
				t.Errorf("version after a reopen: %+v; before: %+v", v, b)
			}
		}
		if vs[0].Status != domain.VersionActive || vs[1].Status != domain.VersionFailed || vs[1].Error != "pip failed" {
			t.Errorf("versions: %+v", vs)
		}
		keys, err := s.APIKeys(ctx)
		if err != nil || len(keys) != 1 {
			t.Fatalf("keys after a reopen: %+v, %v", keys, err)
		}
		if k := keys[0]; k.ID != key.ID || k.Name != key.Name || k.Tenant != key.Tenant || fmt.Sprint(k.Scopes) != "[deploy]" ||
			fmt.Sprint(k.Agents) != "[ag]" || string(k.Hash) != "hash" || k.RatePerSecond != 1.5 || k.Burst != 2 || k.MaxConcurrency != 4 ||
			!k.CreatedAt.Equal(t0) || !k.RevokedAt.Equal(t0.Add(time.Hour)) {
			t.Errorf("key after a reopen: %+v", k)
		}
		got, err := s.Logs(ctx, "ag", "", 0, 0)
		if err != nil || len(got) != len(lines) {
			t.Fatalf("logs after a reopen: %+v, %v", got, err)
		}
		for i := range got {
			if !sameLine(got[i], lines[i]) {
				t.Errorf("log line after a reopen: %+v, want %+v", got[i], lines[i])
			}
		}
		more := logLines("ag", "m", "", 2)
		if err := s.AppendLogs(ctx, more); err != nil {
			t.Fatal(err)
		}
		if more[0].Seq <= lines[len(lines)-1].Seq || more[1].Seq <= more[0].Seq {
			t.Errorf("seqs after a reopen: %d, %d after %d", more[0].Seq, more[1].Seq, lines[len(lines)-1].Seq)
		}
		assertInvocation(t, mustGet(t, s, "h1"), hist)
		// A reopen does not count as a second creation.
		if existed, err := s.PutAgentMetadata(ctx, "ag", "acme", "demo", "default", meta); err != nil || !existed {
			t.Errorf("metadata after a reopen: existed %v, %v", existed, err)
		}
		if n, err := s.AddVersion(ctx, "acme", "demo", "default", domain.Version{AgentID: "ag", Dir: "/d"}); err != nil || n != 3 {
			t.Errorf("next version after a reopen: %d, %v; want 3", n, err)
		}
		if _, err := s.AddVersion(ctx, "other", "x", "default", domain.Version{AgentID: "ag", Dir: "/d"}); !errors.Is(err, domain.ErrOtherTenant) {
			t.Errorf("another tenant after a reopen: %v, want ErrOtherTenant", err)
		}
	})

	// Two wheres are two stores.
	t.Run("apart", func(t *testing.T) {
		a, b := open(t, "a"), open(t, "b")
		a.Start(pending("only-a", "x", t0))
		if _, err := a.Get(ctx, "only-a"); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Get(ctx, "only-a"); !errors.Is(err, domain.ErrNotFound) {
			t.Fatalf("store b sees store a's record: %v", err)
		}
	})
}
