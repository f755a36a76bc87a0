package pgstore_test

import (
	"context"
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
