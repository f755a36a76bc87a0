package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

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

const insertSQL = `INSERT INTO invocations (` + invocationColumns + `)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
	ON CONFLICT (invocation_id) DO UPDATE SET
		status = excluded.status,
		output_data = excluded.output_data,
		error_detail = excluded.error_detail,
		response_time = excluded.response_time,
		execution_time_ms = excluded.execution_time_ms
	WHERE excluded.status <> 'pending'`

const updateSQL = `UPDATE invocations SET status = ?, output_data = ?, error_detail = ?,
	response_time = ?, execution_time_ms = ? WHERE invocation_id = ?`

// writer owns one connection and commits batches on it. Only its goroutine
// touches its fields after Open.
type writer struct {
	db     *DB
	conn   *sql.Conn
	insert *sql.Stmt
	update *sql.Stmt
	opts   options

	// The batch being gathered: records in arrival order (one per id),
	// where each id sits in recs, and the ops they came from.
	recs  []rec
	idx   map[string]int
	nOps  uint64
	acks  []chan struct{}
	sleep *time.Timer // the linger
}

type rec struct {
	inv     domain.Invocation
	started bool // a Start is in this batch: the row must be inserted
}

func newWriter(ctx context.Context, sdb *sql.DB, o options) (_ *writer, err error) {
	conn, err := sdb.Conn(ctx)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			conn.Close()
		}
	}()
	// The writer's page cache holds the hot index pages of the batches it
	// writes (readers keep SQLite's default). Ids are time-ordered, so few
	// pages are hot: 4 MiB commits as fast as 32 MiB did (BenchmarkThroughput)
	// and keeps the server's memory after a burst low.
	if _, err := conn.ExecContext(ctx, "PRAGMA cache_size = -4096"); err != nil {
		return nil, err
	}
	if err := migrate(ctx, conn); err != nil {
		return nil, err
	}
	w := &writer{conn: conn, opts: o, idx: make(map[string]int, o.maxBatch), sleep: time.NewTimer(time.Hour)}
	w.sleep.Stop()
	if w.insert, err = conn.PrepareContext(ctx, insertSQL); err != nil {
		return nil, err
	}
	if w.update, err = conn.PrepareContext(ctx, updateSQL); err != nil {
		w.insert.Close()
		return nil, err
	}
	return w, nil
}

