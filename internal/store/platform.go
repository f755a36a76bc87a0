package store

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

// ErrTenantMismatch is returned when an agent id is taken by another tenant
// (domain.ErrOtherTenant).
var ErrTenantMismatch = domain.ErrOtherTenant

// The platform server's state (migrations/0002_platform.sql). These calls
// write directly, not through the batching writer: they are rare, and
// their callers answer only once the write is durable.

func micros(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMicro()
}

func fromMicros(v sql.NullInt64) time.Time {
	if !v.Valid {
		return time.Time{}
	}
	return time.UnixMicro(v.Int64).UTC()
}

// tx runs fn in one write transaction.
func (db *DB) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	t, err := db.sql.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(t); err != nil {
		t.Rollback()
		return err
	}
	return t.Commit()
}

const agentColumns = `agent_id, tenant, name, framework, active_version, latest_version, metadata, created_at, updated_at`

func scanAgent(r scanner) (domain.DeployedAgent, error) {
	var a domain.DeployedAgent
	var meta sql.NullString
	var created, updated sql.NullInt64
	if err := r.Scan(&a.ID, &a.Tenant, &a.Name, &a.Framework, &a.ActiveVersion, &a.LatestVersion, &meta, &created, &updated); err != nil {
		return a, err
	}
	if meta.Valid {
		a.Metadata = json.RawMessage(meta.String)
	}
	a.CreatedAt, a.UpdatedAt = fromMicros(created), fromMicros(updated)
	return a, nil
}

