package manager

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/autoscale"
	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/runner"
)

// fakeRunner is an instance without a process: calls wait for release (or
// answer at once), usage and health are what the test says.
type fakeRunner struct {
	pid     int
	done    chan struct{}
	once    sync.Once
	mu      sync.Mutex
	err     error
	usage   domain.Usage
	hasUse  bool
	slowUse time.Duration // Usage takes this long (a microVM's guest)
	pingErr error
	block   chan struct{} // calls wait for it when not nil
	calls   atomic.Int32
	notSent bool // the first call fails as if the runner had just died
}

func (f *fakeRunner) end(err error) {
	f.once.Do(func() {
		f.mu.Lock()
		f.err = err
		f.mu.Unlock()
		close(f.done)
	})
}

func (f *fakeRunner) Call(ctx context.Context, tag string, args, kwargs []byte) ([]byte, error) {
	f.calls.Add(1)
	f.mu.Lock()
	notSent, block := f.notSent, f.block
	f.notSent = false
	f.mu.Unlock()
	if notSent {
		f.end(&domain.Error{Code: domain.CodeAgentCrashed, Message: "gone"})
		return nil, fmt.Errorf("send: %w", runner.ErrNotSent)
	}
	if block != nil {
		select {
		case <-block:
		case <-f.done:
			return nil, f.Err()
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
	return []byte(fmt.Sprintf(`{"type": "integer", "payload": "%d"}`, f.pid)), nil
}

func (f *fakeRunner) Stream(ctx context.Context, tag string, args, kwargs []byte, started func(), fn domain.ChunkFunc) (int, error) {
	if started != nil {
		started()
	}
	return 1, fn(domain.Chunk{Body: []byte(`{"type": "null", "payload": "null"}`)})
}

func (f *fakeRunner) Ping(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pingErr
}

func (f *fakeRunner) PID() int { return f.pid }

func (f *fakeRunner) Usage() (domain.Usage, bool) {
	time.Sleep(f.slowUse)
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.usage, f.hasUse
}

func (f *fakeRunner) Done() <-chan struct{} { return f.done }

func (f *fakeRunner) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

func (f *fakeRunner) Close() error             { f.end(runner.ErrClosed); return nil }
func (f *fakeRunner) KillWith(e *domain.Error) { f.end(e) }

// fakeStarts starts fakeRunners and keeps them, in order.
type fakeStarts struct {
	mu      sync.Mutex
	runners []*fakeRunner
	fail    error             // starts fail with this
	setup   func(*fakeRunner) // runs on each new runner
}

func (s *fakeStarts) start(ctx context.Context, id string) (Runner, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return nil, s.fail
	}
	f := &fakeRunner{pid: 1000 + len(s.runners), done: make(chan struct{})}
	if s.setup != nil {
		s.setup(f)
	}
	s.runners = append(s.runners, f)
	return f, nil
}

func (s *fakeStarts) get(i int) *fakeRunner {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.runners[i]
}

func (s *fakeStarts) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.runners)
}

// recorder is an Observer that remembers what it was told.
type recorder struct {
	mu     sync.Mutex
	gone   []string
	limits []domain.Limit
}

func (r *recorder) ScaleEvent(*Pool, int, int, string)        {}
func (r *recorder) InstanceUsage(*Pool, string, domain.Usage) {}
func (r *recorder) InstanceGone(_ *Pool, _ string, why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gone = append(r.gone, why)
}
func (r *recorder) LimitExceeded(_ *Pool, _ string, l domain.Limit) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.limits = append(r.limits, l)
}

func (r *recorder) seen() ([]string, []domain.Limit) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.gone...), append([]domain.Limit(nil), r.limits...)
}

