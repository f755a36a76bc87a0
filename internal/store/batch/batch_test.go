package batch

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"

	"github.com/runagent-go/runagent/internal/domain"
)

// recorder is a Committer that keeps what it was given and refuses any
// batch holding a record whose id is in bad.
type recorder struct {
	mu      sync.Mutex
	bad     map[string]bool
	batches [][]Rec
	rows    map[string]domain.Invocation
}

func (r *recorder) Commit(recs []Rec) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rec := range recs {
		if r.bad[rec.Inv.ID] {
			return errors.New("refused " + rec.Inv.ID)
		}
	}
	r.batches = append(r.batches, slices.Clone(recs))
	for _, rec := range recs {
		r.rows[rec.Inv.ID] = rec.Inv
	}
	return nil
}

func newRecorder(bad ...string) *recorder {
	r := &recorder{bad: map[string]bool{}, rows: map[string]domain.Invocation{}}
	for _, id := range bad {
		r.bad[id] = true
	}
	return r
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestWriter(t *testing.T) {
	for _, tt := range []struct {
		name     string
		bad      []string
		ops      func(w *Writer)
		wantRows map[string]domain.Status
		wantLost uint64
	}{
		{
			name: "start and finish coalesce",
			ops: func(w *Writer) {
				w.Start(domain.Invocation{ID: "a", AgentID: "ag", Status: domain.StatusPending})
				w.Finish(domain.Invocation{ID: "a", Status: domain.StatusCompleted})
			},
			wantRows: map[string]domain.Status{"a": domain.StatusCompleted},
		},
		{
			name: "a bad record does not take the others with it",
			bad:  []string{"b"},
			ops: func(w *Writer) {
				for _, id := range []string{"a", "b", "c"} {
					w.Start(domain.Invocation{ID: id, Status: domain.StatusPending})
				}
			},
			wantRows: map[string]domain.Status{"a": domain.StatusPending, "c": domain.StatusPending},
			wantLost: 1,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder(tt.bad...)
			w := New(rec, Options{Log: quiet})
			resume := w.Pause() // everything lands in one batch
			tt.ops(w)
			resume()
			if err := w.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			w.Close()
			got := map[string]domain.Status{}
			for id, inv := range rec.rows {
				got[id] = inv.Status
			}
			if len(got) != len(tt.wantRows) {
				t.Fatalf("rows %v, want %v", got, tt.wantRows)
			}
			for id, st := range tt.wantRows {
				if got[id] != st {
					t.Errorf("row %s: %q, want %q", id, got[id], st)
				}
			}
			if n := w.WriteErrors(); n != tt.wantLost {
				t.Errorf("WriteErrors = %d, want %d", n, tt.wantLost)
			}
		})
	}
}

// The merged record keeps the Start's fields the Finish left empty.
func TestMergeKeepsStartFields(t *testing.T) {
	rec := newRecorder()
	w := New(rec, Options{Log: quiet})
	resume := w.Pause()
	w.Start(domain.Invocation{ID: "a", AgentID: "ag", EntrypointTag: "tag", InputArgs: []byte(`[1]`), Status: domain.StatusPending})
	w.Finish(domain.Invocation{ID: "a", Status: domain.StatusFailed, ErrorDetail: "x"})
	resume()
	w.Close()
	if len(rec.batches) != 1 || len(rec.batches[0]) != 1 {
		t.Fatalf("batches %+v, want one record in one batch", rec.batches)
	}
	r := rec.batches[0][0]
	if !r.Started || r.Inv.AgentID != "ag" || r.Inv.EntrypointTag != "tag" || string(r.Inv.InputArgs) != `[1]` || r.Inv.Status != domain.StatusFailed || r.Inv.ErrorDetail != "x" {
		t.Errorf("merged record %+v", r)
	}
}

// After Close, records are counted as lost and Flush says the writer is
// closed only if something was left unwritten.
func TestAfterClose(t *testing.T) {
	w := New(newRecorder(), Options{Log: quiet})
	w.Close()
	w.Close() // harmless
	w.Start(domain.Invocation{ID: "late"})
	if n := w.WriteErrors(); n != 1 {
		t.Errorf("WriteErrors after a late Start = %d, want 1", n)
	}
	if err := w.FinishDurable(context.Background(), domain.Invocation{ID: "late"}); !errors.Is(err, ErrClosed) {
		t.Errorf("FinishDurable after Close = %v, want ErrClosed", err)
	}
}
