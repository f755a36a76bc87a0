package domain

import (
	"errors"
	"strings"
	"time"
)

// RunStatus is where a run is: the invocation's status, told apart
// further (a pending run that started is running; a failed one was
// cancelled, or timed out, or failed otherwise).
type RunStatus string

// Run statuses.
const (
	RunPending   RunStatus = "pending"
	RunRunning   RunStatus = "running"
	RunCompleted RunStatus = "completed"
	RunFailed    RunStatus = "failed"
	RunCancelled RunStatus = "cancelled"
	RunTimeout   RunStatus = "timeout"
)

// RunStatuses are every run status, in order.
var RunStatuses = []RunStatus{RunPending, RunRunning, RunCompleted, RunFailed, RunCancelled, RunTimeout}

// Run is an invocation seen as a run: a background run's own fields
// beside it (a sync or streamed call has none: Background false).
type Run struct {
	Invocation
	Background     bool      // created as a background run
	IdempotencyKey string    // the Idempotency-Key it was created with ("" if none)
	Attempts       int       // times it was started
	StartedAt      time.Time // when the last start began (zero: never started)
	Running        bool      // started and not ended
	Webhook        string    // the URL its outcome is POSTed to ("" if none)
	ThreadID       string    // its thread ("" if none)
	UserID         string    // the user whose persistent folders it sees ("" if none)
}

// WebhookAttempt is one attempt to deliver a run's webhook.
type WebhookAttempt struct {
	RunID      string
	Attempt    int // from 1
	At         time.Time
	URL        string
	StatusCode int    // 0: no HTTP answer
	Error      string // "" for a 2xx answer
	DurationMS float64
}

// Status is the run's status.
func (r Run) Status() RunStatus {
	switch r.Invocation.Status {
	case StatusPending:
		if r.Running {
			return RunRunning
		}
		return RunPending
	case StatusCompleted:
		return RunCompleted
	}
	switch {
	case strings.HasPrefix(r.ErrorDetail, string(CodeCancelled)+":"):
		return RunCancelled
	case strings.HasPrefix(r.ErrorDetail, string(CodeTimeout)+":"):
		return RunTimeout
	}
	return RunFailed
}

// Ended says whether the run has its outcome.
func (r Run) Ended() bool { return r.Invocation.Status != StatusPending }

// ErrThreadBusy is in the error of a create refused because another run
// of its thread is queued or running.
var ErrThreadBusy = errors.New("another run of the thread is queued or running")

// ErrDuplicate is in the error of a create whose Idempotency-Key an
// earlier run of the agent already has.
var ErrDuplicate = errors.New("a run with this idempotency key exists")

// RunEvent is one entry of a run's event log: a chunk of its stream
// (Kind "chunk" or "chunk_error") or its end ("done" or "error"), numbered
// from 0 in the order the run produced them.
type RunEvent struct {
	RunID string
	Seq   int
	Kind  string
	Data  []byte // JSON
	At    time.Time
}
