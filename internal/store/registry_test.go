package store_test

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/store"
)

// originalAgentsSQL is the agents table as the original Python CLI
// (SQLAlchemy, runagent 0.1.49) creates it.
const originalAgentsSQL = `CREATE TABLE agents (
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
)`

// olderAgentsSQL is the table of earlier releases, before the
// remote/metadata columns.
const olderAgentsSQL = `CREATE TABLE agents (
	agent_id VARCHAR NOT NULL,
	agent_path VARCHAR NOT NULL,
	host VARCHAR NOT NULL,
	port INTEGER NOT NULL,
	framework VARCHAR,
	status VARCHAR,
	deployed_at DATETIME,
	last_run DATETIME,
	run_count INTEGER,
	success_count INTEGER,
	error_count INTEGER,
	created_at DATETIME,
	updated_at DATETIME,
	PRIMARY KEY (agent_id)
)`

var allColumns = []string{"agent_id", "agent_path", "host", "port", "framework", "status", "remote_status", "is_local",
	"fingerprint", "deployed_at", "last_run", "run_count", "success_count", "error_count", "created_at", "updated_at",
	"agent_name", "description", "template", "version", "initialized_at", "config_fingerprint", "project_id"}

var registryTimeRE = regexp.MustCompile(`^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}$`)

func testAgent(port int) domain.RegistryAgent {
	return domain.RegistryAgent{
		AgentID: "91e70681-def8-4600-8a30-d037c1b51870", AgentPath: "/home/me/agents/demo",
		Host: "127.0.0.1", Port: port, Framework: "default", AgentName: "demo", Description: "a demo",
		Template: "default", Version: "1.0.0",
	}
}

// sdkRow is what the official Go SDK scans from the registry.
type sdkRow struct {
	AgentID, AgentPath, Host string
	Port                     int
	Framework, Status        string
	DeployedAt               time.Time
	LastRun                  sql.NullTime
	RunCount, SuccessCount   int
	ErrorCount               int
	CreatedAt, UpdatedAt     time.Time
}

// scanLikeSDK reads the row the way the official Go SDK does.
func scanLikeSDK(tb testing.TB, path, id string) sdkRow {
	tb.Helper()
	db := rawDB(tb, path)
	var r sdkRow
	err := db.QueryRow(`SELECT agent_id, agent_path, host, port, framework, status, deployed_at, last_run,
		run_count, success_count, error_count, created_at, updated_at FROM agents WHERE agent_id = ?`, id).
		Scan(&r.AgentID, &r.AgentPath, &r.Host, &r.Port, &r.Framework, &r.Status, &r.DeployedAt, &r.LastRun,
			&r.RunCount, &r.SuccessCount, &r.ErrorCount, &r.CreatedAt, &r.UpdatedAt)
	if err != nil {
		tb.Fatalf("scan like the Go SDK: %v", err)
	}
	return r
}

// rawRow is every column of the row as SQLite holds it: NULL or text.
func rawRow(tb testing.TB, path, id string) map[string]sql.NullString {
	tb.Helper()
	db := rawDB(tb, path)
	cols, err := tableColumns(db)
	if err != nil {
		tb.Fatal(err)
	}
	vals := make([]sql.NullString, len(cols))
	ptrs := make([]any, len(cols))
	exprs := make([]string, len(cols))
	for i, c := range cols {
		ptrs[i] = &vals[i]
		exprs[i] = "CAST(" + c + " AS TEXT)"
	}
	if err := db.QueryRow(`SELECT `+strings.Join(exprs, ", ")+` FROM agents WHERE agent_id = ?`, id).Scan(ptrs...); err != nil {
		tb.Fatal(err)
	}
	out := map[string]sql.NullString{}
	for i, c := range cols {
		out[c] = vals[i]
	}
	return out
}

func tableColumns(db *sql.DB) ([]string, error) {
	rows, err := db.Query(`SELECT name FROM pragma_table_info('agents')`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var cols []string
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			return nil, err
		}
		cols = append(cols, c)
	}
	return cols, rows.Err()
}

