package server

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/wire"
)

const maxListLimit = 10000

func (s *Server) handleInvocations(w http.ResponseWriter, r *http.Request, a *Agent) {
	q := r.URL.Query()
	limit := 50
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxListLimit {
			s.writeError(w, http.StatusBadRequest, &domain.Error{Code: domain.CodeValidation, Field: "limit",
				Message: fmt.Sprintf("expected a whole number from 1 to %d, got %q", maxListLimit, v)})
			return
		}
		limit = n
	}
	status := domain.Status(q.Get("status"))
	switch status {
	case "", domain.StatusPending, domain.StatusCompleted, domain.StatusFailed:
	default:
		s.writeError(w, http.StatusBadRequest, &domain.Error{Code: domain.CodeValidation, Field: "status",
			Message: fmt.Sprintf("expected pending, completed or failed, got %q", status)})
		return
	}
	invs, err := s.cfg.Recorder.List(r.Context(), a.ID, status, limit)
	if err != nil {
		s.storeFailure(w, err)
		return
	}
	s.writeJSON(w, http.StatusOK, map[string]any{"agent_id": a.ID, "invocations": wire.InvocationRecords(invs), "total_count": len(invs)})
}

func (s *Server) handleStats(w http.ResponseWriter, r *http.Request, a *Agent) {
	st, err := s.cfg.Recorder.Stats(r.Context(), a.ID)
	if err != nil {
		s.storeFailure(w, err)
		return
	}
	s.writeJSON(w, http.StatusOK, map[string]any{"agent_id": a.ID, "stats": wire.StatsRecord(st)})
}

func (s *Server) handleInvocation(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("invocation_id")
	// Authenticate before looking: whether an id exists is not for strangers.
	if _, _, e := s.dir.Admit(w, r, "", ActReadHistory); e != nil {
		s.WriteError(w, e)
		return
	}
	notFound := &domain.Error{Code: domain.CodeNotFound, Message: fmt.Sprintf("Invocation %s not found", id)}
	inv, err := s.cfg.Recorder.Get(r.Context(), id)
	if errors.Is(err, domain.ErrNotFound) {
		s.WriteError(w, notFound)
		return
	}
	if err != nil {
		s.storeFailure(w, err)
		return
	}
	// Another tenant's invocation looks exactly like a missing one.
	if _, release, e := s.dir.Admit(w, r, inv.AgentID, ActReadInvocation); e != nil {
		if e.Code == domain.CodeNotFound {
			e = notFound
		}
		s.WriteError(w, e)
		return
	} else if release != nil {
		release()
	}
	s.writeJSON(w, http.StatusOK, wire.InvocationRecord(inv))
}

func (s *Server) storeFailure(w http.ResponseWriter, err error) {
	s.log.Error("invocation store", "error", err)
	var de *domain.Error
	if errors.As(err, &de) && de.Code == domain.CodeConnection {
		s.WriteError(w, de) // the database is away for now: 503, Retry-After
		return
	}
	s.writeError(w, http.StatusInternalServerError, domain.Errorf(domain.CodeInternal, "reading invocation history failed: %v", err))
}
