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

func ids(invs []domain.Invocation) []string {
	out := make([]string, len(invs))
	for i, inv := range invs {
		out[i] = inv.ID
	}
	return out
}

func TestStartFinishGet(t *testing.T) {
	ctx := context.Background()
	start := pending("inv-1", "agent-a", t0)
	tests := []struct {
		name   string
		finish *domain.Invocation // nil: only Start
		want   domain.Invocation
	}{
		{name: "pending is visible", want: start},
		{name: "completed", finish: ptr(completed(start, 12.5, `"hello"`)), want: completed(start, 12.5, `"hello"`)},
		{name: "completed with null output", finish: ptr(completed(start, 1, `null`)), want: completed(start, 1, `null`)},
		{name: "completed without output", finish: ptr(completed(start, 1, ``)), want: completed(start, 1, ``)},
		{name: "failed", finish: ptr(failed(start, 3.25, "ValueError: boom")), want: failed(start, 3.25, "ValueError: boom")},
		{name: "finish without start", finish: ptr(completed(pending("inv-1", "agent-a", t0), 2, `[1,2]`)),
			want: completed(start, 2, `[1,2]`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, _ := openDB(t)
			if tt.name != "finish without start" {
				db.Start(start)
			}
			if tt.finish != nil {
				db.Finish(*tt.finish)
			}
			got := mustGet(t, db, start.ID)
			assertInvocation(t, got, tt.want)
		})
	}

	t.Run("not found", func(t *testing.T) {
		db, _ := openDB(t)
		if _, err := db.Get(ctx, "nope"); !errors.Is(err, domain.ErrNotFound) {
			t.Fatalf("got %v, want ErrNotFound", err)
		}
	})
	t.Run("finish in a later batch updates", func(t *testing.T) {
		db, _ := openDB(t)
		db.Start(start)
		if got := mustGet(t, db, start.ID); got.Status != domain.StatusPending {
			t.Fatalf("status %q, want pending", got.Status)
		}
		db.Finish(failed(start, 7, "TIMEOUT: too slow"))
		assertInvocation(t, mustGet(t, db, start.ID), failed(start, 7, "TIMEOUT: too slow"))
	})
}

func ptr[T any](v T) *T { return &v }

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

func TestList(t *testing.T) {
	db, _ := openDB(t)
	// Request times are distinct except r4/r5, which tie: the later insert
	// comes first.
	recs := []domain.Invocation{
		completed(pending("r1", "a", t0.Add(1*time.Second)), 1, `1`),
		failed(pending("r2", "a", t0.Add(2*time.Second)), 1, "boom"),
		pending("r3", "a", t0.Add(3*time.Second)),
		completed(pending("r4", "b", t0.Add(4*time.Second)), 1, `4`),
		completed(pending("r5", "a", t0.Add(4*time.Second)), 1, `5`),
		completed(pending("r0", "a", t0), 1, `0`), // inserted last, oldest
	}
	for _, r := range recs {
		db.Start(pending(r.ID, r.AgentID, r.RequestTime))
		if r.Status != domain.StatusPending {
			db.Finish(r)
		}
	}
	tests := []struct {
		agent  string
		status domain.Status
		limit  int
		want   string
	}{
		{"a", "", 50, "r5 r3 r2 r1 r0"},
		{"a", "", 2, "r5 r3"},
		{"a", "", 0, "r5 r3 r2 r1 r0"},
		{"a", domain.StatusCompleted, 50, "r5 r1 r0"},
		{"a", domain.StatusFailed, 50, "r2"},
		{"a", domain.StatusPending, 50, "r3"},
		{"b", "", 50, "r4"},
		{"", "", 50, "r5 r4 r3 r2 r1 r0"},
		{"", domain.StatusCompleted, 2, "r5 r4"},
		{"nobody", "", 50, ""},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%s/%d", tt.agent, tt.status, tt.limit), func(t *testing.T) {
			got, err := db.List(context.Background(), tt.agent, tt.status, tt.limit)
			if err != nil {
				t.Fatal(err)
			}
			if g := strings.Join(ids(got), " "); g != tt.want {
				t.Errorf("got %q, want %q", g, tt.want)
			}
		})
	}
}

