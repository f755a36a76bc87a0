package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/runagent-go/runagent/internal/autoscale"
	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/runner"
)

// Runner is what a pool needs of a started instance: *runner.Process, or a
// fake in tests.
type Runner interface {
	Call(ctx context.Context, tag string, args, kwargs []byte) ([]byte, error)
	Stream(ctx context.Context, tag string, args, kwargs []byte, started func(), fn domain.ChunkFunc) (int, error)
	Ping(ctx context.Context) error
	PID() int
	// Usage is the sandbox's own accounting (a cgroup's), if it has one.
	// It may block (a microVM asks its guest).
	Usage() (domain.Usage, bool)
	Done() <-chan struct{}
	Err() error
	Close() error
	// KillWith kills the instance; its calls in flight fail with e.
	KillWith(e *domain.Error)
}

// PoolConfig configures the instance pool of one agent version.
type PoolConfig struct {
	Scale autoscale.Config
	// MaxConcurrency is the most calls one instance runs at once; more
	// wait in the queue.
	MaxConcurrency int
	// MaxQueue bounds the calls waiting for an instance; beyond it calls
	// fail at once with OVERLOADED.
	MaxQueue int
	// Limits are enforced by sampling (memory, CPU time, processes) on
	// top of what the sandbox and the runner's rlimits enforce.
	Limits domain.Limits
	// HealthInterval is how often each ready instance is pinged; two
	// missed answers in a row (HealthTimeout each) get it replaced.
	HealthInterval time.Duration
	HealthTimeout  time.Duration
}

// StartFunc starts the runner of one instance.
type StartFunc func(ctx context.Context, instanceID string) (Runner, error)

// instance is one runner of a pool. Its fields but the atomics are guarded
// by the pool's mu.
type instance struct {
	id       string
	proc     Runner // nil while starting
	state    domain.InstanceState
	inflight int
	started  time.Time
	missed   int // consecutive failed health checks
	pinging  bool
	usage    domain.Usage
	// limitCounted: the manager stopped it for a limit and counted that;
	// hung: for failed health checks, counted as such.
	limitCounted, hung atomic.Bool
}

// gone reports whether the instance's runner has ended (watch removes it
// soon after).
func (in *instance) gone() bool {
	select {
	case <-in.proc.Done():
		return true
	default:
		return false
	}
}

type waiter struct {
	ch chan *instance // buffered: the instance handed over, with a slot taken
}

// Observer is told what a pool does, for metrics and logs.
type Observer interface {
	ScaleEvent(pool *Pool, from, to int, reason string)
	InstanceUsage(pool *Pool, instanceID string, u domain.Usage)
	InstanceGone(pool *Pool, instanceID string, why string)
	LimitExceeded(pool *Pool, instanceID string, limit domain.Limit)
}

type nopObserver struct{}

func (nopObserver) ScaleEvent(*Pool, int, int, string)        {}
func (nopObserver) InstanceUsage(*Pool, string, domain.Usage) {}
func (nopObserver) InstanceGone(*Pool, string, string)        {}
func (nopObserver) LimitExceeded(*Pool, string, domain.Limit) {}

// Pool runs the instances of one agent version: it hands calls to the
// least busy ready instance, queues them (bounded) while none is free,
// scales between min and max with the autoscaler, replaces dead or hung
// instances and kills those over their limits. Tick drives the last
// three; a call at zero instances starts one at once.
type Pool struct {
	Agent   string
	Version int

	cfg    PoolConfig
	start  StartFunc
	log    *slog.Logger
	obs    Observer
	scaler *autoscale.Autoscaler

	mu       sync.Mutex // guards the fields below and the instances'
	insts    []*instance
	waiters  []*waiter
	nextID   int
	draining bool // retired: no new instances; closes once idle
	closed   bool
	calls    int64     // calls taken, ever (a cluster's scheduler reads activity from it)
	failures int       // consecutive failed starts
	retryAt  time.Time // no start before this after failures
	lastErr  error     // the last start failure
	drained  chan struct{}
}

