// Package batch is the invocation-history writer every store shares: Start
// and Finish put a record on a bounded queue and return; one goroutine
// gathers what is queued into batches and hands each to the store's
// Committer, which writes it in one transaction. A Start and a Finish of
// one invocation in one batch become one record. FinishDurable and Flush
// wait for the commit of what they queued (a server answers a call only
// once its record is durable; reads flush first, for read-your-writes).
//
// The store (SQLite in internal/store, PostgreSQL in internal/store/pgstore)
// supplies only Commit: how a batch becomes rows.
package batch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

// ErrClosed is returned by Flush and FinishDurable after Close.
var ErrClosed = errors.New("store closed")

// Rec is one invocation's record in a batch.
type Rec struct {
	Inv domain.Invocation
	// Started: a Start is in this batch, so the row does not exist yet
	// and must be inserted (with the outcome if a Finish came too). A
	// record that is not Started updates the row an earlier batch wrote
	// (or inserts it whole: a Finish without a Start).
	Started bool
}

// Committer writes one batch in one transaction: all of it or none.
type Committer interface {
	Commit(recs []Rec) error
}

// Transient is implemented by a Committer some of whose errors mean that
// the database is away for a while (restarting, the network cut) rather
// than that the batch is wrong: the writer then keeps retrying the batch,
// with backoff, for up to Options.RetryFor, instead of giving records up
// after a few quick attempts.
type Transient interface {
	Transient(err error) bool
}

// Options are the writer's sizes.
type Options struct {
	Log      *slog.Logger  // where write errors go (default slog.Default())
	Queue    int           // Start/Finish calls that may wait before they block (default 8192)
	MaxBatch int           // records in one commit (default 2048)
	Linger   time.Duration // how long to wait for more once some are queued (0: commit at once)
	RetryFor time.Duration // how long to retry a batch while its errors are Transient (default 1 min)
}

type opKind uint8

const (
	opStart opKind = iota + 1
	opFinish
	opFlush // ack when everything queued before it is committed
	opStop  // commit everything and exit
	opPause // tests: wait until ack is closed
)

func (k opKind) String() string {
	switch k {
	case opStart:
		return "start"
	case opFinish:
		return "finish"
	case opFlush:
		return "flush"
	case opStop:
		return "stop"
	case opPause:
		return "pause"
	}
	return fmt.Sprintf("op(%d)", uint8(k))
}

// op travels by value on the queue, so Start and Finish allocate nothing.
// ack (a Flush, a FinishDurable) is closed once the batch is committed.
type op struct {
	kind opKind
	inv  domain.Invocation
	ack  chan struct{}
}

// Writer is the queue and its goroutine. Its methods are safe for
// concurrent use.
type Writer struct {
	c    Committer
	log  *slog.Logger
	opts Options

	queue chan op
	hurry chan struct{} // a FinishDurable waits: the writer stops lingering
	done  chan struct{} // closed when the goroutine has exited

	enqueued  atomic.Uint64 // Start/Finish calls accepted
	processed atomic.Uint64 // of those, committed (or given up on)
	errors    atomic.Uint64 // records that could not be written
	closed    atomic.Bool
	closeOnce sync.Once

	// The batch being gathered, touched by the goroutine only: records in
	// arrival order (one per id), where each id sits in recs, and the ops
	// they came from.
	recs  []Rec
	idx   map[string]int
	nOps  uint64
	acks  []chan struct{}
	sleep *time.Timer // the linger
}

// New starts a writer that commits through c.
func New(c Committer, o Options) *Writer {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Queue <= 0 {
		o.Queue = 8192
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 2048
	}
	if o.RetryFor <= 0 {
		o.RetryFor = time.Minute
	}
	w := &Writer{
		c: c, log: o.Log, opts: o,
		queue: make(chan op, o.Queue),
		hurry: make(chan struct{}, 1),
		done:  make(chan struct{}),
		idx:   make(map[string]int, o.MaxBatch),
		sleep: time.NewTimer(time.Hour),
	}
	w.sleep.Stop()
	go w.run()
	return w
}

// Start records a pending invocation. It returns once the record is queued;
// it blocks only while the queue is full. A record that arrives after Close
// is logged and counted in WriteErrors, not written.
func (w *Writer) Start(inv domain.Invocation) { w.enqueue(opStart, &inv, nil) }

// Finish records the outcome of an invocation started with Start (same ID):
// status, output or error, response time and execution time.
func (w *Writer) Finish(inv domain.Invocation) { w.enqueue(opFinish, &inv, nil) }

