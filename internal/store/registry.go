package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

// The local registry is the original CLI's SQLite database
// ($RUNAGENT_CACHE_DIR/runagent_local.db). The official SDKs, given only an
// agent id and local=true, read the agent's host and port from its table
// agents. The Python CLI owns that file too, so this code never changes a
// table it finds (no journal mode change, no new columns): it writes the
// columns that exist, and creates the table with the original's columns only
// when it is absent.
//
// DATETIME columns hold UTC text in RegistryTimeFormat, which SQLAlchemy's
// DateTime, mattn/go-sqlite3 (the official Go SDK) and modernc all parse.

// RegistryTimeFormat is the text form of the registry's DATETIME columns.
const RegistryTimeFormat = "2006-01-02 15:04:05.000000"

// EnvCacheDir names the directory of the registry, as in the original CLI.
const EnvCacheDir = "RUNAGENT_CACHE_DIR"

// registryBusyTimeout is how long a registry write waits for the Python CLI
// or another server to release the file.
const registryBusyTimeout = 5 * time.Second

// createAgentsSQL is the table SQLAlchemy creates for the original's Agent
// model (String is VARCHAR there).
const createAgentsSQL = `CREATE TABLE agents (
	agent_id VARCHAR NOT NULL,
	agent_path VARCHAR NOT NULL,
	host VARCHAR NOT NULL,
	port INTEGER NOT NULL,
	framework VARCHAR,
	status VARCHAR,
	remote_status VARCHAR,
	is_local BOOLEAN,
	fingerprint VARCHAR,
	deployed_at DATETIME,
	last_run DATETIME,
	run_count INTEGER,
	success_count INTEGER,
	error_count INTEGER,
	created_at DATETIME,
	updated_at DATETIME,
	agent_name VARCHAR,
	description VARCHAR,
	template VARCHAR,
	version VARCHAR,
	initialized_at DATETIME,
	config_fingerprint VARCHAR,
	project_id VARCHAR,
	PRIMARY KEY (agent_id)
);
CREATE INDEX IF NOT EXISTS idx_agents_status ON agents (status)`

// RegistryPath is $RUNAGENT_CACHE_DIR/runagent_local.db, or
// ~/.runagent/runagent_local.db.
func RegistryPath() string {
	dir := os.Getenv(EnvCacheDir)
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			dir = ".runagent"
		} else {
			dir = filepath.Join(home, ".runagent")
		}
	}
	return filepath.Join(dir, "runagent_local.db")
}

func registryTime(t time.Time) string { return t.UTC().Format(RegistryTimeFormat) }

// registryConn is one connection to the registry holding a transaction:
// for writes BEGIN IMMEDIATE, so that it never has to upgrade a read lock.
type registryConn struct {
	db   *sql.DB
	conn *sql.Conn
}

// openRegistry opens the registry file and begins a transaction (a write
// transaction if write). With create false a missing file is ErrNotFound
// (and is not created).
func openRegistry(ctx context.Context, path string, create, write bool) (*registryConn, error) {
	if create {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return nil, fmt.Errorf("local registry: create directory: %w", err)
		}
	} else if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotFound
	}
	db, err := sql.Open("sqlite", fmt.Sprintf("%s?_pragma=busy_timeout(%d)", fileDSN(path), registryBusyTimeout.Milliseconds()))
	if err != nil {
		return nil, fmt.Errorf("local registry %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	conn, err := db.Conn(ctx)
	if err == nil {
		begin := "BEGIN"
		if write {
			begin = "BEGIN IMMEDIATE"
		}
		_, err = conn.ExecContext(ctx, begin)
		if err != nil {
			conn.Close()
		}
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("local registry %s: %w", path, err)
	}
	return &registryConn{db: db, conn: conn}, nil
}

// finish commits when err is nil, rolls back otherwise, and closes.
func (r *registryConn) finish(err error) error {
	ctx := context.Background()
	if err == nil {
		if _, cerr := r.conn.ExecContext(ctx, "COMMIT"); cerr != nil {
			err = fmt.Errorf("local registry: commit: %w", cerr)
		}
	}
	if err != nil {
		r.conn.ExecContext(ctx, "ROLLBACK")
	}
	return errors.Join(err, r.conn.Close(), r.db.Close())
}

// columns is the column set of table agents, empty when there is none.
func (r *registryConn) columns(ctx context.Context) (map[string]bool, error) {
	rows, err := r.conn.QueryContext(ctx, `SELECT name FROM pragma_table_info('agents')`)
	if err != nil {
		return nil, fmt.Errorf("local registry: read table agents: %w", err)
	}
	defer rows.Close()
	cols := map[string]bool{}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return nil, fmt.Errorf("local registry: read table agents: %w", err)
		}
		cols[strings.ToLower(name)] = true
	}
	return cols, rows.Err()
}

