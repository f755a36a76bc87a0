package platform

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/runagent-go/runagent/internal/dispatch/natsdispatch"
	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/server"
	"github.com/runagent-go/runagent/internal/wire"
)

// AsyncLimits bound the async invocations of the server.
type AsyncLimits struct {
	// Workers run async invocations at once (default 16); one tenant
	// takes at most TenantWorkers of them (default half), so that another
	// tenant's invocation starts while one tenant has a backlog.
	Workers, TenantWorkers int
	// TenantBacklog and AgentBacklog bound the invocations a tenant and an
	// agent may have waiting or running (429 beyond; defaults 2000 and
	// 1000); Backlog bounds the whole server (503 beyond; default 65536).
	TenantBacklog, AgentBacklog, Backlog int
	// MaxAttempts bounds how often an interrupted invocation of an
	// entrypoint declared idempotent is started (default 3).
	MaxAttempts int
	// Lease is, on a cluster, how long a node may go without renewing
	// an invocation it runs before the queue gives it to another node
	// (default 30 s; renewed every third of it).
	Lease time.Duration
}

func (l AsyncLimits) withDefaults() AsyncLimits {
	if l.Workers <= 0 {
		l.Workers = 16
	}
	if l.TenantWorkers <= 0 {
		l.TenantWorkers = max(1, l.Workers/2)
	}
	if l.TenantBacklog <= 0 {
		l.TenantBacklog = 2000
	}
	if l.AgentBacklog <= 0 {
		l.AgentBacklog = 1000
	}
	if l.Backlog <= 0 {
		l.Backlog = 65536
	}
	if l.MaxAttempts <= 0 {
		l.MaxAttempts = 3
	}
	if l.Lease <= 0 {
		l.Lease = 30 * time.Second
	}
	return l
}

// asyncRunner runs accepted async invocations. Each is in the store's
// async queue from acceptance until its outcome is written, and is marked
// started (durably) before it runs, so that a restart runs what never
// started and never silently runs again what did: an interrupted
// invocation is retried only if its entrypoint is declared idempotent,
// otherwise it fails with the reason.
//
// Workers take invocations round-robin across tenants, each tenant with at
// most TenantWorkers running, so one tenant's backlog does not hold
// another's invocation; backlogs are bounded per tenant, agent and server.
type asyncRunner struct {
	p   *Platform
	lim AsyncLimits

	mu      sync.Mutex // guards the fields below
	wake    *sync.Cond // a job was queued, finished, or the runner closes
	tenants map[string]*tenantQueue
	ring    []*tenantQueue // tenants with queued jobs, served in turn
	turn    int            // where in ring the next pick starts
	agents  map[string]int // waiting + running, per agent
	total   int            // waiting + running
	closing bool
	cancels map[string]context.CancelFunc // of running jobs, by invocation
	running sync.WaitGroup
}

type tenantQueue struct {
	name    string
	jobs    []domain.AsyncJob // waiting, oldest first
	running int
	backlog int // waiting + running
	inRing  bool
}

func newAsyncRunner(p *Platform, lim AsyncLimits) *asyncRunner {
	ar := &asyncRunner{p: p, lim: lim.withDefaults(), tenants: map[string]*tenantQueue{},
		agents: map[string]int{}, cancels: map[string]context.CancelFunc{}}
	ar.wake = sync.NewCond(&ar.mu)
	return ar
}

