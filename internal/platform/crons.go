package platform

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
	_ "time/tzdata" // IANA zones on hosts without /usr/share/zoneinfo

	"github.com/google/uuid"
	"github.com/robfig/cron/v3"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/server"
)

// Crons create background runs on a schedule. One server fires them (the
// single server, or a cluster's scheduler): every second it takes the
// crons due, creates each one's run under the Idempotency-Key
// "cron:ID:TICK" and only then moves its next tick on, so that a tick
// fires exactly once across restarts (a tick created but not moved on is
// created again as a replay) and across servers (the key is unique per
// agent). A tick found more than cronGrace late (no server fired: all
// were down) is skipped, not caught up; the next is the first after now.

const (
	cronEvery = time.Second
	cronBatch = 100
	cronGrace = time.Minute
)

// cronParser reads 5-field expressions (minute to weekday), an optional
// leading seconds field, and @hourly, @daily, @every 5m and the like.
var cronParser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// parseCron reads a schedule in a zone, naming the field at fault.
func parseCron(schedule, zone string) (cron.Schedule, *time.Location, *domain.Error) {
	if strings.HasPrefix(strings.TrimSpace(schedule), "TZ=") || strings.HasPrefix(strings.TrimSpace(schedule), "CRON_TZ=") {
		return nil, nil, &domain.Error{Code: domain.CodeValidation, Field: "schedule", Message: "give the zone in the timezone field, not in the schedule"}
	}
	s, err := cronParser.Parse(schedule)
	if err != nil {
		return nil, nil, &domain.Error{Code: domain.CodeValidation, Field: "schedule", Message: fmt.Sprintf(
			"%v; expected a cron expression like \"*/5 * * * *\" (minute hour day month weekday, an optional seconds field first) or @hourly, @daily, @every 10m", err)}
	}
	loc, err := time.LoadLocation(zone)
	if err != nil || zone == "" || zone == "Local" {
		return nil, nil, &domain.Error{Code: domain.CodeValidation, Field: "timezone", Message: fmt.Sprintf("%q is not an IANA time zone (like UTC or Europe/Paris)", zone)}
	}
	return s, loc, nil
}

// nextTick is the first tick of s after t (zero past end).
func nextTick(s cron.Schedule, loc *time.Location, t, end time.Time) time.Time {
	n := s.Next(t.In(loc)).UTC()
	if n.IsZero() || (!end.IsZero() && n.After(end)) {
		return time.Time{}
	}
	return n
}

// fireCrons fires the crons due every cronEvery until ctx ends.
func (p *Platform) fireCrons(ctx context.Context) {
	t := time.NewTicker(cronEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		due, err := p.db.DueCrons(ctx, now, cronBatch)
		if err != nil {
			if ctx.Err() == nil {
				p.log.Warn("read the crons due; retrying", "error", err)
			}
			continue
		}
		for _, c := range due {
			p.fire(ctx, c, now)
		}
	}
}

