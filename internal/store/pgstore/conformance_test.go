package pgstore_test

import (
	"context"
	"strings"
	"testing"

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
	storetest.Run(t, func(t *testing.T, where string) domain.Store {
		t.Helper()
		db, err := pgstore.Open(context.Background(), pgtest.Schema(t, t.Name()+"/"+where), pgstore.Options{Queue: 64})
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
	url := pgtest.Schema(t, t.Name())
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
	other, err := pgstore.Open(ctx, pgtest.Schema(t, t.Name()+"/other"), pgstore.Options{SingleServer: true})
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
