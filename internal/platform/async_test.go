package platform

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

func testAsyncRunner(lim AsyncLimits) *asyncRunner {
	return newAsyncRunner(&Platform{metrics: newMetrics(), log: slog.New(slog.DiscardHandler)}, lim)
}

func job(id, tenant, agent string) domain.AsyncJob {
	return domain.AsyncJob{Invocation: domain.Invocation{ID: id, AgentID: agent}, Tenant: tenant}
}

// Workers take jobs in turn across tenants, and no tenant runs more than
// its share at once, however long its backlog.
func TestAsyncTakesTenantsInTurn(t *testing.T) {
	ar := testAsyncRunner(AsyncLimits{Workers: 4, TenantWorkers: 2})
	for i := range 5 {
		ar.reserve("big", "a1")
		ar.push(job("big"+string(rune('0'+i)), "big", "a1"))
	}
	ar.reserve("small", "a2")
	ar.push(job("small0", "small", "a2"))
	ar.reserve("other", "a3")
	ar.push(job("other0", "other", "a3"))

	var order []string
	var taken []domain.AsyncJob
	for range 4 {
		j, _, ok := ar.take()
		if !ok {
			t.Fatal("take: closed")
		}
		order = append(order, j.ID)
		taken = append(taken, j)
	}
	if got, want := strings.Join(order, ","), "big0,small0,other0,big1"; got != want {
		t.Fatalf("taken in order %s, want %s", got, want)
	}
	// big has its two workers busy: nothing more of it until one is done.
	if n := ar.tenants["big"].running; n != 2 {
		t.Fatalf("big runs %d, want 2", n)
	}
	ar.done(taken[0])
	if j, _, _ := ar.take(); j.ID != "big2" {
		t.Fatalf("after a big job finished, took %s, want big2", j.ID)
	}
	if ar.total != 6 || ar.agents["a1"] != 4 {
		t.Fatalf("backlog total %d, agent a1 %d; want 6 and 4", ar.total, ar.agents["a1"])
	}
}

func TestAsyncBacklogLimits(t *testing.T) {
	tests := []struct {
		name      string
		lim       AsyncLimits
		fill      [][2]string // tenant, agent already waiting
		tenant    string
		agent     string
		code      domain.Code
		messageIn string
	}{
		{"room", AsyncLimits{TenantBacklog: 2}, [][2]string{{"t", "a"}}, "t", "a", "", ""},
		{"tenant full", AsyncLimits{TenantBacklog: 2}, [][2]string{{"t", "a"}, {"t", "b"}}, "t", "c", domain.CodeRateLimit, "--async-tenant-backlog"},
		{"another tenant has room", AsyncLimits{TenantBacklog: 2}, [][2]string{{"t", "a"}, {"t", "b"}}, "u", "c", "", ""},
		{"agent full", AsyncLimits{AgentBacklog: 1}, [][2]string{{"t", "a"}}, "t", "a", domain.CodeRateLimit, "--async-agent-backlog"},
		{"server full", AsyncLimits{Backlog: 2}, [][2]string{{"t", "a"}, {"u", "b"}}, "v", "c", domain.CodeOverloaded, "its limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ar := testAsyncRunner(tt.lim)
			for _, f := range tt.fill {
				if e := ar.admit(f[0], f[1]); e != nil {
					t.Fatalf("fill: %v", e)
				}
			}
			e := ar.admit(tt.tenant, tt.agent)
			switch {
			case tt.code == "" && e != nil:
				t.Fatalf("refused: %v", e)
			case tt.code != "" && (e == nil || e.Code != tt.code || e.RetryAfter <= 0 || !strings.Contains(e.Message, tt.messageIn)):
				t.Fatalf("got %+v, want %s with Retry-After naming %q", e, tt.code, tt.messageIn)
			}
		})
	}
}

func TestAsyncCloseStopsTaking(t *testing.T) {
	ar := testAsyncRunner(AsyncLimits{})
	done := make(chan bool)
	go func() { _, _, ok := ar.take(); done <- ok }()
	ar.close(0)
	if <-done {
		t.Fatal("take after close handed out a job")
	}
	if e := ar.admit("t", "a"); e == nil || e.Code != domain.CodeOverloaded {
		t.Fatalf("admit after close: %v", e)
	}
}

// flakyFinish is a store whose FinishAsync fails its first fails calls.
type flakyFinish struct {
	domain.Store
	fails, calls int
	err          error
}

func (f *flakyFinish) FinishAsync(context.Context, domain.Invocation) error {
	f.calls++
	if f.calls <= f.fails {
		return f.err
	}
	return nil
}

// An outcome is retried while the store fails, for a bounded time; a
// store that says the invocation is gone is not retried.
func TestFinishAsyncRetriesTheStore(t *testing.T) {
	defer func(d time.Duration) { finishRetryFor = d }(finishRetryFor)
	finishRetryFor = 2 * time.Second
	boom := errors.New("connection refused")
	tests := []struct {
		name      string
		fails     int
		err       error
		cancelled bool
		wantErr   error
		wantCalls int
	}{
		{"stored at once", 0, boom, false, nil, 1},
		{"the store comes back", 3, boom, false, nil, 4},
		{"the store stays down", 1000, boom, false, boom, -1},
		{"gone: not retried", 1000, domain.ErrNotFound, false, domain.ErrNotFound, 1},
		{"shut down while retrying", 1000, boom, true, boom, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := &flakyFinish{fails: tt.fails, err: tt.err}
			p := &Platform{db: db, log: slog.New(slog.DiscardHandler)}
			ctx, cancel := context.WithCancel(context.Background())
			if tt.cancelled {
				cancel()
			}
			defer cancel()
			err := p.finishAsync(ctx, domain.Invocation{ID: "inv"})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if tt.wantCalls >= 0 && db.calls != tt.wantCalls {
				t.Fatalf("%d calls to the store, want %d", db.calls, tt.wantCalls)
			}
			if tt.wantCalls < 0 && db.calls < 3 {
				t.Fatalf("gave up after %d calls", db.calls)
			}
		})
	}
}

// A cancelled waiting job leaves the queue at once, its backlog place
// given back; the others are taken in turn as before.
func TestAsyncDrop(t *testing.T) {
	ar := testAsyncRunner(AsyncLimits{Workers: 4, TenantWorkers: 4})
	for _, j := range []domain.AsyncJob{job("a0", "a", "x"), job("b0", "b", "y"), job("a1", "a", "x"), job("c0", "c", "z")} {
		ar.reserve(j.Tenant, j.AgentID)
		ar.push(j)
	}
	if !ar.drop("b0") || ar.drop("b0") || ar.drop("nope") {
		t.Fatal("drop: want true for a waiting job, then false")
	}
	if ar.total != 3 || ar.agents["y"] != 0 || ar.tenants["b"] != nil {
		t.Fatalf("after the drop: total %d, agent y %d, tenant b %v; want 3, 0, gone", ar.total, ar.agents["y"], ar.tenants["b"])
	}
	var order []string
	for range 3 {
		j, _, ok := ar.take()
		if !ok {
			t.Fatal("take: closed")
		}
		order = append(order, j.ID)
	}
	if got := strings.Join(order, ","); got != "a0,c0,a1" {
		t.Fatalf("taken %s, want a0,c0,a1", got)
	}
}