func (w *writer) run() {
	db := w.db
	defer func() {
		close(db.done)
		// Whatever slipped in after the final drain can't be written.
		for {
			select {
			case o := <-db.queue:
				w.abandon(o)
			default:
				return
			}
		}
	}()
	for {
		stop := w.add(<-db.queue)
		if !stop {
			stop = w.gather()
		}
		w.commit()
		if stop {
			// Close has been called: take what raced with it, then exit.
			for drained := false; !drained; {
				select {
				case o := <-db.queue:
					w.add(o)
					if len(w.recs) >= w.opts.maxBatch {
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
// or a stop asks for a commit.
// It reports whether a stop was seen.
func (w *writer) gather() (stop bool) {
	q := w.db.queue
	lingered := false
	for len(w.recs) < w.opts.maxBatch {
		select {
		case o := <-q:
			if w.add(o) {
				return true
			}
			continue
		default:
		}
		// Someone waits for this batch: commit what is queued now.
		if len(w.acks) > 0 || w.opts.linger <= 0 || lingered {
			return false
		}
		// Sleep rather than wait on the queue: records arriving meanwhile
		// then cost no wake-up each, and the batch commits once. A Flush
		// waits at most this long; a FinishDurable cuts the sleep short
		// (its call's answer waits for the commit).
		lingered = true
		w.sleep.Reset(w.opts.linger)
		select {
		case <-w.db.hurry:
		case <-w.sleep.C:
		}
		w.sleep.Stop()
	}
	return false
}

// add puts one op into the batch; it reports whether the op was a stop.
func (w *writer) add(o op) (stop bool) {
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
			w.recs[i].started = true
			return false
		}
		w.idx[o.inv.ID] = len(w.recs)
		w.recs = append(w.recs, rec{inv: o.inv, started: true})
	case opFinish:
		w.nOps++
		if o.ack != nil {
			w.acks = append(w.acks, o.ack)
		}
		if i, ok := w.idx[o.inv.ID]; ok {
			r := &w.recs[i]
			r.inv = merge(r.inv, o.inv)
			return false
		}
		w.idx[o.inv.ID] = len(w.recs)
		w.recs = append(w.recs, rec{inv: o.inv})
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
func (w *writer) commit() {
	if len(w.recs) > 0 {
		var err error
		for attempt := range 3 {
			if attempt > 0 {
				time.Sleep(time.Duration(attempt) * 50 * time.Millisecond)
			}
			if err = w.writeBatch(w.recs); err == nil {
				break
			}
			w.db.log.Warn("writing invocation records failed; retrying", "records", len(w.recs), "attempt", attempt+1, "error", err)
		}
		if err != nil {
			var (
				lost     []string
				firstErr error
			)
			for i := range w.recs {
				if err := w.writeBatch(w.recs[i : i+1]); err != nil {
					w.db.errors.Add(1)
					lost = append(lost, w.recs[i].inv.ID)
					if firstErr == nil {
						firstErr = err
					}
				}
			}
			if len(lost) > 0 {
				w.db.log.Error("invocation records not written", "count", len(lost),
					"invocation_ids", lost[:min(len(lost), 10)], "error", firstErr)
			}
		}
		clear(w.recs) // drop references to the records' memory
		w.recs = w.recs[:0]
		clear(w.idx)
	}
	w.db.processed.Add(w.nOps)
	w.nOps = 0
	// A hurry left from this batch's durable finishes would cut the next
	// linger short for nothing (the next call's Start would commit alone,
	// beside its first chunk). A durable finish still queued is seen by
	// the next gather before it lingers.
	select {
	case <-w.db.hurry:
	default:
	}
	for _, a := range w.acks {
		close(a)
	}
	clear(w.acks)
	w.acks = w.acks[:0]
}

func (w *writer) writeBatch(recs []rec) (err error) {
	ctx := context.Background()
	if _, err := w.conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if err != nil {
			w.conn.ExecContext(ctx, "ROLLBACK")
		}
	}()
	for i := range recs {
		if err := w.write(ctx, &recs[i]); err != nil {
			return fmt.Errorf("invocation %s: %w", recs[i].inv.ID, err)
		}
	}
	if _, err := w.conn.ExecContext(ctx, "COMMIT"); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

func (w *writer) write(ctx context.Context, r *rec) error {
	inv := &r.inv
	var respUS, execMS any
	if !inv.ResponseTime.IsZero() {
		respUS, execMS = inv.ResponseTime.UnixMicro(), inv.ExecutionMS
	}
	if !r.started {
		// The row was inserted by an earlier batch: update its outcome.
		res, err := w.update.ExecContext(ctx, inv.Status, jsonText(inv.Output), nullString(inv.ErrorDetail), respUS, execMS, inv.ID)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n > 0 {
			return err
		}
		// No such row (a Finish without a Start): insert it whole.
	}
	reqTime := inv.RequestTime
	if reqTime.IsZero() {
		reqTime = inv.ResponseTime
		if reqTime.IsZero() {
			reqTime = time.Now()
		}
	}
	_, err := w.insert.ExecContext(ctx, inv.ID, inv.AgentID, inv.EntrypointTag, inv.SDKType,
		jsonText(inv.InputArgs), jsonText(inv.InputKwargs), jsonText(inv.Output), nullString(inv.ErrorDetail),
		inv.Status, reqTime.UnixMicro(), respUS, execMS, jsonText(inv.ClientInfo))
	return err
}

// abandon accounts for an op that reached the queue after the writer exited.
func (w *writer) abandon(o op) {
	switch o.kind {
	case opStart, opFinish:
		w.db.lost(o.kind, &o.inv)
	case opFlush:
		close(o.ack)
	}
}

func (w *writer) close() error {
	w.conn.ExecContext(context.Background(), "PRAGMA optimize")
	return errors.Join(w.insert.Close(), w.update.Close(), w.conn.Close())
}

// jsonText binds a JSON value as TEXT, or NULL when absent.
func jsonText(b []byte) any {
	if b == nil {
		return nil
	}
	return string(b)
}

func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}
