// Package store keeps state in SQLite (pure Go, no cgo), as the domain
// stores (domain.Store, domain.Registry; storetest is their suite):
//
//   - the invocation history (DB), written off the request path by one
//     batching writer goroutine, read back by the history endpoints;
//   - the platform's agents, versions, keys, logs and async queue (DB, see
//     platform.go);
//   - the row of the shared local registry (runagent_local.db, table agents)
//     through which the official SDKs find a locally served agent by id.
//
// # Invocation database
//
// The tables are in migrations/, versioned with PRAGMA
// user_version. Timestamps are INTEGER unix microseconds in UTC; inputs,
// outputs and client info are JSON text. The file is opened in WAL mode with
// synchronous=NORMAL and a busy timeout.
//
// Start and Finish only put the record on a buffered queue; one writer
// goroutine commits everything queued in one transaction per batch, and a
// Start and Finish of the same invocation in one batch become one INSERT.
// When the queue is full Start and Finish wait: records are never dropped
// while the DB is open. Reads first wait for everything queued before them
// (read-your-writes), which costs two atomic loads when nothing is pending.
// A batch that fails is retried, then written record by record; records that
// still fail are logged and counted (WriteErrors), never a panic.
//
// # Local registry
//
// See registry.go: UpsertRegistryAgent, RecordRegistryRun (batched by
// RegistryRecorder) and LookupRegistryAgent.
package store

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/store/batch"
)

var (
	// ErrNotFound is returned for an invocation, agent, key or registry
	// agent that does not exist (it is domain.ErrNotFound).
	ErrNotFound = domain.ErrNotFound
	// ErrClosed is returned by Flush after Close.
	ErrClosed = batch.ErrClosed
)

// Option configures Open.
type Option func(*options)

type options struct {
	log         *slog.Logger
	queue       int
	maxBatch    int
	linger      time.Duration
	busyTimeout time.Duration
}

// WithLogger sets where write errors are logged (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.log = l
		}
	}
}

// WithQueueSize sets how many Start/Finish calls may wait for the writer
// before they block (default 8192).
func WithQueueSize(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.queue = n
		}
	}
}

// WithBatch sets the most records committed in one transaction (default
// 2048) and how long the writer waits for more once it has some (default 0:
// it commits whatever is queued at once; under load batches grow by
// themselves while the previous one commits).
func WithBatch(maxRecords int, linger time.Duration) Option {
	return func(o *options) {
		if maxRecords > 0 {
			o.maxBatch = maxRecords
		}
		if linger >= 0 {
			o.linger = linger
		}
	}
}

// WithBusyTimeout sets how long SQLite waits for a lock held by another
// connection or process (default 5s).
func WithBusyTimeout(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.busyTimeout = d
		}
	}
}

//go:embed migrations/*.sql
var migrationFS embed.FS

// DB is the invocation history. Its methods are safe for concurrent use.
type DB struct {
	sql  *sql.DB
	log  *slog.Logger
	opts options

	hist      *batch.Writer
	w         *writer
	closeOnce sync.Once
	closeErr  error
}

// Open opens (creating it and its directory if needed) the invocation
// database at path and starts its writer. Path ":memory:" gives a private
// in-memory database.
func Open(path string, opts ...Option) (*DB, error) {
	o := options{log: slog.Default(), queue: 8192, maxBatch: 2048, busyTimeout: 5 * time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	// Write transactions (DB.tx) take the write lock when they begin: a
	// deferred one that read first cannot wait for the lock when it wants
	// to write (SQLITE_BUSY at once, whatever the busy timeout), and the
	// history writer commits every few calls.
	params := fmt.Sprintf("_pragma=busy_timeout(%d)&_txlock=immediate", o.busyTimeout.Milliseconds())
	var dsn string
	if path == ":memory:" {
		// memdb is shared by the connections of this process, so the
		// writer and the readers see one database.
		dsn = "file:/runagent-" + uuid.NewString() + "?vfs=memdb&" + params
	} else {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return nil, fmt.Errorf("create directory for invocation database: %w", err)
		}
		dsn = fileDSN(path) + "?" + params + "&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)"
	}
	sdb, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open invocation database %s: %w", path, err)
	}
	// One connection is the writer's for good; the rest serve reads.
	sdb.SetMaxOpenConns(1 + max(2, runtime.GOMAXPROCS(0)))
	sdb.SetMaxIdleConns(1 + max(2, runtime.GOMAXPROCS(0)))
	sdb.SetConnMaxIdleTime(0)
	sdb.SetConnMaxLifetime(0)

	w, err := newWriter(context.Background(), sdb)
	if err != nil {
		sdb.Close()
		return nil, fmt.Errorf("open invocation database %s: %w", path, err)
	}
	db := &DB{sql: sdb, log: o.log, opts: o, w: w}
	db.hist = batch.New(w, batch.Options{Log: o.log, Queue: o.queue, MaxBatch: o.maxBatch, Linger: o.linger})
	return db, nil
}