// NewPool returns a pool with no instances; Tick drives it.
func NewPool(agentID string, version int, cfg PoolConfig, start StartFunc, obs Observer, log *slog.Logger) (*Pool, error) {
	sc, err := autoscale.New(cfg.Scale)
	if err != nil {
		return nil, err
	}
	cfg.Scale = sc.Config()
	if cfg.MaxConcurrency <= 0 {
		cfg.MaxConcurrency = 16
	}
	if cfg.MaxQueue <= 0 {
		cfg.MaxQueue = 100
	}
	if cfg.HealthInterval <= 0 {
		cfg.HealthInterval = 5 * time.Second
	}
	if cfg.HealthTimeout <= 0 {
		cfg.HealthTimeout = 5 * time.Second
	}
	if obs == nil {
		obs = nopObserver{}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Pool{Agent: agentID, Version: version, cfg: cfg, start: start, obs: obs, scaler: sc,
		log: log.With("agent_id", agentID, "version", version), drained: make(chan struct{})}, nil
}

// Config is the pool's configuration with defaults filled in.
func (p *Pool) Config() PoolConfig { return p.cfg }

var errPoolClosed = &domain.Error{Code: domain.CodeOverloaded, RetryAfter: time.Second,
	Message: "this version of the agent has been replaced; retry the call"}

// acquire takes a slot on the least busy ready instance, waiting in the
// queue while there is none.
func (p *Pool) acquire(ctx context.Context) (*instance, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, errPoolClosed
	}
	p.calls++
	if in := p.pickLocked(); in != nil {
		in.inflight++
		p.mu.Unlock()
		return in, nil
	}
	if p.draining && p.countLocked(domain.StateReady) == 0 {
		p.mu.Unlock()
		return nil, errPoolClosed
	}
	if len(p.waiters) >= p.cfg.MaxQueue {
		p.mu.Unlock()
		return nil, &domain.Error{Code: domain.CodeOverloaded, RetryAfter: time.Second, Message: fmt.Sprintf(
			"agent %s is overloaded: every instance is busy and %d calls are already waiting; retry later", p.Agent, p.cfg.MaxQueue)}
	}
	if err := p.startErrLocked(); err != nil {
		p.mu.Unlock()
		return nil, err
	}
	w := &waiter{ch: make(chan *instance, 1)}
	p.waiters = append(p.waiters, w)
	p.activateLocked()
	p.mu.Unlock()

	select {
	case in := <-w.ch:
		if in == nil {
			return nil, p.failedStart()
		}
		return in, nil
	case <-ctx.Done():
		p.mu.Lock()
		if i := slices.Index(p.waiters, w); i >= 0 {
			p.waiters = slices.Delete(p.waiters, i, i+1)
			p.mu.Unlock()
		} else {
			p.mu.Unlock()
			// Handed an instance as ctx ended: give the slot back.
			if in := <-w.ch; in != nil {
				p.release(in)
			}
		}
		return nil, context.Cause(ctx)
	}
}

// startErrLocked fails a call at once when the agent cannot start and no
// instance is up: the caller learns why instead of waiting out its timeout.
func (p *Pool) startErrLocked() error {
	if p.lastErr == nil || p.countLocked(domain.StateReady)+p.countLocked(domain.StateStarting) > 0 || time.Now().After(p.retryAt) {
		return nil
	}
	return p.failedStartLocked()
}

func (p *Pool) failedStart() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failedStartLocked()
}

func (p *Pool) failedStartLocked() error {
	if p.closed {
		return errPoolClosed
	}
	msg := "the agent could not start"
	if p.lastErr != nil {
		msg += ": " + p.lastErr.Error()
	}
	return &domain.Error{Code: domain.CodeAgentCrashed, Message: msg}
}

// release gives a call's slot back and hands the instance to a waiter.
func (p *Pool) release(in *instance) {
	p.mu.Lock()
	in.inflight--
	p.dispatchLocked()
	closeIt := in.inflight == 0 && (in.state == domain.StateDraining || p.draining && len(p.waiters) == 0)
	if closeIt {
		p.removeLocked(in)
	}
	p.checkDrainedLocked()
	p.mu.Unlock()
	if closeIt {
		go in.proc.Close()
	}
}

// pickLocked returns the ready instance with the fewest calls that has room
// (not one whose runner is gone and that watch has yet to remove).
func (p *Pool) pickLocked() *instance {
	var best *instance
	for _, in := range p.insts {
		if in.state != domain.StateReady || in.inflight >= p.cfg.MaxConcurrency || in.gone() {
			continue
		}
		if best == nil || in.inflight < best.inflight {
			best = in
		}
	}
	return best
}

func (p *Pool) dispatchLocked() {
	for len(p.waiters) > 0 {
		in := p.pickLocked()
		if in == nil {
			return
		}
		in.inflight++
		w := p.waiters[0]
		p.waiters = p.waiters[1:]
		w.ch <- in
	}
}

func (p *Pool) countLocked(state domain.InstanceState) int {
	n := 0
	for _, in := range p.insts {
		if in.state == state {
			n++
		}
	}
	return n
}