// resume queues what the store still holds (before the workers start).
// An invocation that had started was interrupted by the server stopping:
// it runs again only if its entrypoint is declared idempotent (and it has
// attempts left), otherwise it fails now with the reason.
func (ar *asyncRunner) resume(ctx context.Context) error {
	jobs, err := ar.p.db.PendingAsync(ctx)
	if err != nil {
		return err
	}
	queued, failed := 0, 0
	for _, j := range jobs {
		if !j.StartedAt.IsZero() {
			a, _, _ := ar.p.mgr.Lookup(j.AgentID)
			if a == nil || !a.Idempotent(j.EntrypointTag) || j.Attempts >= ar.lim.MaxAttempts {
				if err := ar.failInterrupted(ctx, j, a != nil && a.Idempotent(j.EntrypointTag)); err != nil {
					return err
				}
				failed++
				continue
			}
			if err := ar.p.db.RequeueAsync(ctx, j.ID); err != nil {
				return err
			}
			j.StartedAt = time.Time{}
		}
		ar.reserve(j.Tenant, j.AgentID)
		ar.push(j)
		queued++
	}
	if queued > 0 {
		ar.p.log.Info("resuming async invocations accepted before the restart", "count", queued)
	}
	if failed > 0 {
		ar.p.log.Warn("async invocations that were running when the server stopped are marked failed, not run again", "count", failed)
	}
	return nil
}

// finishRetryFor bounds how long an outcome is retried against a failing
// store.
var finishRetryFor = 2 * time.Minute

// finishAsync records an invocation's outcome, retrying while the store
// fails (a PostgreSQL restart or failover) for up to finishRetryFor or
// until ctx ends: the outcome exists only here, and a redelivery would
// find the invocation started and fail it as interrupted.
func (p *Platform) finishAsync(ctx context.Context, inv domain.Invocation) error {
	deadline := time.Now().Add(finishRetryFor)
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		err := p.db.FinishAsync(context.WithoutCancel(ctx), inv)
		if err == nil || errors.Is(err, domain.ErrNotFound) || time.Now().Add(wait).After(deadline) {
			return err
		}
		p.log.Warn("record the outcome of an async invocation: the store failed; retrying", "invocation_id", inv.ID, "retry_in", wait, "error", err)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return err
		}
	}
}

// failInterrupted records the outcome of an invocation the server stopped
// under: failed, saying why it was not run again.
func (ar *asyncRunner) failInterrupted(ctx context.Context, j domain.AsyncJob, idempotent bool) error {
	inv := j.Invocation
	inv.Status, inv.ResponseTime = domain.StatusFailed, time.Now()
	inv.ExecutionMS = float64(inv.ResponseTime.Sub(j.StartedAt).Microseconds()) / 1000
	why := fmt.Sprintf("entrypoint %s is not declared idempotent (add \"idempotent\": true to its entry in runagent.config.json if running it twice is safe)", inv.EntrypointTag)
	if idempotent {
		why = fmt.Sprintf("it was started %d times, the most allowed", j.Attempts)
	}
	inv.ErrorDetail = fmt.Sprintf("%s: the server running this invocation stopped while it ran (attempt %d, started %s); it was not run again because %s",
		domain.CodeAgentCrashed, j.Attempts, wire.IsoFormat(j.StartedAt), why)
	if err := ar.p.db.FinishAsync(ctx, inv); err != nil {
		return err
	}
	ar.p.runEnded(inv.ID, j.Webhook)
	return nil
}

// admit reserves a place in the backlogs of tenant and agent, or says which
// limit is full.
func (ar *asyncRunner) admit(tenant, agent string) *domain.Error {
	ar.mu.Lock()
	defer ar.mu.Unlock()
	if ar.closing {
		return &domain.Error{Code: domain.CodeOverloaded, RetryAfter: 5 * time.Second, Message: "the server is shutting down; retry the call"}
	}
	b := domain.AsyncBacklog{Total: ar.total, Agent: ar.agents[agent]}
	if t := ar.tenants[tenant]; t != nil {
		b.Tenant = t.backlog
	}
	if e := ar.lim.over(b, tenant, agent); e != nil {
		return e
	}
	ar.reserveLocked(tenant, agent)
	return nil
}

