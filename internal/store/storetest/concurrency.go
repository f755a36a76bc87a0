package storetest

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

func testConcurrency(t *testing.T, open Opener) {
	ctx := context.Background()

	// Many goroutines Start and Finish at once; each reads its own writes.
	t.Run("read your writes", func(t *testing.T) {
		const goroutines, each = 50, 20
		s := open(t, "store")
		var wg sync.WaitGroup
		errs := make(chan error, goroutines)
		for g := range goroutines {
			wg.Go(func() {
				for i := range each {
					inv := pending(fmt.Sprintf("g%02d-%02d", g, i), "agent", t0.Add(time.Duration(g*each+i)*time.Millisecond))
					s.Start(inv)
					s.Finish(completed(inv, float64(i), `true`))
					if i%5 == 0 {
						got, err := s.Get(ctx, inv.ID)
						if err != nil || got.Status != domain.StatusCompleted {
							errs <- fmt.Errorf("Get(%s) right after Finish: %v, status %q", inv.ID, err, got.Status)
							return
						}
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		got, err := s.List(ctx, "agent", "", goroutines*each)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != goroutines*each {
			t.Fatalf("List: %d records, want %d", len(got), goroutines*each)
		}
		for _, inv := range got {
			if inv.Status != domain.StatusCompleted {
				t.Fatalf("%s: status %q", inv.ID, inv.Status)
			}
		}
		st, err := s.Stats(ctx, "agent")
		if err != nil {
			t.Fatal(err)
		}
		if st.Completed != goroutines*each || st.SuccessRate != 100 {
			t.Errorf("stats %s", showStats(st))
		}
	})

	// Platform writes (a read, then a write, in one step) succeed while
	// calls commit their history one after another.
	t.Run("platform writes beside durable history", func(t *testing.T) {
		s := open(t, "store")
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
					s.Start(inv)
					if err := s.FinishDurable(ctx, completed(inv, 1, `"ok"`)); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		defer func() { close(stop); wg.Wait() }()
		for i := range 300 {
			if _, err := s.PutAgentMetadata(ctx, fmt.Sprintf("agent-%d", i%7), "t", "n", "default", json.RawMessage(`{}`)); err != nil {
				t.Fatalf("metadata write %d beside durable history: %v", i, err)
			}
		}
	})

	// Versions uploaded at once get distinct numbers, 1 to n; exactly one
	// metadata upload creates an agent.
	t.Run("versions and metadata at once", func(t *testing.T) {
		s := open(t, "store")
		const n = 16
		nums := make([]int, n)
		var created atomic.Int32
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				v, err := s.AddVersion(ctx, "acme", "a", "default", domain.Version{AgentID: "ag", Dir: fmt.Sprint("/d", i)})
				if err != nil {
					t.Errorf("AddVersion: %v", err)
				}
				nums[i] = v
			})
			wg.Go(func() {
				existed, err := s.PutAgentMetadata(ctx, "meta", "acme", "m", "default", json.RawMessage(`{}`))
				if err != nil {
					t.Errorf("PutAgentMetadata: %v", err)
				}
				if !existed {
					created.Add(1)
				}
			})
		}
		wg.Wait()
		sort.Ints(nums)
		for i, v := range nums {
			if v != i+1 {
				t.Fatalf("version numbers %v, want 1 to %d", nums, n)
			}
		}
		if a, err := s.PlatformAgent(ctx, "ag"); err != nil || a.LatestVersion != n {
			t.Errorf("agent after %d uploads: %+v, %v", n, a, err)
		}
		if vs, _ := s.Versions(ctx, "ag"); len(vs) != n {
			t.Errorf("%d versions, want %d", len(vs), n)
		}
		if c := created.Load(); c != 1 {
			t.Errorf("%d metadata uploads said they created the agent, want 1", c)
		}
	})

	// Lines appended at once get distinct Seqs, each call's in order.
	t.Run("logs at once", func(t *testing.T) {
		s := open(t, "store")
		const writers, calls, per = 8, 10, 5
		var wg sync.WaitGroup
		var mu sync.Mutex
		seen := map[int64]bool{}
		for w := range writers {
			wg.Go(func() {
				for c := range calls {
					ls := logLines("ag", fmt.Sprintf("w%d-c%d-", w, c), "", per)
					if err := s.AppendLogs(ctx, ls); err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					for i, l := range ls {
						if seen[l.Seq] {
							t.Errorf("seq %d given twice", l.Seq)
						}
						seen[l.Seq] = true
						if i > 0 && l.Seq <= ls[i-1].Seq {
							t.Errorf("seqs of one call out of order: %d after %d", l.Seq, ls[i-1].Seq)
						}
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		got, err := s.Logs(ctx, "ag", "", 0, 0)
		if err != nil || len(got) != writers*calls*per {
			t.Fatalf("Logs: %d lines, %v; want %d", len(got), err, writers*calls*per)
		}
		for i := 1; i < len(got); i++ {
			if got[i].Seq <= got[i-1].Seq {
				t.Fatalf("Logs not in seq order at %d", i)
			}
		}
	})
}
