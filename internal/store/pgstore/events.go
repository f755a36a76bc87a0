package pgstore

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/runagent-go/runagent/internal/domain"
)

// AppendRunEvents adds events to their runs' logs, in one round trip.
func (db *DB) AppendRunEvents(ctx context.Context, events []domain.RunEvent) (err error) {
	defer classify(ctx, &err)
	if len(events) == 0 {
		return nil
	}
	rows := make([][]any, len(events))
	for i, e := range events {
		rows[i] = []any{e.RunID, e.Seq, e.Kind, string(e.Data), e.At.UnixMicro()}
	}
	_, err = db.pool.CopyFrom(ctx, pgx.Identifier{"run_events"}, []string{"run_id", "seq", "kind", "data", "at"}, pgx.CopyFromRows(rows))
	return err
}

// RunEvents returns a run's events after seq after, in order.
func (db *DB) RunEvents(ctx context.Context, runID string, after, limit int) (_ []domain.RunEvent, err error) {
	defer classify(ctx, &err)
	rows, err := db.pool.Query(ctx, `SELECT run_id, seq, kind, data, at FROM run_events WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3`, runID, after, limit)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(r pgx.Row) (domain.RunEvent, error) {
		var (
			e    domain.RunEvent
			data string
			at   int64
		)
		err := r.Scan(&e.RunID, &e.Seq, &e.Kind, &data, &at)
		e.Data, e.At = []byte(data), time.UnixMicro(at).UTC()
		return e, err
	})
}

// PruneRunEvents removes the logs of runs that ended before t.
func (db *DB) PruneRunEvents(ctx context.Context, endedBefore time.Time) (_ int64, err error) {
	defer classify(ctx, &err)
	tag, err := db.pool.Exec(ctx, `DELETE FROM run_events WHERE run_id IN
		(SELECT invocation_id FROM invocations WHERE status <> 'pending' AND response_time < $1)`, endedBefore.UnixMicro())
	return tag.RowsAffected(), err
}