// fire creates the run of a cron's due tick and moves it to the next.
func (p *Platform) fire(ctx context.Context, c domain.Cron, now time.Time) {
	tick := c.NextAt
	s, loc, e := parseCron(c.Schedule, c.Timezone)
	if e != nil { // it was checked when created: a zone database changed
		p.log.Error("a cron's schedule no longer reads; it is paused", "cron_id", c.ID, "error", e)
		p.db.SetCronPaused(ctx, c.ID, true, time.Time{})
		return
	}
	next := nextTick(s, loc, now, c.EndAt)
	runID := ""
	a := p.servingAgent(ctx, c.AgentID)
	if late := now.Sub(tick); late > cronGrace {
		p.log.Warn("a cron's tick was missed (no server fired it); it is skipped", "cron_id", c.ID, "tick", tick, "late", late.Round(time.Second))
	} else if a == nil {
		p.log.Warn("a cron's agent is not serving; its tick is skipped", "cron_id", c.ID, "agent_id", c.AgentID, "tick", tick)
	} else {
		id, _ := uuid.NewV7()
		inv := domain.Invocation{ID: id.String(), AgentID: a.ID, EntrypointTag: c.EntrypointTag, SDKType: "cron",
			InputArgs: c.InputArgs, InputKwargs: c.InputKwargs, Status: domain.StatusPending, RequestTime: now,
			ClientInfo: json.RawMessage(fmt.Sprintf(`{"cron_id":%q,"tick":%q}`, c.ID, tick.Format(time.RFC3339)))}
		key := fmt.Sprintf("cron:%s:%d", c.ID, tick.Unix())
		// Its webhook was checked when the cron was made (deliveries check
		// every connection): a name that stopped resolving skips no tick.
		rid, _, err := p.enqueueRun(ctx, a, inv, server.RunOptions{IdempotencyKey: key, Webhook: c.Webhook})
		switch {
		case err == nil:
			runID = rid
		case domain.CodeOf(err) == domain.CodeConnection || ctx.Err() != nil:
			p.log.Warn("create a cron's run; retrying", "cron_id", c.ID, "tick", tick, "error", err)
			return // the store or the queue is away: the tick stays due
		default: // a full backlog, and what retrying cannot mend
			p.log.Warn("a cron's run was refused; its tick is skipped", "cron_id", c.ID, "tick", tick, "error", err)
		}
	}
	if err := p.db.AdvanceCron(ctx, c.ID, tick, next, runID); err != nil && !errors.Is(err, domain.ErrNotFound) {
		p.log.Warn("move a cron to its next tick; retrying (its run exists: it is not created twice)", "cron_id", c.ID, "error", err)
	}
}

// cronRequest is the body of POST /api/v1/agents/{id}/crons.
type cronRequest struct {
	Schedule      string          `json:"schedule"`
	Timezone      string          `json:"timezone"`
	EntrypointTag string          `json:"entrypoint_tag"`
	InputArgs     json.RawMessage `json:"input_args"`
	InputKwargs   json.RawMessage `json:"input_kwargs"`
	EndTime       string          `json:"end_time"`
	Webhook       string          `json:"webhook"`
}

// cronJSON is a cron as the API shows it.
type cronJSON struct {
	CronID        string          `json:"cron_id"`
	AgentID       string          `json:"agent_id"`
	Schedule      string          `json:"schedule"`
	Timezone      string          `json:"timezone"`
	EntrypointTag string          `json:"entrypoint_tag"`
	InputArgs     json.RawMessage `json:"input_args"`
	InputKwargs   json.RawMessage `json:"input_kwargs"`
	Webhook       *string         `json:"webhook"`
	EndTime       *string         `json:"end_time"`
	Paused        bool            `json:"paused"`
	NextRunAt     *string         `json:"next_run_at"`
	LastRunID     *string         `json:"last_run_id"`
	CreatedAt     string          `json:"created_at"`
}

func cronView(c domain.Cron) cronJSON {
	v := cronJSON{CronID: c.ID, AgentID: c.AgentID, Schedule: c.Schedule, Timezone: c.Timezone, EntrypointTag: c.EntrypointTag,
		InputArgs: json.RawMessage(c.InputArgs), InputKwargs: json.RawMessage(c.InputKwargs), Paused: c.Paused,
		CreatedAt: c.CreatedAt.UTC().Format(time.RFC3339Nano)}
	opt := func(s string) *string {
		if s == "" {
			return nil
		}
		return &s
	}
	ts := func(t time.Time) *string {
		if t.IsZero() {
			return nil
		}
		return opt(t.UTC().Format(time.RFC3339Nano))
	}
	v.Webhook, v.LastRunID, v.EndTime, v.NextRunAt = opt(c.Webhook), opt(c.LastRunID), ts(c.EndAt), ts(c.NextAt)
	if c.Paused {
		v.NextRunAt = nil
	}
	return v
}