// over says which backlog limit b is at, if any.
func (l AsyncLimits) over(b domain.AsyncBacklog, tenant, agent string) *domain.Error {
	const retry = 5 * time.Second
	switch {
	case b.Total >= l.Backlog:
		return &domain.Error{Code: domain.CodeOverloaded, RetryAfter: retry, Message: fmt.Sprintf(
			"the server has %d async invocations waiting or running, its limit; retry later", b.Total)}
	case b.Tenant >= l.TenantBacklog:
		return &domain.Error{Code: domain.CodeRateLimit, RetryAfter: retry, Message: fmt.Sprintf(
			"tenant %s has %d async invocations waiting or running, the most a tenant may have (runagent server --async-tenant-backlog); retry once some have finished",
			tenant, l.TenantBacklog)}
	case b.Agent >= l.AgentBacklog:
		return &domain.Error{Code: domain.CodeRateLimit, RetryAfter: retry, Message: fmt.Sprintf(
			"agent %s has %d async invocations waiting or running, the most an agent may have (runagent server --async-agent-backlog); retry once some have finished",
			agent, l.AgentBacklog)}
	}
	return nil
}

func (ar *asyncRunner) reserve(tenant, agent string) {
	ar.mu.Lock()
	ar.reserveLocked(tenant, agent)
	ar.mu.Unlock()
}

func (ar *asyncRunner) reserveLocked(tenant, agent string) {
	ar.tenant(tenant).backlog++
	ar.agents[agent]++
	ar.total++
	ar.p.metrics.asyncQueued.Set(float64(ar.total))
}

// unreserve gives a place back: the job finished, or was never queued.
func (ar *asyncRunner) unreserveLocked(tenant, agent string) {
	t := ar.tenant(tenant)
	t.backlog--
	if ar.agents[agent]--; ar.agents[agent] <= 0 {
		delete(ar.agents, agent)
	}
	ar.total--
	if t.backlog == 0 && !t.inRing {
		delete(ar.tenants, t.name)
	}
	ar.p.metrics.asyncQueued.Set(float64(ar.total))
}

func (ar *asyncRunner) tenant(name string) *tenantQueue {
	t := ar.tenants[name]
	if t == nil {
		t = &tenantQueue{name: name}
		ar.tenants[name] = t
	}
	return t
}

// push queues a reserved job for the workers.
func (ar *asyncRunner) push(j domain.AsyncJob) {
	ar.mu.Lock()
	t := ar.tenant(j.Tenant)
	t.jobs = append(t.jobs, j)
	if !t.inRing {
		t.inRing = true
		ar.ring = append(ar.ring, t)
	}
	ar.mu.Unlock()
	ar.wake.Signal()
}

// drop takes a waiting job out of the queue (its run was cancelled before
// it started) and gives its backlog place back. It is false when no queue
// holds it: a worker has it, or it waits to be queued again (later), and
// that one gives the place back when it finds the run gone.
func (ar *asyncRunner) drop(id string) bool {
	ar.mu.Lock()
	defer ar.mu.Unlock()
	for _, t := range ar.tenants {
		i := slices.IndexFunc(t.jobs, func(j domain.AsyncJob) bool { return j.ID == id })
		if i < 0 {
			continue
		}
		j := t.jobs[i]
		t.jobs = slices.Delete(t.jobs, i, i+1)
		if len(t.jobs) == 0 && t.inRing {
			k := slices.Index(ar.ring, t)
			ar.ring = slices.Delete(ar.ring, k, k+1)
			t.inRing = false
			if k < ar.turn {
				ar.turn--
			}
			if len(ar.ring) > 0 {
				ar.turn %= len(ar.ring)
			} else {
				ar.turn = 0
			}
		}
		ar.unreserveLocked(j.Tenant, j.AgentID)
		return true
	}
	return false
}

