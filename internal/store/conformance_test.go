package store_test

import (
	"path/filepath"
	"sync"
	"testing"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/store"
	"github.com/runagent-go/runagent/internal/store/storetest"
)

// TestConformance runs the store suite against SQLite: where is a file in
// the test's own directory, so the same where opens the same file again.
// The queue is small, so that Start and Finish meet backpressure.
func TestConformance(t *testing.T) {
	var (
		mu   sync.Mutex
		dirs = map[*testing.T]string{}
	)
	storetest.Run(t, func(t *testing.T, where string) domain.Store {
		t.Helper()
		mu.Lock()
		dir, ok := dirs[t]
		if !ok {
			dir = t.TempDir()
			dirs[t] = dir
			t.Cleanup(func() { mu.Lock(); delete(dirs, t); mu.Unlock() })
		}
		mu.Unlock()
		db, err := store.Open(filepath.Join(dir, where+".db"), store.WithQueueSize(64))
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

// TestRegistryConformance runs the registry suite against the local
// registry file.
func TestRegistryConformance(t *testing.T) {
	storetest.RunRegistry(t, func(t *testing.T) domain.Registry {
		return store.Registry{Path: filepath.Join(t.TempDir(), "runagent_local.db")}
	})
}
