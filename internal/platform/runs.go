package platform

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/runagent-go/runagent/internal/cluster"
	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/platformapi"
	"github.com/runagent-go/runagent/internal/server"
	"github.com/runagent-go/runagent/internal/webhook"
	"github.com/runagent-go/runagent/internal/wire"
)

// Background runs are the async invocations seen as runs (the store's
// Runs): the wire server serves their routes (server.RunService), the
// platform cancels them where they run and lists them.

// errRunCancelled is the cause of a running run's context once a client
// cancelled it.
var errRunCancelled = errors.New("the run was cancelled")

// cancelWait is how long a cancel waits for a running run to end.
const cancelWait = 5 * time.Second

// runningRuns are the runs this server runs now, each with its cancel.
type runningRuns struct {
	mu sync.Mutex
	m  map[string]context.CancelCauseFunc
}

// add registers run id, running under ctx, until forget is called.
func (rr *runningRuns) add(ctx context.Context, id string) (_ context.Context, forget func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	rr.mu.Lock()
	if rr.m == nil {
		rr.m = map[string]context.CancelCauseFunc{}
	}
	rr.m[id] = cancel
	rr.mu.Unlock()
	return ctx, func() {
		rr.mu.Lock()
		delete(rr.m, id)
		rr.mu.Unlock()
		cancel(nil)
	}
}

// cancel cancels run id if it runs here.
func (rr *runningRuns) cancel(id string) bool {
	rr.mu.Lock()
	cancel := rr.m[id]
	rr.mu.Unlock()
	if cancel != nil {
		cancel(errRunCancelled)
	}
	return cancel != nil
}

// runService is the platform's server.RunService.
type runService struct{ p *Platform }

func (rs runService) Run(ctx context.Context, id string) (domain.Run, error) {
	return rs.p.db.Run(ctx, id)
}

func (rs runService) CancelRun(ctx context.Context, run domain.Run) (domain.Run, error) {
	return rs.p.cancelRun(ctx, run)
}

func (rs runService) WebhookAttempts(ctx context.Context, runID string) ([]domain.WebhookAttempt, error) {
	return rs.p.db.WebhookAttempts(ctx, runID)
}

// runEnded delivers the outcome of a run that has just ended to its
// webhook, if it has one, in the background (the deliverer retries it
// and records every attempt).
func (p *Platform) runEnded(runID, hook string) {
	if hook == "" {
		return
	}
	go func() {
		ctx := context.Background()
		run, err := p.db.Run(ctx, runID)
		if err == nil && run.Webhook == "" {
			return
		}
		var secret string
		if err == nil {
			secret, err = p.db.WebhookSecret(ctx, run.AgentID, webhook.NewSecret())
		}
		var body []byte
		if err == nil {
			body, err = json.Marshal(wire.RunRecord(run))
		}
		if err != nil {
			p.log.Error("a run's webhook is not sent: its record could not be read", "run_id", runID, "error", err)
			return
		}
		p.webhooks.Deliver(ctx, runID, run.Webhook, secret, body)
	}()
}

// webhookResumeWindow is how far back a restarted server looks for runs
// whose webhook it had not delivered; webhookResumeBatch, how many it takes.
const (
	webhookResumeWindow = 24 * time.Hour
	webhookResumeBatch  = 1000
)

// resumeWebhooks goes on, in the background, with the deliveries this
// server left unfinished when it stopped: the retries of a receiver that
// was down, or a run that ended just before. (One server only: on a
// cluster a gateway's unfinished deliveries die with it; see
// docs/multinode.md.)
func (p *Platform) resumeWebhooks(ctx context.Context) {
	runs, err := p.db.UndeliveredWebhooks(ctx, time.Now().Add(-webhookResumeWindow), webhookResumeBatch)
	if err != nil {
		p.log.Error("the webhooks left undelivered by the last run of the server are not resumed", "error", err)
		return
	}
	resumed := 0
	for _, run := range runs {
		past, err := p.db.WebhookAttempts(ctx, run.ID)
		if err != nil {
			p.log.Error("a run's webhook is not resumed: its attempts could not be read", "run_id", run.ID, "error", err)
			continue
		}
		if n := len(past); n > 0 && webhook.Finished(past[n-1]) {
			continue
		}
		secret, err := p.db.WebhookSecret(ctx, run.AgentID, webhook.NewSecret())
		var body []byte
		if err == nil {
			body, err = json.Marshal(wire.RunRecord(run))
		}
		if err != nil {
			p.log.Error("a run's webhook is not resumed", "run_id", run.ID, "error", err)
			continue
		}
		resumed++
		go p.webhooks.Resume(context.Background(), run.ID, run.Webhook, secret, body, past)
	}
	if resumed > 0 {
		p.log.Info("resuming webhook deliveries left unfinished before the restart", "count", resumed)
	}
}

// handleWebhookSecret is GET /api/v1/agents/{id}/webhook-secret (deploy):
// the secret the agent's webhooks are signed with, made on first use.
func (p *Platform) handleWebhookSecret(w http.ResponseWriter, r *http.Request) {
	k, ok := p.requireKey(w, r, domain.ScopeDeploy)
	if !ok {
		return
	}
	id, ok := p.ownedAgent(w, k, r.PathValue("id"))
	if !ok {
		return
	}
	secret, err := p.db.WebhookSecret(r.Context(), id, webhook.NewSecret())
	if err != nil {
		p.storeError(w, err)
		return
	}
	p.wire.WriteEnvelope(w, http.StatusOK, map[string]any{
		"agent_id": id, "secret": secret, "algorithm": "HMAC-SHA256",
		"signature_header": webhook.HeaderSignature, "timestamp_header": webhook.HeaderTimestamp,
		"signed": "TIMESTAMP + \".\" + BODY, as v1=HEX",
	}, "The secret this agent's webhooks are signed with")
}

