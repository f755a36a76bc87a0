package platform

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/runagent-go/runagent/internal/cluster"
	"github.com/runagent-go/runagent/internal/dispatch"
	"github.com/runagent-go/runagent/internal/domain"
)

// On a cluster, an accepted async invocation is recorded in PostgreSQL
// (pending, queued: the source of truth) and then published to the
// JetStream work queue; the client has its 202 only once both hold it.
// Nodes pull from the queue, run each invocation through the cluster's
// dispatcher and record its outcome once (FinishAsync writes it once, so a
// redelivered invocation that already ended is not run again).

// enqueueClusterAsync records j and queues it on the cluster (a gateway's
// enqueueAsync).
func (p *Platform) enqueueClusterAsync(ctx context.Context, j domain.AsyncJob) error {
	inv, tenant := j.Invocation, j.Tenant
	// Backlogs are counted in the store, across gateways: two gateways
	// admitting at once may each pass at the limit's last place.
	b, err := p.db.AsyncBacklog(ctx, tenant, inv.AgentID)
	if err != nil {
		return err
	}
	if e := p.cfg.Async.over(b, tenant, inv.AgentID); e != nil {
		return e
	}
	if err := p.db.EnqueueAsync(ctx, j); err != nil {
		if errors.Is(err, domain.ErrDuplicate) {
			return err
		}
		return fmt.Errorf("record the async invocation: %w", err)
	}
	if err := p.cluster.queue.Enqueue(ctx, inv.ID, tenant); err != nil {
		// Refused: say so in its record, where it would otherwise wait
		// for ever.
		inv.Status, inv.ResponseTime = domain.StatusFailed, time.Now()
		inv.ErrorDetail = string(domain.CodeConnection) + ": the cluster's queue (NATS JetStream) did not take it; the invocation was refused and never ran"
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if ferr := p.finishAsync(fctx, inv); ferr != nil {
			p.log.Error("record a refused async invocation: the scheduler will find it queued in the store and run it", "invocation_id", inv.ID, "error", ferr)
		} else if j.IdempotencyKey != "" {
			// Its key is free again: the retry the client is told to make
			// creates the run anew instead of replaying this refusal.
			if ferr := p.db.DropIdempotencyKey(fctx, inv.ID); ferr != nil {
				p.log.Error("free the Idempotency-Key of a refused run; a retry with it gets the refusal", "invocation_id", inv.ID, "error", ferr)
			}
		}
		return &domain.Error{Code: domain.CodeConnection, RetryAfter: time.Second, Err: err,
			Message: "the cluster's queue is not reachable right now; retry shortly"}
	}
	return nil
}

const (
	// lostAfter: an async invocation recorded this long ago and not
	// started is looked for in the queue (gateways' clocks are assumed
	// to agree within it).
	lostAfter = time.Minute
	// lostEvery is how often the scheduler looks; lostBatch bounds one
	// look (the oldest first).
	lostEvery = 10 * time.Second
	lostBatch = 1000
)

// requeueLost queues again, while this gateway is the scheduler, the async
// invocations recorded in the store that the queue does not hold: their
// gateway stopped between the two writes of enqueueClusterAsync. Only
// what the stream does not hold is queued again, under its id as message
// id (JetStream drops a copy within its duplicate window), so the queue
// holds one message per invocation.
func (p *Platform) requeueLost(ctx context.Context) {
	t := time.NewTicker(lostEvery)
	defer t.Stop()
	var after time.Time // where the next look starts: a backlog is looked at page by page
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		jobs, err := p.db.UnstartedAsync(ctx, after, time.Now().Add(-lostAfter), lostBatch)
		if err != nil {
			if ctx.Err() == nil {
				p.log.Warn("look for async invocations the queue lost; retrying", "error", err)
			}
			continue
		}
		if len(jobs) == lostBatch {
			after = jobs[len(jobs)-1].EnqueuedAt
		} else {
			after = time.Time{}
		}
		for _, j := range jobs {
			held, err := p.cluster.queue.Holds(ctx, j.ID)
			if err == nil && !held {
				if err = p.cluster.queue.Enqueue(ctx, j.ID, j.Tenant); err == nil {
					p.log.Warn("queued again an async invocation the cluster's queue did not hold (its gateway stopped before it queued it)", "invocation_id", j.ID, "agent_id", j.AgentID)
				}
			}
			if err != nil {
				if ctx.Err() == nil {
					p.log.Warn("look for async invocations the queue lost; retrying", "invocation_id", j.ID, "error", err)
				}
				break
			}
		}
	}
}

// nodeAsync is a node's share of the async work: how many of each
// tenant's invocations run here.
type nodeAsync struct {
	mu      sync.Mutex
	running map[string]int
	started atomic.Bool   // consume runs
	done    chan struct{} // closed when consume has returned
}

