package store_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/store"
)

// BenchmarkStartFinish times the request path's share of recording: one
// Start and one Finish of a prepared record. The writer is held while the
// timer runs (and drained while it is stopped), so that neither its work nor
// its allocations are counted.
func BenchmarkStartFinish(b *testing.B) {
	const chunk = 1024 // Start+Finish pairs per pause; fits the queue
	db, _ := openDB(b, store.WithQueueSize(2*chunk+1))
	ctx := context.Background()
	inv := pending("", "agent", time.Now())
	ids := make([]string, chunk)
	for i := range ids {
		ids[i] = fmt.Sprintf("bench-%d", i)
	}
	fin := completed(inv, 1.5, `"ok"`)
	b.ReportAllocs()
	b.ResetTimer()
	b.StopTimer()
	for done := 0; done < b.N; done += chunk {
		if err := db.Flush(ctx); err != nil {
			b.Fatal(err)
		}
		resume := store.PauseWriter(db)
		n := min(chunk, b.N-done)
		b.StartTimer()
		for i := range n {
			inv.ID = ids[i]
			fin.ID = ids[i]
			db.Start(inv)
			db.Finish(fin)
		}
		b.StopTimer()
		resume()
	}
	if err := db.Flush(ctx); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkThroughput measures records committed per second to a file
// database, from 8 concurrent producers, counted until Flush returns.
//
//	coalesced: Start and Finish back to back (one INSERT per record)
//	split:     each Finish 256 records after its Start (INSERT, then UPDATE)
func BenchmarkThroughput(b *testing.B) {
	for _, lag := range []int{0, 256} {
		name := "coalesced"
		if lag > 0 {
			name = "split"
		}
		b.Run(name, func(b *testing.B) {
			db, _ := openDB(b)
			ctx := context.Background()
			const producers = 8
			args, kwargs := json.RawMessage(`["What is the capital of France?"]`), json.RawMessage(`{"role":"user"}`)
			out := json.RawMessage(`"Paris is the capital of France."`)
			var next atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for range producers {
				wg.Go(func() {
					var window []domain.Invocation
					for {
						i := next.Add(1) - 1
						if i >= int64(b.N) {
							break
						}
						inv := domain.Invocation{ID: uuid.NewString(), AgentID: "agent", EntrypointTag: "minimal",
							SDKType: "local_server", InputArgs: args, InputKwargs: kwargs, Status: domain.StatusPending, RequestTime: time.Now()}
						db.Start(inv)
						window = append(window, inv)
						if len(window) > lag {
							f := window[0]
							window = window[1:]
							f.Status, f.Output, f.ResponseTime, f.ExecutionMS = domain.StatusCompleted, out, time.Now(), 1.25
							db.Finish(f)
						}
					}
					for _, f := range window {
						f.Status, f.Output, f.ResponseTime, f.ExecutionMS = domain.StatusCompleted, out, time.Now(), 1.25
						db.Finish(f)
					}
				})
			}
			wg.Wait()
			if err := db.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "records/s")
			if n := db.WriteErrors(); n != 0 {
				b.Fatalf("%d write errors", n)
			}
		})
	}
}

// BenchmarkFinishDurable times a call's recording on the platform server:
// Start, then FinishDurable (the call's answer waits for the commit), by 1
// or 32 callers at once (the writer lingers 5 ms, as the server's does;
// a durable finish cuts it short).
func BenchmarkFinishDurable(b *testing.B) {
	for _, callers := range []int{1, 2, 32} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			db, _ := openDB(b, store.WithBatch(0, 5*time.Millisecond))
			ctx := context.Background()
			args, kwargs := json.RawMessage(`["What is the capital of France?"]`), json.RawMessage(`{"role":"user"}`)
			out := json.RawMessage(`"Paris is the capital of France."`)
			var next atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			var wg sync.WaitGroup
			for range callers {
				wg.Go(func() {
					for next.Add(1) <= int64(b.N) {
						inv := domain.Invocation{ID: uuid.NewString(), AgentID: "agent", EntrypointTag: "minimal",
							SDKType: "platform_server", InputArgs: args, InputKwargs: kwargs, Status: domain.StatusPending, RequestTime: time.Now()}
						db.Start(inv)
						inv.Status, inv.Output, inv.ResponseTime, inv.ExecutionMS = domain.StatusCompleted, out, time.Now(), 0.2
						if err := db.FinishDurable(ctx, inv); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
		})
	}
}
