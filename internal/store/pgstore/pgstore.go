// Package pgstore keeps the platform server's state in PostgreSQL, through
// pgx and its connection pool: the same domain.Store as the SQLite store
// (internal/store), passing the same suite (storetest), so that several
// servers can share one database.
//
// The schema is in migrations/, versioned in the table schema_migrations
// and applied under an advisory lock (two servers starting at once do not
// race). Timestamps are BIGINT unix microseconds and JSON values TEXT, as in
// SQLite: what goes in comes back byte for byte. A URL's search_path
// parameter picks the schema (the tests give each test its own).
//
// The invocation history is written as in SQLite, by the shared batching
// writer (internal/store/batch): Start and Finish queue, a batch is one
// round trip of upserts in one implicit transaction, reads flush first.
// The platform's other writes go straight to the database in their own
// transactions.
package pgstore

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/store/batch"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// migrationLock is the advisory lock key migrations run under ("runagent"
// in ASCII, so that it is recognisable in pg_locks).
const migrationLock = 0x72756e6167656e74

// Options configure Open.
type Options struct {
	Log      *slog.Logger  // default slog.Default()
	Queue    int           // history records that may wait for the writer (default 8192)
	MaxBatch int           // history records in one commit (default 2048)
	Linger   time.Duration // how long the writer waits for more records (default 0)
	// SingleServer holds an advisory lock for as long as the store is
	// open, so that a second server opening the same database (schema) is
	// refused: one server's async queue and start-up clean-up are not
	// safe to share (several servers on one database are the multi-node
	// roles' job).
	SingleServer bool
}

// DB is the PostgreSQL store. Its methods are safe for concurrent use.
type DB struct {
	pool   *pgxpool.Pool
	log    *slog.Logger
	hist   *batch.Writer
	lockMu sync.Mutex
	lock   *pgx.Conn // SingleServer: the session that holds the lock
	stop   chan struct{}

	closeOnce sync.Once
}

// The PostgreSQL store is every store the platform needs.
var _ domain.Store = (*DB)(nil)

// Open connects to the database at url (postgres://user:pass@host/db?...,
// or a key=value connection string), brings its schema up to date and
// starts the history writer.
func Open(ctx context.Context, url string, o Options) (*DB, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("database URL: %w (want postgres://user:password@host:5432/database)", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL at %s: %w", redact(cfg), err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to PostgreSQL at %s: %w (is it running, and may this user connect to this database?)", redact(cfg), err)
	}
	if err := migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, fmt.Errorf("PostgreSQL at %s: %w", redact(cfg), err)
	}
	db := &DB{pool: pool, log: o.Log, stop: make(chan struct{})}
	if o.SingleServer {
		if db.lock, err = holdServerLock(ctx, cfg); err != nil {
			pool.Close()
			return nil, fmt.Errorf("PostgreSQL at %s: %w", redact(cfg), err)
		}
		go db.keepServerLock(cfg)
	}
	db.hist = batch.New(committer{pool}, batch.Options{Log: o.Log, Queue: o.Queue, MaxBatch: o.MaxBatch, Linger: o.Linger})
	return db, nil
}

// serverLock is the advisory lock a single server holds ("runagent"+1).
const serverLock = migrationLock + 1

// holdServerLock takes the single-server lock of the schema on a session
// of its own, or says who holds it. The lock is per database; the key mixes
// in the schema so that servers on other schemas of one database coexist.
func holdServerLock(ctx context.Context, cfg *pgxpool.Config) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, cfg.ConnConfig.Copy())
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	var schema string
	var got bool
	if err := conn.QueryRow(ctx, `SELECT current_schema(), pg_try_advisory_lock($1, hashtext(current_schema()))`, int32(serverLock&0x7fffffff)).Scan(&schema, &got); err != nil {
		conn.Close(ctx)
		return nil, fmt.Errorf("take the server lock: %w", err)
	}
	if !got {
		conn.Close(ctx)
		return nil, fmt.Errorf("another runagent server is using this database (schema %q holds its server lock; see pg_locks): "+
			"stop it, or give this one another database or schema (?search_path=...); several servers share one database as a cluster: --role gateway and --role node (docs/multinode.md)", schema)
	}
	return conn, nil
}

// lockCheckEvery is how often a single server checks that the session
// holding its lock is alive.
const lockCheckEvery = time.Second

// keepServerLock takes the lock again when its session was lost (a
// PostgreSQL restart ends every session, and the lock with it), so that a
// second server started later is still refused.
func (db *DB) keepServerLock(cfg *pgxpool.Config) {
	t := time.NewTicker(lockCheckEvery)
	defer t.Stop()
	lost := false
	for {
		select {
		case <-db.stop:
			return
		case <-t.C:
		}
		db.lockMu.Lock()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if db.lock != nil && db.lock.Ping(ctx) == nil {
			cancel()
			db.lockMu.Unlock()
			continue
		}
		if db.lock != nil {
			db.lock.Close(ctx)
			db.lock = nil
		}
		conn, err := holdServerLock(ctx, cfg)
		cancel()
		switch {
		case err == nil:
			db.lock = conn
			if lost {
				db.log.Info("the single-server lock is held again")
			}
			lost = false
		case strings.Contains(err.Error(), "another runagent server"):
			db.log.Error("while this server was away from PostgreSQL, another took its lock: two servers now share one database, which is not safe; stop one", "error", err)
			lost = true
		default:
			lost = true // PostgreSQL still away: try again
		}
		db.lockMu.Unlock()
	}
}

// redact names the server and database of cfg, never its password.
func redact(cfg *pgxpool.Config) string {
	c := cfg.ConnConfig
	return fmt.Sprintf("%s:%d/%s", c.Host, c.Port, c.Database)
}