// assignment is one column of an INSERT or UPDATE; keep means the UPDATE
// leaves a non-NULL value alone.
type assignment struct {
	col  string
	val  any
	keep bool
}

// UpsertRegistryAgent registers a served agent so that the official SDKs find
// it by id: it inserts the row, or updates an existing one's path, host,
// port, status and description while keeping its counters and created_at.
func UpsertRegistryAgent(ctx context.Context, dbPath string, a domain.RegistryAgent) (err error) {
	if a.AgentID == "" {
		return errors.New("local registry: agent id is empty")
	}
	r, err := openRegistry(ctx, dbPath, true, true)
	if err != nil {
		return err
	}
	defer func() { err = r.finish(err) }()

	cols, err := r.columns(ctx)
	if err != nil {
		return err
	}
	if len(cols) == 0 {
		if _, err := r.conn.ExecContext(ctx, createAgentsSQL); err != nil {
			return fmt.Errorf("local registry: create table agents: %w", err)
		}
		if cols, err = r.columns(ctx); err != nil {
			return err
		}
	}
	for _, c := range []string{"agent_id", "host", "port"} {
		if !cols[c] {
			return fmt.Errorf("local registry %s: table agents has no column %s; it is not the RunAgent registry", dbPath, c)
		}
	}

	now := registryTime(time.Now())
	given := func(col, v string) assignment { return assignment{col: col, val: v, keep: v == ""} }
	set := []assignment{
		{col: "agent_path", val: a.AgentPath},
		{col: "host", val: a.Host},
		{col: "port", val: a.Port},
		{col: "status", val: "deployed"},
		{col: "is_local", val: 1},
		{col: "deployed_at", val: now},
		{col: "updated_at", val: now},
		given("framework", a.Framework),
		given("agent_name", a.AgentName),
		given("description", a.Description),
		given("template", a.Template),
		given("version", a.Version),
		given("fingerprint", a.Fingerprint),
		given("config_fingerprint", a.ConfigFingerprint),
		{col: "remote_status", val: "initialized", keep: true},
		{col: "project_id", val: "", keep: true},
		{col: "run_count", val: 0, keep: true},
		{col: "success_count", val: 0, keep: true},
		{col: "error_count", val: 0, keep: true},
		{col: "created_at", val: now, keep: true},
		{col: "initialized_at", val: now, keep: true},
	}
	var present []assignment
	for _, s := range set {
		if cols[s.col] {
			present = append(present, s)
		}
	}

	var exists bool
	if err := r.conn.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM agents WHERE agent_id = ?)`, a.AgentID).Scan(&exists); err != nil {
		return fmt.Errorf("local registry: %w", err)
	}
	var (
		q    string
		args []any
	)
	if exists {
		parts := make([]string, len(present))
		for i, s := range present {
			if s.keep {
				parts[i] = fmt.Sprintf("%s = COALESCE(%s, ?)", s.col, s.col)
			} else {
				parts[i] = s.col + " = ?"
			}
			args = append(args, s.val)
		}
		q = `UPDATE agents SET ` + strings.Join(parts, ", ") + ` WHERE agent_id = ?`
		args = append(args, a.AgentID)
	} else {
		names := []string{"agent_id"}
		args = append(args, a.AgentID)
		for _, s := range present {
			names = append(names, s.col)
			args = append(args, s.val)
		}
		q = `INSERT INTO agents (` + strings.Join(names, ", ") + `) VALUES (?` + strings.Repeat(", ?", len(names)-1) + `)`
	}
	if _, err := r.conn.ExecContext(ctx, q, args...); err != nil {
		return fmt.Errorf("local registry: register agent %s: %w", a.AgentID, err)
	}
	return nil
}

// RecordRegistryRun counts one finished call of a registered agent (run,
// success or error count, last_run). It is ErrNotFound when the agent is not
// registered.
func RecordRegistryRun(ctx context.Context, dbPath, agentID string, success bool, at time.Time) error {
	if success {
		return recordRegistryRuns(ctx, dbPath, agentID, 1, 0, at)
	}
	return recordRegistryRuns(ctx, dbPath, agentID, 0, 1, at)
}

func recordRegistryRuns(ctx context.Context, dbPath, agentID string, ok, failed int64, last time.Time) (err error) {
	r, err := openRegistry(ctx, dbPath, false, true)
	if err != nil {
		return err
	}
	defer func() { err = r.finish(err) }()
	cols, err := r.columns(ctx)
	if err != nil {
		return err
	}
	if len(cols) == 0 {
		return ErrNotFound
	}
	var (
		parts []string
		args  []any
	)
	add := func(col, expr string, v any) {
		if cols[col] {
			parts = append(parts, col+" = "+expr)
			args = append(args, v)
		}
	}
	add("run_count", "COALESCE(run_count, 0) + ?", ok+failed)
	add("success_count", "COALESCE(success_count, 0) + ?", ok)
	add("error_count", "COALESCE(error_count, 0) + ?", failed)
	add("last_run", "?", registryTime(last))
	add("updated_at", "?", registryTime(time.Now()))
	if len(parts) == 0 {
		return nil
	}
	args = append(args, agentID)
	res, err := r.conn.ExecContext(ctx, `UPDATE agents SET `+strings.Join(parts, ", ")+` WHERE agent_id = ?`, args...)
	if err != nil {
		return fmt.Errorf("local registry: record run of %s: %w", agentID, err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 {
		return ErrNotFound
	}
	return nil
}

// LookupRegistryAgent reads a registered agent (for `run --id`). It is
// ErrNotFound when the registry, its table or the agent does not exist.
func LookupRegistryAgent(ctx context.Context, dbPath, agentID string) (a domain.RegistryAgent, err error) {
	r, err := openRegistry(ctx, dbPath, false, false)
	if err != nil {
		return domain.RegistryAgent{}, err
	}
	defer func() { err = r.finish(err) }()
	cols, err := r.columns(ctx)
	if err != nil {
		return domain.RegistryAgent{}, err
	}
	if len(cols) == 0 {
		return domain.RegistryAgent{}, ErrNotFound
	}
	text := func(col string) string {
		if cols[col] {
			return fmt.Sprintf("COALESCE(CAST(%s AS TEXT), '')", col)
		}
		return "''"
	}
	port := "0"
	if cols["port"] {
		port = "COALESCE(CAST(port AS INTEGER), 0)"
	}
	q := `SELECT ` + strings.Join([]string{text("agent_path"), text("host"), port, text("framework"),
		text("agent_name"), text("description"), text("template"), text("version"),
		text("fingerprint"), text("config_fingerprint")}, ", ") + ` FROM agents WHERE agent_id = ?`
	a.AgentID = agentID
	err = r.conn.QueryRowContext(ctx, q, agentID).Scan(&a.AgentPath, &a.Host, &a.Port, &a.Framework,
		&a.AgentName, &a.Description, &a.Template, &a.Version, &a.Fingerprint, &a.ConfigFingerprint)
	if errors.Is(err, sql.ErrNoRows) {
		return domain.RegistryAgent{}, ErrNotFound
	}
	if err != nil {
		return domain.RegistryAgent{}, fmt.Errorf("local registry: look up %s: %w", agentID, err)
	}
	return a, nil
}

// Registry is the local registry at a path (RegistryPath), as a
// domain.Registry.
type Registry struct{ Path string }

var _ domain.Registry = Registry{}

// UpsertAgent implements domain.Registry (UpsertRegistryAgent).
func (r Registry) UpsertAgent(ctx context.Context, a domain.RegistryAgent) error {
	return UpsertRegistryAgent(ctx, r.Path, a)
}

// LookupAgent implements domain.Registry (LookupRegistryAgent).
func (r Registry) LookupAgent(ctx context.Context, agentID string) (domain.RegistryAgent, error) {
	return LookupRegistryAgent(ctx, r.Path, agentID)
}

// RecordRuns implements domain.Registry.
func (r Registry) RecordRuns(ctx context.Context, agentID string, ok, failed int64, last time.Time) error {
	return recordRegistryRuns(ctx, r.Path, agentID, ok, failed, last)
}

// RegistryRecorder counts an agent's calls and adds them to its registry row
// once a second, off the request path.
type RegistryRecorder struct {
	path, agentID string
	log           *slog.Logger
	interval      time.Duration

	ok, failed atomic.Int64
	last       atomic.Int64 // unix nanoseconds of the latest call

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
	lastErr   string // the error last logged; only the flushing goroutine touches it
}

// NewRegistryRecorder starts a recorder for agentID's row in the registry at
// dbPath. Failures are logged on log (slog.Default() if nil).
func NewRegistryRecorder(dbPath, agentID string, log *slog.Logger) *RegistryRecorder {
	return newRegistryRecorder(dbPath, agentID, log, time.Second)
}

func newRegistryRecorder(dbPath, agentID string, log *slog.Logger, interval time.Duration) *RegistryRecorder {
	if log == nil {
		log = slog.Default()
	}
	r := &RegistryRecorder{path: dbPath, agentID: agentID, log: log, interval: interval,
		stop: make(chan struct{}), done: make(chan struct{})}
	go r.run()
	return r
}

// Record counts one finished call. It never blocks.
func (r *RegistryRecorder) Record(success bool) {
	if success {
		r.ok.Add(1)
	} else {
		r.failed.Add(1)
	}
	r.last.Store(time.Now().UnixNano())
}

// Close writes the counts not yet written and stops the recorder.
func (r *RegistryRecorder) Close() error {
	r.closeOnce.Do(func() {
		close(r.stop)
		<-r.done
		r.closeErr = r.flush()
	})
	return r.closeErr
}

func (r *RegistryRecorder) run() {
	defer close(r.done)
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			r.flush()
		case <-r.stop:
			return
		}
	}
}

// flush adds the counts gathered since the last flush to the row. Counts
// that could not be written are kept for the next flush, except when the
// agent is not registered.
func (r *RegistryRecorder) flush() error {
	ok, failed := r.ok.Swap(0), r.failed.Swap(0)
	if ok == 0 && failed == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*registryBusyTimeout)
	defer cancel()
	err := recordRegistryRuns(ctx, r.path, r.agentID, ok, failed, time.Unix(0, r.last.Load()))
	switch {
	case err == nil:
		r.lastErr = ""
		return nil
	case errors.Is(err, ErrNotFound):
		err = fmt.Errorf("agent %s is not in the local registry %s: %w", r.agentID, r.path, err)
	default:
		r.ok.Add(ok)
		r.failed.Add(failed)
	}
	if msg := err.Error(); msg != r.lastErr {
		r.lastErr = msg
		r.log.Warn("could not update the run counts in the local registry", "path", r.path, "agent_id", r.agentID, "error", err)
	}
	return err
}
