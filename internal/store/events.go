package store

import (
	"context"
	"database/sql"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

// AppendRunEvents adds events to their runs' logs, in one transaction.
func (db *DB) AppendRunEvents(ctx context.Context, events []domain.RunEvent) error {
	if len(events) == 0 {
		return nil
	}
	return db.tx(ctx, func(t *sql.Tx) error {
		st, err := t.PrepareContext(ctx, `INSERT INTO run_events (run_id, seq, kind, data, at) VALUES (?, ?, ?, ?, ?)`)
		if err != nil {
			return err
		}
		defer st.Close()
		for _, e := range events {
			if _, err := st.ExecContext(ctx, e.RunID, e.Seq, e.Kind, string(e.Data), e.At.UnixMicro()); err != nil {
				return err
			}
		}
		return nil
	})
}

// RunEvents returns a run's events after seq after, in order.
func (db *DB) RunEvents(ctx context.Context, runID string, after, limit int) ([]domain.RunEvent, error) {
	rows, err := db.sql.QueryContext(ctx, `SELECT run_id, seq, kind, data, at FROM run_events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?`, runID, after, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []domain.RunEvent
	for rows.Next() {
		var (
			e    domain.RunEvent
			data string
			at   int64
		)
		if err := rows.Scan(&e.RunID, &e.Seq, &e.Kind, &data, &at); err != nil {
			return nil, err
		}
		e.Data, e.At = []byte(data), time.UnixMicro(at).UTC()
		out = append(out, e)
	}
	return out, rows.Err()
}

// PruneRunEvents removes the logs of runs that ended before t.
func (db *DB) PruneRunEvents(ctx context.Context, endedBefore time.Time) (int64, error) {
	res, err := db.sql.ExecContext(ctx, `DELETE FROM run_events WHERE run_id IN
		(SELECT invocation_id FROM invocations WHERE status <> 'pending' AND response_time < ?)`, endedBefore.UnixMicro())
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}
