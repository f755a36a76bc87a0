package storetest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

func testRunEvents(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, "store")
	var batch []domain.RunEvent
	for i := range 250 {
		batch = append(batch, domain.RunEvent{RunID: "r1", Seq: i, Kind: "chunk", Data: []byte(fmt.Sprintf(`{"i": %d, "s": "héllo\nwörld"}`, i)), At: t0})
	}
	if err := s.AppendRunEvents(ctx, batch[:100]); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendRunEvents(ctx, batch[100:]); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendRunEvents(ctx, []domain.RunEvent{{RunID: "r1", Seq: 250, Kind: "done", Data: []byte(`{}`), At: t0}, {RunID: "r2", Seq: 0, Kind: "chunk", Data: []byte(`1`), At: t0}}); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendRunEvents(ctx, []domain.RunEvent{{RunID: "r1", Seq: 7, Kind: "chunk", Data: []byte(`0`), At: t0}}); err == nil {
		t.Fatal("a seq written twice was taken")
	}
	for _, c := range []struct{ after, limit, first, n int }{{-1, 1000, 0, 251}, {4, 10, 5, 10}, {249, 10, 250, 1}, {250, 10, 0, 0}} {
		got, err := s.RunEvents(ctx, "r1", c.after, c.limit)
		if err != nil || len(got) != c.n || (c.n > 0 && got[0].Seq != c.first) {
			t.Fatalf("RunEvents(after %d, limit %d) = %d events from %v, %v; want %d from %d", c.after, c.limit, len(got), got[:min(1, len(got))], err, c.n, c.first)
		}
		for i, e := range got {
			if e.Seq != c.first+i || e.RunID != "r1" || !e.At.Equal(t0) {
				t.Fatalf("event %d: %+v", i, e)
			}
		}
	}
	if got, _ := s.RunEvents(ctx, "r1", 41, 1); string(got[0].Data) != `{"i": 42, "s": "héllo\nwörld"}` {
		t.Fatalf("event 42's data: %q", got[0].Data)
	}
	// Pruned once their run has ended long enough ago.
	s.Start(pending("r1", "a", t0))
	s.Finish(completed(pending("r1", "a", t0), 1, `1`))
	s.Start(pending("r2", "a", t0))
	if _, err := s.Get(ctx, "r1"); err != nil { // flushes the history
		t.Fatal(err)
	}
	if n, err := s.PruneRunEvents(ctx, t0); err != nil || n != 0 {
		t.Fatalf("PruneRunEvents before the end = %d, %v", n, err)
	}
	if n, err := s.PruneRunEvents(ctx, time.Now()); err != nil || n != 251 {
		t.Fatalf("PruneRunEvents = %d, %v; want r1's 251 (r2 runs on)", n, err)
	}
	if got, _ := s.RunEvents(ctx, "r2", -1, 10); len(got) != 1 {
		t.Fatalf("a running run's events were pruned: %v", got)
	}
}