// handleCreateCron is POST /api/v1/agents/{id}/crons (run).
func (p *Platform) handleCreateCron(w http.ResponseWriter, r *http.Request) {
	k, ok := p.requireKey(w, r, domain.ScopeRun)
	if !ok {
		return
	}
	id, ok := p.ownedAgent(w, k, r.PathValue("id"))
	if !ok {
		return
	}
	var req cronRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		p.wire.WriteError(w, &domain.Error{Code: domain.CodeValidation, Message: fmt.Sprintf(
			"the body is not a cron (%v); send {\"schedule\": \"*/5 * * * *\", \"entrypoint_tag\": \"...\", \"input_kwargs\": {}}", err)})
		return
	}
	c, e := p.checkCron(r.Context(), id, req)
	if e != nil {
		p.wire.WriteError(w, e)
		return
	}
	_, c.Tenant, _ = p.mgr.Lookup(id)
	if err := p.db.CreateCron(r.Context(), c); err != nil {
		p.storeError(w, err)
		return
	}
	w.Header().Set("Location", "/api/v1/crons/"+c.ID)
	p.wire.WriteEnvelope(w, http.StatusCreated, cronView(c), "Cron created; its first run is at next_run_at")
}

// checkCron reads a create request into a cron, or says which field is wrong.
func (p *Platform) checkCron(ctx context.Context, agentID string, req cronRequest) (domain.Cron, *domain.Error) {
	bad := func(field, format string, a ...any) (domain.Cron, *domain.Error) {
		return domain.Cron{}, &domain.Error{Code: domain.CodeValidation, Field: field, Message: fmt.Sprintf(format, a...)}
	}
	if req.Schedule == "" {
		return bad("schedule", "required: a cron expression like \"0 9 * * 1-5\"")
	}
	if req.Timezone == "" {
		req.Timezone = "UTC"
	}
	s, loc, e := parseCron(req.Schedule, req.Timezone)
	if e != nil {
		return domain.Cron{}, e
	}
	a, _, _ := p.mgr.Lookup(agentID)
	if a == nil {
		return domain.Cron{}, &domain.Error{Code: domain.CodeNotFound, Message: fmt.Sprintf("agent %s is not started: start it before scheduling its runs", agentID)}
	}
	ep, ok := a.Entrypoint(req.EntrypointTag)
	switch {
	case req.EntrypointTag == "":
		return bad("entrypoint_tag", "required: the tag of the entrypoint each run calls")
	case !ok:
		return domain.Cron{}, &domain.Error{Code: domain.CodeNotFound, Field: "entrypoint_tag", Message: fmt.Sprintf("Entrypoint %s not found", req.EntrypointTag)}
	case ep.Streaming():
		return bad("entrypoint_tag", "%s is a streaming entrypoint: a scheduled run calls a plain one", req.EntrypointTag)
	}
	args, kwargs := []byte(req.InputArgs), []byte(req.InputKwargs)
	if len(args) == 0 || string(args) == "null" {
		args = []byte("[]")
	} else if args[0] != '[' {
		return bad("input_args", "expected a list")
	}
	if len(kwargs) == 0 || string(kwargs) == "null" {
		kwargs = []byte("{}")
	} else if kwargs[0] != '{' {
		return bad("input_kwargs", "expected an object")
	}
	now := time.Now()
	var end time.Time
	if req.EndTime != "" {
		var err error
		if end, err = time.Parse(time.RFC3339, req.EndTime); err != nil {
			return bad("end_time", "expected an RFC 3339 time like 2027-01-31T18:00:00Z, got %q", req.EndTime)
		}
	}
	next := nextTick(s, loc, now, end)
	if next.IsZero() {
		return bad("end_time", "%s comes before the schedule's first tick: nothing would run", req.EndTime)
	}
	if req.Webhook != "" {
		if err := p.guard.CheckURL(ctx, req.Webhook); err != nil {
			var de *domain.Error
			if errors.As(err, &de) {
				return domain.Cron{}, de
			}
			return bad("webhook", "%v", err)
		}
	}
	id, _ := uuid.NewV7()
	return domain.Cron{ID: id.String(), AgentID: agentID, Schedule: req.Schedule, Timezone: req.Timezone, EntrypointTag: req.EntrypointTag,
		InputArgs: args, InputKwargs: kwargs, Webhook: req.Webhook, EndAt: end, NextAt: next, CreatedAt: now.UTC()}, nil
}

