package platform

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/runagent-go/runagent/internal/runner"
	"github.com/runagent-go/runagent/internal/server"
	"github.com/runagent-go/runagent/internal/store"
	"github.com/runagent-go/runagent/internal/wire"
)

// asyncRunner runs accepted async invocations. Each is in the store's
// async queue from acceptance until its outcome is written, so a restart
// runs whatever was left.
type asyncRunner struct {
	p    *Platform
	jobs chan store.AsyncJob
}

const asyncQueue = 65536

func newAsyncRunner(p *Platform) *asyncRunner {
	return &asyncRunner{p: p, jobs: make(chan store.AsyncJob, asyncQueue)}
}

// resume queues what the store still holds (before the workers start).
func (ar *asyncRunner) resume(ctx context.Context) error {
	jobs, err := ar.p.db.PendingAsync(ctx)
	if err != nil {
		return err
	}
	for _, j := range jobs {
		ar.jobs <- j
	}
	if len(jobs) > 0 {
		ar.p.log.Info("resuming async invocations accepted before the restart", "count", len(jobs))
	}
	ar.p.metrics.asyncQueued.Set(float64(len(jobs)))
	return nil
}

func (ar *asyncRunner) start(ctx context.Context, workers int) {
	for range workers {
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case j := <-ar.jobs:
					ar.run(ctx, j)
				}
			}
		}()
	}
}

// enqueueAsync is server.Config.Async: durable first, then queued.
func (p *Platform) enqueueAsync(ctx context.Context, a *server.Agent, inv store.Invocation) error {
	if len(p.async.jobs) >= cap(p.async.jobs) {
		return &wire.Error{Code: wire.CodeOverloaded, RetryAfter: 5 * time.Second,
			Message: "too many async invocations are waiting; retry later"}
	}
	var timeout float64
	if a.CallTimeout > 0 {
		timeout = a.CallTimeout.Seconds()
	}
	if err := p.db.EnqueueAsync(ctx, inv, timeout); err != nil {
		return fmt.Errorf("record the async invocation: %w", err)
	}
	p.metrics.asyncQueued.Inc()
	p.async.jobs <- store.AsyncJob{Invocation: inv, TimeoutSeconds: timeout}
	return nil
}

func (ar *asyncRunner) run(ctx context.Context, j store.AsyncJob) {
	p := ar.p
	inv := j.Invocation
	start := time.Now()
	a, _, _ := p.mgr.Lookup(inv.AgentID)
	var result []byte
	var err error
	if a == nil {
		err = &wire.Error{Code: wire.CodeNotFound, Message: fmt.Sprintf("agent %s is not deployed or not started", inv.AgentID)}
	} else {
		timeout := p.cfg.Defaults.CallTimeout
		if j.TimeoutSeconds > 0 {
			timeout = time.Duration(j.TimeoutSeconds * float64(time.Second))
		}
		cctx, cancel := context.WithTimeoutCause(runner.WithInvocation(ctx, inv.ID), timeout, &wire.Error{Code: wire.CodeTimeout,
			Message: fmt.Sprintf("the agent did not finish within the call timeout of %s", timeout)})
		result, err = a.Invoker.Call(cctx, inv.EntrypointTag, inv.InputArgs, inv.InputKwargs)
		cancel()
	}
	if ctx.Err() != nil {
		return // shutting down: it stays queued and runs after the restart
	}
	inv.ResponseTime = time.Now()
	elapsed := inv.ResponseTime.Sub(start)
	inv.ExecutionMS = float64(elapsed.Microseconds()) / 1000
	code := ""
	if err == nil {
		inv.Status = store.StatusCompleted
		var v struct{ Payload string }
		if json.Unmarshal(result, &v) == nil && json.Valid([]byte(v.Payload)) {
			inv.Output = json.RawMessage(v.Payload)
		}
	} else {
		we, agentRaised := server.CallFailure(err)
		code = we.Code
		inv.Status = store.StatusFailed
		if agentRaised {
			inv.ErrorDetail = fmt.Sprintf("Server error running agent %s: %s", inv.AgentID, we.Message)
		} else {
			inv.ErrorDetail = we.Code + ": " + we.Message
		}
	}
	if a != nil {
		p.metrics.call(a, inv.EntrypointTag, code, elapsed)
	}
	if err := p.db.FinishAsync(context.Background(), inv); err != nil {
		p.log.Error("record the outcome of an async invocation", "invocation_id", inv.ID, "error", err)
		return
	}
	p.metrics.asyncQueued.Dec()
}