// FinishDurable is Finish that returns once the record is committed. The
// writer commits at once for it (without lingering), together with
// whatever else is queued, so waiting callers share commits. It returns
// ErrClosed if the writer closed first, ctx's error if ctx ends first (the
// record is still written).
func (w *Writer) FinishDurable(ctx context.Context, inv domain.Invocation) error {
	ack := make(chan struct{})
	if !w.enqueue(opFinish, &inv, ack) {
		return ErrClosed
	}
	select {
	case w.hurry <- struct{}{}:
	default: // already told
	}
	select {
	case <-ack:
		return nil
	case <-w.done:
		select {
		case <-ack:
			return nil
		default:
			return ErrClosed
		}
	case <-ctx.Done():
		return ctx.Err()
	}
}

// enqueue queues an op; ack, if not nil, is closed once it is committed.
// It reports whether the op was queued.
func (w *Writer) enqueue(kind opKind, inv *domain.Invocation, ack chan struct{}) bool {
	if w.closed.Load() {
		w.lost(kind, inv)
		return false
	}
	w.enqueued.Add(1)
	select {
	case w.queue <- op{kind: kind, inv: *inv, ack: ack}:
		return true
	case <-w.done:
		w.lost(kind, inv)
		return false
	}
}

func (w *Writer) lost(kind opKind, inv *domain.Invocation) {
	w.errors.Add(1)
	w.log.Error("invocation record arrived after the store was closed; not written", "invocation_id", inv.ID, "op", kind.String())
}

// WriteErrors is how many records could not be written so far (each is
// logged too).
func (w *Writer) WriteErrors() uint64 { return w.errors.Load() }