// PlatformAgent returns one deployed agent, or ErrNotFound.
func (db *DB) PlatformAgent(ctx context.Context, id string) (domain.DeployedAgent, error) {
	a, err := scanAgent(db.sql.QueryRowContext(ctx, `SELECT `+agentColumns+` FROM platform_agents WHERE agent_id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return a, ErrNotFound
	}
	return a, err
}

// PlatformAgents returns every deployed agent, oldest first.
func (db *DB) PlatformAgents(ctx context.Context) ([]domain.DeployedAgent, error) {
	rows, err := db.sql.QueryContext(ctx, `SELECT `+agentColumns+` FROM platform_agents ORDER BY created_at, agent_id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []domain.DeployedAgent
	for rows.Next() {
		a, err := scanAgent(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// claimAgent inserts the agent row for tenant, or checks that the existing
// one is tenant's.
func claimAgent(ctx context.Context, t *sql.Tx, id, tenant, name, framework string, now time.Time) error {
	var owner string
	err := t.QueryRowContext(ctx, `SELECT tenant FROM platform_agents WHERE agent_id = ?`, id).Scan(&owner)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		_, err = t.ExecContext(ctx, `INSERT INTO platform_agents (agent_id, tenant, name, framework, created_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?)`, id, tenant, name, framework, now.UnixMicro(), now.UnixMicro())
		return err
	case err != nil:
		return err
	case owner != tenant:
		return ErrTenantMismatch
	}
	_, err = t.ExecContext(ctx, `UPDATE platform_agents SET name = ?, framework = ?, updated_at = ? WHERE agent_id = ?`,
		name, framework, now.UnixMicro(), id)
	return err
}

// PutAgentMetadata records a metadata upload, creating the agent for tenant
// if it is new. It returns whether the agent existed before.
func (db *DB) PutAgentMetadata(ctx context.Context, id, tenant, name, framework string, meta json.RawMessage) (existed bool, err error) {
	err = db.tx(ctx, func(t *sql.Tx) error {
		var n int
		if err := t.QueryRowContext(ctx, `SELECT count(*) FROM platform_agents WHERE agent_id = ?`, id).Scan(&n); err != nil {
			return err
		}
		existed = n > 0
		if err := claimAgent(ctx, t, id, tenant, name, framework, time.Now()); err != nil {
			return err
		}
		_, err := t.ExecContext(ctx, `UPDATE platform_agents SET metadata = ? WHERE agent_id = ?`, jsonText(meta), id)
		return err
	})
	return existed, err
}

// AddVersion records a new uploaded version of agent v.AgentID for tenant
// (creating the agent if it is new) and returns its number.
func (db *DB) AddVersion(ctx context.Context, tenant, name, framework string, v domain.Version) (int, error) {
	now := time.Now()
	var n int
	err := db.tx(ctx, func(t *sql.Tx) error {
		if err := claimAgent(ctx, t, v.AgentID, tenant, name, framework, now); err != nil {
			return err
		}
		if err := t.QueryRowContext(ctx, `UPDATE platform_agents SET latest_version = latest_version + 1
			WHERE agent_id = ? RETURNING latest_version`, v.AgentID).Scan(&n); err != nil {
			return err
		}
		_, err := t.ExecContext(ctx, `INSERT INTO agent_versions (agent_id, version, status, dir, file_name, file_size, sha256, uploaded_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, v.AgentID, n, domain.VersionUploaded, v.Dir, v.FileName, v.FileSize, v.SHA256, now.UnixMicro())
		return err
	})
	return n, err
}

const versionColumns = `agent_id, version, status, dir, file_name, file_size, sha256, error, uploaded_at, activated_at`

func scanVersion(r scanner) (domain.Version, error) {
	var v domain.Version
	var errText sql.NullString
	var up, act sql.NullInt64
	if err := r.Scan(&v.AgentID, &v.Version, &v.Status, &v.Dir, &v.FileName, &v.FileSize, &v.SHA256, &errText, &up, &act); err != nil {
		return v, err
	}
	v.Error = errText.String
	v.UploadedAt, v.ActivatedAt = fromMicros(up), fromMicros(act)
	return v, nil
}

// Version returns one version of an agent, or ErrNotFound.
func (db *DB) Version(ctx context.Context, agentID string, version int) (domain.Version, error) {
	v, err := scanVersion(db.sql.QueryRowContext(ctx, `SELECT `+versionColumns+` FROM agent_versions
		WHERE agent_id = ? AND version = ?`, agentID, version))
	if errors.Is(err, sql.ErrNoRows) {
		return v, ErrNotFound
	}
	return v, err
}

// Versions returns an agent's versions, newest first.
func (db *DB) Versions(ctx context.Context, agentID string) ([]domain.Version, error) {
	rows, err := db.sql.QueryContext(ctx, `SELECT `+versionColumns+` FROM agent_versions
		WHERE agent_id = ? ORDER BY version DESC`, agentID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []domain.Version
	for rows.Next() {
		v, err := scanVersion(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// SetVersionStatus records a version's status and error ("" for none).
func (db *DB) SetVersionStatus(ctx context.Context, agentID string, version int, status domain.VersionStatus, errText string) error {
	res, err := db.sql.ExecContext(ctx, `UPDATE agent_versions SET status = ?, error = ? WHERE agent_id = ? AND version = ?`,
		status, nullString(errText), agentID, version)
	return oneRow(res, err)
}

// oneRow turns an update or delete that touched no row into ErrNotFound.
func oneRow(res sql.Result, err error) error {
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		return ErrNotFound
	}
	return nil
}

// ActivateVersion makes version the one serving the agent; the one before
// it becomes retired.
func (db *DB) ActivateVersion(ctx context.Context, agentID string, version int) error {
	now := time.Now().UnixMicro()
	return db.tx(ctx, func(t *sql.Tx) error {
		if err := oneRow(t.ExecContext(ctx, `UPDATE agent_versions SET status = ?, error = NULL, activated_at = ? WHERE agent_id = ? AND version = ?`,
			domain.VersionActive, now, agentID, version)); err != nil {
			return err // ErrNotFound: nothing changes, the transaction rolls back
		}
		if _, err := t.ExecContext(ctx, `UPDATE agent_versions SET status = ? WHERE agent_id = ? AND status = ? AND version <> ?`,
			domain.VersionRetired, agentID, domain.VersionActive, version); err != nil {
			return err
		}
		_, err := t.ExecContext(ctx, `UPDATE platform_agents SET active_version = ?, updated_at = ? WHERE agent_id = ?`, version, now, agentID)
		return err
	})
}

// DeleteVersion removes a version row (an upload that could not be kept).
func (db *DB) DeleteVersion(ctx context.Context, agentID string, version int) error {
	res, err := db.sql.ExecContext(ctx, `DELETE FROM agent_versions WHERE agent_id = ? AND version = ?`, agentID, version)
	return oneRow(res, err)
}

// DeletePlatformAgent removes an agent with its versions, logs and queued
// async invocations; its invocation history stays, and the queued
// invocations that never started end failed there, saying why.
func (db *DB) DeletePlatformAgent(ctx context.Context, id string) error {
	now := time.Now().UnixMicro()
	return db.tx(ctx, func(t *sql.Tx) error {
		if _, err := t.ExecContext(ctx, `UPDATE invocations SET status = ?, error_detail = ?, response_time = ?
			WHERE invocation_id IN (SELECT invocation_id FROM async_queue WHERE agent_id = ? AND started_at IS NULL)`,
			domain.StatusFailed, string(domain.CodeNotFound)+": the agent was deleted before this invocation ran", now, id); err != nil {
			return err
		}
		for _, q := range []string{
			`DELETE FROM agent_versions WHERE agent_id = ?`,
			`DELETE FROM agent_logs WHERE agent_id = ?`,
			`DELETE FROM async_queue WHERE agent_id = ?`,
			`DELETE FROM crons WHERE agent_id = ?`,
			`DELETE FROM platform_agents WHERE agent_id = ?`,
		} {
			if _, err := t.ExecContext(ctx, q, id); err != nil {
				return err
			}
		}
		return nil
	})
}

func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// InsertAPIKey stores a new key (never its secret, only the secret's hash).
func (db *DB) InsertAPIKey(ctx context.Context, k domain.Key) error {
	scopes := make([]string, len(k.Scopes))
	for i, s := range k.Scopes {
		scopes[i] = string(s)
	}
	_, err := db.sql.ExecContext(ctx, `INSERT INTO api_keys (id, name, tenant, scopes, agents, hash, rate_per_second, burst, max_concurrency, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, k.ID, k.Name, k.Tenant, strings.Join(scopes, ","), strings.Join(k.Agents, ","),
		k.Hash, k.RatePerSecond, k.Burst, k.MaxConcurrency, k.CreatedAt.UnixMicro())
	return err
}

// APIKeys returns every key, revoked ones too, oldest first.
func (db *DB) APIKeys(ctx context.Context) ([]domain.Key, error) {
	rows, err := db.sql.QueryContext(ctx, `SELECT id, name, tenant, scopes, agents, hash, rate_per_second, burst, max_concurrency, created_at, revoked_at
		FROM api_keys ORDER BY created_at, id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []domain.Key
	for rows.Next() {
		var k domain.Key
		var scopes, agents string
		var created, revoked sql.NullInt64
		if err := rows.Scan(&k.ID, &k.Name, &k.Tenant, &scopes, &agents, &k.Hash, &k.RatePerSecond, &k.Burst, &k.MaxConcurrency, &created, &revoked); err != nil {
			return nil, err
		}
		for _, s := range splitList(scopes) {
			k.Scopes = append(k.Scopes, domain.Scope(s))
		}
		k.Agents = splitList(agents)
		k.CreatedAt, k.RevokedAt = fromMicros(created), fromMicros(revoked)
		out = append(out, k)
	}
	return out, rows.Err()
}

// RevokeAPIKey marks a key revoked; ErrNotFound if there is no such key.
// Revoking a revoked key keeps the first time.
func (db *DB) RevokeAPIKey(ctx context.Context, id string, at time.Time) error {
	return oneRow(db.sql.ExecContext(ctx, `UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?`, at.UnixMicro(), id))
}

// AppendLogs stores lines in one transaction and fills in their Seq.
func (db *DB) AppendLogs(ctx context.Context, lines []domain.LogLine) error {
	return db.tx(ctx, func(t *sql.Tx) error {
		st, err := t.PrepareContext(ctx, `INSERT INTO agent_logs (agent_id, version, instance, invocation_id, stream, line, at)
			VALUES (?, ?, ?, ?, ?, ?, ?)`)
		if err != nil {
			return err
		}
		defer st.Close()
		for i := range lines {
			l := &lines[i]
			res, err := st.ExecContext(ctx, l.AgentID, l.Version, l.Instance, nullString(l.InvocationID), l.Stream, l.Line, l.At.UnixMicro())
			if err != nil {
				return err
			}
			if l.Seq, err = res.LastInsertId(); err != nil {
				return err
			}
		}
		return nil
	})
}

// Logs returns an agent's log lines with seq > after, oldest first, at most
// limit (<= 0: 1000); invocationID "" means all.
func (db *DB) Logs(ctx context.Context, agentID, invocationID string, after int64, limit int) ([]domain.LogLine, error) {
	if limit <= 0 {
		limit = 1000
	}
	q := `SELECT seq, agent_id, version, instance, invocation_id, stream, line, at FROM agent_logs WHERE agent_id = ? AND seq > ?`
	args := []any{agentID, after}
	if invocationID != "" {
		q += ` AND invocation_id = ?`
		args = append(args, invocationID)
	}
	q += ` ORDER BY seq LIMIT ?`
	args = append(args, limit)
	rows, err := db.sql.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []domain.LogLine{}
	for rows.Next() {
		var l domain.LogLine
		var inv sql.NullString
		var at sql.NullInt64
		if err := rows.Scan(&l.Seq, &l.AgentID, &l.Version, &l.Instance, &inv, &l.Stream, &l.Line, &at); err != nil {
			return nil, err
		}
		l.InvocationID, l.At = inv.String, fromMicros(at)
		out = append(out, l)
	}
	return out, rows.Err()
}

// PruneLogs keeps the newest keep lines of every agent.
func (db *DB) PruneLogs(ctx context.Context, keep int) (int64, error) {
	res, err := db.sql.ExecContext(ctx, `DELETE FROM agent_logs WHERE seq IN (
		SELECT seq FROM (SELECT seq, row_number() OVER (PARTITION BY agent_id ORDER BY seq DESC) AS n FROM agent_logs) WHERE n > ?)`, keep)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// EnqueueAsync durably records an accepted async invocation (pending), its
// run and its place in the queue, in one transaction.
func (db *DB) EnqueueAsync(ctx context.Context, j domain.AsyncJob) error {
	inv := j.Invocation
	return db.tx(ctx, func(t *sql.Tx) error { // BEGIN IMMEDIATE: one writer, so the thread check holds
		res, err := t.ExecContext(ctx, `INSERT INTO runs (invocation_id, agent_id, idempotency_key, webhook, thread_id, user_id) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
			inv.ID, inv.AgentID, nullString(j.IdempotencyKey), nullString(j.Webhook), nullString(j.ThreadID), nullString(j.UserID))
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return cmp.Or(err, fmt.Errorf("agent %s, key %q: %w", inv.AgentID, j.IdempotencyKey, domain.ErrDuplicate))
		}
		// After the key: a replayed create is answered, not refused.
		if j.ThreadID != "" && j.ThreadReject {
			var busy int
			err := t.QueryRowContext(ctx, `SELECT count(*) FROM runs r JOIN async_queue q ON q.invocation_id = r.invocation_id
				WHERE r.agent_id = ? AND r.thread_id = ?`, inv.AgentID, j.ThreadID).Scan(&busy)
			if err != nil {
				return err
			}
			if busy > 0 {
				return fmt.Errorf("thread %q: %w", j.ThreadID, domain.ErrThreadBusy)
			}
		}
		if _, err := t.ExecContext(ctx, `INSERT INTO invocations (`+invocationColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			inv.ID, inv.AgentID, inv.EntrypointTag, inv.SDKType, jsonText(inv.InputArgs), jsonText(inv.InputKwargs),
			nil, nil, domain.StatusPending, inv.RequestTime.UnixMicro(), nil, nil, jsonText(inv.ClientInfo)); err != nil {
			return err
		}
		_, err = t.ExecContext(ctx, `INSERT INTO async_queue (invocation_id, agent_id, tenant, timeout_seconds, enqueued_at) VALUES (?, ?, ?, ?, ?)`,
			inv.ID, inv.AgentID, j.Tenant, j.TimeoutSeconds, time.Now().UnixMicro())
		return err
	})
}

// StartAsync durably records that a queued async invocation is starting
// (one more attempt), before it runs; ErrNotFound if it is not queued.
func (db *DB) StartAsync(ctx context.Context, id string, at time.Time) error {
	return db.tx(ctx, func(t *sql.Tx) error {
		if err := oneRow(t.ExecContext(ctx, `UPDATE async_queue SET attempts = attempts + 1, started_at = ? WHERE invocation_id = ?`, at.UnixMicro(), id)); err != nil {
			return err
		}
		_, err := t.ExecContext(ctx, `UPDATE runs SET attempts = attempts + 1, started_at = ? WHERE invocation_id = ?`, at.UnixMicro(), id)
		return err
	})
}

// RequeueAsync puts an interrupted async invocation back in the queue as
// not started (its attempts stay counted).
func (db *DB) RequeueAsync(ctx context.Context, id string) error {
	res, err := db.sql.ExecContext(ctx, `UPDATE async_queue SET started_at = NULL WHERE invocation_id = ?`, id)
	return oneRow(res, err)
}

// FinishAsync writes an async invocation's outcome and takes it off the
// queue, in one transaction. An outcome already written stays: a second
// finish is ErrNotFound and changes nothing.
func (db *DB) FinishAsync(ctx context.Context, inv domain.Invocation) error {
	return db.tx(ctx, func(t *sql.Tx) error {
		res, err := t.ExecContext(ctx, `UPDATE invocations SET status = ?, output_data = ?, error_detail = ?, response_time = ?, execution_time_ms = ?
			WHERE invocation_id = ? AND status = ?`, inv.Status, jsonText(inv.Output), nullString(inv.ErrorDetail), micros(inv.ResponseTime), inv.ExecutionMS,
			inv.ID, domain.StatusPending)
		if err := oneRow(res, err); err != nil {
			return err
		}
		_, err = t.ExecContext(ctx, `DELETE FROM async_queue WHERE invocation_id = ?`, inv.ID)
		return err
	})
}

// CancelQueuedAsync writes the outcome of a queued async invocation that
// has not started and takes it off the queue, in one transaction.
func (db *DB) CancelQueuedAsync(ctx context.Context, inv domain.Invocation) error {
	return db.tx(ctx, func(t *sql.Tx) error {
		if err := oneRow(t.ExecContext(ctx, `DELETE FROM async_queue WHERE invocation_id = ? AND started_at IS NULL`, inv.ID)); err != nil {
			return err
		}
		return oneRow(t.ExecContext(ctx, `UPDATE invocations SET status = ?, output_data = ?, error_detail = ?, response_time = ?, execution_time_ms = ?
			WHERE invocation_id = ? AND status = ?`, inv.Status, jsonText(inv.Output), nullString(inv.ErrorDetail), micros(inv.ResponseTime), inv.ExecutionMS,
			inv.ID, domain.StatusPending))
	})
}

// Run returns the run of an invocation.
func (db *DB) Run(ctx context.Context, id string) (domain.Run, error) {
	if err := db.Flush(ctx); err != nil { // a sync call's record may be queued
		return domain.Run{}, err
	}
	runs, err := db.runs(ctx, `LEFT JOIN runs r ON r.invocation_id = i.invocation_id WHERE i.invocation_id = ?`, id)
	if err != nil {
		return domain.Run{}, err
	}
	if len(runs) == 0 {
		return domain.Run{}, domain.ErrNotFound
	}
	return runs[0], nil
}

// IdempotentRun returns agentID's background run created with key.
func (db *DB) IdempotentRun(ctx context.Context, agentID, key string) (domain.Run, error) {
	runs, err := db.runs(ctx, `JOIN runs r ON r.invocation_id = i.invocation_id WHERE r.agent_id = ? AND r.idempotency_key = ?`, agentID, key)
	if err != nil {
		return domain.Run{}, err
	}
	if len(runs) == 0 {
		return domain.Run{}, domain.ErrNotFound
	}
	return runs[0], nil
}

// DropIdempotencyKey frees a run's Idempotency-Key.
func (db *DB) DropIdempotencyKey(ctx context.Context, runID string) error {
	_, err := db.sql.ExecContext(ctx, `UPDATE runs SET idempotency_key = NULL WHERE invocation_id = ?`, runID)
	return err
}

// RequestCancel marks a background run to be cancelled when picked up.
func (db *DB) RequestCancel(ctx context.Context, runID string) error {
	return oneRow(db.sql.ExecContext(ctx, `UPDATE runs SET cancel_requested = 1 WHERE invocation_id = ?`, runID))
}

// ThreadAhead says whether an earlier run of j's thread is still queued.
func (db *DB) ThreadAhead(ctx context.Context, j domain.AsyncJob) (bool, error) {
	if j.ThreadID == "" {
		return false, nil
	}
	var n int
	err := db.sql.QueryRowContext(ctx, `SELECT count(*) FROM runs r JOIN async_queue q ON q.invocation_id = r.invocation_id,
		async_queue me WHERE me.invocation_id = ? AND r.agent_id = ? AND r.thread_id = ? AND r.invocation_id <> me.invocation_id
		AND (q.enqueued_at < me.enqueued_at OR (q.enqueued_at = me.enqueued_at AND q.rowid < me.rowid))`,
		j.ID, j.AgentID, j.ThreadID).Scan(&n)
	return n > 0, err
}

// ListRuns returns the background runs of agentIDs, newest first.
func (db *DB) ListRuns(ctx context.Context, agentIDs []string, status domain.RunStatus, limit int) ([]domain.Run, error) {
	if len(agentIDs) == 0 {
		return nil, nil
	}
	args := make([]any, 0, len(agentIDs)+3)
	for _, id := range agentIDs {
		args = append(args, id)
	}
	where, sargs := runStatusWhere(status, "?")
	args = append(append(args, sargs...), limit)
	return db.runs(ctx, `JOIN runs r ON r.invocation_id = i.invocation_id WHERE r.agent_id IN (?`+strings.Repeat(", ?", len(agentIDs)-1)+`)`+where+
		` ORDER BY i.request_time DESC, i.rowid DESC LIMIT ?`, args...)
}

// runStatusWhere is the condition (" AND ...") on invocations i and
// async_queue q that picks runs of status, with its arguments; ph is the
// placeholder (the same for each: SQLite's ? or PostgreSQL's numbered
// ones are filled in by the caller).
func runStatusWhere(status domain.RunStatus, ph string) (string, []any) {
	cancelled, timeout := string(domain.CodeCancelled)+":%", string(domain.CodeTimeout)+":%"
	switch status {
	case domain.RunPending:
		return ` AND i.status = 'pending' AND (q.started_at IS NULL)`, nil
	case domain.RunRunning:
		return ` AND i.status = 'pending' AND q.started_at IS NOT NULL`, nil
	case domain.RunCompleted:
		return ` AND i.status = 'completed'`, nil
	case domain.RunCancelled:
		return ` AND i.status = 'failed' AND i.error_detail LIKE ` + ph, []any{cancelled}
	case domain.RunTimeout:
		return ` AND i.status = 'failed' AND i.error_detail LIKE ` + ph, []any{timeout}
	case domain.RunFailed:
		return ` AND i.status = 'failed' AND coalesce(i.error_detail, '') NOT LIKE ` + ph + ` AND coalesce(i.error_detail, '') NOT LIKE ` + ph, []any{cancelled, timeout}
	}
	return "", nil
}

// UndeliveredWebhooks implements domain.Webhooks.
func (db *DB) UndeliveredWebhooks(ctx context.Context, since time.Time, limit int) ([]domain.Run, error) {
	return db.runs(ctx, `JOIN runs r ON r.invocation_id = i.invocation_id WHERE r.webhook IS NOT NULL AND i.status <> 'pending'
		AND i.response_time >= ? AND NOT EXISTS (SELECT 1 FROM webhook_attempts a WHERE a.run_id = r.invocation_id AND a.status_code BETWEEN 200 AND 299)
		ORDER BY i.response_time LIMIT ?`, since.UnixMicro(), limit)
}

func (db *DB) runs(ctx context.Context, tail string, args ...any) ([]domain.Run, error) {
	rows, err := db.sql.QueryContext(ctx, `SELECT `+prefixed("i.", invocationColumns)+`, r.invocation_id IS NOT NULL, coalesce(r.idempotency_key, ''), coalesce(r.attempts, 0), r.started_at, q.started_at IS NOT NULL, coalesce(r.webhook, ''), coalesce(r.thread_id, ''), coalesce(r.user_id, '')
		FROM invocations i LEFT JOIN async_queue q ON q.invocation_id = i.invocation_id `+tail, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []domain.Run
	for rows.Next() {
		var (
			run     domain.Run
			started sql.NullInt64
		)
		inv, err := scanInvocation(scanPlus{rows, []any{&run.Background, &run.IdempotencyKey, &run.Attempts, &started, &run.Running, &run.Webhook, &run.ThreadID, &run.UserID}})
		if err != nil {
			return nil, err
		}
		run.Invocation = inv
		if started.Valid {
			run.StartedAt = time.UnixMicro(started.Int64).UTC()
		}
		out = append(out, run)
	}
	return out, rows.Err()
}

// WebhookSecret returns agentID's webhook secret, storing fresh if none.
func (db *DB) WebhookSecret(ctx context.Context, agentID, fresh string) (string, error) {
	if _, err := db.sql.ExecContext(ctx, `INSERT INTO webhook_secrets (agent_id, secret, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING`,
		agentID, fresh, time.Now().UnixMicro()); err != nil {
		return "", err
	}
	var secret string
	err := db.sql.QueryRowContext(ctx, `SELECT secret FROM webhook_secrets WHERE agent_id = ?`, agentID).Scan(&secret)
	return secret, err
}

// RecordWebhookAttempt records one webhook delivery attempt.
func (db *DB) RecordWebhookAttempt(ctx context.Context, a domain.WebhookAttempt) error {
	_, err := db.sql.ExecContext(ctx, `INSERT INTO webhook_attempts (run_id, attempt, at, url, status_code, error, duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		a.RunID, a.Attempt, a.At.UnixMicro(), a.URL, a.StatusCode, nullString(a.Error), a.DurationMS)
	return err
}

// WebhookAttempts returns a run's webhook delivery attempts in order.
func (db *DB) WebhookAttempts(ctx context.Context, runID string) ([]domain.WebhookAttempt, error) {
	rows, err := db.sql.QueryContext(ctx, `SELECT run_id, attempt, at, url, status_code, coalesce(error, ''), duration_ms FROM webhook_attempts WHERE run_id = ? ORDER BY attempt`, runID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []domain.WebhookAttempt
	for rows.Next() {
		var (
			a  domain.WebhookAttempt
			at int64
		)
		if err := rows.Scan(&a.RunID, &a.Attempt, &at, &a.URL, &a.StatusCode, &a.Error, &a.DurationMS); err != nil {
			return nil, err
		}
		a.At = time.UnixMicro(at).UTC()
		out = append(out, a)
	}
	return out, rows.Err()
}

// PendingAsync returns the queued async invocations, oldest first.
func (db *DB) PendingAsync(ctx context.Context) ([]domain.AsyncJob, error) {
	return db.asyncJobs(ctx, `ORDER BY q.enqueued_at, q.rowid`)
}

// UnstartedAsync returns at most limit queued async invocations enqueued
// between after and before and not started since, oldest first.
func (db *DB) UnstartedAsync(ctx context.Context, after, before time.Time, limit int) ([]domain.AsyncJob, error) {
	return db.asyncJobs(ctx, `WHERE q.started_at IS NULL AND q.enqueued_at > ? AND q.enqueued_at < ? ORDER BY q.enqueued_at, q.rowid LIMIT ?`,
		microsOrZero(after), before.UnixMicro(), limit)
}

func microsOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}

// AsyncJob returns one queued async invocation.
func (db *DB) AsyncJob(ctx context.Context, id string) (domain.AsyncJob, error) {
	jobs, err := db.asyncJobs(ctx, `WHERE q.invocation_id = ?`, id)
	if err != nil {
		return domain.AsyncJob{}, err
	}
	if len(jobs) == 0 {
		return domain.AsyncJob{}, domain.ErrNotFound
	}
	return jobs[0], nil
}

// AsyncBacklog counts the queued async invocations.
func (db *DB) AsyncBacklog(ctx context.Context, tenant, agentID string) (b domain.AsyncBacklog, err error) {
	err = db.sql.QueryRowContext(ctx, `SELECT count(*), count(*) FILTER (WHERE tenant = ?), count(*) FILTER (WHERE agent_id = ?) FROM async_queue`,
		tenant, agentID).Scan(&b.Total, &b.Tenant, &b.Agent)
	return b, err
}

func (db *DB) asyncJobs(ctx context.Context, tail string, args ...any) ([]domain.AsyncJob, error) {
	rows, err := db.sql.QueryContext(ctx, `SELECT `+prefixed("i.", invocationColumns)+`, q.tenant, q.timeout_seconds, q.attempts, q.started_at, coalesce(r.webhook, ''), coalesce(r.idempotency_key, ''), coalesce(r.cancel_requested, 0) <> 0, q.enqueued_at, coalesce(r.thread_id, ''), coalesce(r.user_id, '')
		FROM async_queue q JOIN invocations i ON i.invocation_id = q.invocation_id LEFT JOIN runs r ON r.invocation_id = q.invocation_id `+tail, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []domain.AsyncJob
	for rows.Next() {
		var j domain.AsyncJob
		var inv domain.Invocation
		var err error
		var started sql.NullInt64
		var enqueued int64
		// scanInvocation reads the 13 columns; the queue's come last.
		inv, err = scanInvocation(scanPlus{rows, []any{&j.Tenant, &j.TimeoutSeconds, &j.Attempts, &started, &j.Webhook, &j.IdempotencyKey, &j.CancelRequested, &enqueued, &j.ThreadID, &j.UserID}})
		if err != nil {
			return nil, err
		}
		j.Invocation = inv
		j.StartedAt = fromMicros(started)
		j.EnqueuedAt = time.UnixMicro(enqueued).UTC()
		out = append(out, j)
	}
	return out, rows.Err()
}

// scanPlus scans extra trailing columns into extra.
type scanPlus struct {
	r     *sql.Rows
	extra []any
}

func (s scanPlus) Scan(dest ...any) error { return s.r.Scan(append(dest, s.extra...)...) }

func prefixed(p, cols string) string {
	parts := strings.Split(cols, ",")
	for i, c := range parts {
		parts[i] = p + strings.TrimSpace(c)
	}
	return strings.Join(parts, ", ")
}

// FailAbandoned marks the pending invocations that are not queued async
// ones as failed: their server stopped before they finished. The platform
// server calls it at start-up, when no call of its own can be running.
func (db *DB) FailAbandoned(ctx context.Context, at time.Time) (int64, error) {
	return db.FailStale(ctx, time.UnixMicro(math.MaxInt64), at)
}

// FailStale marks failed the pending invocations requested before before
// that are not queued async ones.
func (db *DB) FailStale(ctx context.Context, before, at time.Time) (int64, error) {
	if err := db.Flush(ctx); err != nil {
		return 0, err
	}
	res, err := db.sql.ExecContext(ctx, `UPDATE invocations SET status = ?, error_detail = ?, response_time = ?
		WHERE status = ? AND request_time < ? AND invocation_id NOT IN (SELECT invocation_id FROM async_queue)`,
		domain.StatusFailed, "the server running the call stopped before it finished", at.UnixMicro(), domain.StatusPending, before.UnixMicro())
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// ListForAgents is List over a set of agents (nil: every agent).
func (db *DB) ListForAgents(ctx context.Context, agentIDs []string, status domain.Status, limit int) ([]domain.Invocation, error) {
	if agentIDs == nil {
		return db.List(ctx, "", status, limit)
	}
	if len(agentIDs) == 0 {
		return nil, nil
	}
	if err := db.Flush(ctx); err != nil {
		return nil, err
	}
	q := `SELECT ` + invocationColumns + ` FROM invocations WHERE agent_id IN (?` + strings.Repeat(", ?", len(agentIDs)-1) + `)`
	args := make([]any, 0, len(agentIDs)+2)
	for _, id := range agentIDs {
		args = append(args, id)
	}
	if status != "" {
		q += ` AND status = ?`
		args = append(args, status)
	}
	if limit <= 0 {
		limit = defaultListLimit
	}
	q += ` ORDER BY request_time DESC, rowid DESC LIMIT ?`
	args = append(args, limit)
	rows, err := db.sql.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list invocations: %w", err)
	}
	defer rows.Close()
	var out []domain.Invocation
	for rows.Next() {
		inv, err := scanInvocation(rows)
		if err != nil {
			return nil, fmt.Errorf("list invocations: %w", err)
		}
		out = append(out, inv)
	}
	return out, rows.Err()
}
