package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/runagent-go/runagent/internal/autoscale"
	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/runner"
)

// Limits bound one instance; zero means no limit.
type Limits struct {
	MemoryBytes int64
	CPUSeconds  float64
	MaxTasks    int // processes and threads together
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
	Limits   Limits
	// HealthInterval is how often each ready instance is pinged; two
	// missed answers in a row (HealthTimeout each) get it replaced.
	HealthInterval time.Duration
	HealthTimeout  time.Duration
}

// StartFunc starts the runner of one instance.
type StartFunc func(ctx context.Context, instanceID string) (*runner.Process, error)

// Instance states.
const (
	StateStarting = "starting"
	StateReady    = "ready"
	StateDraining = "draining"
)

// instance is one runner process of a pool.
type instance struct {
	id       string
	proc     *runner.Process
	state    string
	inflight int
	started  time.Time
	missed   int // consecutive failed health checks
	pinging  bool
	usage    Usage
	// limitCounted: the manager stopped it for a limit and counted that;
	// hung: for failed health checks, counted as such.
	limitCounted, hung atomic.Bool
}

type waiter struct {
	ch chan *instance // buffered: the instance handed over, with a slot taken
}

// Observer is told what a pool does, for metrics and logs.
type Observer interface {
	ScaleEvent(pool *Pool, from, to int, reason string)
	InstanceUsage(pool *Pool, instanceID string, u Usage)
	InstanceGone(pool *Pool, instanceID string, why string)
	LimitExceeded(pool *Pool, instanceID, limit string)
}

// Pool runs the instances of one agent version: it hands calls to the
// least busy ready instance, queues them (bounded) while none is free,
// scales between min and max with the autoscaler, replaces dead or hung
// instances and kills those over their limits.
type Pool struct {
	Agent   string
	Version int

	cfg    PoolConfig
	start  StartFunc
	log    *slog.Logger
	obs    Observer
	scaler *autoscale.Autoscaler

	mu       sync.Mutex
	insts    []*instance
	waiters  []*waiter
	nextID   int
	draining bool // retired: no new instances; closes once idle
	closed   bool
	failures int       // consecutive failed starts
	retryAt  time.Time // no start before this after failures
	lastErr  error     // the last start failure
	drained  chan struct{}
}