// fileDSN makes path a SQLite URI, so that '?' and '#' in it are not taken
// for parameters.
func fileDSN(path string) string {
	r := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23")
	return "file:" + r.Replace(filepath.ToSlash(path))
}

// migrate brings the schema up to date on conn, inside one write
// transaction so that two processes opening one file don't race.
func migrate(ctx context.Context, conn *sql.Conn) (err error) {
	names, err := fs.Glob(migrationFS, "migrations/*.sql")
	if err != nil {
		return err
	}
	sort.Strings(names)
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer func() {
		if err != nil {
			conn.ExecContext(context.WithoutCancel(ctx), "ROLLBACK")
			return
		}
		if _, err = conn.ExecContext(ctx, "COMMIT"); err != nil {
			conn.ExecContext(context.WithoutCancel(ctx), "ROLLBACK")
			err = fmt.Errorf("migrate: %w", err)
		}
	}()
	var version int
	if err := conn.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return fmt.Errorf("migrate: read schema version: %w", err)
	}
	if version > len(names) {
		return fmt.Errorf("schema version %d is newer than this runagent understands (%d): upgrade runagent or use another cache directory", version, len(names))
	}
	for i := version; i < len(names); i++ {
		body, err := migrationFS.ReadFile(names[i])
		if err != nil {
			return err
		}
		if _, err := conn.ExecContext(ctx, string(body)); err != nil {
			return fmt.Errorf("migrate: %s: %w", names[i], err)
		}
		if _, err := conn.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", i+1)); err != nil {
			return fmt.Errorf("migrate: set schema version: %w", err)
		}
	}
	return nil
}

// Start records a pending invocation. It returns once the record is queued;
// it blocks only while the queue is full. A record that arrives after Close
// is logged and counted in WriteErrors, not written.
func (db *DB) Start(inv domain.Invocation) { db.hist.Start(inv) }

// Finish records the outcome of an invocation started with Start (same ID):
// status, output or error, response time and execution time.
func (db *DB) Finish(inv domain.Invocation) { db.hist.Finish(inv) }

// FinishDurable is Finish that returns once the record is committed: a
// server answers the call after it, so that no answered call is missing
// from the history after a crash. The writer commits at once for it
// (without lingering), together with whatever else is queued, so waiting
// callers share commits. It returns ErrClosed if the store closed first,
// ctx's error if ctx ends first (the record is still written).
func (db *DB) FinishDurable(ctx context.Context, inv domain.Invocation) error {
	return db.hist.FinishDurable(ctx, inv)
}

// WriteErrors is how many records could not be written so far (each is
// logged too).
func (db *DB) WriteErrors() uint64 { return db.hist.WriteErrors() }

// Flush waits until everything queued before the call is committed (or
// given up on after retries; see WriteErrors). It returns ctx's error if ctx
// ends first, and ErrClosed if the store closed with records unwritten.
func (db *DB) Flush(ctx context.Context) error { return db.hist.Flush(ctx) }

// Close writes everything queued, then closes the database. Calling it
// again returns the first call's result.
func (db *DB) Close() error {
	db.closeOnce.Do(func() {
		db.hist.Close()
		db.closeErr = errors.Join(db.w.close(), db.sql.Close())
	})
	return db.closeErr
}

const invocationColumns = `invocation_id, agent_id, entrypoint_tag, sdk_type, input_args, input_kwargs,
	output_data, error_detail, status, request_time, response_time, execution_time_ms, client_info`

// Get returns one invocation, after everything queued before the call is
// written. It returns ErrNotFound if there is no such invocation.
func (db *DB) Get(ctx context.Context, id string) (domain.Invocation, error) {
	if err := db.Flush(ctx); err != nil {
		return domain.Invocation{}, err
	}
	row := db.sql.QueryRowContext(ctx, `SELECT `+invocationColumns+` FROM invocations WHERE invocation_id = ?`, id)
	inv, err := scanInvocation(row)
	if errors.Is(err, sql.ErrNoRows) {
		return domain.Invocation{}, ErrNotFound
	}
	if err != nil {
		return domain.Invocation{}, fmt.Errorf("get invocation %s: %w", id, err)
	}
	return inv, nil
}

