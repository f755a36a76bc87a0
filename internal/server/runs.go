package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/wire"
)

// The runs routes: a background run is created with the wire /run body
// (POST /api/v1/agents/{id}/runs), read, waited for and cancelled by its
// id. Every answer is a wire envelope; a run shows as wire.RunRecord.

// maxRunWait bounds GET /runs/{id}/wait.
const maxRunWait = 5 * time.Minute

// readRunRequest reads and checks a wire /run body and finds its
// entrypoint, or answers the error (ok false).
func (s *Server) readRunRequest(w http.ResponseWriter, r *http.Request, a *Agent) (body []byte, req runRequest, streaming, ok bool) {
	body, status, e := s.readBody(w, r)
	if e != nil {
		s.writeError(w, status, e)
		return nil, req, false, false
	}
	if req, e = decodeRunRequest(body); e != nil {
		s.writeError(w, http.StatusBadRequest, e)
		return nil, req, false, false
	}
	tag := *req.EntrypointTag
	if streaming, ok = a.tags[tag]; !ok {
		s.writeError(w, http.StatusNotFound, &domain.Error{Code: domain.CodeNotFound, Field: "entrypoint_tag", Message: fmt.Sprintf("Entrypoint %s not found", tag)})
	}
	return body, req, streaming, ok
}

func (s *Server) handleCreateRun(w http.ResponseWriter, r *http.Request, a *Agent) {
	start := time.Now()
	body, req, streaming, ok := s.readRunRequest(w, r, a)
	if !ok {
		return
	}
	tag := *req.EntrypointTag
	if streaming {
		s.writeError(w, http.StatusBadRequest, &domain.Error{Code: domain.CodeValidation, Field: "entrypoint_tag",
			Message: fmt.Sprintf("%s is a streaming entrypoint: a background run calls a plain one (stream it with the run-stream route)", tag)})
		return
	}
	var fields struct {
		Webhook   *string         `json:"webhook"`
		ThreadID  json.RawMessage `json:"thread_id"`
		Multitask json.RawMessage `json:"multitask"`
	}
	if err := json.Unmarshal(body, &fields); err != nil {
		s.writeError(w, http.StatusBadRequest, &domain.Error{Code: domain.CodeValidation, Field: "webhook", Message: "expected an http:// or https:// URL as a string"})
		return
	}
	opts := RunOptions{TimeoutSeconds: deref(req.TimeoutSeconds), User: req.user()}
	if len(fields.ThreadID) > 0 && string(fields.ThreadID) != "null" {
		if json.Unmarshal(fields.ThreadID, &opts.ThreadID) != nil || !printableID(opts.ThreadID) {
			s.writeError(w, http.StatusBadRequest, &domain.Error{Code: domain.CodeValidation, Field: "thread_id", Message: "expected a string of 1 to 128 printable ASCII characters (a conversation's id)"})
			return
		}
	}
	if len(fields.Multitask) > 0 && string(fields.Multitask) != "null" {
		if json.Unmarshal(fields.Multitask, &opts.Multitask) != nil || (opts.Multitask != "reject" && opts.Multitask != "enqueue") {
			s.writeError(w, http.StatusBadRequest, &domain.Error{Code: domain.CodeValidation, Field: "multitask", Message: `expected "reject" (the default: refused while another run of the thread is queued or running) or "enqueue" (it runs after them)`})
			return
		}
		if opts.ThreadID == "" {
			s.writeError(w, http.StatusBadRequest, &domain.Error{Code: domain.CodeValidation, Field: "multitask", Message: "multitask orders the runs of a thread: give thread_id too"})
			return
		}
	}
	if fields.Webhook != nil {
		opts.Webhook = *fields.Webhook
		if opts.Webhook == "" {
			s.writeError(w, http.StatusBadRequest, &domain.Error{Code: domain.CodeValidation, Field: "webhook", Message: "expected an http:// or https:// URL, got an empty string"})
			return
		}
	}
	s.runAsync(w, r, a, domain.Invocation{
		ID: newInvocationID(), AgentID: a.ID, EntrypointTag: tag, InputArgs: req.InputArgs, InputKwargs: req.InputKwargs,
		Status: domain.StatusPending, RequestTime: start, ClientInfo: a.clientInfo,
	}, opts, true)
}

// printableID says whether s is 1 to 128 printable ASCII characters.
func printableID(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for _, c := range []byte(s) {
		if c < 0x21 || c > 0x7e {
			return false
		}
	}
	return true
}

