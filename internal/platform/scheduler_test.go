package platform

import (
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/placement"
)

// The placement of a version newer than the active one belongs to its
// start while the start runs and for orphanAfter after it ended; one this
// leader did not place gets as long as a start may take, and orphanAfter,
// from when it began to lead.
func TestOrphanedStarts(t *testing.T) {
	now := time.Now()
	k := placement.Key{Agent: "a", Version: 2}
	tests := []struct {
		name   string
		since  time.Time
		mark   *startMark
		orphan bool
	}{
		{"running", now.Add(-time.Hour), &startMark{running: 1, ended: now.Add(-time.Hour)}, false},
		{"ended just now", now.Add(-time.Hour), &startMark{ended: now.Add(-time.Second)}, false},
		{"ended long ago", now.Add(-time.Hour), &startMark{ended: now.Add(-orphanAfter - time.Second)}, true},
		{"not ours, leading since moments", now.Add(-time.Second), nil, false},
		{"not ours, leading for less than a start may take", now.Add(-prepareTimeout), nil, false},
		{"not ours, leading since long", now.Add(-prepareTimeout - orphanAfter - time.Second), nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sc := &scheduling{since: tt.since, starts: map[placement.Key]startMark{}}
			if tt.mark != nil {
				sc.starts[k] = *tt.mark
			}
			if got := sc.orphaned(k, now); got != tt.orphan {
				t.Fatalf("orphaned = %v, want %v", got, tt.orphan)
			}
		})
	}
	// Bracketed by placeStart: running while it runs, ended after.
	sc := &scheduling{since: now.Add(-time.Hour), starts: map[placement.Key]startMark{}}
	sc.startBegins(k)
	if sc.orphaned(k, now.Add(time.Hour)) {
		t.Fatal("a running start's placement is orphaned")
	}
	sc.startEnds(k)
	if sc.orphaned(k, time.Now()) || !sc.orphaned(k, time.Now().Add(orphanAfter+time.Second)) {
		t.Fatal("an ended start's placement: want kept, then orphaned after orphanAfter")
	}
}
