package store

import (
	"context"
	"database/sql"
	"strings"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

const cronColumns = `cron_id, agent_id, tenant, schedule, timezone, entrypoint_tag, input_args, input_kwargs, webhook, end_at, paused, next_at, last_run_id, created_at`

// CreateCron records a cron.
func (db *DB) CreateCron(ctx context.Context, c domain.Cron) error {
	_, err := db.sql.ExecContext(ctx, `INSERT INTO crons (`+cronColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		c.ID, c.AgentID, c.Tenant, c.Schedule, c.Timezone, c.EntrypointTag, string(c.InputArgs), string(c.InputKwargs),
		nullString(c.Webhook), micros(c.EndAt), c.Paused, micros(c.NextAt), nullString(c.LastRunID), c.CreatedAt.UnixMicro())
	return err
}

// Cron returns one cron.
func (db *DB) Cron(ctx context.Context, id string) (domain.Cron, error) {
	cs, err := db.crons(ctx, `WHERE cron_id = ?`, id)
	if err != nil {
		return domain.Cron{}, err
	}
	if len(cs) == 0 {
		return domain.Cron{}, domain.ErrNotFound
	}
	return cs[0], nil
}

// ListCrons returns agentIDs' crons, oldest first.
func (db *DB) ListCrons(ctx context.Context, agentIDs []string) ([]domain.Cron, error) {
	if len(agentIDs) == 0 {
		return nil, nil
	}
	args := make([]any, len(agentIDs))
	for i, id := range agentIDs {
		args[i] = id
	}
	return db.crons(ctx, `WHERE agent_id IN (?`+strings.Repeat(", ?", len(agentIDs)-1)+`) ORDER BY created_at, cron_id`, args...)
}

// SetCronPaused pauses or resumes a cron.
func (db *DB) SetCronPaused(ctx context.Context, id string, paused bool, nextAt time.Time) error {
	if paused {
		return oneRow(db.sql.ExecContext(ctx, `UPDATE crons SET paused = 1 WHERE cron_id = ?`, id))
	}
	return oneRow(db.sql.ExecContext(ctx, `UPDATE crons SET paused = 0, next_at = ? WHERE cron_id = ?`, micros(nextAt), id))
}

// DeleteCron removes a cron.
func (db *DB) DeleteCron(ctx context.Context, id string) error {
	return oneRow(db.sql.ExecContext(ctx, `DELETE FROM crons WHERE cron_id = ?`, id))
}

// DueCrons returns the crons due at now, the most overdue first.
func (db *DB) DueCrons(ctx context.Context, now time.Time, limit int) ([]domain.Cron, error) {
	return db.crons(ctx, `WHERE paused = 0 AND next_at IS NOT NULL AND next_at <= ? ORDER BY next_at LIMIT ?`, now.UnixMicro(), limit)
}

// AdvanceCron moves a cron's next tick if it still is from.
func (db *DB) AdvanceCron(ctx context.Context, id string, from, to time.Time, lastRunID string) error {
	return oneRow(db.sql.ExecContext(ctx, `UPDATE crons SET next_at = ?, last_run_id = coalesce(?, last_run_id) WHERE cron_id = ? AND next_at = ?`,
		micros(to), nullString(lastRunID), id, from.UnixMicro()))
}

func (db *DB) crons(ctx context.Context, tail string, args ...any) ([]domain.Cron, error) {
	rows, err := db.sql.QueryContext(ctx, `SELECT `+cronColumns+` FROM crons `+tail, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []domain.Cron
	for rows.Next() {
		var (
			c             domain.Cron
			args, kwargs  string
			hook, lastRun sql.NullString
			endAt, nextAt sql.NullInt64
			created       int64
		)
		if err := rows.Scan(&c.ID, &c.AgentID, &c.Tenant, &c.Schedule, &c.Timezone, &c.EntrypointTag, &args, &kwargs,
			&hook, &endAt, &c.Paused, &nextAt, &lastRun, &created); err != nil {
			return nil, err
		}
		c.InputArgs, c.InputKwargs, c.Webhook, c.LastRunID = []byte(args), []byte(kwargs), hook.String, lastRun.String
		c.EndAt, c.NextAt, c.CreatedAt = nullMicros(endAt), nullMicros(nextAt), time.UnixMicro(created).UTC()
		out = append(out, c)
	}
	return out, rows.Err()
}

func nullMicros(v sql.NullInt64) time.Time {
	if !v.Valid {
		return time.Time{}
	}
	return time.UnixMicro(v.Int64).UTC()
}