// checkRow checks that every column but last_run is non-NULL and every
// DATETIME holds text in the registry format.
func checkRow(tb testing.TB, row map[string]sql.NullString) {
	tb.Helper()
	for c, v := range row {
		if c == "last_run" {
			continue
		}
		if !v.Valid {
			tb.Errorf("column %s is NULL", c)
			continue
		}
		switch c {
		case "deployed_at", "created_at", "updated_at", "initialized_at":
			if !registryTimeRE.MatchString(v.String) {
				tb.Errorf("column %s = %q, not YYYY-MM-DD HH:MM:SS.ffffff", c, v.String)
			}
		}
	}
}

func TestRegistryPath(t *testing.T) {
	t.Setenv(store.EnvCacheDir, "/tmp/cache-x")
	if got, want := store.RegistryPath(), filepath.Join("/tmp/cache-x", "runagent_local.db"); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	t.Setenv(store.EnvCacheDir, "")
	home, _ := os.UserHomeDir()
	if got, want := store.RegistryPath(), filepath.Join(home, ".runagent", "runagent_local.db"); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestRegistryUpsertFresh(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "new dir?#", "runagent_local.db")
	a := testAgent(8451)
	before := time.Now().UTC().Truncate(time.Microsecond)
	if err := store.UpsertRegistryAgent(ctx, path, a); err != nil {
		t.Fatal(err)
	}
	cols, err := tableColumns(rawDB(t, path))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cols, ",") != strings.Join(allColumns, ",") {
		t.Errorf("columns %v\nwant    %v", cols, allColumns)
	}
	row := rawRow(t, path, a.AgentID)
	checkRow(t, row)
	want := map[string]string{"agent_path": a.AgentPath, "host": "127.0.0.1", "port": "8451", "framework": "default",
		"status": "deployed", "remote_status": "initialized", "is_local": "1", "fingerprint": "", "run_count": "0",
		"success_count": "0", "error_count": "0", "agent_name": "demo", "description": "a demo", "template": "default",
		"version": "1.0.0", "config_fingerprint": "", "project_id": ""}
	for c, w := range want {
		if row[c].String != w {
			t.Errorf("%s = %q, want %q", c, row[c].String, w)
		}
	}
	if row["last_run"].Valid {
		t.Errorf("last_run = %q, want NULL", row["last_run"].String)
	}

	r := scanLikeSDK(t, path, a.AgentID)
	if r.Host != a.Host || r.Port != a.Port || r.Status != "deployed" || r.LastRun.Valid {
		t.Errorf("SDK scan: %+v", r)
	}
	if r.CreatedAt.Before(before) || r.CreatedAt.After(time.Now()) {
		t.Errorf("created_at %v is not now (%v)", r.CreatedAt, before)
	}
	parsed, err := time.Parse(store.RegistryTimeFormat, row["created_at"].String)
	if err != nil || !parsed.Equal(r.CreatedAt) {
		t.Errorf("created_at text %q parses to %v (%v); the driver gave %v", row["created_at"].String, parsed, err, r.CreatedAt)
	}
}

func TestRegistryUpsertTwiceKeepsCreatedAtAndCounters(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "runagent_local.db")
	a := testAgent(8451)
	if err := store.UpsertRegistryAgent(ctx, path, a); err != nil {
		t.Fatal(err)
	}
	first := rawRow(t, path, a.AgentID)
	at := time.Date(2025, 6, 25, 13, 42, 3, 123456000, time.UTC)
	for _, ok := range []bool{true, true, false} {
		if err := store.RecordRegistryRun(ctx, path, a.AgentID, ok, at); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(2 * time.Millisecond) // so that updated_at moves

	b := a
	b.Host, b.Port, b.AgentPath, b.Description = "0.0.0.0", 9000, "/elsewhere", ""
	if err := store.UpsertRegistryAgent(ctx, path, b); err != nil {
		t.Fatal(err)
	}
	second := rawRow(t, path, a.AgentID)
	checkRow(t, second)
	for _, c := range []string{"created_at", "initialized_at", "remote_status", "description"} {
		if second[c] != first[c] {
			t.Errorf("%s changed: %q -> %q", c, first[c].String, second[c].String)
		}
	}
	if second["updated_at"].String <= first["updated_at"].String {
		t.Errorf("updated_at did not move: %q -> %q", first["updated_at"].String, second["updated_at"].String)
	}
	r := scanLikeSDK(t, path, a.AgentID)
	if r.Host != "0.0.0.0" || r.Port != 9000 || r.AgentPath != "/elsewhere" {
		t.Errorf("not updated: %+v", r)
	}
	if r.RunCount != 3 || r.SuccessCount != 2 || r.ErrorCount != 1 {
		t.Errorf("counters %d/%d/%d, want 3/2/1", r.RunCount, r.SuccessCount, r.ErrorCount)
	}
	if !r.LastRun.Valid || !r.LastRun.Time.Equal(at) {
		t.Errorf("last_run %v, want %v", r.LastRun, at)
	}
	if second["last_run"].String != "2025-06-25 13:42:03.123456" {
		t.Errorf("last_run text %q", second["last_run"].String)
	}
	var n int
	rawDB(t, path).QueryRow(`SELECT COUNT(*) FROM agents`).Scan(&n)
	if n != 1 {
		t.Errorf("%d rows, want 1", n)
	}
}