// NewPool returns a pool with no instances; the manager's ticks drive it.
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
	if in := p.pickLocked(); in != nil {
		in.inflight++
		p.mu.Unlock()
		return in, nil
	}
	if p.draining && p.countLocked(StateReady) == 0 {
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
	if p.lastErr == nil || p.countLocked(StateReady)+p.countLocked(StateStarting) > 0 || time.Now().After(p.retryAt) {
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
	closeIt := in.inflight == 0 && (in.state == StateDraining || p.draining && len(p.waiters) == 0)
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
		if in.state != StateReady || in.inflight >= p.cfg.MaxConcurrency || in.gone() {
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

func (p *Pool) countLocked(state string) int {
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
	if p.draining || p.countLocked(StateStarting) > 0 {
		return
	}
	ready := p.countLocked(StateReady)
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
	in := &instance{id: fmt.Sprintf("v%d-%d", p.Version, p.nextID), state: StateStarting, started: time.Now()}
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
			if p.countLocked(StateReady)+p.countLocked(StateStarting) == 0 {
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
		in.state = StateReady
		p.log.Info("instance ready", "instance", in.id, "pid", proc.PID(), "startup", time.Since(in.started).Round(time.Millisecond))
		go p.watch(in)
		p.dispatchLocked()
	}()
}

// watch removes an instance whose process ended; its own in-flight calls
// have failed with the reason, the others are untouched.
func (p *Pool) watch(in *instance) {
	<-in.proc.Done()
	p.mu.Lock()
	gone := slices.Contains(p.insts, in)
	if gone {
		p.removeLocked(in)
	}
	p.checkDrainedLocked()
	queued := len(p.waiters) > 0
	if queued {
		p.activateLocked()
	}
	p.mu.Unlock()
	err := in.proc.Err()
	var we *domain.Error
	limited := errors.As(err, &we) && we.Code == domain.CodeResourceLimit
	if limited && !in.limitCounted.Load() {
		// The kernel enforced the limit (a cgroup's OOM kill, the CPU
		// rlimit): count it as the manager's own limit kills are.
		limit := limitLabel(we.Message)
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

// limitLabel is the metric label of a RESOURCE_LIMIT message.
func limitLabel(msg string) string {
	switch {
	case strings.Contains(msg, "memory"):
		return "memory"
	case strings.Contains(msg, "cpu"), strings.Contains(msg, "CPU"):
		return "cpu"
	case strings.Contains(msg, "processes"):
		return "pids"
	}
	return "other"
}

func (in *instance) gone() bool {
	select {
	case <-in.proc.Done():
		return true
	default:
		return false
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
func (p *Pool) Stream(ctx context.Context, tag string, args, kwargs []byte, started func(), fn runner.ChunkFunc) (int, error) {
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
		ready, starting, lastErr := p.countLocked(StateReady), p.countLocked(StateStarting), p.lastErr
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
	Want                      int
	Panic                     bool
	Instances                 []InstanceStatus
}

// InstanceStatus is a snapshot of one instance.
type InstanceStatus struct {
	ID       string  `json:"id"`
	State    string  `json:"state"`
	PID      int     `json:"pid,omitempty"`
	InFlight int     `json:"in_flight"`
	RSSBytes int64   `json:"rss_bytes"`
	CPU      float64 `json:"cpu_seconds"`
	Tasks    int     `json:"tasks"`
	Uptime   float64 `json:"uptime_seconds"`
}

// Status returns a snapshot.
func (p *Pool) Status() PoolStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	var st PoolStatus
	st.Queued = len(p.waiters)
	for _, in := range p.insts {
		switch in.state {
		case StateStarting:
			st.Starting++
		case StateReady:
			st.Ready++
		case StateDraining:
			st.Draining++
		}
		st.InFlight += in.inflight
		is := InstanceStatus{ID: in.id, State: in.state, InFlight: in.inflight, RSSBytes: in.usage.RSSBytes,
			CPU: in.usage.CPUSeconds, Tasks: in.usage.Tasks, Uptime: time.Since(in.started).Seconds()}
		if in.proc != nil {
			is.PID = in.proc.PID()
		}
		st.Instances = append(st.Instances, is)
	}
	return st
}

// pgroups adds the process groups of the pool's running instances to want.
func (p *Pool) pgroups(want map[int]bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, in := range p.insts {
		if in.proc != nil {
			want[in.proc.PID()] = true
		}
	}
}

// tick samples load, applies the autoscaler's decision, enforces limits
// and runs health checks. usage is this tick's /proc sample by group.
func (p *Pool) tick(now time.Time, usage map[int]Usage) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	inflight := 0
	for _, in := range p.insts {
		inflight += in.inflight
	}
	p.scaler.Record(autoscale.Sample{At: now, InFlight: inflight, Queued: len(p.waiters)})
	ready, starting := p.countLocked(StateReady), p.countLocked(StateStarting)
	d := p.scaler.Decide(now, ready)
	var stop []*instance
	switch {
	case p.draining:
	case d.Want > ready+starting && now.After(p.retryAt):
		p.obs.ScaleEvent(p, ready+starting, d.Want, d.Reason)
		for i := ready + starting; i < d.Want; i++ {
			p.launchLocked()
		}
	case d.Want < ready:
		// Retire the least busy instances; busy ones finish their calls first.
		cands := slices.Clone(p.insts)
		slices.SortStableFunc(cands, func(a, b *instance) int { return a.inflight - b.inflight })
		n := ready - d.Want
		p.obs.ScaleEvent(p, ready+starting, d.Want+starting, d.Reason)
		for _, in := range cands {
			if n == 0 {
				break
			}
			if in.state != StateReady {
				continue
			}
			n--
			in.state = StateDraining
			if in.inflight == 0 {
				p.removeLocked(in)
				stop = append(stop, in)
			}
		}
	}

	// Limits and health.
	var kill []func()
	var ping []*instance
	for _, in := range p.insts {
		if in.proc == nil {
			continue
		}
		u, ok := usage[in.proc.PID()]
		if su, has := in.proc.Usage(); has {
			// The sandbox's own accounting (a cgroup) sees everything in it,
			// even processes that left the runner's process group.
			u, ok = Usage{RSSBytes: su.MemoryBytes, CPUSeconds: su.CPUSeconds, Tasks: su.Tasks, LimitHit: su.LimitHit}, true
		}
		if ok {
			in.usage = u
			p.obs.InstanceUsage(p, in.id, u)
			if limit, msg := p.overLimit(u); limit != "" {
				proc, id := in.proc, in.id
				p.log.Warn("instance over its limit; killing it", "instance", id, "limit", limit, "detail", msg)
				p.obs.LimitExceeded(p, id, limit)
				in.limitCounted.Store(true)
				kill = append(kill, func() { proc.KillWith(&domain.Error{Code: domain.CodeResourceLimit, Message: msg}) })
				continue
			}
		}
		if in.state == StateReady && !in.pinging && now.Sub(in.started) > p.cfg.HealthInterval {
			in.pinging = true
			ping = append(ping, in)
		}
	}
	p.mu.Unlock()
	for _, in := range stop {
		go in.proc.Close()
	}
	for _, k := range kill {
		k()
	}
	for _, in := range ping {
		go p.healthCheck(in)
	}
}

// overLimit names the first limit u exceeds, with the message calls get.
func (p *Pool) overLimit(u Usage) (limit, msg string) {
	l := p.cfg.Limits
	switch {
	case u.LimitHit == "pids":
		// The kernel refused a fork: an instance that tries to go past its
		// process limit (a fork bomb) is stopped rather than left crippled.
		return "pids", fmt.Sprintf("RESOURCE_LIMIT: processes %d exceeded (a fork was refused); the instance was stopped and replaced", l.MaxTasks)
	case l.MemoryBytes > 0 && u.RSSBytes > l.MemoryBytes:
		return "memory", fmt.Sprintf("RESOURCE_LIMIT: memory %d MiB exceeded (the instance used %d MiB); the instance was stopped and replaced",
			l.MemoryBytes>>20, u.RSSBytes>>20)
	case l.CPUSeconds > 0 && u.CPUSeconds > l.CPUSeconds:
		return "cpu", fmt.Sprintf("RESOURCE_LIMIT: CPU time %gs exceeded (the instance used %.1fs); the instance was stopped and replaced",
			l.CPUSeconds, u.CPUSeconds)
	case l.MaxTasks > 0 && u.Tasks > l.MaxTasks:
		return "pids", fmt.Sprintf("RESOURCE_LIMIT: processes %d exceeded (the instance had %d processes and threads); the instance was stopped and replaced",
			l.MaxTasks, u.Tasks)
	}
	return "", ""
}

// healthCheck pings one instance; two misses in a row and it is replaced.
// The runner keeps a thread free for pings (threads > max concurrency), so
// a busy instance still answers and only a hung one does not.
func (p *Pool) healthCheck(in *instance) {
	time.Sleep(p.cfg.HealthInterval)
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.HealthTimeout)
	err := in.proc.Ping(ctx)
	cancel()
	p.mu.Lock()
	in.pinging = false
	if err == nil {
		in.missed = 0
		p.mu.Unlock()
		return
	}
	in.missed++
	missed := in.missed
	p.mu.Unlock()
	if missed >= 2 && in.proc.Err() == nil {
		p.log.Warn("instance does not answer health checks; replacing it", "instance", in.id, "error", err)
		in.hung.Store(true)
		p.obs.InstanceGone(p, in.id, "hung")
		in.proc.KillWith(&domain.Error{Code: domain.CodeAgentCrashed, Message: fmt.Sprintf(
			"the agent instance stopped answering health checks for %s and was replaced", 2*p.cfg.HealthTimeout)})
	}
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
			wg.Add(1)
			go func() { defer wg.Done(); in.proc.Close() }()
		}
	}
	wg.Wait()
}