// defaultListLimit is List's limit when it is given none (domain.History).
const defaultListLimit = 50

// listQueries are the List statements by filter: [agent set][status set].
var listQueries = func() (q [2][2]string) {
	for a := range 2 {
		for s := range 2 {
			var where []string
			if a == 1 {
				where = append(where, "agent_id = ?")
			}
			if s == 1 {
				where = append(where, "status = ?")
			}
			w := ""
			if len(where) > 0 {
				w = " WHERE " + strings.Join(where, " AND ")
			}
			q[a][s] = `SELECT ` + invocationColumns + ` FROM invocations` + w +
				` ORDER BY request_time DESC, rowid DESC LIMIT ?`
		}
	}
	return q
}()

// List returns invocations newest first (by request time; of two at the
// same time the later recorded first). agentID "" and status "" mean all;
// limit <= 0 means defaultListLimit.
func (db *DB) List(ctx context.Context, agentID string, status domain.Status, limit int) ([]domain.Invocation, error) {
	if err := db.Flush(ctx); err != nil {
		return nil, err
	}
	var args []any
	a, s := 0, 0
	if agentID != "" {
		a = 1
		args = append(args, agentID)
	}
	if status != "" {
		s = 1
		args = append(args, status)
	}
	if limit <= 0 {
		limit = defaultListLimit
	}
	args = append(args, limit)
	rows, err := db.sql.QueryContext(ctx, listQueries[a][s], args...)
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
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list invocations: %w", err)
	}
	return out, nil
}

type scanner interface{ Scan(dest ...any) error }

func scanInvocation(r scanner) (domain.Invocation, error) {
	var (
		inv          domain.Invocation
		errDetail    sql.NullString
		reqUS        int64
		respUS       sql.NullInt64
		exec         sql.NullFloat64
		args, kwargs []byte
		out, client  []byte
	)
	err := r.Scan(&inv.ID, &inv.AgentID, &inv.EntrypointTag, &inv.SDKType, &args, &kwargs,
		&out, &errDetail, &inv.Status, &reqUS, &respUS, &exec, &client)
	if err != nil {
		return domain.Invocation{}, err
	}
	inv.InputArgs, inv.InputKwargs, inv.Output, inv.ClientInfo = args, kwargs, out, client
	inv.ErrorDetail = errDetail.String
	inv.RequestTime = time.UnixMicro(reqUS).UTC()
	if respUS.Valid {
		inv.ResponseTime = time.UnixMicro(respUS.Int64).UTC()
	}
	inv.ExecutionMS = exec.Float64
	return inv, nil
}

// Stats sums up the invocations of agentID ("" for all agents).
func (db *DB) Stats(ctx context.Context, agentID string) (domain.Stats, error) {
	if err := db.Flush(ctx); err != nil {
		return domain.Stats{}, err
	}
	q := `SELECT COUNT(*),
		COALESCE(SUM(status = 'completed'), 0),
		COALESCE(SUM(status = 'failed'), 0),
		COALESCE(SUM(status = 'pending'), 0),
		SUM(CASE WHEN status = 'completed' THEN execution_time_ms END),
		COUNT(CASE WHEN status = 'completed' THEN execution_time_ms END)
		FROM invocations`
	var args []any
	if agentID != "" {
		q += ` WHERE agent_id = ?`
		args = append(args, agentID)
	}
	var (
		st      = domain.Stats{AgentID: agentID}
		sumExec sql.NullFloat64
		nExec   int
	)
	err := db.sql.QueryRowContext(ctx, q, args...).Scan(&st.Total, &st.Completed, &st.Failed, &st.Pending, &sumExec, &nExec)
	if err != nil {
		return domain.Stats{}, fmt.Errorf("invocation stats: %w", err)
	}
	if st.Total > 0 {
		st.SuccessRate = round2(float64(st.Completed) / float64(st.Total) * 100)
	}
	if nExec > 0 {
		avg := round2(sumExec.Float64 / float64(nExec))
		st.AvgExecutionMS = &avg
	}
	return st, nil
}

// The SQLite store is every store the platform needs.
var _ domain.Store = (*DB)(nil)
