package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/store"
)

func openPlatform(t *testing.T) (*store.DB, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "platform.db")
	db, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db, path
}

func TestVersionsAndTenants(t *testing.T) {
	ctx := context.Background()
	db, _ := openPlatform(t)
	v1, err := db.AddVersion(ctx, "acme", "a", "default", domain.Version{AgentID: "ag1", Dir: "/d1"})
	if err != nil || v1 != 1 {
		t.Fatalf("first version: %d, %v", v1, err)
	}
	v2, err := db.AddVersion(ctx, "acme", "a2", "default", domain.Version{AgentID: "ag1", Dir: "/d2"})
	if err != nil || v2 != 2 {
		t.Fatalf("second version: %d, %v", v2, err)
	}
	if _, err := db.AddVersion(ctx, "other", "x", "default", domain.Version{AgentID: "ag1", Dir: "/d3"}); !errors.Is(err, store.ErrTenantMismatch) {
		t.Fatalf("another tenant's upload: %v, want ErrTenantMismatch", err)
	}
	if err := db.ActivateVersion(ctx, "ag1", 1); err != nil {
		t.Fatal(err)
	}
	if err := db.ActivateVersion(ctx, "ag1", 2); err != nil {
		t.Fatal(err)
	}
	a, err := db.PlatformAgent(ctx, "ag1")
	if err != nil || a.ActiveVersion != 2 || a.LatestVersion != 2 || a.Tenant != "acme" || a.Name != "a2" {
		t.Fatalf("agent %+v, %v", a, err)
	}
	vs, _ := db.Versions(ctx, "ag1")
	if len(vs) != 2 || vs[0].Status != domain.VersionActive || vs[1].Status != domain.VersionRetired || vs[0].ActivatedAt.IsZero() {
		t.Fatalf("versions %+v", vs)
	}
	if err := db.SetVersionStatus(ctx, "ag1", 1, domain.VersionFailed, "pip failed"); err != nil {
		t.Fatal(err)
	}
	if v, _ := db.Version(ctx, "ag1", 1); v.Error != "pip failed" || v.Dir != "/d1" {
		t.Fatalf("version 1: %+v", v)
	}
	if err := db.DeletePlatformAgent(ctx, "ag1"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.PlatformAgent(ctx, "ag1"); !errors.Is(err, domain.ErrNotFound) {
		t.Fatalf("deleted agent: %v", err)
	}
	if _, err := db.Version(ctx, "ag1", 2); !errors.Is(err, domain.ErrNotFound) {
		t.Fatalf("deleted agent's version: %v", err)
	}
}

func TestAPIKeysRoundTrip(t *testing.T) {
	ctx := context.Background()
	db, _ := openPlatform(t)
	k := domain.Key{ID: "abc", Name: "ci", Tenant: "acme", Scopes: []domain.Scope{"run", "deploy"}, Agents: []string{"a1", "a2"},
		Hash: []byte{1, 2, 3}, RatePerSecond: 2.5, Burst: 5, MaxConcurrency: 3, CreatedAt: time.Now()}
	if err := db.InsertAPIKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	if err := db.InsertAPIKey(ctx, k); err == nil {
		t.Fatal("a duplicate key id was accepted")
	}
	at := time.Now()
	if err := db.RevokeAPIKey(ctx, "abc", at); err != nil {
		t.Fatal(err)
	}
	if err := db.RevokeAPIKey(ctx, "nope", at); !errors.Is(err, domain.ErrNotFound) {
		t.Fatalf("revoke unknown: %v", err)
	}
	keys, err := db.APIKeys(ctx)
	if err != nil || len(keys) != 1 {
		t.Fatalf("keys %v, %v", keys, err)
	}
	g := keys[0]
	if g.Name != "ci" || len(g.Scopes) != 2 || g.Agents[1] != "a2" || g.Burst != 5 || g.RatePerSecond != 2.5 ||
		g.MaxConcurrency != 3 || string(g.Hash) != "\x01\x02\x03" || g.RevokedAt.UnixMicro() != at.UnixMicro() {
		t.Fatalf("key read back as %+v", g)
	}
}

func TestLogs(t *testing.T) {
	ctx := context.Background()
	db, _ := openPlatform(t)
	lines := []domain.LogLine{
		{AgentID: "a", Version: 1, Instance: "i1", InvocationID: "inv1", Stream: "stdout", Line: "one", At: time.Now()},
		{AgentID: "a", Version: 1, Instance: "i1", Stream: "stderr", Line: "two", At: time.Now()},
		{AgentID: "b", Version: 1, Instance: "i9", Stream: "stdout", Line: "other", At: time.Now()},
	}
	if err := db.AppendLogs(ctx, lines); err != nil {
		t.Fatal(err)
	}
	if lines[0].Seq == 0 || lines[1].Seq <= lines[0].Seq {
		t.Fatalf("seqs %d %d", lines[0].Seq, lines[1].Seq)
	}
	got, _ := db.Logs(ctx, "a", "", 0, 0)
	if len(got) != 2 || got[0].Line != "one" || got[0].InvocationID != "inv1" || got[1].Stream != "stderr" {
		t.Fatalf("logs %+v", got)
	}
	got, _ = db.Logs(ctx, "a", "", got[0].Seq, 0)
	if len(got) != 1 || got[0].Line != "two" {
		t.Fatalf("logs after: %+v", got)
	}
	got, _ = db.Logs(ctx, "a", "inv1", 0, 0)
	if len(got) != 1 {
		t.Fatalf("logs of inv1: %+v", got)
	}
	if n, err := db.PruneLogs(ctx, 1); err != nil || n != 1 {
		t.Fatalf("prune: %d, %v", n, err)
	}
}

// An accepted async invocation is on disk at once, survives a reopen, and
// leaves the queue in the transaction that writes its outcome.
func TestAsyncQueueSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	db, path := openPlatform(t)
	inv := pending("async1", "a", t0)
	inv.SDKType = "async"
	if err := db.EnqueueAsync(ctx, inv, "acme", 30); err != nil {
		t.Fatal(err)
	}
	started := pending("async2", "a", t0)
	if err := db.EnqueueAsync(ctx, started, "acme", 0); err != nil {
		t.Fatal(err)
	}
	if err := db.StartAsync(ctx, "async2", t0); err != nil {
		t.Fatal(err)
	}
	if err := db.StartAsync(ctx, "nope", t0); !errors.Is(err, domain.ErrNotFound) {
		t.Fatalf("StartAsync of an unknown invocation: %v", err)
	}
	db.Start(pending("sync1", "a", t0)) // a sync call the server was running
	db.Close()

	db2, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	n, err := db2.FailAbandoned(ctx, time.Now())
	if err != nil || n != 1 {
		t.Fatalf("FailAbandoned: %d, %v (want the one sync call)", n, err)
	}
	jobs, err := db2.PendingAsync(ctx)
	if err != nil || len(jobs) != 2 || jobs[0].ID != "async1" || jobs[0].TimeoutSeconds != 30 || jobs[0].SDKType != "async" ||
		jobs[0].Tenant != "acme" || !jobs[0].StartedAt.IsZero() || jobs[0].Attempts != 0 {
		t.Fatalf("pending async: %+v, %v", jobs, err)
	}
	// The one that was started when the server stopped says so.
	if j := jobs[1]; j.ID != "async2" || !j.StartedAt.Equal(t0) || j.Attempts != 1 {
		t.Fatalf("interrupted async job: %+v", j)
	}
	if err := db2.RequeueAsync(ctx, "async2"); err != nil {
		t.Fatal(err)
	}
	if jobs, _ := db2.PendingAsync(ctx); len(jobs) != 2 || !jobs[1].StartedAt.IsZero() || jobs[1].Attempts != 1 {
		t.Fatalf("requeued: %+v", jobs)
	}
	interrupted := jobs[1].Invocation
	interrupted.Status, interrupted.ResponseTime = domain.StatusFailed, time.Now()
	if err := db2.FinishAsync(ctx, interrupted); err != nil {
		t.Fatal(err)
	}
	done := jobs[0].Invocation
	done.Status, done.Output, done.ResponseTime, done.ExecutionMS = domain.StatusCompleted, []byte(`"ok"`), time.Now(), 12
	if err := db2.FinishAsync(ctx, done); err != nil {
		t.Fatal(err)
	}
	if jobs, _ := db2.PendingAsync(ctx); len(jobs) != 0 {
		t.Fatalf("still queued: %+v", jobs)
	}
	got := mustGet(t, db2, "async1")
	if got.Status != domain.StatusCompleted || string(got.Output) != `"ok"` {
		t.Fatalf("finished async: %+v", got)
	}
	if s := mustGet(t, db2, "sync1"); s.Status != domain.StatusFailed {
		t.Fatalf("abandoned sync call: %+v", s)
	}
	list, _ := db2.ListForAgents(ctx, []string{"a", "zzz"}, "", 10)
	if len(list) != 3 {
		t.Fatalf("ListForAgents: %d", len(list))
	}
	if list, _ := db2.ListForAgents(ctx, []string{}, "", 10); len(list) != 0 {
		t.Fatalf("ListForAgents(none): %d", len(list))
	}
}

// Platform writes (read, then write, in one transaction) wait for the
// history writer's lock instead of failing with SQLITE_BUSY while calls
// commit their rows one after another.
func TestPlatformWritesBesideDurableHistory(t *testing.T) {
	ctx := context.Background()
	db, _ := openPlatform(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				inv := pending(fmt.Sprintf("h%d-%d", w, i), "a", time.Now())
				db.Start(inv)
				if err := db.FinishDurable(ctx, completed(inv, 1, `"ok"`)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	defer func() { close(stop); wg.Wait() }()
	for i := range 300 {
		if _, err := db.PutAgentMetadata(ctx, fmt.Sprintf("agent-%d", i%7), "t", "n", "default", json.RawMessage(`{}`)); err != nil {
			t.Fatalf("metadata write %d beside durable history: %v", i, err)
		}
	}
}