// migrate applies the migrations the database has not seen, each in its
// own transaction, under an advisory lock.
func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	names, err := fs.Glob(migrationFS, "migrations/*.sql")
	if err != nil {
		return err
	}
	sort.Strings(names)
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, int64(migrationLock)); err != nil {
		return fmt.Errorf("migrate: take the lock: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, int64(migrationLock))
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version INTEGER NOT NULL PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	var version int
	if err := conn.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM schema_migrations`).Scan(&version); err != nil {
		return fmt.Errorf("migrate: read schema version: %w", err)
	}
	if version > len(names) {
		return fmt.Errorf("schema version %d is newer than this runagent understands (%d): upgrade runagent", version, len(names))
	}
	for i := version; i < len(names); i++ {
		body, err := migrationFS.ReadFile(names[i])
		if err != nil {
			return err
		}
		err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, string(body)); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`, i+1, strings.TrimPrefix(names[i], "migrations/"))
			return err
		})
		if err != nil {
			return fmt.Errorf("migrate: %s: %w", names[i], err)
		}
	}
	return nil
}

// Close writes the history records still queued, then closes the pool.
func (db *DB) Close() error {
	db.closeOnce.Do(func() {
		close(db.stop)
		db.hist.Close()
		db.pool.Close()
		db.lockMu.Lock()
		if db.lock != nil {
			db.lock.Close(context.Background()) // ends the session: the lock goes with it
		}
		db.lockMu.Unlock()
	})
	return nil
}

// WriteErrors is how many history records could not be written.
func (db *DB) WriteErrors() uint64 { return db.hist.WriteErrors() }

// classify turns an error that means the database is unreachable (down,
// restarting, the connection cut) into CONNECTION_ERROR with a Retry-After:
// the gateway answers it 503, and the caller retries. The context's own
// errors, and the store's typed ones, pass as they are.
func classify(ctx context.Context, err *error) {
	if *err == nil || ctx.Err() != nil || !transient(*err) {
		return
	}
	*err = &domain.Error{Code: domain.CodeConnection, Message: "the platform's database is not reachable right now; retry shortly",
		RetryAfter: time.Second, Err: *err}
}

// transient says whether err is the database being away rather than the
// request being wrong: a connection that failed or was cut, or a server
// shutting down or starting up.
func transient(err error) bool {
	var de *domain.Error
	if errors.As(err, &de) {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return strings.HasPrefix(pgErr.Code, "08") || // connection exception
			pgErr.Code == "57P01" || pgErr.Code == "57P02" || pgErr.Code == "57P03" // admin/crash shutdown, cannot connect now
	}
	var connErr *pgconn.ConnectError
	var netErr net.Error
	return pgconn.SafeToRetry(err) || errors.As(err, &connErr) || errors.As(err, &netErr) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || strings.Contains(err.Error(), "conn closed")
}

// --- history --------------------------------------------------------------

// Start records a pending invocation (queued, see package batch).
func (db *DB) Start(inv domain.Invocation) { db.hist.Start(inv) }

// Finish records an invocation's outcome (queued).
func (db *DB) Finish(inv domain.Invocation) { db.hist.Finish(inv) }

// FinishDurable is Finish that returns once the record is committed.
func (db *DB) FinishDurable(ctx context.Context, inv domain.Invocation) error {
	return db.hist.FinishDurable(ctx, inv)
}

// Flush waits until the history records queued before it are committed.
func (db *DB) Flush(ctx context.Context) error { return db.hist.Flush(ctx) }

// upsertSQL writes one history record: a new row whole, or the outcome of
// an existing one (a pending record never overwrites a row).
const upsertSQL = `INSERT INTO invocations (` + invocationColumns + `)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
	ON CONFLICT (invocation_id) DO UPDATE SET
		status = excluded.status,
		output_data = excluded.output_data,
		error_detail = excluded.error_detail,
		response_time = excluded.response_time,
		execution_time_ms = excluded.execution_time_ms
	WHERE excluded.status <> 'pending'`

// committer writes a batch of history records in one round trip: pgx sends
// a batch as one implicit transaction, so it is written whole or not at all.
type committer struct{ pool *pgxpool.Pool }

// Transient implements batch.Transient: a batch that failed because the
// database is away waits for it.
func (committer) Transient(err error) bool { return transient(err) }

func (c committer) Commit(recs []batch.Rec) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var b pgx.Batch
	for i := range recs {
		inv := &recs[i].Inv
		reqTime := inv.RequestTime
		if reqTime.IsZero() {
			// A Finish without a Start: its row is inserted whole.
			reqTime = inv.ResponseTime
			if reqTime.IsZero() {
				reqTime = time.Now()
			}
		}
		var respUS, execMS any
		if !inv.ResponseTime.IsZero() {
			respUS, execMS = inv.ResponseTime.UnixMicro(), inv.ExecutionMS
		}
		b.Queue(upsertSQL, inv.ID, inv.AgentID, inv.EntrypointTag, inv.SDKType,
			jsonText(inv.InputArgs), jsonText(inv.InputKwargs), jsonText(inv.Output), nullString(inv.ErrorDetail),
			string(inv.Status), reqTime.UnixMicro(), respUS, execMS, jsonText(inv.ClientInfo))
	}
	return c.pool.SendBatch(ctx, &b).Close()
}

const invocationColumns = `invocation_id, agent_id, entrypoint_tag, sdk_type, input_args, input_kwargs,
	output_data, error_detail, status, request_time, response_time, execution_time_ms, client_info`

const defaultListLimit = 50