// activateLocked starts an instance at once when calls wait and none is
// ready or starting (scale from zero, or every instance died): the first
// call after an idle period waits for an instance instead of failing.
func (p *Pool) activateLocked() {
	if p.draining || p.countLocked(domain.StateStarting) > 0 {
		return
	}
	ready := p.countLocked(domain.StateReady)
	if ready == 0 || (p.pickLocked() == nil && ready < p.cfg.Scale.Max) {
		if time.Now().Before(p.retryAt) {
			return
		}
		p.obs.ScaleEvent(p, ready, ready+1, autoscale.ReasonActivate)
		p.launchLocked()
	}
}

// launchLocked starts one instance in the background.
func (p *Pool) launchLocked() {
	p.nextID++
	in := &instance{id: fmt.Sprintf("v%d-%d", p.Version, p.nextID), state: domain.StateStarting, started: time.Now()}
	p.insts = append(p.insts, in)
	go func() {
		proc, err := p.start(context.Background(), in.id)
		p.mu.Lock()
		defer p.mu.Unlock()
		if err != nil {
			p.removeLocked(in)
			p.failures++
			p.lastErr = err
			p.retryAt = time.Now().Add(min(250*time.Millisecond<<min(p.failures, 7), 30*time.Second))
			p.log.Warn("instance failed to start", "instance", in.id, "error", err, "failures", p.failures)
			p.obs.InstanceGone(p, in.id, "start failed")
			if p.countLocked(domain.StateReady)+p.countLocked(domain.StateStarting) == 0 {
				// Nobody will serve the queue soon: tell the waiters why.
				for _, w := range p.waiters {
					w.ch <- nil
				}
				p.waiters = nil
			}
			p.checkDrainedLocked()
			return
		}
		if p.closed || p.draining && len(p.waiters) == 0 {
			p.removeLocked(in)
			p.checkDrainedLocked()
			go proc.Close()
			return
		}
		p.failures, p.lastErr, p.retryAt = 0, nil, time.Time{}
		in.proc = proc
		in.state = domain.StateReady
		p.log.Info("instance ready", "instance", in.id, "pid", proc.PID(), "startup", time.Since(in.started).Round(time.Millisecond))
		go p.watch(in)
		p.dispatchLocked()
	}()
}

// watch removes an instance whose runner ended; its own in-flight calls
// have failed with the reason, the others are untouched.
func (p *Pool) watch(in *instance) {
	<-in.proc.Done()
	p.mu.Lock()
	gone := slices.Contains(p.insts, in)
	if gone {
		p.removeLocked(in)
	}
	p.checkDrainedLocked()
	if len(p.waiters) > 0 {
		p.activateLocked()
	}
	p.mu.Unlock()
	err := in.proc.Err()
	var we *domain.Error
	limited := errors.As(err, &we) && we.Code == domain.CodeResourceLimit
	if limited && !in.limitCounted.Load() {
		// The kernel enforced the limit (a cgroup's OOM kill, the CPU
		// rlimit): count it as the manager's own limit kills are.
		limit := we.Limit
		if limit == "" {
			limit = domain.LimitOther
		}
		p.log.Warn("instance stopped by a limit", "instance", in.id, "limit", limit, "detail", we.Message)
		p.obs.LimitExceeded(p, in.id, limit)
	}
	// Each failure is counted once, under its reason: a hung instance was
	// counted by its health check, a limit kill by the limit metric.
	if gone && !limited && !in.hung.Load() && !errors.Is(err, runner.ErrClosed) {
		p.log.Warn("instance died", "instance", in.id, "error", err)
		p.obs.InstanceGone(p, in.id, "died")
	}
}

func (p *Pool) removeLocked(in *instance) {
	if i := slices.Index(p.insts, in); i >= 0 {
		p.insts = slices.Delete(p.insts, i, i+1)
	}
}

// sendAttempts: a call that did not reach its instance's runner (it died
// just before) did not run, and is sent to another instance.
const sendAttempts = 3

// Call runs a non-streaming entrypoint on an instance of the pool.
func (p *Pool) Call(ctx context.Context, tag string, args, kwargs []byte) ([]byte, error) {
	for attempt := 1; ; attempt++ {
		in, err := p.acquire(ctx)
		if err != nil {
			return nil, err
		}
		out, err := in.proc.Call(ctx, tag, args, kwargs)
		p.release(in)
		if attempt < sendAttempts && errors.Is(err, runner.ErrNotSent) {
			continue
		}
		return out, err
	}
}