// take waits for the next job a worker may run: the oldest of the next
// tenant in turn that has one waiting and a worker to spare. ctx ends when
// close cuts the job off; ok is false once the runner closes.
func (ar *asyncRunner) take() (j domain.AsyncJob, ctx context.Context, ok bool) {
	ar.mu.Lock()
	defer ar.mu.Unlock()
	for {
		if ar.closing {
			return j, nil, false
		}
		for i := range ar.ring {
			k := (ar.turn + i) % len(ar.ring)
			t := ar.ring[k]
			if t.running >= ar.lim.TenantWorkers {
				continue
			}
			j = t.jobs[0]
			t.jobs[0] = domain.AsyncJob{}
			t.jobs = t.jobs[1:]
			t.running++
			if len(t.jobs) == 0 {
				t.inRing = false
				ar.ring = append(ar.ring[:k], ar.ring[k+1:]...)
				ar.turn = k
			} else {
				ar.turn = k + 1
			}
			if len(ar.ring) > 0 {
				ar.turn %= len(ar.ring)
			} else {
				ar.turn = 0
			}
			ctx, cancel := context.WithCancel(context.Background())
			ar.cancels[j.ID] = cancel
			ar.running.Add(1)
			return j, ctx, true
		}
		ar.wake.Wait()
	}
}

// done accounts for a job that ran (or was cut off by close).
func (ar *asyncRunner) done(j domain.AsyncJob) {
	ar.mu.Lock()
	if cancel := ar.cancels[j.ID]; cancel != nil {
		cancel()
		delete(ar.cancels, j.ID)
	}
	ar.tenant(j.Tenant).running--
	ar.unreserveLocked(j.Tenant, j.AgentID)
	ar.mu.Unlock()
	ar.running.Done()
	ar.wake.Broadcast() // the tenant may have a worker to spare again
}

func (ar *asyncRunner) start(workers int) {
	for range workers {
		go func() {
			for {
				j, ctx, ok := ar.take()
				if !ok {
					return
				}
				ar.run(ctx, j)
			}
		}()
	}
}

// close stops taking jobs and lets the running ones finish for up to
// grace; those still running then are cancelled and stay queued as
// started, so the next start decides about them as about a crash.
func (ar *asyncRunner) close(grace time.Duration) {
	ar.mu.Lock()
	ar.closing = true
	ar.mu.Unlock()
	ar.wake.Broadcast()
	finished := make(chan struct{})
	go func() { ar.running.Wait(); close(finished) }()
	select {
	case <-finished:
		return
	case <-time.After(grace):
	}
	ar.mu.Lock()
	n := len(ar.cancels)
	for _, cancel := range ar.cancels {
		cancel()
	}
	ar.mu.Unlock()
	ar.p.log.Warn("async invocations still running at shutdown were cancelled; they are marked failed at the next start unless idempotent", "count", n)
	select {
	case <-finished:
	case <-time.After(5 * time.Second):
	}
}

// enqueueAsync is server.Config.Async: admitted to the backlogs, durable,
// then queued.
func (p *Platform) enqueueAsync(ctx context.Context, a *domain.Agent, inv domain.Invocation, opts server.RunOptions) (string, bool, error) {
	if opts.Webhook != "" {
		if err := p.guard.CheckURL(ctx, opts.Webhook); err != nil {
			return "", false, err
		}
	}
	return p.enqueueRun(ctx, a, inv, opts)
}

// enqueueRun is enqueueAsync of a run whose webhook was checked.
func (p *Platform) enqueueRun(ctx context.Context, a *domain.Agent, inv domain.Invocation, opts server.RunOptions) (string, bool, error) {
	_, tenant, _ := p.mgr.Lookup(a.ID)
	var timeout float64
	if a.CallTimeout > 0 {
		timeout = a.CallTimeout.Seconds()
	}
	if t := opts.TimeoutSeconds; t > 0 && (timeout == 0 || t < timeout) {
		timeout = t // a request may ask for less, as on POST /run
	}
	key := opts.IdempotencyKey
	j := domain.AsyncJob{Invocation: inv, Tenant: tenant, TimeoutSeconds: timeout, IdempotencyKey: key, Webhook: opts.Webhook,
		ThreadID: opts.ThreadID, ThreadReject: opts.Multitask != "enqueue", UserID: opts.User}
	var err error
	if p.cluster != nil {
		err = p.enqueueClusterAsync(ctx, j)
	} else {
		err = p.enqueueLocalAsync(ctx, j)
	}
	if errors.Is(err, domain.ErrDuplicate) {
		return p.replayRun(ctx, inv, key)
	}
	if errors.Is(err, domain.ErrThreadBusy) {
		return "", false, &domain.Error{Code: domain.CodeAlreadyExists, Field: "thread_id", Err: err, Message: fmt.Sprintf(
			"thread %s has a run queued or running; wait for it to end, or send \"multitask\": \"enqueue\" to run after it", opts.ThreadID)}
	}
	return inv.ID, false, err
}