// cancelRun cancels a background run: one that has not started ends
// cancelled at once (it never runs); a running one has its call cancelled
// where it runs (the Python function's task is cancelled, a generator's
// finally runs) and ends cancelled.
func (p *Platform) cancelRun(ctx context.Context, run domain.Run) (domain.Run, error) {
	if server.IsDetached(run.Invocation) {
		// A stream that outlives its client: cancelled where it streams.
		if !p.wire.CancelDetached(run.ID, server.ErrRunCancelled) && p.cluster != nil {
			p.cluster.cl.Changed(cluster.ChangeCancel, run.ID)
		}
		return p.awaitEnd(ctx, run)
	}
	if !run.Background {
		return run, &domain.Error{Code: domain.CodeValidation, Message: fmt.Sprintf(
			"%s is a call, not a background run: a call is cancelled by closing its connection", run.ID)}
	}
	inv := run.Invocation
	inv.Status, inv.ResponseTime = domain.StatusFailed, time.Now()
	inv.ErrorDetail = string(domain.CodeCancelled) + ": the run was cancelled before it started"
	err := p.db.CancelQueuedAsync(ctx, inv)
	switch {
	case err == nil:
		if p.async != nil {
			p.async.drop(run.ID) // its backlog place is free now, not when a worker would have found it gone
		}
		p.runEnded(run.ID, run.Webhook)
		return p.db.Run(ctx, run.ID)
	case !errors.Is(err, domain.ErrNotFound):
		return run, err
	}
	// It started (or ended meanwhile): cancel it where it runs, and mark
	// it, so that a node that picks it up later (its node died) ends it.
	if err := p.db.RequestCancel(ctx, run.ID); err != nil && !errors.Is(err, domain.ErrNotFound) {
		return run, err
	}
	if !p.running.cancel(run.ID) && p.cluster != nil {
		p.cluster.cl.Changed(cluster.ChangeCancel, run.ID)
	}
	return p.awaitEnd(ctx, run)
}

// awaitEnd returns the run once it has ended, or after cancelWait.
func (p *Platform) awaitEnd(ctx context.Context, run domain.Run) (domain.Run, error) {
	deadline := time.Now().Add(cancelWait)
	for pause := 20 * time.Millisecond; ; pause = min(2*pause, 250*time.Millisecond) {
		now, err := p.db.Run(ctx, run.ID)
		if err != nil || now.Ended() || time.Now().Add(pause).After(deadline) {
			return now, err
		}
		select {
		case <-ctx.Done():
			return now, ctx.Err()
		case <-time.After(pause):
		}
	}
}

// finishCancelled records the outcome of a run cancelled when picked up.
func (p *Platform) finishCancelled(ctx context.Context, j domain.AsyncJob, when string) error {
	inv := j.Invocation
	inv.Status, inv.ResponseTime = domain.StatusFailed, time.Now()
	inv.ErrorDetail = string(domain.CodeCancelled) + ": the run was cancelled " + when
	if err := p.db.FinishAsync(context.WithoutCancel(ctx), inv); err != nil {
		return err
	}
	p.runEnded(inv.ID, j.Webhook)
	return nil
}

// pruneEvents removes, every 10 minutes until ctx ends, the event logs of
// streams that ended more than EventRetention ago.
func (p *Platform) pruneEvents(ctx context.Context) {
	keep := cmp.Or(p.cfg.EventRetention, 24*time.Hour)
	t := time.NewTicker(10 * time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n, err := p.db.PruneRunEvents(ctx, time.Now().Add(-keep)); err != nil && ctx.Err() == nil {
			p.log.Warn("prune the event logs of ended streams; retrying in 10 minutes", "error", err)
		} else if n > 0 {
			p.log.Info("pruned the event logs of ended streams", "events", n, "older_than", keep)
		}
	}
}

// handleRuns is GET /api/v1/runs?agent_id=&status=&limit=: the background
// runs the key may see, newest first.
func (p *Platform) handleRuns(w http.ResponseWriter, r *http.Request) {
	k, ok := p.requireKey(w, r, domain.ScopeRun, domain.ScopeDeploy)
	if !ok {
		return
	}
	q := r.URL.Query()
	limit := 50
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			p.wire.WriteError(w, &domain.Error{Code: domain.CodeValidation, Field: "limit", Message: fmt.Sprintf("expected a whole number from 1 to 1000, got %q", v)})
			return
		}
		limit = n
	}
	status := domain.RunStatus(q.Get("status"))
	if status != "" && !slices.Contains(domain.RunStatuses, status) {
		p.wire.WriteError(w, &domain.Error{Code: domain.CodeValidation, Field: "status",
			Message: fmt.Sprintf("expected pending, running, completed, failed, cancelled or timeout, got %q", status)})
		return
	}
	ids := p.visibleAgents(k)
	if a := q.Get("agent_id"); a != "" {
		id, ok := p.ownedAgent(w, k, a)
		if !ok {
			return
		}
		ids = []string{id}
	}
	runs, err := p.db.ListRuns(r.Context(), ids, status, limit)
	if err != nil {
		p.storeError(w, err)
		return
	}
	out := platformapi.RunList[wire.RunRecord]{Runs: make([]wire.RunRecord, len(runs)), TotalCount: len(runs)}
	for i, run := range runs {
		out.Runs[i] = wire.RunRecord(run)
	}
	p.wire.WriteEnvelope(w, http.StatusOK, out, "Runs")
}