// Get returns one invocation, or ErrNotFound.
func (db *DB) Get(ctx context.Context, id string) (_ domain.Invocation, err error) {
	defer classify(ctx, &err)
	if err := db.Flush(ctx); err != nil {
		return domain.Invocation{}, err
	}
	inv, err := scanInvocation(db.pool.QueryRow(ctx, `SELECT `+invocationColumns+` FROM invocations WHERE invocation_id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return domain.Invocation{}, domain.ErrNotFound
	}
	if err != nil {
		return domain.Invocation{}, fmt.Errorf("get invocation %s: %w", id, err)
	}
	return inv, nil
}

// List returns invocations newest first (of two at the same request time,
// the later recorded first).
func (db *DB) List(ctx context.Context, agentID string, status domain.Status, limit int) (_ []domain.Invocation, err error) {
	defer classify(ctx, &err)
	var agents []string
	if agentID != "" {
		agents = []string{agentID}
	}
	return db.list(ctx, agents, agentID != "", status, limit)
}

// ListForAgents is List over a set of agents (nil: every agent).
func (db *DB) ListForAgents(ctx context.Context, agentIDs []string, status domain.Status, limit int) (_ []domain.Invocation, err error) {
	defer classify(ctx, &err)
	if agentIDs != nil && len(agentIDs) == 0 {
		return nil, nil
	}
	return db.list(ctx, agentIDs, agentIDs != nil, status, limit)
}

func (db *DB) list(ctx context.Context, agentIDs []string, byAgent bool, status domain.Status, limit int) ([]domain.Invocation, error) {
	if err := db.Flush(ctx); err != nil {
		return nil, err
	}
	var (
		where []string
		args  []any
	)
	if byAgent {
		args = append(args, agentIDs)
		where = append(where, "agent_id = ANY($"+strconv.Itoa(len(args))+")")
	}
	if status != "" {
		args = append(args, string(status))
		where = append(where, "status = $"+strconv.Itoa(len(args)))
	}
	if limit <= 0 {
		limit = defaultListLimit
	}
	args = append(args, limit)
	q := `SELECT ` + invocationColumns + ` FROM invocations`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	q += ` ORDER BY request_time DESC, seq DESC LIMIT $` + strconv.Itoa(len(args))
	rows, err := db.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list invocations: %w", err)
	}
	out, err := collect(rows, scanInvocation)
	if err != nil {
		return nil, fmt.Errorf("list invocations: %w", err)
	}
	return out, nil
}

// Stats sums up the invocations of agentID ("" for all agents).
func (db *DB) Stats(ctx context.Context, agentID string) (_ domain.Stats, err error) {
	defer classify(ctx, &err)
	if err := db.Flush(ctx); err != nil {
		return domain.Stats{}, err
	}
	q := `SELECT count(*),
		count(*) FILTER (WHERE status = 'completed'),
		count(*) FILTER (WHERE status = 'failed'),
		count(*) FILTER (WHERE status = 'pending'),
		sum(execution_time_ms) FILTER (WHERE status = 'completed'),
		count(execution_time_ms) FILTER (WHERE status = 'completed')
		FROM invocations`
	var args []any
	if agentID != "" {
		q += ` WHERE agent_id = $1`
		args = append(args, agentID)
	}
	var (
		st      = domain.Stats{AgentID: agentID}
		sumExec *float64
		nExec   int
	)
	if err := db.pool.QueryRow(ctx, q, args...).Scan(&st.Total, &st.Completed, &st.Failed, &st.Pending, &sumExec, &nExec); err != nil {
		return domain.Stats{}, fmt.Errorf("invocation stats: %w", err)
	}
	if st.Total > 0 {
		st.SuccessRate = round2(float64(st.Completed) / float64(st.Total) * 100)
	}
	if nExec > 0 && sumExec != nil {
		avg := round2(*sumExec / float64(nExec))
		st.AvgExecutionMS = &avg
	}
	return st, nil
}

// FailAbandoned marks failed the pending invocations that are not queued
// async ones: their server stopped before they finished.
func (db *DB) FailAbandoned(ctx context.Context, at time.Time) (_ int64, err error) {
	return db.FailStale(ctx, time.UnixMicro(math.MaxInt64), at)
}

// FailStale marks failed the pending invocations requested before before
// that are not queued async ones.
func (db *DB) FailStale(ctx context.Context, before, at time.Time) (_ int64, err error) {
	defer classify(ctx, &err)
	if err := db.Flush(ctx); err != nil {
		return 0, err
	}
	tag, err := db.pool.Exec(ctx, `UPDATE invocations i SET status = $1, error_detail = $2, response_time = $3
		WHERE i.status = $4 AND i.request_time < $5 AND NOT EXISTS (SELECT 1 FROM async_queue q WHERE q.invocation_id = i.invocation_id)`,
		string(domain.StatusFailed), "the server running the call stopped before it finished", at.UnixMicro(), string(domain.StatusPending), before.UnixMicro())
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

// --- agents and versions --------------------------------------------------

const agentColumns = `agent_id, tenant, name, framework, active_version, latest_version, metadata, created_at, updated_at`

func scanAgent(r pgx.Row) (domain.DeployedAgent, error) {
	var (
		a                domain.DeployedAgent
		meta             *string
		created, updated int64
	)
	if err := r.Scan(&a.ID, &a.Tenant, &a.Name, &a.Framework, &a.ActiveVersion, &a.LatestVersion, &meta, &created, &updated); err != nil {
		return a, err
	}
	if meta != nil {
		a.Metadata = json.RawMessage(*meta)
	}
	a.CreatedAt, a.UpdatedAt = fromMicros(&created), fromMicros(&updated)
	return a, nil
}

// PlatformAgent returns one deployed agent, or ErrNotFound.
func (db *DB) PlatformAgent(ctx context.Context, id string) (_ domain.DeployedAgent, err error) {
	defer classify(ctx, &err)
	a, err := scanAgent(db.pool.QueryRow(ctx, `SELECT `+agentColumns+` FROM platform_agents WHERE agent_id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return a, domain.ErrNotFound
	}
	return a, err
}

// PlatformAgents returns every deployed agent, oldest first.
func (db *DB) PlatformAgents(ctx context.Context) (_ []domain.DeployedAgent, err error) {
	defer classify(ctx, &err)
	rows, err := db.pool.Query(ctx, `SELECT `+agentColumns+` FROM platform_agents ORDER BY created_at, agent_id`)
	if err != nil {
		return nil, err
	}
	return collect(rows, scanAgent)
}

// claimAgent creates the agent row for tenant, or checks that the existing
// one is tenant's (locking it for the rest of tx). It reports whether the
// agent existed.
func claimAgent(ctx context.Context, tx pgx.Tx, id, tenant, name, framework string, now time.Time) (existed bool, err error) {
	tag, err := tx.Exec(ctx, `INSERT INTO platform_agents (agent_id, tenant, name, framework, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (agent_id) DO NOTHING`, id, tenant, name, framework, now.UnixMicro())
	if err != nil {
		return false, err
	}
	if tag.RowsAffected() == 1 {
		return false, nil
	}
	var owner string
	if err := tx.QueryRow(ctx, `SELECT tenant FROM platform_agents WHERE agent_id = $1 FOR UPDATE`, id).Scan(&owner); err != nil {
		return true, err
	}
	if owner != tenant {
		return true, domain.ErrOtherTenant
	}
	_, err = tx.Exec(ctx, `UPDATE platform_agents SET name = $1, framework = $2, updated_at = $3 WHERE agent_id = $4`,
		name, framework, now.UnixMicro(), id)
	return true, err
}

// PutAgentMetadata records a metadata upload, creating the agent for tenant
// if it is new; it says whether the agent existed.
func (db *DB) PutAgentMetadata(ctx context.Context, id, tenant, name, framework string, meta json.RawMessage) (existed bool, err error) {
	defer classify(ctx, &err)
	err = pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		if existed, err = claimAgent(ctx, tx, id, tenant, name, framework, time.Now()); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE platform_agents SET metadata = $1 WHERE agent_id = $2`, jsonText(meta), id)
		return err
	})
	return existed, err
}

// AddVersion records a new uploaded version of agent v.AgentID for tenant
// (creating the agent if it is new) and returns its number.
func (db *DB) AddVersion(ctx context.Context, tenant, name, framework string, v domain.Version) (_ int, err error) {
	defer classify(ctx, &err)
	now := time.Now()
	var n int
	err = pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		if _, err := claimAgent(ctx, tx, v.AgentID, tenant, name, framework, now); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `UPDATE platform_agents SET latest_version = latest_version + 1
			WHERE agent_id = $1 RETURNING latest_version`, v.AgentID).Scan(&n); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO agent_versions (agent_id, version, status, dir, file_name, file_size, sha256, uploaded_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, v.AgentID, n, string(domain.VersionUploaded), v.Dir, v.FileName, v.FileSize, v.SHA256, now.UnixMicro())
		return err
	})
	return n, err
}

const versionColumns = `agent_id, version, status, dir, file_name, file_size, sha256, error, uploaded_at, activated_at`

func scanVersion(r pgx.Row) (domain.Version, error) {
	var (
		v       domain.Version
		status  string
		errText *string
		up      int64
		act     *int64
	)
	if err := r.Scan(&v.AgentID, &v.Version, &status, &v.Dir, &v.FileName, &v.FileSize, &v.SHA256, &errText, &up, &act); err != nil {
		return v, err
	}
	v.Status = domain.VersionStatus(status)
	if errText != nil {
		v.Error = *errText
	}
	v.UploadedAt, v.ActivatedAt = fromMicros(&up), fromMicros(act)
	return v, nil
}

// Version returns one version of an agent, or ErrNotFound.
func (db *DB) Version(ctx context.Context, agentID string, version int) (_ domain.Version, err error) {
	defer classify(ctx, &err)
	v, err := scanVersion(db.pool.QueryRow(ctx, `SELECT `+versionColumns+` FROM agent_versions WHERE agent_id = $1 AND version = $2`, agentID, version))
	if errors.Is(err, pgx.ErrNoRows) {
		return v, domain.ErrNotFound
	}
	return v, err
}

// Versions returns an agent's versions, newest first.
func (db *DB) Versions(ctx context.Context, agentID string) (_ []domain.Version, err error) {
	defer classify(ctx, &err)
	rows, err := db.pool.Query(ctx, `SELECT `+versionColumns+` FROM agent_versions WHERE agent_id = $1 ORDER BY version DESC`, agentID)
	if err != nil {
		return nil, err
	}
	return collect(rows, scanVersion)
}

// SetVersionStatus records a version's status and error ("" for none).
func (db *DB) SetVersionStatus(ctx context.Context, agentID string, version int, status domain.VersionStatus, errText string) (err error) {
	defer classify(ctx, &err)
	return oneRow(db.pool.Exec(ctx, `UPDATE agent_versions SET status = $1, error = $2 WHERE agent_id = $3 AND version = $4`,
		string(status), nullString(errText), agentID, version))
}

// ActivateVersion makes version the one serving the agent; the one before
// it becomes retired.
func (db *DB) ActivateVersion(ctx context.Context, agentID string, version int) (err error) {
	defer classify(ctx, &err)
	now := time.Now().UnixMicro()
	return pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		if err := oneRow(tx.Exec(ctx, `UPDATE agent_versions SET status = $1, error = NULL, activated_at = $2 WHERE agent_id = $3 AND version = $4`,
			string(domain.VersionActive), now, agentID, version)); err != nil {
			return err // nothing changes: the transaction rolls back
		}
		if _, err := tx.Exec(ctx, `UPDATE agent_versions SET status = $1 WHERE agent_id = $2 AND status = $3 AND version <> $4`,
			string(domain.VersionRetired), agentID, string(domain.VersionActive), version); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE platform_agents SET active_version = $1, updated_at = $2 WHERE agent_id = $3`, version, now, agentID)
		return err
	})
}