// enqueueLocalAsync admits j to this server's backlogs, records it and
// queues it.
func (p *Platform) enqueueLocalAsync(ctx context.Context, j domain.AsyncJob) error {
	if e := p.async.admit(j.Tenant, j.AgentID); e != nil {
		return e
	}
	if err := p.db.EnqueueAsync(ctx, j); err != nil {
		p.async.mu.Lock()
		p.async.unreserveLocked(j.Tenant, j.AgentID)
		p.async.mu.Unlock()
		if errors.Is(err, domain.ErrDuplicate) || errors.Is(err, domain.ErrThreadBusy) {
			return err
		}
		return fmt.Errorf("record the async invocation: %w", err)
	}
	p.async.push(j)
	return nil
}

// replayRun answers a create whose Idempotency-Key an earlier run of the
// agent has: that run, if the request is the same.
func (p *Platform) replayRun(ctx context.Context, inv domain.Invocation, key string) (string, bool, error) {
	earlier, err := p.db.IdempotentRun(ctx, inv.AgentID, key)
	if err != nil {
		return "", false, fmt.Errorf("read the run of Idempotency-Key %q: %w", key, err)
	}
	if earlier.EntrypointTag != inv.EntrypointTag || !sameJSON(earlier.InputArgs, inv.InputArgs) || !sameJSON(earlier.InputKwargs, inv.InputKwargs) {
		return "", false, &domain.Error{Code: domain.CodeAlreadyExists, Field: "Idempotency-Key", Message: fmt.Sprintf(
			"Idempotency-Key %q was used by run %s with another entrypoint or input; send a new key for a new run", key, earlier.ID)}
	}
	return earlier.ID, true, nil
}

// sameJSON compares two JSON values as sent, insignificant space aside.
func sameJSON(a, b json.RawMessage) bool {
	var ca, cb bytes.Buffer
	if json.Compact(&ca, a) != nil || json.Compact(&cb, b) != nil {
		return bytes.Equal(a, b)
	}
	return bytes.Equal(ca.Bytes(), cb.Bytes())
}

func (ar *asyncRunner) run(ctx context.Context, j domain.AsyncJob) {
	if j.ThreadID != "" {
		if ahead, err := ar.p.db.ThreadAhead(ctx, j); err != nil || ahead {
			ar.later(j, threadWait) // an earlier run of its thread goes first
			return
		}
	}
	defer ar.done(j)
	ar.p.runAsyncJob(ctx, j)
}

// threadWait is how long a run waits before it looks again whether the
// earlier runs of its thread have ended.
const threadWait = 250 * time.Millisecond

// later gives a taken job back, to be queued again after d (its backlog
// place kept).
func (ar *asyncRunner) later(j domain.AsyncJob, d time.Duration) {
	ar.mu.Lock()
	if cancel := ar.cancels[j.ID]; cancel != nil {
		cancel()
		delete(ar.cancels, j.ID)
	}
	ar.tenant(j.Tenant).running--
	ar.mu.Unlock()
	ar.running.Done()
	ar.wake.Broadcast()
	time.AfterFunc(d, func() { ar.push(j) })
}