func TestRecordRegistryRun(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	// Recording and looking up leave a missing registry missing (the file
	// is the Python CLI's too; their ErrNotFound is checked by the suite).
	missing := filepath.Join(dir, "missing.db")
	if err := store.RecordRegistryRun(ctx, missing, "x", true, time.Now()); !errors.Is(err, domain.ErrNotFound) {
		t.Errorf("missing file: %v, want ErrNotFound", err)
	}
	if _, err := store.LookupRegistryAgent(ctx, missing, "x"); !errors.Is(err, domain.ErrNotFound) {
		t.Errorf("Lookup in missing file: %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("RecordRegistryRun or LookupRegistryAgent created the registry file")
	}

	path := filepath.Join(dir, "runagent_local.db")
	a := testAgent(8450)
	if err := store.UpsertRegistryAgent(ctx, path, a); err != nil {
		t.Fatal(err)
	}

	rec := store.NewRegistryRecorderEvery(path, a.AgentID, slog.New(slog.DiscardHandler), 10*time.Millisecond)
	for i := range 10 {
		rec.Record(i%5 != 0)
	}
	deadline := time.Now().Add(5 * time.Second)
	for scanLikeSDK(t, path, a.AgentID).RunCount != 10 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	rec.Record(false) // written by Close
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	r := scanLikeSDK(t, path, a.AgentID)
	if r.RunCount != 11 || r.SuccessCount != 8 || r.ErrorCount != 3 || !r.LastRun.Valid {
		t.Errorf("after recorder: runs %d, ok %d, errors %d, last_run %v; want 11, 8, 3, set", r.RunCount, r.SuccessCount, r.ErrorCount, r.LastRun)
	}
	if time.Since(r.LastRun.Time) > time.Minute {
		t.Errorf("last_run %v is not recent", r.LastRun.Time)
	}
}

func TestRegistryExistingTables(t *testing.T) {
	ctx := context.Background()
	a := testAgent(8460)
	tests := []struct {
		name   string
		schema string
		seed   string // a row the Python CLI wrote, or ""
	}{
		{name: "original schema, empty", schema: originalAgentsSQL},
		{name: "original schema, row with NULLs", schema: originalAgentsSQL,
			seed: `INSERT INTO agents (agent_id, agent_path, host, port, framework, status, deployed_at, run_count, created_at, updated_at)
				VALUES ('91e70681-def8-4600-8a30-d037c1b51870', '/old', 'localhost', 8450, 'langgraph', 'stopped',
				'2025-01-01 10:00:00.000000', 7, '2025-01-01 09:00:00', '2025-01-01 10:00:00.000000')`},
		{name: "older schema without metadata columns", schema: olderAgentsSQL,
			seed: `INSERT INTO agents (agent_id, agent_path, host, port, framework, status, deployed_at, run_count, success_count, error_count, created_at, updated_at)
				VALUES ('91e70681-def8-4600-8a30-d037c1b51870', '/old', 'localhost', 8450, 'langgraph', 'deployed',
				'2025-01-01 10:00:00.000000', 7, 5, 2, '2025-01-01 09:00:00.000000', '2025-01-01 10:00:00.000000')`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "runagent_local.db")
			raw := rawDB(t, path)
			// Other tables of the Python CLI stay untouched.
			for _, q := range []string{tt.schema, `CREATE TABLE agent_runs (id INTEGER PRIMARY KEY, agent_id VARCHAR NOT NULL)`,
				`INSERT INTO agent_runs (agent_id) VALUES ('x')`} {
				if _, err := raw.Exec(q); err != nil {
					t.Fatal(err)
				}
			}
			if tt.seed != "" {
				if _, err := raw.Exec(tt.seed); err != nil {
					t.Fatal(err)
				}
			}
			colsBefore, _ := tableColumns(raw)
			var before map[string]sql.NullString
			if tt.seed != "" {
				before = rawRow(t, path, a.AgentID)
			}

			if err := store.UpsertRegistryAgent(ctx, path, a); err != nil {
				t.Fatal(err)
			}
			if err := store.RecordRegistryRun(ctx, path, a.AgentID, true, time.Now()); err != nil {
				t.Fatal(err)
			}

			colsAfter, _ := tableColumns(raw)
			if strings.Join(colsAfter, ",") != strings.Join(colsBefore, ",") {
				t.Errorf("columns changed:\n%v\n%v", colsBefore, colsAfter)
			}
			var runs int
			raw.QueryRow(`SELECT COUNT(*) FROM agent_runs`).Scan(&runs)
			if runs != 1 {
				t.Errorf("agent_runs has %d rows, want 1", runs)
			}
			row := rawRow(t, path, a.AgentID)
			for c, v := range row {
				if c != "last_run" && !v.Valid {
					t.Errorf("column %s is NULL", c)
				}
			}
			r := scanLikeSDK(t, path, a.AgentID)
			if r.Host != a.Host || r.Port != a.Port || r.AgentPath != a.AgentPath || r.Status != "deployed" || r.Framework != "default" {
				t.Errorf("SDK scan: %+v", r)
			}
			if before != nil {
				if row["created_at"] != before["created_at"] {
					t.Errorf("created_at changed: %q -> %q", before["created_at"].String, row["created_at"].String)
				}
				if r.RunCount != 8 {
					t.Errorf("run_count %d, want 7+1", r.RunCount)
				}
			} else if r.RunCount != 1 || r.SuccessCount != 1 || r.ErrorCount != 0 {
				t.Errorf("counters %d/%d/%d, want 1/1/0", r.RunCount, r.SuccessCount, r.ErrorCount)
			}
			if !r.LastRun.Valid {
				t.Error("last_run not set")
			}
		})
	}

	t.Run("foreign table named agents", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "runagent_local.db")
		if _, err := rawDB(t, path).Exec(`CREATE TABLE agents (name TEXT)`); err != nil {
			t.Fatal(err)
		}
		err := store.UpsertRegistryAgent(ctx, path, a)
		if err == nil || !strings.Contains(err.Error(), "no column") {
			t.Errorf("got %v, want an error naming the missing column", err)
		}
	})
}

