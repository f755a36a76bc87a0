package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/runagent-go/runagent/internal/store/batch"
)

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

// writer is the SQLite side of the history writer (batch.Writer): one
// connection of its own, on which it commits each batch. Only the batch
// goroutine calls Commit.
type writer struct {
	conn   *sql.Conn
	insert *sql.Stmt
	update *sql.Stmt
}

func newWriter(ctx context.Context, sdb *sql.DB) (_ *writer, err error) {
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
	w := &writer{conn: conn}
	if w.insert, err = conn.PrepareContext(ctx, insertSQL); err != nil {
		return nil, err
	}
	if w.update, err = conn.PrepareContext(ctx, updateSQL); err != nil {
		w.insert.Close()
		return nil, err
	}
	return w, nil
}

// Commit writes recs in one transaction.
func (w *writer) Commit(recs []batch.Rec) (err error) {
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
			return fmt.Errorf("invocation %s: %w", recs[i].Inv.ID, err)
		}
	}
	if _, err := w.conn.ExecContext(ctx, "COMMIT"); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

func (w *writer) write(ctx context.Context, r *batch.Rec) error {
	inv := &r.Inv
	var respUS, execMS any
	if !inv.ResponseTime.IsZero() {
		respUS, execMS = inv.ResponseTime.UnixMicro(), inv.ExecutionMS
	}
	if !r.Started {
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