// Flush waits until everything queued before the call is committed (or
// given up on after retries; see WriteErrors). It returns ctx's error if ctx
// ends first, and ErrClosed if the writer closed with records unwritten.
// When nothing is pending it costs two atomic loads.
func (w *Writer) Flush(ctx context.Context) error {
	want := w.enqueued.Load()
	if w.processed.Load() >= want {
		return nil
	}
	ack := make(chan struct{})
	select {
	case w.queue <- op{kind: opFlush, ack: ack}:
	case <-w.done:
		if w.processed.Load() >= want {
			return nil
		}
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-ack:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close commits everything queued and stops the goroutine; the Committer
// stays the caller's to close. Calling it again is harmless.
func (w *Writer) Close() {
	w.closeOnce.Do(func() {
		w.closed.Store(true)
		w.queue <- op{kind: opStop}
		<-w.done
	})
}

// Pause holds the goroutine until resume is called (benchmarks time the
// enqueue path alone with it).
func (w *Writer) Pause() (resume func()) {
	ack := make(chan struct{})
	w.queue <- op{kind: opPause, ack: ack}
	return func() { close(ack) }
}

func (w *Writer) run() {
	defer func() {
		close(w.done)
		// Whatever slipped in after the final drain can't be written.
		for {
			select {
			case o := <-w.queue:
				w.abandon(o)
			default:
				return
			}
		}
	}()
	for {
		stop := w.add(<-w.queue)
		if !stop {
			stop = w.gather()
		}
		w.commit()
		if stop {
			// Close has been called: take what raced with it, then exit.
			for drained := false; !drained; {
				select {
				case o := <-w.queue:
					w.add(o)
					if len(w.recs) >= w.opts.MaxBatch {
						w.commit()
					}
				default:
					drained = true
				}
			}
			w.commit()
			return
		}
	}
}

// gather adds queued ops to the batch until it is full, the queue is empty
// (after lingering, if configured, unless someone waits for the commit),
// or a stop asks for a commit. It reports whether a stop was seen.
func (w *Writer) gather() (stop bool) {
	lingered := false
	for len(w.recs) < w.opts.MaxBatch {
		select {
		case o := <-w.queue:
			if w.add(o) {
				return true
			}
			continue
		default:
		}
		// Someone waits for this batch: commit what is queued now.
		if len(w.acks) > 0 || w.opts.Linger <= 0 || lingered {
			return false
		}
		// Sleep rather than wait on the queue: records arriving meanwhile
		// then cost no wake-up each, and the batch commits once. A Flush
		// waits at most this long; a FinishDurable cuts the sleep short
		// (its call's answer waits for the commit).
		lingered = true
		w.sleep.Reset(w.opts.Linger)
		select {
		case <-w.hurry:
		case <-w.sleep.C:
		}
		w.sleep.Stop()
	}
	return false
}

// add puts one op into the batch; it reports whether the op was a stop.
func (w *Writer) add(o op) (stop bool) {
	switch o.kind {
	case opFlush:
		w.acks = append(w.acks, o.ack)
	case opStop:
		return true
	case opPause:
		<-o.ack
	case opStart:
		w.nOps++
		if i, ok := w.idx[o.inv.ID]; ok {
			// A second Start of one id: keep the first.
			w.recs[i].Started = true
			return false
		}
		w.idx[o.inv.ID] = len(w.recs)
		w.recs = append(w.recs, Rec{Inv: o.inv, Started: true})
	case opFinish:
		w.nOps++
		if o.ack != nil {
			w.acks = append(w.acks, o.ack)
		}
		if i, ok := w.idx[o.inv.ID]; ok {
			r := &w.recs[i]
			r.Inv = merge(r.Inv, o.inv)
			return false
		}
		w.idx[o.inv.ID] = len(w.recs)
		w.recs = append(w.recs, Rec{Inv: o.inv})
	}
	return false
}

// merge is a Start coalesced with its Finish: the Finish's outcome with
// anything it left empty taken from the Start.
func merge(start, fin domain.Invocation) domain.Invocation {
	if fin.AgentID == "" {
		fin.AgentID = start.AgentID
	}
	if fin.EntrypointTag == "" {
		fin.EntrypointTag = start.EntrypointTag
	}
	if fin.SDKType == "" {
		fin.SDKType = start.SDKType
	}
	if fin.InputArgs == nil {
		fin.InputArgs = start.InputArgs
	}
	if fin.InputKwargs == nil {
		fin.InputKwargs = start.InputKwargs
	}
	if fin.RequestTime.IsZero() {
		fin.RequestTime = start.RequestTime
	}
	if fin.ClientInfo == nil {
		fin.ClientInfo = start.ClientInfo
	}
	return fin
}

// commit writes the batch, then tells Flush waiters. A batch that fails is
// retried; if it still fails, its records are written one per transaction
// so that one bad record can't take the others with it.
func (w *Writer) commit() {
	if len(w.recs) > 0 {
		var err error
		transient, _ := w.c.(Transient)
		giveUp := time.Now().Add(w.opts.RetryFor)
		backoff := 100 * time.Millisecond
		for attempt := 0; ; attempt++ {
			if err = w.c.Commit(w.recs); err == nil {
				break
			}
			if transient != nil && transient.Transient(err) && time.Now().Before(giveUp) {
				// The database is away: wait for it, records kept (Start and
				// Finish block once the queue is full).
				if attempt == 0 || backoff >= 2*time.Second {
					w.log.Warn("the database is not reachable; invocation records wait for it", "records", len(w.recs), "error", err)
				}
				time.Sleep(backoff)
				backoff = min(2*backoff, 2*time.Second)
				continue
			}
			if attempt >= 2 {
				break
			}
			w.log.Warn("writing invocation records failed; retrying", "records", len(w.recs), "attempt", attempt+1, "error", err)
			time.Sleep(time.Duration(attempt+1) * 50 * time.Millisecond)
		}
		if err != nil {
			var (
				lost     []string
				firstErr error
			)
			for i := range w.recs {
				if err := w.c.Commit(w.recs[i : i+1]); err != nil {
					w.errors.Add(1)
					lost = append(lost, w.recs[i].Inv.ID)
					if firstErr == nil {
						firstErr = err
					}
				}
			}
			if len(lost) > 0 {
				w.log.Error("invocation records not written", "count", len(lost),
					"invocation_ids", lost[:min(len(lost), 10)], "error", firstErr)
			}
		}
		clear(w.recs) // drop references to the records' memory
		w.recs = w.recs[:0]
		clear(w.idx)
	}
	w.processed.Add(w.nOps)
	w.nOps = 0
	// A hurry left from this batch's durable finishes would cut the next
	// linger short for nothing (the next call's Start would commit alone,
	// beside its first chunk). A durable finish still queued is seen by
	// the next gather before it lingers.
	select {
	case <-w.hurry:
	default:
	}
	for _, a := range w.acks {
		close(a)
	}
	clear(w.acks)
	w.acks = w.acks[:0]
}

// abandon accounts for an op that reached the queue after the goroutine
// exited.
func (w *Writer) abandon(o op) {
	switch o.kind {
	case opStart, opFinish:
		w.lost(o.kind, &o.inv)
	case opFlush:
		close(o.ack)
	}
}