// DeleteVersion removes a version row (an upload that could not be kept).
func (db *DB) DeleteVersion(ctx context.Context, agentID string, version int) (err error) {
	defer classify(ctx, &err)
	return oneRow(db.pool.Exec(ctx, `DELETE FROM agent_versions WHERE agent_id = $1 AND version = $2`, agentID, version))
}

// DeletePlatformAgent removes an agent with its versions, logs and queued
// async invocations; its history stays, and the queued invocations that
// never started end failed there.
func (db *DB) DeletePlatformAgent(ctx context.Context, id string) (err error) {
	defer classify(ctx, &err)
	now := time.Now().UnixMicro()
	return pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE invocations SET status = $1, error_detail = $2, response_time = $3
			WHERE invocation_id IN (SELECT invocation_id FROM async_queue WHERE agent_id = $4 AND started_at IS NULL)`,
			string(domain.StatusFailed), string(domain.CodeNotFound)+": the agent was deleted before this invocation ran", now, id); err != nil {
			return err
		}
		for _, q := range []string{
			`DELETE FROM agent_versions WHERE agent_id = $1`,
			`DELETE FROM agent_logs WHERE agent_id = $1`,
			`DELETE FROM async_queue WHERE agent_id = $1`,
			`DELETE FROM crons WHERE agent_id = $1`,
			`DELETE FROM platform_agents WHERE agent_id = $1`,
		} {
			if _, err := tx.Exec(ctx, q, id); err != nil {
				return err
			}
		}
		return nil
	})
}

// --- keys -------------------------------------------------------------------

// InsertAPIKey stores a new key (never its secret, only the secret's hash).
func (db *DB) InsertAPIKey(ctx context.Context, k domain.Key) (err error) {
	defer classify(ctx, &err)
	scopes := make([]string, len(k.Scopes))
	for i, s := range k.Scopes {
		scopes[i] = string(s)
	}
	_, err = db.pool.Exec(ctx, `INSERT INTO api_keys (id, name, tenant, scopes, agents, hash, rate_per_second, burst, max_concurrency, created_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`, k.ID, k.Name, k.Tenant, strings.Join(scopes, ","), strings.Join(k.Agents, ","),
		k.Hash, k.RatePerSecond, k.Burst, k.MaxConcurrency, k.CreatedAt.UnixMicro())
	return err
}

// APIKeys returns every key, revoked ones too, oldest first.
func (db *DB) APIKeys(ctx context.Context) (_ []domain.Key, err error) {
	defer classify(ctx, &err)
	rows, err := db.pool.Query(ctx, `SELECT id, name, tenant, scopes, agents, hash, rate_per_second, burst, max_concurrency, created_at, revoked_at
		FROM api_keys ORDER BY created_at, id`)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(r pgx.Row) (domain.Key, error) {
		var (
			k              domain.Key
			scopes, agents string
			created        int64
			revoked        *int64
		)
		if err := r.Scan(&k.ID, &k.Name, &k.Tenant, &scopes, &agents, &k.Hash, &k.RatePerSecond, &k.Burst, &k.MaxConcurrency, &created, &revoked); err != nil {
			return k, err
		}
		for _, s := range splitList(scopes) {
			k.Scopes = append(k.Scopes, domain.Scope(s))
		}
		k.Agents = splitList(agents)
		k.CreatedAt, k.RevokedAt = fromMicros(&created), fromMicros(revoked)
		return k, nil
	})
}

// RevokeAPIKey marks a key revoked (ErrNotFound); a second revoke keeps the
// first time.
func (db *DB) RevokeAPIKey(ctx context.Context, id string, at time.Time) (err error) {
	defer classify(ctx, &err)
	return oneRow(db.pool.Exec(ctx, `UPDATE api_keys SET revoked_at = coalesce(revoked_at, $1) WHERE id = $2`, at.UnixMicro(), id))
}

// --- logs -------------------------------------------------------------------

// AppendLogs stores lines in one transaction and fills in their Seq.
func (db *DB) AppendLogs(ctx context.Context, lines []domain.LogLine) (err error) {
	defer classify(ctx, &err)
	if len(lines) == 0 {
		return ctx.Err()
	}
	return pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		var b pgx.Batch
		for i := range lines {
			l := &lines[i]
			b.Queue(`INSERT INTO agent_logs (agent_id, version, instance, invocation_id, stream, line, at)
				VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq`,
				l.AgentID, l.Version, l.Instance, nullString(l.InvocationID), l.Stream, l.Line, l.At.UnixMicro()).
				QueryRow(func(r pgx.Row) error { return r.Scan(&l.Seq) })
		}
		return tx.SendBatch(ctx, &b).Close()
	})
}

// Logs returns an agent's lines with seq > after, oldest first, at most
// limit (<= 0: 1000); invocationID "" means all.
func (db *DB) Logs(ctx context.Context, agentID, invocationID string, after int64, limit int) (_ []domain.LogLine, err error) {
	defer classify(ctx, &err)
	if limit <= 0 {
		limit = 1000
	}
	q := `SELECT seq, agent_id, version, instance, invocation_id, stream, line, at FROM agent_logs WHERE agent_id = $1 AND seq > $2`
	args := []any{agentID, after}
	if invocationID != "" {
		args = append(args, invocationID)
		q += ` AND invocation_id = $3`
	}
	args = append(args, limit)
	q += ` ORDER BY seq LIMIT $` + strconv.Itoa(len(args))
	rows, err := db.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	out, err := collect(rows, func(r pgx.Row) (domain.LogLine, error) {
		var (
			l   domain.LogLine
			inv *string
			at  int64
		)
		if err := r.Scan(&l.Seq, &l.AgentID, &l.Version, &l.Instance, &inv, &l.Stream, &l.Line, &at); err != nil {
			return l, err
		}
		if inv != nil {
			l.InvocationID = *inv
		}
		l.At = fromMicros(&at)
		return l, nil
	})
	if out == nil && err == nil {
		out = []domain.LogLine{}
	}
	return out, err
}

// PruneLogs keeps the newest keep lines of every agent.
func (db *DB) PruneLogs(ctx context.Context, keep int) (_ int64, err error) {
	defer classify(ctx, &err)
	tag, err := db.pool.Exec(ctx, `DELETE FROM agent_logs WHERE seq IN (
		SELECT seq FROM (SELECT seq, row_number() OVER (PARTITION BY agent_id ORDER BY seq DESC) AS n FROM agent_logs) ranked WHERE n > $1)`, keep)
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

// --- async queue ------------------------------------------------------------

// EnqueueAsync durably records an accepted async invocation (pending), its
// run and its place in the queue, in one transaction.
func (db *DB) EnqueueAsync(ctx context.Context, j domain.AsyncJob) (err error) {
	defer classify(ctx, &err)
	inv := j.Invocation
	return pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		if j.ThreadID != "" {
			// One create of a thread at a time (until this transaction
			// ends), so that the check below holds across servers.
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, inv.AgentID+"/"+j.ThreadID); err != nil {
				return err
			}
		}
		tag, err := tx.Exec(ctx, `INSERT INTO runs (invocation_id, agent_id, idempotency_key, webhook, thread_id, user_id) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING`,
			inv.ID, inv.AgentID, nullString(j.IdempotencyKey), nullString(j.Webhook), nullString(j.ThreadID), nullString(j.UserID))
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("agent %s, key %q: %w", inv.AgentID, j.IdempotencyKey, domain.ErrDuplicate)
		}
		// After the key: a replayed create is answered, not refused.
		if j.ThreadID != "" && j.ThreadReject {
			var busy int
			if err := tx.QueryRow(ctx, `SELECT count(*) FROM runs r JOIN async_queue q ON q.invocation_id = r.invocation_id
				WHERE r.agent_id = $1 AND r.thread_id = $2`, inv.AgentID, j.ThreadID).Scan(&busy); err != nil {
				return err
			}
			if busy > 0 {
				return fmt.Errorf("thread %q: %w", j.ThreadID, domain.ErrThreadBusy)
			}
		}
		if _, err := tx.Exec(ctx, `INSERT INTO invocations (`+invocationColumns+`) VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, $7, $8, NULL, NULL, $9)`,
			inv.ID, inv.AgentID, inv.EntrypointTag, inv.SDKType, jsonText(inv.InputArgs), jsonText(inv.InputKwargs),
			string(domain.StatusPending), inv.RequestTime.UnixMicro(), jsonText(inv.ClientInfo)); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO async_queue (invocation_id, agent_id, tenant, timeout_seconds, enqueued_at) VALUES ($1, $2, $3, $4, $5)`,
			inv.ID, inv.AgentID, j.Tenant, j.TimeoutSeconds, time.Now().UnixMicro())
		return err
	})
}