// Stream runs a streaming entrypoint on an instance of the pool.
func (p *Pool) Stream(ctx context.Context, tag string, args, kwargs []byte, started func(), fn domain.ChunkFunc) (int, error) {
	for attempt := 1; ; attempt++ {
		in, err := p.acquire(ctx)
		if err != nil {
			return 0, err
		}
		n, err := in.proc.Stream(ctx, tag, args, kwargs, started, fn)
		p.release(in)
		if attempt < sendAttempts && errors.Is(err, runner.ErrNotSent) {
			continue
		}
		return n, err
	}
}

// Warm starts instances until n are ready, and fails with the start error
// if the agent cannot start.
func (p *Pool) Warm(ctx context.Context, n int) error {
	n = max(1, min(n, p.cfg.Scale.Max))
	p.mu.Lock()
	for i := len(p.insts); i < n; i++ {
		p.launchLocked()
	}
	p.mu.Unlock()
	for {
		p.mu.Lock()
		ready, starting, lastErr := p.countLocked(domain.StateReady), p.countLocked(domain.StateStarting), p.lastErr
		p.mu.Unlock()
		if ready >= n {
			return nil
		}
		if lastErr != nil && starting == 0 {
			return lastErr
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// PoolStatus is a snapshot of a pool.
type PoolStatus struct {
	Starting, Ready, Draining int
	InFlight, Queued          int
	Calls                     int64 // taken since the pool began
	Instances                 []InstanceStatus
}

// InstanceStatus is a snapshot of one instance.
type InstanceStatus struct {
	ID       string               `json:"id"`
	State    domain.InstanceState `json:"state"`
	PID      int                  `json:"pid,omitempty"`
	InFlight int                  `json:"in_flight"`
	RSSBytes int64                `json:"rss_bytes"`
	CPU      float64              `json:"cpu_seconds"`
	Tasks    int                  `json:"tasks"`
	Uptime   float64              `json:"uptime_seconds"`
}

// add counts another pool's snapshot in s (a version's users' pools).
func (s *PoolStatus) add(o PoolStatus) {
	s.Starting += o.Starting
	s.Ready += o.Ready
	s.Draining += o.Draining
	s.InFlight += o.InFlight
	s.Queued += o.Queued
	s.Calls += o.Calls
	s.Instances = append(s.Instances, o.Instances...)
}

// Status returns a snapshot.
func (p *Pool) Status() PoolStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	var st PoolStatus
	st.Queued, st.Calls = len(p.waiters), p.calls
	for _, in := range p.insts {
		switch in.state {
		case domain.StateStarting:
			st.Starting++
		case domain.StateReady:
			st.Ready++
		case domain.StateDraining:
			st.Draining++
		}
		st.InFlight += in.inflight
		is := InstanceStatus{ID: in.id, State: in.state, InFlight: in.inflight, RSSBytes: in.usage.MemoryBytes,
			CPU: in.usage.CPUSeconds, Tasks: in.usage.Tasks, Uptime: time.Since(in.started).Seconds()}
		if in.proc != nil {
			is.PID = in.proc.PID()
		}
		st.Instances = append(st.Instances, is)
	}
	return st
}

// Drain retires the pool: it starts no more instances, its instances
// finish the calls in flight and queued, and each stops once idle.
// Drained is closed when the last one is gone.
func (p *Pool) Drain() {
	p.mu.Lock()
	p.draining = true
	var stop []*instance
	for _, in := range slices.Clone(p.insts) {
		if in.proc != nil && in.inflight == 0 && len(p.waiters) == 0 {
			p.removeLocked(in)
			stop = append(stop, in)
		}
	}
	p.checkDrainedLocked()
	p.mu.Unlock()
	for _, in := range stop {
		go in.proc.Close()
	}
}

// Drained is closed once a draining pool has no instances left.
func (p *Pool) Drained() <-chan struct{} { return p.drained }

func (p *Pool) checkDrainedLocked() {
	if p.draining && !p.closed && len(p.insts) == 0 {
		p.closed = true
		for _, w := range p.waiters {
			w.ch <- nil
		}
		p.waiters = nil
		close(p.drained)
	}
}

// Close stops every instance now; calls in flight fail.
func (p *Pool) Close() {
	p.mu.Lock()
	p.draining = true
	insts := p.insts
	p.insts = nil
	p.checkDrainedLocked()
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, in := range insts {
		if in.proc != nil {
			wg.Go(func() { in.proc.Close() })
		}
	}
	wg.Wait()
}