func TestStats(t *testing.T) {
	type rec struct {
		agent  string
		status domain.Status
		ms     float64
	}
	tests := []struct {
		name  string
		recs  []rec
		agent string
		want  string
	}{
		{name: "empty", agent: "a",
			want: `{"total_invocations":0,"completed_invocations":0,"failed_invocations":0,"pending_invocations":0,"success_rate":0,"avg_execution_time_ms":null,"agent_id":"a"}`},
		{name: "no completed: null avg", agent: "a",
			recs: []rec{{"a", domain.StatusFailed, 5}, {"a", domain.StatusPending, 0}},
			want: `{"total_invocations":2,"completed_invocations":0,"failed_invocations":1,"pending_invocations":1,"success_rate":0,"avg_execution_time_ms":null,"agent_id":"a"}`},
		{name: "rounding", agent: "a",
			// 2/3 = 66.666...%; avg over completed only: (1.005+2.0)/2 = 1.5025 -> 1.5
			recs: []rec{{"a", domain.StatusCompleted, 1.005}, {"a", domain.StatusCompleted, 2}, {"a", domain.StatusFailed, 1000}, {"b", domain.StatusCompleted, 99}},
			want: `{"total_invocations":3,"completed_invocations":2,"failed_invocations":1,"pending_invocations":0,"success_rate":66.67,"avg_execution_time_ms":1.5,"agent_id":"a"}`},
		{name: "ties round to even like Python", agent: "a",
			// avg 0.125 -> 0.12 (Python round(0.125, 2) == 0.12); 1/8 completed = 12.5%
			recs: []rec{{"a", domain.StatusCompleted, 0.125}, {"a", domain.StatusFailed, 1}, {"a", domain.StatusFailed, 1}, {"a", domain.StatusFailed, 1},
				{"a", domain.StatusFailed, 1}, {"a", domain.StatusFailed, 1}, {"a", domain.StatusFailed, 1}, {"a", domain.StatusPending, 0}},
			want: `{"total_invocations":8,"completed_invocations":1,"failed_invocations":6,"pending_invocations":1,"success_rate":12.5,"avg_execution_time_ms":0.12,"agent_id":"a"}`},
		{name: "all agents", agent: "",
			recs: []rec{{"a", domain.StatusCompleted, 1}, {"b", domain.StatusCompleted, 2}},
			want: `{"total_invocations":2,"completed_invocations":2,"failed_invocations":0,"pending_invocations":0,"success_rate":100,"avg_execution_time_ms":1.5,"agent_id":null}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, _ := openDB(t)
			for i, r := range tt.recs {
				inv := pending(fmt.Sprint("s", i), r.agent, t0.Add(time.Duration(i)*time.Second))
				db.Start(inv)
				switch r.status {
				case domain.StatusCompleted:
					db.Finish(completed(inv, r.ms, `null`))
				case domain.StatusFailed:
					db.Finish(failed(inv, r.ms, "err"))
				}
			}
			st, err := db.Stats(context.Background(), tt.agent)
			if err != nil {
				t.Fatal(err)
			}
			got, err := json.Marshal(wire.StatsRecord(st))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
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

func TestConcurrentReadYourWrites(t *testing.T) {
	const goroutines, each = 50, 20
	db, _ := openDB(t, store.WithQueueSize(64)) // small: exercises backpressure
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				inv := pending(fmt.Sprintf("g%02d-%02d", g, i), "agent", t0.Add(time.Duration(g*each+i)*time.Millisecond))
				db.Start(inv)
				db.Finish(completed(inv, float64(i), `true`))
				if i%5 == 0 {
					got, err := db.Get(ctx, inv.ID)
					if err != nil || got.Status != domain.StatusCompleted {
						errs <- fmt.Errorf("Get(%s) right after Finish: %v, status %q", inv.ID, err, got.Status)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	got, err := db.List(ctx, "agent", "", goroutines*each)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != goroutines*each {
		t.Fatalf("List: %d records, want %d", len(got), goroutines*each)
	}
	for _, inv := range got {
		if inv.Status != domain.StatusCompleted {
			t.Fatalf("%s: status %q", inv.ID, inv.Status)
		}
	}
	st, err := db.Stats(ctx, "agent")
	if err != nil {
		t.Fatal(err)
	}
	if st.Completed != goroutines*each || st.SuccessRate != 100 {
		t.Errorf("stats %+v", st)
	}
	if n := db.WriteErrors(); n != 0 {
		t.Errorf("%d write errors", n)
	}
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
	if version != 3 || tables != 1 || indexes != 1 || journal != "wal" {
		t.Errorf("user_version %d, tables %d, indexes %d, journal %q; want 3, 1, 1, wal", version, tables, indexes, journal)
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
// without a Flush. Waiters that arrive together share commits.
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