// TestRegistryReadableByPython checks the DATETIME text with Python's own
// parser (datetime.fromisoformat, which SQLAlchemy 2 uses for SQLite).
func TestRegistryReadableByPython(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not found")
	}
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "runagent_local.db")
	a := testAgent(8450)
	if err := store.UpsertRegistryAgent(ctx, path, a); err != nil {
		t.Fatal(err)
	}
	if err := store.RecordRegistryRun(ctx, path, a.AgentID, true, time.Now()); err != nil {
		t.Fatal(err)
	}
	script := `
import sqlite3, sys
from datetime import datetime
con = sqlite3.connect(sys.argv[1])
row = con.execute("SELECT host, port, deployed_at, last_run, created_at, updated_at, initialized_at FROM agents WHERE agent_id = ?", (sys.argv[2],)).fetchone()
host, port = row[0], row[1]
assert isinstance(port, int), port
for v in row[2:]:
    datetime.fromisoformat(v)
    datetime.strptime(v, "%Y-%m-%d %H:%M:%S.%f")
print(host, port)
`
	out, err := exec.Command(py, "-c", script, path, a.AgentID).CombinedOutput()
	if err != nil {
		t.Fatalf("python could not read the row: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "127.0.0.1 8450" {
		t.Errorf("python read %q", got)
	}
}
