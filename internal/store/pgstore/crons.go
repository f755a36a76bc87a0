package pgstore

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/runagent-go/runagent/internal/domain"
)

const cronColumns = `cron_id, agent_id, tenant, schedule, timezone, entrypoint_tag, input_args, input_kwargs, webhook, end_at, paused, next_at, last_run_id, created_at`

// CreateCron records a cron.
func (db *DB) CreateCron(ctx context.Context, c domain.Cron) (err error) {
	defer classify(ctx, &err)
	_, err = db.pool.Exec(ctx, `INSERT INTO crons (`+cronColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)`,
		c.ID, c.AgentID, c.Tenant, c.Schedule, c.Timezone, c.EntrypointTag, string(c.InputArgs), string(c.InputKwargs),
		nullString(c.Webhook), micros(c.EndAt), boolInt(c.Paused), micros(c.NextAt), nullString(c.LastRunID), c.CreatedAt.UnixMicro())
	return err
}

// Cron returns one cron.
func (db *DB) Cron(ctx context.Context, id string) (_ domain.Cron, err error) {
	defer classify(ctx, &err)
	cs, err := db.crons(ctx, `WHERE cron_id = $1`, id)
	if err != nil {
		return domain.Cron{}, err
	}
	if len(cs) == 0 {
		return domain.Cron{}, domain.ErrNotFound
	}
	return cs[0], nil
}

// ListCrons returns agentIDs' crons, oldest first.
func (db *DB) ListCrons(ctx context.Context, agentIDs []string) (_ []domain.Cron, err error) {
	defer classify(ctx, &err)
	if len(agentIDs) == 0 {
		return nil, nil
	}
	return db.crons(ctx, `WHERE agent_id = ANY($1) ORDER BY created_at, cron_id`, agentIDs)
}

// SetCronPaused pauses or resumes a cron.
func (db *DB) SetCronPaused(ctx context.Context, id string, paused bool, nextAt time.Time) (err error) {
	defer classify(ctx, &err)
	if paused {
		return oneRow(db.pool.Exec(ctx, `UPDATE crons SET paused = 1 WHERE cron_id = $1`, id))
	}
	return oneRow(db.pool.Exec(ctx, `UPDATE crons SET paused = 0, next_at = $1 WHERE cron_id = $2`, micros(nextAt), id))
}

// DeleteCron removes a cron.
func (db *DB) DeleteCron(ctx context.Context, id string) (err error) {
	defer classify(ctx, &err)
	return oneRow(db.pool.Exec(ctx, `DELETE FROM crons WHERE cron_id = $1`, id))
}

// DueCrons returns the crons due at now, the most overdue first.
func (db *DB) DueCrons(ctx context.Context, now time.Time, limit int) (_ []domain.Cron, err error) {
	defer classify(ctx, &err)
	return db.crons(ctx, `WHERE paused = 0 AND next_at IS NOT NULL AND next_at <= $1 ORDER BY next_at LIMIT $2`, now.UnixMicro(), limit)
}

// AdvanceCron moves a cron's next tick if it still is from.
func (db *DB) AdvanceCron(ctx context.Context, id string, from, to time.Time, lastRunID string) (err error) {
	defer classify(ctx, &err)
	return oneRow(db.pool.Exec(ctx, `UPDATE crons SET next_at = $1, last_run_id = coalesce($2, last_run_id) WHERE cron_id = $3 AND next_at = $4`,
		micros(to), nullString(lastRunID), id, from.UnixMicro()))
}

func (db *DB) crons(ctx context.Context, tail string, args ...any) ([]domain.Cron, error) {
	rows, err := db.pool.Query(ctx, `SELECT `+cronColumns+` FROM crons `+tail, args...)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(r pgx.Row) (domain.Cron, error) {
		var (
			c             domain.Cron
			args, kwargs  string
			hook, lastRun *string
			endAt, nextAt *int64
			paused        int
			created       int64
		)
		err := r.Scan(&c.ID, &c.AgentID, &c.Tenant, &c.Schedule, &c.Timezone, &c.EntrypointTag, &args, &kwargs,
			&hook, &endAt, &paused, &nextAt, &lastRun, &created)
		c.InputArgs, c.InputKwargs, c.Paused = []byte(args), []byte(kwargs), paused != 0
		if hook != nil {
			c.Webhook = *hook
		}
		if lastRun != nil {
			c.LastRunID = *lastRun
		}
		c.EndAt, c.NextAt, c.CreatedAt = fromMicros(endAt), fromMicros(nextAt), time.UnixMicro(created).UTC()
		return c, err
	})
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
