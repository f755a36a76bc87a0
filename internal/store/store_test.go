package store_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/store"
	"github.com/runagent-go/runagent/internal/wire"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// t0 is a fixed request time with microseconds.
var t0 = time.Date(2025, 6, 25, 13, 42, 3, 123456000, time.UTC)

func openDB(tb testing.TB, opts ...store.Option) (*store.DB, string) {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "sub", "invocations.db")
	db, err := store.Open(path, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	return db, path
}

// rawDB opens the file beside the store, as another process would.
func rawDB(tb testing.TB, path string) *sql.DB {
	tb.Helper()
	uri := "file:" + strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(path)
	db, err := sql.Open("sqlite", uri+"?_pragma=busy_timeout(5000)")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

func pending(id, agent string, at time.Time) domain.Invocation {
	return domain.Invocation{
		ID: id, AgentID: agent, EntrypointTag: "minimal", SDKType: "local_server",
		InputArgs: json.RawMessage(`["hi"]`), InputKwargs: json.RawMessage(`{"role":"user"}`),
		Status: domain.StatusPending, RequestTime: at, ClientInfo: json.RawMessage(`{"server_port":8450}`),
	}
}

func completed(inv domain.Invocation, ms float64, out string) domain.Invocation {
	inv.Status = domain.StatusCompleted
	inv.ResponseTime = inv.RequestTime.Add(time.Duration(ms * float64(time.Millisecond)))
	inv.ExecutionMS = ms
	inv.Output = json.RawMessage(out)
	return inv
}

func failed(inv domain.Invocation, ms float64, detail string) domain.Invocation {
	inv.Status = domain.StatusFailed
	inv.ResponseTime = inv.RequestTime.Add(time.Duration(ms * float64(time.Millisecond)))
	inv.ExecutionMS = ms
	inv.ErrorDetail = detail
	return inv
}

func mustGet(tb testing.TB, db *store.DB, id string) domain.Invocation {
	tb.Helper()
	inv, err := db.Get(context.Background(), id)
	if err != nil {
		tb.Fatalf("Get(%s): %v", id, err)
	}
	return inv
}

func assertInvocation(tb testing.TB, got, want domain.Invocation) {
	tb.Helper()
	gj, err := json.Marshal(wire.InvocationRecord(got))
	if err != nil {
		tb.Fatal(err)
	}
	wj, err := json.Marshal(wire.InvocationRecord(want))
	if err != nil {
		tb.Fatal(err)
	}
	if !bytes.Equal(gj, wj) {
		tb.Errorf("got  %s\nwant %s", gj, wj)
	}
	if !got.RequestTime.Equal(want.RequestTime) || !got.ResponseTime.Equal(want.ResponseTime) {
		tb.Errorf("times: got %v/%v, want %v/%v", got.RequestTime, got.ResponseTime, want.RequestTime, want.ResponseTime)
	}
}

// counting installs triggers that count the INSERTs and UPDATEs the
// store makes, and returns a function reading them.
func counting(tb testing.TB, path string) func() (inserts, updates int) {
	tb.Helper()
	raw := rawDB(tb, path)
	for _, q := range []string{
		`CREATE TABLE ops (kind TEXT PRIMARY KEY, n INTEGER NOT NULL)`,
		`INSERT INTO ops VALUES ('insert', 0), ('update', 0)`,
		`CREATE TRIGGER count_insert AFTER INSERT ON invocations BEGIN UPDATE ops SET n = n + 1 WHERE kind = 'insert'; END`,
		`CREATE TRIGGER count_update AFTER UPDATE ON invocations BEGIN UPDATE ops SET n = n + 1 WHERE kind = 'update'; END`,
	} {
		if _, err := raw.Exec(q); err != nil {
			tb.Fatal(err)
		}
	}
	return func() (inserts, updates int) {
		tb.Helper()
		if err := raw.QueryRow(`SELECT (SELECT n FROM ops WHERE kind = 'insert'), (SELECT n FROM ops WHERE kind = 'update')`).Scan(&inserts, &updates); err != nil {
			tb.Fatal(err)
		}
		return inserts, updates
	}
}

func TestCoalescing(t *testing.T) {
	ctx := context.Background()
	db, path := openDB(t)
	counts := counting(t, path)

	// One batch: Start and Finish become one INSERT of the final record.
	resume := store.PauseWriter(db)
	a := pending("same-batch", "agent", t0)
	db.Start(a)
	db.Finish(completed(a, 4, `"ok"`))
	resume()
	if err := db.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if ins, upd := counts(); ins != 1 || upd != 0 {
		t.Errorf("same batch: %d inserts, %d updates; want 1, 0", ins, upd)
	}
	assertInvocation(t, mustGet(t, db, a.ID), completed(a, 4, `"ok"`))

	// Two batches: an INSERT, then an UPDATE.
	b := pending("two-batches", "agent", t0)
	db.Start(b)
	if err := db.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	db.Finish(failed(b, 4, "x"))
	if err := db.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if ins, upd := counts(); ins != 2 || upd != 1 {
		t.Errorf("two batches: %d inserts, %d updates in all; want 2, 1", ins, upd)
	}
	assertInvocation(t, mustGet(t, db, b.ID), failed(b, 4, "x"))
}

func TestCloseFlushesAndReopenPersists(t *testing.T) {
	path := filepath.Join(t.TempDir(), "inv.db")
	db, err := store.Open(path, store.WithBatch(7, 5*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	for i := range n {
		inv := pending(fmt.Sprintf("c%03d", i), "agent", t0.Add(time.Duration(i)*time.Second))
		db.Start(inv)
		if i%2 == 0 {
			db.Finish(completed(inv, 1, `{"i":1}`))
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	db, err = store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	st, err := db.Stats(context.Background(), "agent")
	if err != nil {
		t.Fatal(err)
	}
	if st.Total != n || st.Completed != n/2 || st.Pending != n/2 {
		t.Errorf("after reopen: %+v, want %d records, half completed", st, n)
	}
	got := mustGet(t, db, "c000")
	assertInvocation(t, got, completed(pending("c000", "agent", t0), 1, `{"i":1}`))
}

func TestMigrations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "inv.db")
	for i := range 3 {
		db, err := store.Open(path)
		if err != nil {
			t.Fatalf("open #%d: %v", i+1, err)
		}
		db.Start(pending(fmt.Sprint("m", i), "a", t0))
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
	}
	raw := rawDB(t, path)
	var version, tables, indexes int
	var journal string
	if err := raw.QueryRow(`PRAGMA user_version`).Scan(&version); err != nil {
		t.Fatal(err)
	}
	raw.QueryRow(`SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'invocations'`).Scan(&tables)
	raw.QueryRow(`SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'invocations' AND name LIKE 'idx_%'`).Scan(&indexes)
	raw.QueryRow(`PRAGMA journal_mode`).Scan(&journal)
	if version != 5 || tables != 1 || indexes != 1 || journal != "wal" {
		t.Errorf("user_version %d, tables %d, indexes %d, journal %q; want 5, 1, 1, wal", version, tables, indexes, journal)
	}
	var rows int
	raw.QueryRow(`SELECT COUNT(*) FROM invocations`).Scan(&rows)
	if rows != 3 {
		t.Errorf("%d rows, want 3", rows)
	}

	// A schema from a newer runagent is refused, not damaged.
	if _, err := raw.Exec(`PRAGMA user_version = 99`); err != nil {
		t.Fatal(err)
	}
	if db, err := store.Open(path); err == nil {
		db.Close()
		t.Fatal("opened a database with a newer schema")
	} else if !strings.Contains(err.Error(), "newer") {
		t.Errorf("error %q does not say the schema is newer", err)
	}
}

func TestMemory(t *testing.T) {
	db, err := store.Open(":memory:")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	other, err := store.Open(":memory:")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 25 {
				inv := pending(fmt.Sprint(g, "-", i), "m", t0)
				db.Start(inv)
				db.Finish(completed(inv, 1, `1`))
				if _, err := db.List(context.Background(), "m", "", 5); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	st, err := db.Stats(context.Background(), "m")
	if err != nil {
		t.Fatal(err)
	}
	if st.Total != 200 || st.Completed != 200 {
		t.Errorf("stats %+v, want 200 completed", st)
	}
	if st, _ := other.Stats(context.Background(), ""); st.Total != 0 {
		t.Errorf("two :memory: stores share records: %+v", st)
	}
}

func TestInvocationJSONGolden(t *testing.T) {
	base := domain.Invocation{
		ID: "4f0c6d8e-2b1a-4c3d-9e8f-0a1b2c3d4e5f", AgentID: "91e70681-def8-4600-8a30-d037c1b51870",
		EntrypointTag: "minimal", SDKType: "local_server",
		InputArgs:   json.RawMessage(`["Hello", 2]`),
		InputKwargs: json.RawMessage(`{"message": "héllo <b>", "role": "user"}`),
		Status:      domain.StatusPending, RequestTime: t0,
		ClientInfo: json.RawMessage(`{"server_host":"127.0.0.1","server_port":8450}`),
	}
	done := base
	done.Status, done.Output = domain.StatusCompleted, json.RawMessage(`"Hi there"`)
	done.ResponseTime, done.ExecutionMS = t0.Add(1500*time.Microsecond), 1.5
	bad := base
	bad.ID, bad.InputArgs, bad.InputKwargs, bad.ClientInfo = "no-inputs", nil, nil, nil
	bad.Status, bad.ErrorDetail = domain.StatusFailed, "Server error running agent: ValueError: boom"
	bad.RequestTime = time.Date(2025, 6, 25, 13, 42, 3, 0, time.UTC) // whole second: no fraction, like Python
	bad.ResponseTime, bad.ExecutionMS = bad.RequestTime.Add(2*time.Second), 2000

	// One record per line, exactly as json.Marshal gives it.
	var got []byte
	for _, inv := range []domain.Invocation{base, done, bad} {
		b, err := json.Marshal(wire.InvocationRecord(inv))
		if err != nil {
			t.Fatal(err)
		}
		got = append(append(got, b...), '\n')
	}
	golden := filepath.Join("testdata", "invocations.golden.jsonl")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -run Golden -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("JSON differs from %s:\n%s", golden, got)
	}

	// Through the database, the same record marshals the same.
	db, _ := openDB(t)
	db.Start(base)
	db.Finish(done)
	db.Start(bad)
	db.Finish(bad)
	for _, want := range []domain.Invocation{done, bad} {
		assertInvocation(t, mustGet(t, db, want.ID), want)
	}
}

func TestFlushIdleIsCheap(t *testing.T) {
	db, _ := openDB(t)
	db.Start(pending("x", "a", t0))
	ctx := context.Background()
	if err := db.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if allocs := testing.AllocsPerRun(100, func() { db.Flush(ctx) }); allocs != 0 {
		t.Errorf("idle Flush allocates %v times", allocs)
	}
}

func TestWriteErrorsAreLoggedAndCounted(t *testing.T) {
	var logs bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
	db, path := openDB(t, store.WithLogger(log))
	db.Start(pending("before", "a", t0))
	if err := db.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Break the table behind the store's back: writes now fail.
	if _, err := rawDB(t, path).Exec(`DROP TABLE invocations`); err != nil {
		t.Fatal(err)
	}
	db.Start(pending("after", "a", t0))
	if err := db.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := db.WriteErrors(); n != 1 {
		t.Errorf("WriteErrors() = %d, want 1", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logs.String(), "invocation records not written") || !strings.Contains(logs.String(), "invocation_ids=[after]") {
		t.Errorf("log does not name the lost record:\n%s", logs.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestUseAfterClose(t *testing.T) {
	db, err := store.Open(filepath.Join(t.TempDir(), "x.db"), store.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		db.Start(pending("late", "a", t0)) // must neither block nor panic
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Start after Close blocked")
	}
	if n := db.WriteErrors(); n != 1 {
		t.Errorf("WriteErrors() = %d, want 1", n)
	}
	if _, err := db.Get(context.Background(), "late"); err == nil {
		t.Error("Get after Close succeeded")
	}
}

func TestFlushHonoursContext(t *testing.T) {
	db, _ := openDB(t)
	resume := store.PauseWriter(db)
	defer resume()
	db.Start(pending("x", "a", t0))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := db.Flush(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Flush with a paused writer: %v, want DeadlineExceeded", err)
	}
}

// FinishDurable returns once the record is committed, even with a long
// linger: another connection (another process, after a kill) sees it
// without a Flush. Waiters that arrive together share commits. (That the
// record reads back, at once and after a reopen, is in the suite.)
func TestFinishDurable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "inv.db")
	db, err := store.Open(path, store.WithBatch(0, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	raw := rawDB(t, path)
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			inv := pending(fmt.Sprintf("d%02d", i), "agent", t0)
			db.Start(inv)
			if err := db.FinishDurable(ctx, completed(inv, 1, `"ok"`)); err != nil {
				t.Error(err)
				return
			}
			var status string
			if err := raw.QueryRow(`SELECT status FROM invocations WHERE invocation_id = ?`, inv.ID).Scan(&status); err != nil || status != "completed" {
				t.Errorf("%s after FinishDurable: %q, %v", inv.ID, status, err)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("FinishDurable waited for the linger")
	}
	db.Close()
	if err := db.FinishDurable(ctx, completed(pending("late", "agent", t0), 1, `"ok"`)); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("FinishDurable after Close = %v, want ErrClosed", err)
	}
}