// StartAsync durably records that a queued async invocation is starting
// (one more attempt); ErrNotFound if it is not queued.
func (db *DB) StartAsync(ctx context.Context, id string, at time.Time) (err error) {
	defer classify(ctx, &err)
	return pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		if err := oneRow(tx.Exec(ctx, `UPDATE async_queue SET attempts = attempts + 1, started_at = $1 WHERE invocation_id = $2`, at.UnixMicro(), id)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE runs SET attempts = attempts + 1, started_at = $1 WHERE invocation_id = $2`, at.UnixMicro(), id)
		return err
	})
}

// RequeueAsync puts an interrupted async invocation back as not started.
func (db *DB) RequeueAsync(ctx context.Context, id string) (err error) {
	defer classify(ctx, &err)
	return oneRow(db.pool.Exec(ctx, `UPDATE async_queue SET started_at = NULL WHERE invocation_id = $1`, id))
}

// FinishAsync writes an async invocation's outcome, once, and takes it off
// the queue, in one transaction.
func (db *DB) FinishAsync(ctx context.Context, inv domain.Invocation) (err error) {
	defer classify(ctx, &err)
	return pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		if err := oneRow(tx.Exec(ctx, `UPDATE invocations SET status = $1, output_data = $2, error_detail = $3, response_time = $4, execution_time_ms = $5
			WHERE invocation_id = $6 AND status = $7`, string(inv.Status), jsonText(inv.Output), nullString(inv.ErrorDetail), micros(inv.ResponseTime), inv.ExecutionMS,
			inv.ID, string(domain.StatusPending))); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `DELETE FROM async_queue WHERE invocation_id = $1`, inv.ID)
		return err
	})
}

// CancelQueuedAsync writes the outcome of a queued async invocation that
// has not started and takes it off the queue, in one transaction.
func (db *DB) CancelQueuedAsync(ctx context.Context, inv domain.Invocation) (err error) {
	defer classify(ctx, &err)
	return pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		if err := oneRow(tx.Exec(ctx, `DELETE FROM async_queue WHERE invocation_id = $1 AND started_at IS NULL`, inv.ID)); err != nil {
			return err
		}
		return oneRow(tx.Exec(ctx, `UPDATE invocations SET status = $1, output_data = $2, error_detail = $3, response_time = $4, execution_time_ms = $5
			WHERE invocation_id = $6 AND status = $7`, string(inv.Status), jsonText(inv.Output), nullString(inv.ErrorDetail), micros(inv.ResponseTime), inv.ExecutionMS,
			inv.ID, string(domain.StatusPending)))
	})
}

// Run returns the run of an invocation.
func (db *DB) Run(ctx context.Context, id string) (_ domain.Run, err error) {
	defer classify(ctx, &err)
	if err := db.Flush(ctx); err != nil { // a sync call's record may be queued
		return domain.Run{}, err
	}
	runs, err := db.runs(ctx, `LEFT JOIN runs r ON r.invocation_id = i.invocation_id WHERE i.invocation_id = $1`, id)
	if err != nil {
		return domain.Run{}, err
	}
	if len(runs) == 0 {
		return domain.Run{}, domain.ErrNotFound
	}
	return runs[0], nil
}

// IdempotentRun returns agentID's background run created with key.
func (db *DB) IdempotentRun(ctx context.Context, agentID, key string) (_ domain.Run, err error) {
	defer classify(ctx, &err)
	runs, err := db.runs(ctx, `JOIN runs r ON r.invocation_id = i.invocation_id WHERE r.agent_id = $1 AND r.idempotency_key = $2`, agentID, key)
	if err != nil {
		return domain.Run{}, err
	}
	if len(runs) == 0 {
		return domain.Run{}, domain.ErrNotFound
	}
	return runs[0], nil
}

// DropIdempotencyKey frees a run's Idempotency-Key.
func (db *DB) DropIdempotencyKey(ctx context.Context, runID string) (err error) {
	defer classify(ctx, &err)
	_, err = db.pool.Exec(ctx, `UPDATE runs SET idempotency_key = NULL WHERE invocation_id = $1`, runID)
	return err
}

// RequestCancel marks a background run to be cancelled when picked up.
func (db *DB) RequestCancel(ctx context.Context, runID string) (err error) {
	defer classify(ctx, &err)
	return oneRow(db.pool.Exec(ctx, `UPDATE runs SET cancel_requested = 1 WHERE invocation_id = $1`, runID))
}

// ThreadAhead says whether an earlier run of j's thread is still queued.
func (db *DB) ThreadAhead(ctx context.Context, j domain.AsyncJob) (_ bool, err error) {
	defer classify(ctx, &err)
	if j.ThreadID == "" {
		return false, nil
	}
	var n int
	err = db.pool.QueryRow(ctx, `SELECT count(*) FROM runs r JOIN async_queue q ON q.invocation_id = r.invocation_id,
		async_queue me WHERE me.invocation_id = $1 AND r.agent_id = $2 AND r.thread_id = $3 AND r.invocation_id <> me.invocation_id
		AND (q.enqueued_at < me.enqueued_at OR (q.enqueued_at = me.enqueued_at AND q.seq < me.seq))`,
		j.ID, j.AgentID, j.ThreadID).Scan(&n)
	return n > 0, err
}

// ListRuns returns the background runs of agentIDs, newest first.
func (db *DB) ListRuns(ctx context.Context, agentIDs []string, status domain.RunStatus, limit int) (_ []domain.Run, err error) {
	defer classify(ctx, &err)
	if len(agentIDs) == 0 {
		return nil, nil
	}
	where, args := "", []any{agentIDs}
	cancelled, timeout := string(domain.CodeCancelled)+":%", string(domain.CodeTimeout)+":%"
	switch status {
	case domain.RunPending:
		where = ` AND i.status = 'pending' AND q.started_at IS NULL`
	case domain.RunRunning:
		where = ` AND i.status = 'pending' AND q.started_at IS NOT NULL`
	case domain.RunCompleted:
		where = ` AND i.status = 'completed'`
	case domain.RunCancelled:
		where, args = ` AND i.status = 'failed' AND i.error_detail LIKE $2`, append(args, cancelled)
	case domain.RunTimeout:
		where, args = ` AND i.status = 'failed' AND i.error_detail LIKE $2`, append(args, timeout)
	case domain.RunFailed:
		where, args = ` AND i.status = 'failed' AND coalesce(i.error_detail, '') NOT LIKE $2 AND coalesce(i.error_detail, '') NOT LIKE $3`, append(args, cancelled, timeout)
	}
	args = append(args, limit)
	return db.runs(ctx, `JOIN runs r ON r.invocation_id = i.invocation_id WHERE r.agent_id = ANY($1)`+where+
		fmt.Sprintf(` ORDER BY i.request_time DESC, i.seq DESC LIMIT $%d`, len(args)), args...)
}

func (db *DB) runs(ctx context.Context, tail string, args ...any) ([]domain.Run, error) {
	rows, err := db.pool.Query(ctx, `SELECT `+prefixed("i.", invocationColumns)+`, r.invocation_id IS NOT NULL, coalesce(r.idempotency_key, ''), coalesce(r.attempts, 0), r.started_at, q.started_at IS NOT NULL, coalesce(r.webhook, ''), coalesce(r.thread_id, ''), coalesce(r.user_id, '')
		FROM invocations i LEFT JOIN async_queue q ON q.invocation_id = i.invocation_id `+tail, args...)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(r pgx.Row) (domain.Run, error) {
		var (
			run     domain.Run
			started *int64
		)
		inv, err := scanInvocation(scanPlus{r, []any{&run.Background, &run.IdempotencyKey, &run.Attempts, &started, &run.Running, &run.Webhook, &run.ThreadID, &run.UserID}})
		if err != nil {
			return run, err
		}
		run.Invocation, run.StartedAt = inv, fromMicros(started)
		return run, nil
	})
}

// WebhookSecret returns agentID's webhook secret, storing fresh if none.
func (db *DB) WebhookSecret(ctx context.Context, agentID, fresh string) (_ string, err error) {
	defer classify(ctx, &err)
	if _, err := db.pool.Exec(ctx, `INSERT INTO webhook_secrets (agent_id, secret, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
		agentID, fresh, time.Now().UnixMicro()); err != nil {
		return "", err
	}
	var secret string
	err = db.pool.QueryRow(ctx, `SELECT secret FROM webhook_secrets WHERE agent_id = $1`, agentID).Scan(&secret)
	return secret, err
}

// RecordWebhookAttempt records one webhook delivery attempt.
func (db *DB) RecordWebhookAttempt(ctx context.Context, a domain.WebhookAttempt) (err error) {
	defer classify(ctx, &err)
	_, err = db.pool.Exec(ctx, `INSERT INTO webhook_attempts (run_id, attempt, at, url, status_code, error, duration_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
		a.RunID, a.Attempt, a.At.UnixMicro(), a.URL, a.StatusCode, nullString(a.Error), a.DurationMS)
	return err
}

// WebhookAttempts returns a run's webhook delivery attempts in order.
// UndeliveredWebhooks implements domain.Webhooks.
func (db *DB) UndeliveredWebhooks(ctx context.Context, since time.Time, limit int) (_ []domain.Run, err error) {
	defer classify(ctx, &err)
	return db.runs(ctx, `JOIN runs r ON r.invocation_id = i.invocation_id WHERE r.webhook IS NOT NULL AND i.status <> 'pending'
		AND i.response_time >= $1 AND NOT EXISTS (SELECT 1 FROM webhook_attempts a WHERE a.run_id = r.invocation_id AND a.status_code BETWEEN 200 AND 299)
		ORDER BY i.response_time LIMIT $2`, since.UnixMicro(), limit)
}

func (db *DB) WebhookAttempts(ctx context.Context, runID string) (_ []domain.WebhookAttempt, err error) {
	defer classify(ctx, &err)
	rows, err := db.pool.Query(ctx, `SELECT run_id, attempt, at, url, status_code, coalesce(error, ''), duration_ms FROM webhook_attempts WHERE run_id = $1 ORDER BY attempt`, runID)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(r pgx.Row) (domain.WebhookAttempt, error) {
		var (
			a  domain.WebhookAttempt
			at int64
		)
		err := r.Scan(&a.RunID, &a.Attempt, &at, &a.URL, &a.StatusCode, &a.Error, &a.DurationMS)
		a.At = time.UnixMicro(at).UTC()
		return a, err
	})
}

// PendingAsync returns the queued async invocations, oldest first.
func (db *DB) PendingAsync(ctx context.Context) (_ []domain.AsyncJob, err error) {
	defer classify(ctx, &err)
	return db.asyncJobs(ctx, `ORDER BY q.enqueued_at, q.seq`)
}

// UnstartedAsync returns at most limit queued async invocations enqueued
// between after and before and not started since, oldest first.
func (db *DB) UnstartedAsync(ctx context.Context, after, before time.Time, limit int) (_ []domain.AsyncJob, err error) {
	defer classify(ctx, &err)
	var from int64
	if !after.IsZero() {
		from = after.UnixMicro()
	}
	return db.asyncJobs(ctx, `WHERE q.started_at IS NULL AND q.enqueued_at > $1 AND q.enqueued_at < $2 ORDER BY q.enqueued_at, q.seq LIMIT $3`, from, before.UnixMicro(), limit)
}

// AsyncJob returns one queued async invocation.
func (db *DB) AsyncJob(ctx context.Context, id string) (_ domain.AsyncJob, err error) {
	defer classify(ctx, &err)
	jobs, err := db.asyncJobs(ctx, `WHERE q.invocation_id = $1`, id)
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
	defer classify(ctx, &err)
	err = db.pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE tenant = $1), count(*) FILTER (WHERE agent_id = $2) FROM async_queue`,
		tenant, agentID).Scan(&b.Total, &b.Tenant, &b.Agent)
	return b, err
}

func (db *DB) asyncJobs(ctx context.Context, tail string, args ...any) ([]domain.AsyncJob, error) {
	rows, err := db.pool.Query(ctx, `SELECT `+prefixed("i.", invocationColumns)+`, q.tenant, q.timeout_seconds, q.attempts, q.started_at, coalesce(r.webhook, ''), coalesce(r.idempotency_key, ''), coalesce(r.cancel_requested, 0) <> 0, q.enqueued_at, coalesce(r.thread_id, ''), coalesce(r.user_id, '')
		FROM async_queue q JOIN invocations i ON i.invocation_id = q.invocation_id LEFT JOIN runs r ON r.invocation_id = q.invocation_id `+tail, args...)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(r pgx.Row) (domain.AsyncJob, error) {
		var (
			j        domain.AsyncJob
			started  *int64
			enqueued int64
		)
		inv, err := scanInvocation(scanPlus{r, []any{&j.Tenant, &j.TimeoutSeconds, &j.Attempts, &started, &j.Webhook, &j.IdempotencyKey, &j.CancelRequested, &enqueued, &j.ThreadID, &j.UserID}})
		if err != nil {
			return j, err
		}
		j.Invocation, j.StartedAt, j.EnqueuedAt = inv, fromMicros(started), time.UnixMicro(enqueued).UTC()
		return j, nil
	})
}