func newTestPool(t *testing.T, cfg PoolConfig, s *fakeStarts, obs Observer) *Pool {
	t.Helper()
	if cfg.Scale.Max == 0 {
		cfg.Scale = autoscale.Config{Min: 0, Max: 2, TargetConcurrency: 1}
	}
	p, err := NewPool("agent", 1, cfg, s.start, obs, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 5s: %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func ctx5(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// A call at zero instances starts one and is answered by it.
func TestPoolScalesFromZero(t *testing.T) {
	s := &fakeStarts{}
	p := newTestPool(t, PoolConfig{}, s, nil)
	if _, err := p.Call(ctx5(t), "x", nil, nil); err != nil {
		t.Fatal(err)
	}
	if s.count() != 1 || p.Status().Ready != 1 {
		t.Fatalf("%d starts, status %+v", s.count(), p.Status())
	}
}

// Calls beyond an instance's concurrency wait in a bounded queue; past it
// they fail at once with OVERLOADED and a Retry-After.
func TestPoolQueueAndOverload(t *testing.T) {
	block := make(chan struct{})
	s := &fakeStarts{setup: func(f *fakeRunner) { f.block = block }}
	p := newTestPool(t, PoolConfig{Scale: autoscale.Config{Min: 1, Max: 1, TargetConcurrency: 1}, MaxConcurrency: 1, MaxQueue: 2}, s, nil)
	if err := p.Warm(ctx5(t), 1); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for range 3 { // one runs, two wait
		wg.Go(func() { _, err := p.Call(ctx5(t), "x", nil, nil); errs <- err })
	}
	eventually(t, "two calls queued", func() bool { return p.Status().Queued == 2 })
	_, err := p.Call(ctx5(t), "x", nil, nil)
	var we *domain.Error
	if !errors.As(err, &we) || we.Code != domain.CodeOverloaded || we.RetryAfter <= 0 {
		t.Fatalf("the call past the queue: %v, want OVERLOADED with Retry-After", err)
	}
	close(block)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// An instance that dies fails its own calls with its error and is removed;
// the next call gets a new instance.
func TestPoolReplacesDeadInstance(t *testing.T) {
	block := make(chan struct{})
	s := &fakeStarts{setup: func(f *fakeRunner) { f.block = block }}
	obs := &recorder{}
	p := newTestPool(t, PoolConfig{}, s, obs)
	errc := make(chan error, 1)
	go func() { _, err := p.Call(ctx5(t), "x", nil, nil); errc <- err }()
	eventually(t, "the call running", func() bool { return p.Status().InFlight == 1 })
	crash := &domain.Error{Code: domain.CodeAgentCrashed, Message: "killed by signal SIGKILL"}
	s.get(0).end(crash)
	if err := <-errc; !errors.Is(err, crash) {
		t.Fatalf("the dead instance's call: %v", err)
	}
	eventually(t, "the dead instance removed", func() bool { return len(p.Status().Instances) == 0 })
	close(block)
	out, err := p.Call(ctx5(t), "x", nil, nil)
	if err != nil || string(out) != `{"type": "integer", "payload": "1001"}` {
		t.Fatalf("the call after the crash: %s %v, want it on a second instance", out, err)
	}
	// The pool counts the failure just after it drops the instance, so
	// Status can show it gone a moment before the observer hears of it.
	eventually(t, "the failure counted", func() bool { gone, _ := obs.seen(); return len(gone) >= 1 })
	if gone, _ := obs.seen(); len(gone) != 1 || gone[0] != "died" {
		t.Fatalf("failures counted: %v", gone)
	}
}

// A call that never reached its instance (it died just before) goes to
// another one: the agent saw it once.
func TestPoolResendsWhatWasNotSent(t *testing.T) {
	first := true
	s := &fakeStarts{setup: func(f *fakeRunner) { f.notSent, first = first, false }}
	p := newTestPool(t, PoolConfig{}, s, nil)
	out, err := p.Call(ctx5(t), "x", nil, nil)
	if err != nil || string(out) != `{"type": "integer", "payload": "1001"}` {
		t.Fatalf("%s %v, want the answer of the second instance", out, err)
	}
}

// An agent that cannot start fails its calls at once, saying why.
func TestPoolStartFailureIsTheCallsError(t *testing.T) {
	s := &fakeStarts{fail: errors.New("ModuleNotFoundError: No module named 'openai'")}
	p := newTestPool(t, PoolConfig{}, s, nil)
	_, err := p.Call(ctx5(t), "x", nil, nil)
	var we *domain.Error
	if !errors.As(err, &we) || we.Code != domain.CodeAgentCrashed || we.Message != "the agent could not start: ModuleNotFoundError: No module named 'openai'" {
		t.Fatalf("%v", err)
	}
}

// Limits are enforced from the usage Tick reads: an instance over one is
// killed with RESOURCE_LIMIT naming it, and counted once.
func TestPoolLimits(t *testing.T) {
	tests := []struct {
		name  string
		usage domain.Usage
		limit domain.Limit
	}{
		{"memory", domain.Usage{MemoryBytes: 300 << 20}, domain.LimitMemory},
		{"cpu", domain.Usage{CPUSeconds: 11}, domain.LimitCPU},
		{"tasks", domain.Usage{Tasks: 65}, domain.LimitPids},
		{"refused fork", domain.Usage{Tasks: 3, LimitHit: domain.LimitPids}, domain.LimitPids},
		{"within", domain.Usage{MemoryBytes: 100 << 20, CPUSeconds: 1, Tasks: 3}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &fakeStarts{setup: func(f *fakeRunner) { f.usage, f.hasUse = tt.usage, true }}
			obs := &recorder{}
			p := newTestPool(t, PoolConfig{Limits: domain.Limits{MemoryBytes: 256 << 20, CPUSeconds: 10, Pids: 64}}, s, obs)
			if err := p.Warm(ctx5(t), 1); err != nil {
				t.Fatal(err)
			}
			p.Tick(time.Now(), nil)
			p.Tick(time.Now(), nil)
			f := s.get(0)
			_, limits := obs.seen()
			if tt.limit == "" {
				if f.Err() != nil || len(limits) != 0 {
					t.Fatalf("within the limits: killed %v, limits %v", f.Err(), limits)
				}
				return
			}
			var we *domain.Error
			if !errors.As(f.Err(), &we) || we.Code != domain.CodeResourceLimit || we.Limit != tt.limit {
				t.Fatalf("killed with %v, want RESOURCE_LIMIT %s", f.Err(), tt.limit)
			}
			if len(limits) != 1 || limits[0] != tt.limit {
				t.Fatalf("limits counted: %v, want one %s", limits, tt.limit)
			}
		})
	}
}

// Reading usage (which may block, under microvm) does not hold the pool:
// calls go on meanwhile.
func TestPoolTickDoesNotBlockCalls(t *testing.T) {
	s := &fakeStarts{setup: func(f *fakeRunner) { f.slowUse, f.hasUse = 500*time.Millisecond, true }}
	p := newTestPool(t, PoolConfig{}, s, nil)
	if err := p.Warm(ctx5(t), 1); err != nil {
		t.Fatal(err)
	}
	ticked := make(chan struct{})
	go func() { p.Tick(time.Now(), nil); close(ticked) }()
	time.Sleep(50 * time.Millisecond) // the tick is in Usage
	start := time.Now()
	if _, err := p.Call(ctx5(t), "x", nil, nil); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 300*time.Millisecond {
		t.Fatalf("a call took %s during a slow usage read", took)
	}
	<-ticked
}

// An instance that misses two health checks is killed and counted as hung.
func TestPoolHealthChecks(t *testing.T) {
	s := &fakeStarts{setup: func(f *fakeRunner) { f.pingErr = context.DeadlineExceeded }}
	obs := &recorder{}
	p := newTestPool(t, PoolConfig{HealthInterval: 10 * time.Millisecond, HealthTimeout: 10 * time.Millisecond}, s, obs)
	if err := p.Warm(ctx5(t), 1); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the hung instance killed", func() bool {
		p.Tick(time.Now(), nil)
		return s.get(0).Err() != nil
	})
	if domain.CodeOf(s.get(0).Err()) != domain.CodeAgentCrashed {
		t.Fatalf("killed with %v", s.get(0).Err())
	}
	if gone, _ := obs.seen(); len(gone) != 1 || gone[0] != "hung" {
		t.Fatalf("failures counted: %v, want one hung", gone)
	}
}

// A draining pool finishes the call in flight, then closes.
func TestPoolDrain(t *testing.T) {
	block := make(chan struct{})
	s := &fakeStarts{setup: func(f *fakeRunner) { f.block = block }}
	p := newTestPool(t, PoolConfig{}, s, nil)
	errc := make(chan error, 1)
	go func() { _, err := p.Call(ctx5(t), "x", nil, nil); errc <- err }()
	eventually(t, "the call running", func() bool { return p.Status().InFlight == 1 })
	p.Drain()
	select {
	case <-p.Drained():
		t.Fatal("drained with a call in flight")
	case <-time.After(20 * time.Millisecond):
	}
	close(block)
	if err := <-errc; err != nil {
		t.Fatalf("the call in flight during the drain: %v", err)
	}
	select {
	case <-p.Drained():
	case <-time.After(5 * time.Second):
		t.Fatal("not drained after its last call")
	}
	if _, err := p.Call(ctx5(t), "x", nil, nil); domain.CodeOf(err) != domain.CodeOverloaded {
		t.Fatalf("a call on a drained pool: %v, want OVERLOADED (retry on the new version)", err)
	}
}

// Idle instances above the autoscaler's want are retired on a tick.
func TestPoolScalesDownWhenIdle(t *testing.T) {
	s := &fakeStarts{}
	p := newTestPool(t, PoolConfig{Scale: autoscale.Config{Min: 0, Max: 2, TargetConcurrency: 1,
		StableWindow: 100 * time.Millisecond, PanicWindow: 50 * time.Millisecond, ScaleToZeroGrace: 10 * time.Millisecond}}, s, nil)
	if err := p.Warm(ctx5(t), 2); err != nil {
		t.Fatal(err)
	}
	eventually(t, "scaled to zero", func() bool {
		p.Tick(time.Now(), nil)
		return p.Status().Ready == 0
	})
	eventually(t, "the retired instances closed", func() bool {
		return s.get(0).Err() == runner.ErrClosed && s.get(1).Err() == runner.ErrClosed
	})
}
