package pgstore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/store/pgstore"
	"github.com/runagent-go/runagent/internal/store/pgstore/pgtest"
	"github.com/runagent-go/runagent/internal/store/storetest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestConformance runs the store suite against a real PostgreSQL: where
// names a schema of the test, so the same where opens the same data again.
// The queue is small, so that Start and Finish meet backpressure.
func TestConformance(t *testing.T) {
	var (
		mu    sync.Mutex
		names = map[*testing.T]string{} // a new schema name per test, also under -count
	)
	storetest.Run(t, func(t *testing.T, where string) domain.Store {
		t.Helper()
		mu.Lock()
		name, ok := names[t]
		if !ok {
			name = t.TempDir()
			names[t] = name
			t.Cleanup(func() { mu.Lock(); delete(names, t); mu.Unlock() })
		}
		mu.Unlock()
		db, err := pgstore.Open(context.Background(), pgtest.Schema(t, name+"/"+where), pgstore.Options{Queue: 64})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := db.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			if n := db.WriteErrors(); n != 0 {
				t.Errorf("%d invocation records were not written", n)
			}
		})
		return db
	})
}

// A single server's store refuses a second server on its schema, names the
// problem, and lets one in once the first is closed; another schema of the
// same database is another server's.
func TestSingleServerLock(t *testing.T) {
	ctx := context.Background()
	url := pgtest.Schema(t, t.TempDir())
	first, err := pgstore.Open(ctx, url, pgstore.Options{SingleServer: true})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	second, err := pgstore.Open(ctx, url, pgstore.Options{SingleServer: true})
	if err == nil {
		second.Close()
		t.Fatal("a second server opened the same schema")
	}
	if !strings.Contains(err.Error(), "another runagent server is using this database") {
		t.Errorf("second open: %v", err)
	}
	other, err := pgstore.Open(ctx, pgtest.Schema(t, t.TempDir()), pgstore.Options{SingleServer: true})
	if err != nil {
		t.Fatalf("a server on another schema: %v", err)
	}
	other.Close()
	first.Close()
	third, err := pgstore.Open(ctx, url, pgstore.Options{SingleServer: true})
	if err != nil {
		t.Fatalf("after the first closed: %v", err)
	}
	third.Close()
}

// The lock is a session's: a PostgreSQL restart ends it. The server takes
// it again once PostgreSQL is back, so that a second server started after
// the restart is still refused.
func TestSingleServerLockSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	url := pgtest.Schema(t, t.TempDir())
	first, err := pgstore.Open(ctx, url, pgstore.Options{SingleServer: true})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	pgtest.Restart(t, time.Second)
	deadline := time.Now().Add(15 * time.Second)
	for {
		second, err := pgstore.Open(ctx, url, pgstore.Options{SingleServer: true})
		if err != nil && strings.Contains(err.Error(), "another runagent server is using this database") {
			return // taken again
		}
		if err == nil {
			second.Close() // opened before the first took its lock again: give it back
		}
		if time.Now().After(deadline) {
			t.Fatalf("15 s after PostgreSQL restarted, a second server still opens the database (last: %v)", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// A URL that does not parse or a server that does not answer is a clear
// error naming what to give.
func TestOpenErrors(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct{ url, want string }{
		{"postgres://%zz", "database URL"},
		{"postgres://runagent@127.0.0.1:1/x?connect_timeout=2", "connect to PostgreSQL at 127.0.0.1:1/x"},
	} {
		db, err := pgstore.Open(ctx, tt.url, pgstore.Options{})
		if err == nil {
			db.Close()
			t.Errorf("Open(%q) worked", tt.url)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Open(%q) = %v, want it to say %q", tt.url, err, tt.want)
		}
	}
}

// PostgreSQL restarts under the store: reads while it is down say
// CONNECTION_ERROR with a Retry-After (the gateway answers 503) instead of
// hanging or INTERNAL_ERROR; history records written meanwhile wait for it
// and none is lost; once it is back everything works again.
func TestDatabaseRestart(t *testing.T) {
	ctx := context.Background()
	db, err := pgstore.Open(ctx, pgtest.Schema(t, t.TempDir()), pgstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	t0 := time.Now().UTC().Truncate(time.Microsecond)
	record := func(id string) {
		inv := domain.Invocation{ID: id, AgentID: "ag", Status: domain.StatusPending, RequestTime: t0, InputArgs: []byte(`[]`), InputKwargs: []byte(`{}`)}
		db.Start(inv)
		inv.Status, inv.Output, inv.ResponseTime, inv.ExecutionMS = domain.StatusCompleted, []byte(`1`), t0, 1
		db.Finish(inv)
	}
	record("before")
	if _, err := db.Get(ctx, "before"); err != nil {
		t.Fatal(err)
	}

	restarted := make(chan struct{})
	go func() {
		defer close(restarted)
		pgtest.Restart(t, 2*time.Second)
	}()
	// While it is down (the restart waits 2 s before starting it again).
	var sawDown bool
	for i := 0; i < 40 && !sawDown; i++ {
		time.Sleep(50 * time.Millisecond)
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := db.PlatformAgents(rctx)
		cancel()
		if err != nil {
			var de *domain.Error
			if !errors.As(err, &de) || de.Code != domain.CodeConnection || de.RetryAfter <= 0 {
				t.Fatalf("a read while the database is down = %v, want CONNECTION_ERROR with a Retry-After", err)
			}
			sawDown = true
		}
	}
	if !sawDown {
		t.Fatal("the database never looked down during its restart")
	}
	for i := range 20 {
		record(fmt.Sprint("during-", i))
	}
	<-restarted
	// The records queued while it was down are written once it is back.
	fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := db.Flush(fctx); err != nil {
		t.Fatalf("flush after the restart: %v", err)
	}
	got, err := db.List(ctx, "ag", domain.StatusCompleted, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 21 {
		t.Errorf("after the restart the history holds %d completed records, want 21", len(got))
	}
	if n := db.WriteErrors(); n != 0 {
		t.Errorf("%d history records were lost over the restart", n)
	}
	if _, err := db.PlatformAgents(ctx); err != nil {
		t.Errorf("a read after the restart: %v", err)
	}
}