// runAsyncJob runs one queued invocation and records its outcome; ran is
// false when it did not end here: its agent was deleted, its start could
// not be recorded, or ctx ended (shutdown) while it ran, leaving it queued
// as started.
func (p *Platform) runAsyncJob(ctx context.Context, j domain.AsyncJob) (ran bool) {
	inv := j.Invocation
	// Registered before it starts: a cancel that finds it started finds
	// it here.
	ctx, forget := p.running.add(ctx, inv.ID)
	defer forget()
	start := time.Now()
	// Durably started before it runs: after a crash it is not run again
	// unless declared idempotent.
	if err := p.db.StartAsync(context.Background(), inv.ID, start); err != nil {
		if !errors.Is(err, domain.ErrNotFound) { // not found: its agent was deleted
			p.log.Error("record the start of an async invocation; it stays queued", "invocation_id", inv.ID, "error", err)
		}
		return false
	}
	a := p.servingAgent(ctx, inv.AgentID)
	var result []byte
	var err error
	if a == nil {
		err = &domain.Error{Code: domain.CodeNotFound, Message: fmt.Sprintf("agent %s is not deployed or not started", inv.AgentID)}
	} else {
		timeout := p.cfg.Defaults.CallTimeout
		if j.TimeoutSeconds > 0 {
			timeout = time.Duration(j.TimeoutSeconds * float64(time.Second))
		}
		cctx, cancel := context.WithTimeoutCause(domain.WithInvocation(ctx, inv.ID), timeout, &domain.Error{Code: domain.CodeTimeout,
			Message: fmt.Sprintf("the agent did not finish within the call timeout of %s", timeout)})
		t := a.Target()
		t.User = j.UserID
		result, err = p.asyncDispatch.Call(cctx, t, inv.EntrypointTag, inv.InputArgs, inv.InputKwargs)
		cancel()
	}
	cancelled := errors.Is(context.Cause(ctx), errRunCancelled)
	if ctx.Err() != nil && !cancelled {
		return false // cut off by shutdown: it stays queued, as started
	}
	if errors.Is(err, natsdispatch.ErrNodeLost) {
		// It ran on another node, which died: like a worker lost, it is
		// delivered again once its lease runs out and runs again only if
		// its entrypoint is idempotent.
		p.log.Warn("the node running an async invocation was lost; it is delivered again", "invocation_id", inv.ID, "error", err)
		return false
	}
	inv.ResponseTime = time.Now()
	elapsed := inv.ResponseTime.Sub(start)
	inv.ExecutionMS = float64(elapsed.Microseconds()) / 1000
	var code domain.Code
	if err != nil && cancelled {
		code, inv.Status = domain.CodeCancelled, domain.StatusFailed
		inv.ErrorDetail = string(domain.CodeCancelled) + ": the run was cancelled while it ran (POST /api/v1/runs/" + inv.ID + "/cancel)"
	} else if err == nil {
		inv.Status = domain.StatusCompleted
		var v struct{ Payload string }
		if json.Unmarshal(result, &v) == nil && json.Valid([]byte(v.Payload)) {
			inv.Output = json.RawMessage(v.Payload)
		}
	} else {
		we, agentRaised := server.CallFailure(err)
		code = we.Code
		inv.Status = domain.StatusFailed
		if agentRaised {
			inv.ErrorDetail = fmt.Sprintf("Server error running agent %s: %s", inv.AgentID, we.Message)
		} else {
			inv.ErrorDetail = string(we.Code) + ": " + we.Message
		}
	}
	if a != nil {
		p.metrics.call(a, inv.EntrypointTag, code, elapsed)
	}
	fctx := ctx
	if cancelled { // ctx is done: the outcome is still retried against the store
		fctx = context.WithoutCancel(ctx)
	}
	if err := p.finishAsync(fctx, inv); err != nil {
		if !errors.Is(err, domain.ErrNotFound) {
			p.log.Error("record the outcome of an async invocation; it is lost, and the invocation ends as interrupted", "invocation_id", inv.ID, "error", err)
			return false
		}
		p.log.Warn("an async invocation ended that was already ended elsewhere; its outcome here is not recorded", "invocation_id", inv.ID)
		return true
	}
	p.runEnded(inv.ID, j.Webhook)
	return true
}