// handleWebhookAttempts lists the attempts to deliver a run's webhook.
func (s *Server) handleWebhookAttempts(w http.ResponseWriter, r *http.Request) {
	run, ok := s.admitRun(w, r, ActReadInvocation)
	if !ok {
		return
	}
	attempts, err := s.cfg.Runs.WebhookAttempts(r.Context(), run.ID)
	if err != nil {
		s.storeFailure(w, err)
		return
	}
	type attemptJSON struct {
		Attempt    int     `json:"attempt"`
		At         string  `json:"at"`
		URL        string  `json:"url"`
		StatusCode int     `json:"status_code"`
		Error      *string `json:"error"`
		DurationMS float64 `json:"duration_ms"`
	}
	out := make([]attemptJSON, len(attempts))
	for i, a := range attempts {
		out[i] = attemptJSON{Attempt: a.Attempt, At: wire.IsoFormat(a.At), URL: a.URL, StatusCode: a.StatusCode, DurationMS: a.DurationMS}
		if a.Error != "" {
			out[i].Error = &a.Error
		}
	}
	s.WriteEnvelope(w, http.StatusOK, map[string]any{"run_id": run.ID, "webhook": run.Webhook, "attempts": out}, "Webhook attempts")
}

// admitRun finds the run of the path for the request (act on its agent):
// another tenant's run looks exactly like a missing one.
func (s *Server) admitRun(w http.ResponseWriter, r *http.Request, act Action) (domain.Run, bool) {
	id := r.PathValue("run_id")
	// Authenticate before looking: whether an id exists is not for strangers.
	if _, _, e := s.dir.Admit(w, r, "", ActReadHistory); e != nil {
		s.WriteError(w, e)
		return domain.Run{}, false
	}
	notFound := &domain.Error{Code: domain.CodeNotFound, Message: fmt.Sprintf("Run %s not found", id)}
	run, err := s.cfg.Runs.Run(r.Context(), id)
	if errors.Is(err, domain.ErrNotFound) {
		s.WriteError(w, notFound)
		return domain.Run{}, false
	}
	if err != nil {
		s.storeFailure(w, err)
		return domain.Run{}, false
	}
	_, release, e := s.dir.Admit(w, r, run.AgentID, act)
	if e != nil {
		if e.Code == domain.CodeNotFound {
			e = notFound
		}
		s.WriteError(w, e)
		return domain.Run{}, false
	}
	if release != nil {
		release()
	}
	return run, true
}

func (s *Server) handleGetRun(w http.ResponseWriter, r *http.Request) {
	if run, ok := s.admitRun(w, r, ActReadInvocation); ok {
		s.WriteEnvelope(w, http.StatusOK, wire.RunRecord(run), "Run "+string(run.Status()))
	}
}

// handleWaitRun answers once the run has ended, or after timeout_seconds
// (default 30, at most 300) with the run as it is then.
func (s *Server) handleWaitRun(w http.ResponseWriter, r *http.Request) {
	wait := 30 * time.Second
	if v := r.URL.Query().Get("timeout_seconds"); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < 0 || f > maxRunWait.Seconds() {
			s.WriteError(w, &domain.Error{Code: domain.CodeValidation, Field: "timeout_seconds",
				Message: fmt.Sprintf("expected seconds from 0 to %.0f, got %q", maxRunWait.Seconds(), v)})
			return
		}
		wait = time.Duration(f * float64(time.Second))
	}
	run, ok := s.admitRun(w, r, ActReadInvocation)
	if !ok {
		return
	}
	deadline := time.Now().Add(wait)
	for pause := 20 * time.Millisecond; !run.Ended() && time.Now().Add(pause).Before(deadline); pause = min(2*pause, 500*time.Millisecond) {
		select {
		case <-r.Context().Done():
			return
		case <-time.After(pause):
		}
		next, err := s.cfg.Runs.Run(r.Context(), run.ID)
		if err != nil {
			s.storeFailure(w, err)
			return
		}
		run = next
	}
	message := "Run " + string(run.Status())
	if !run.Ended() {
		message = fmt.Sprintf("Run still %s after %s; wait again", run.Status(), wait)
	}
	s.WriteEnvelope(w, http.StatusOK, wire.RunRecord(run), message)
}

// handleCancelRun cancels a run: 200 with the run once it has ended
// (cancelled, or it had ended before), 202 while its cancel is on its way.
func (s *Server) handleCancelRun(w http.ResponseWriter, r *http.Request) {
	run, ok := s.admitRun(w, r, ActRun)
	if !ok {
		return
	}
	if run.Ended() {
		s.WriteEnvelope(w, http.StatusOK, wire.RunRecord(run), "Run had already ended: "+string(run.Status()))
		return
	}
	run, err := s.cfg.Runs.CancelRun(r.Context(), run)
	if err != nil {
		we, _ := s.callFailure(err)
		s.WriteError(w, we)
		return
	}
	if !run.Ended() {
		s.WriteEnvelope(w, http.StatusAccepted, wire.RunRecord(run), "Cancel requested; the run is still "+string(run.Status()))
		return
	}
	s.WriteEnvelope(w, http.StatusOK, wire.RunRecord(run), "Run "+string(run.Status()))
}