// --- scanning and values ------------------------------------------------------

func scanInvocation(r pgx.Row) (domain.Invocation, error) {
	var (
		inv                       domain.Invocation
		status                    string
		args, kwargs, out, client *string
		errDetail                 *string
		reqUS                     int64
		respUS                    *int64
		exec                      *float64
	)
	err := r.Scan(&inv.ID, &inv.AgentID, &inv.EntrypointTag, &inv.SDKType, &args, &kwargs,
		&out, &errDetail, &status, &reqUS, &respUS, &exec, &client)
	if err != nil {
		return domain.Invocation{}, err
	}
	inv.Status = domain.Status(status)
	inv.InputArgs, inv.InputKwargs, inv.Output, inv.ClientInfo = raw(args), raw(kwargs), raw(out), raw(client)
	if errDetail != nil {
		inv.ErrorDetail = *errDetail
	}
	inv.RequestTime = time.UnixMicro(reqUS).UTC()
	inv.ResponseTime = fromMicros(respUS)
	if exec != nil {
		inv.ExecutionMS = *exec
	}
	return inv, nil
}

// scanPlus scans extra trailing columns into extra.
type scanPlus struct {
	r     pgx.Row
	extra []any
}

func (s scanPlus) Scan(dest ...any) error { return s.r.Scan(append(dest, s.extra...)...) }

// collect scans every row with scan; nil for none.
func collect[T any](rows pgx.Rows, scan func(pgx.Row) (T, error)) ([]T, error) {
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// oneRow turns a write that touched no row into ErrNotFound.
func oneRow(tag pgconn.CommandTag, err error) error {
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return domain.ErrNotFound
	}
	return nil
}

func prefixed(p, cols string) string {
	parts := strings.Split(cols, ",")
	for i, c := range parts {
		parts[i] = p + strings.TrimSpace(c)
	}
	return strings.Join(parts, ", ")
}

func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func raw(s *string) json.RawMessage {
	if s == nil {
		return nil
	}
	return json.RawMessage(*s)
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

func micros(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMicro()
}

func fromMicros(v *int64) time.Time {
	if v == nil {
		return time.Time{}
	}
	return time.UnixMicro(*v).UTC()
}

// round2 is Python's round(x, 2): the decimal nearest to x's exact binary
// value, ties to even.
func round2(x float64) float64 {
	r, _ := strconv.ParseFloat(strconv.FormatFloat(x, 'f', 2, 64), 64)
	return r
}