// ownedCron finds the cron of the path for key k: another tenant's looks
// missing.
func (p *Platform) ownedCron(w http.ResponseWriter, r *http.Request, k *domain.Key) (domain.Cron, bool) {
	id := r.PathValue("cron_id")
	c, err := p.db.Cron(r.Context(), id)
	if err == nil {
		if _, tenant, ok := p.mgr.Lookup(c.AgentID); ok && k.CanSee(tenant) && k.AllowsAgent(c.AgentID) {
			return c, true
		}
	} else if !errors.Is(err, domain.ErrNotFound) {
		p.storeError(w, err)
		return c, false
	}
	p.wire.WriteError(w, &domain.Error{Code: domain.CodeNotFound, Message: fmt.Sprintf("Cron %s not found", id)})
	return c, false
}

// handleCrons is GET /api/v1/agents/{id}/crons (run).
func (p *Platform) handleCrons(w http.ResponseWriter, r *http.Request) {
	k, ok := p.requireKey(w, r, domain.ScopeRun, domain.ScopeDeploy)
	if !ok {
		return
	}
	id, ok := p.ownedAgent(w, k, r.PathValue("id"))
	if !ok {
		return
	}
	cs, err := p.db.ListCrons(r.Context(), []string{id})
	if err != nil {
		p.storeError(w, err)
		return
	}
	out := make([]cronJSON, len(cs))
	for i, c := range cs {
		out[i] = cronView(c)
	}
	p.wire.WriteEnvelope(w, http.StatusOK, map[string]any{"agent_id": id, "crons": out}, "Crons")
}

// handleCron is GET /api/v1/crons/{cron_id} (run).
func (p *Platform) handleCron(w http.ResponseWriter, r *http.Request) {
	k, ok := p.requireKey(w, r, domain.ScopeRun, domain.ScopeDeploy)
	if !ok {
		return
	}
	if c, ok := p.ownedCron(w, r, k); ok {
		p.wire.WriteEnvelope(w, http.StatusOK, cronView(c), "Cron")
	}
}

// handleCronAction is POST /api/v1/crons/{cron_id}/pause and /resume (run).
func (p *Platform) handleCronAction(w http.ResponseWriter, r *http.Request) {
	k, ok := p.requireKey(w, r, domain.ScopeRun)
	if !ok {
		return
	}
	c, ok := p.ownedCron(w, r, k)
	if !ok {
		return
	}
	var err error
	switch action := r.PathValue("action"); action {
	case "pause":
		err = p.db.SetCronPaused(r.Context(), c.ID, true, time.Time{})
	case "resume":
		s, loc, e := parseCron(c.Schedule, c.Timezone)
		if e != nil {
			p.wire.WriteError(w, e)
			return
		}
		err = p.db.SetCronPaused(r.Context(), c.ID, false, nextTick(s, loc, time.Now(), c.EndAt))
	default:
		p.wire.WriteError(w, &domain.Error{Code: domain.CodeNotFound, Message: fmt.Sprintf("no cron action %q: pause or resume", action)})
		return
	}
	if err != nil {
		p.storeError(w, err)
		return
	}
	c, _ = p.db.Cron(r.Context(), c.ID)
	p.wire.WriteEnvelope(w, http.StatusOK, cronView(c), "Cron "+r.PathValue("action")+"d")
}

// handleDeleteCron is DELETE /api/v1/crons/{cron_id} (run); its runs stay.
func (p *Platform) handleDeleteCron(w http.ResponseWriter, r *http.Request) {
	k, ok := p.requireKey(w, r, domain.ScopeRun)
	if !ok {
		return
	}
	c, ok := p.ownedCron(w, r, k)
	if !ok {
		return
	}
	if err := p.db.DeleteCron(r.Context(), c.ID); err != nil && !errors.Is(err, domain.ErrNotFound) {
		p.storeError(w, err)
		return
	}
	p.wire.WriteEnvelope(w, http.StatusOK, map[string]any{"cron_id": c.ID, "deleted": true}, "Cron deleted; its runs stay")
}