// consumeAsync runs async invocations from the queue until ctx ends, then
// lets the ones running finish for asyncGrace.
func (p *Platform) consumeAsync(ctx context.Context) {
	na := p.cluster.async
	defer close(na.done)
	runCtx, cutOff := context.WithCancel(context.Background())
	defer cutOff()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(asyncGrace, cutOff) })
	defer stop()
	ops := p.cluster.ops
	for ctx.Err() == nil {
		// Until a drain stops this run (its invocations finish), or ctx ends.
		cctx, cancel := context.WithCancel(ctx)
		ops.mu.Lock()
		resumed := ops.resumed
		if ops.draining {
			cancel()
		} else {
			ops.stopAsync = cancel
		}
		ops.mu.Unlock()
		if cctx.Err() == nil {
			p.cluster.queue.Consume(cctx, p.cfg.Async.Workers, func(d cluster.Delivery) { p.runDelivery(runCtx, d) })
			cancel()
			continue
		}
		select { // draining: wait for resume
		case <-resumed:
		case <-ctx.Done():
		}
	}
}

// tenantSlot takes one of tenant's places on this node (TenantWorkers), so
// that one tenant's backlog does not hold every worker.
func (na *nodeAsync) tenantSlot(tenant string, most int) (release func(), ok bool) {
	na.mu.Lock()
	defer na.mu.Unlock()
	if na.running[tenant] >= most {
		return nil, false
	}
	na.running[tenant]++
	return func() {
		na.mu.Lock()
		if na.running[tenant]--; na.running[tenant] <= 0 {
			delete(na.running, tenant)
		}
		na.mu.Unlock()
	}, true
}

// runDelivery runs one delivered invocation, or decides it was run.
func (p *Platform) runDelivery(ctx context.Context, d cluster.Delivery) {
	j, err := p.db.AsyncJob(ctx, d.ID)
	switch {
	case errors.Is(err, domain.ErrNotFound):
		d.Ack() // ended already (a redelivery), or its agent was deleted
		return
	case err != nil:
		p.log.Warn("read an async invocation; it will be delivered again", "invocation_id", d.ID, "error", err)
		d.Retry(time.Second)
		return
	}
	if j.CancelRequested {
		// Cancelled while no node ran it (its node died, it waits to be
		// delivered again): it ends cancelled, not run.
		if err := p.finishCancelled(ctx, j, "before it ran again"); err != nil && !errors.Is(err, domain.ErrNotFound) {
			d.Retry(time.Second)
			return
		}
		d.Ack()
		return
	}
	if j.ThreadID != "" && j.StartedAt.IsZero() {
		if ahead, err := p.db.ThreadAhead(ctx, j); err != nil || ahead {
			d.Retry(threadWait) // an earlier run of its thread goes first
			return
		}
	}
	release, ok := p.cluster.async.tenantSlot(j.Tenant, p.cfg.Async.TenantWorkers)
	if !ok {
		d.Retry(250 * time.Millisecond) // another tenant's may run meanwhile
		return
	}
	defer release()
	if !j.StartedAt.IsZero() {
		// Started before, by a node that stopped (or lost its lease)
		// while it ran: as after a single server's crash, it runs again
		// only if its entrypoint is idempotent and has attempts left.
		a := p.servingAgent(ctx, j.AgentID)
		idempotent := a != nil && a.Idempotent(j.EntrypointTag)
		if !idempotent || j.Attempts >= p.cfg.Async.MaxAttempts {
			if err := p.async.failInterrupted(ctx, j, idempotent); err != nil && !errors.Is(err, domain.ErrNotFound) {
				d.Retry(time.Second)
				return
			}
			d.Ack()
			return
		}
		p.log.Info("running an interrupted async invocation again (its entrypoint is idempotent)", "invocation_id", j.ID, "attempt", j.Attempts+1)
	}
	if p.runAsyncJob(ctx, j) {
		d.Ack()
	}
	// Otherwise it stays in the queue, its lease running out: the node
	// that gets it next decides as about an interruption.
}

// localFirst runs a node's async invocation on this node's own pool of
// its version when there is one, so that the node that holds the lease is
// the one running it; else anywhere in the cluster.
type localFirst struct{ local, cluster domain.Dispatcher }

// elsewhere: the call runs on another node (its version does not run
// here, or its user's folders are held by another node).
func elsewhere(err error) bool {
	ue := (*domain.UserElsewhere)(nil)
	return errors.Is(err, dispatch.ErrNotHere) || errors.As(err, &ue)
}

func (l localFirst) Call(ctx context.Context, t domain.Target, tag string, args, kwargs []byte) ([]byte, error) {
	out, err := l.local.Call(ctx, t, tag, args, kwargs)
	if elsewhere(err) {
		return l.cluster.Call(ctx, t, tag, args, kwargs)
	}
	return out, err
}

func (l localFirst) Stream(ctx context.Context, t domain.Target, tag string, args, kwargs []byte, started func(), fn domain.ChunkFunc) (int, error) {
	n, err := l.local.Stream(ctx, t, tag, args, kwargs, started, fn)
	if elsewhere(err) {
		return l.cluster.Stream(ctx, t, tag, args, kwargs, started, fn)
	}
	return n, err
}

// servingAgent is the agent's active version, read from the store when
// this server does not know it yet (on a cluster, the notice of its
// activation may still be on its way).
func (p *Platform) servingAgent(ctx context.Context, id string) *domain.Agent {
	a, _, _ := p.mgr.Lookup(id)
	if a == nil && p.cluster != nil && p.readThrough(ctx, id) == nil {
		a, _, _ = p.mgr.Lookup(id)
	}
	return a
}
