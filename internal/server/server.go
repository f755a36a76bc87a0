// Package server serves one agent over the RunAgent wire protocol v1: the
// eight routes of wire-v1.md, REST for results and a WebSocket for streams.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/runagent-go/runagent/internal/runner"
	"github.com/runagent-go/runagent/internal/store"
	"github.com/runagent-go/runagent/internal/wire"
)

// Invoker runs entrypoints: the runner instance in local mode.
type Invoker interface {
	Call(ctx context.Context, tag string, args, kwargs []byte) ([]byte, error)
	// Stream calls started once the call is handed over, before any chunk.
	Stream(ctx context.Context, tag string, args, kwargs []byte, started func(), fn runner.ChunkFunc) (int, error)
}

// Recorder keeps invocation records.
type Recorder interface {
	Start(store.Invocation)
	Finish(store.Invocation)
	Get(ctx context.Context, id string) (store.Invocation, error)
	List(ctx context.Context, agentID, status string, limit int) ([]store.Invocation, error)
	Stats(ctx context.Context, agentID string) (store.Stats, error)
}

// Agent is what the server tells clients about the agent it serves.
type Agent struct {
	ID        string
	Name      string
	Version   string
	Framework string
	// Entrypoints in config order, as the architecture route lists them:
	// each one's JSON object ({file, module, tag, extractor}).
	Entrypoints []Entrypoint
	// Config is the agent's config without env_vars, for GET /api/v1.
	Config map[string]any
}

// Entrypoint is one entrypoint of the served agent.
type Entrypoint struct {
	Tag  string
	JSON json.RawMessage // as listed by /architecture
}

// Config configures a Server.
type Config struct {
	Agent    Agent
	Invoker  Invoker
	Recorder Recorder
	// OnRun is told about every finished call (for the local registry's
	// counters); it must not block.
	OnRun func(success bool)
	// Health adds fields to GET /api/v1/health (runner state).
	Health func() map[string]any

	Host string
	Port int
	// MaxBodyBytes bounds a request body or the first WebSocket message.
	MaxBodyBytes int64
	// CallTimeout bounds one call; a request may ask for less with
	// "timeout_seconds".
	CallTimeout time.Duration
	Logger      *slog.Logger
	Version     string
}

// Defaults for Config fields left zero.
const (
	DefaultMaxBodyBytes = 32 << 20
	DefaultCallTimeout  = 5 * time.Minute
)

// Server serves one agent.
type Server struct {
	cfg        Config
	log        *slog.Logger
	tags       map[string]bool // tag → streaming
	started    time.Time
	clientInfo json.RawMessage
	archJSON   []byte // the "data" of /architecture
	bufs       sync.Pool
}

// New returns a Server; call Handler to serve it.
func New(cfg Config) *Server {
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.OnRun == nil {
		cfg.OnRun = func(bool) {}
	}
	uuid.EnableRandPool()
	s := &Server{cfg: cfg, log: cfg.Logger, tags: map[string]bool{}, started: time.Now()}
	s.bufs.New = func() any { b := make([]byte, 0, 1024); return &b }
	eps := make([]json.RawMessage, 0, len(cfg.Agent.Entrypoints))
	for _, ep := range cfg.Agent.Entrypoints {
		s.tags[ep.Tag] = strings.HasSuffix(ep.Tag, "_stream")
		eps = append(eps, ep.JSON)
	}
	s.archJSON, _ = json.Marshal(map[string]any{"agent_id": cfg.Agent.ID, "entrypoints": eps})
	s.clientInfo, _ = json.Marshal(map[string]any{
		"server_host": cfg.Host, "server_port": cfg.Port,
		"agent_name": cfg.Agent.Name, "agent_framework": cfg.Agent.Framework,
	})
	return s
}

// Handler returns the HTTP handler with every route.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/health", s.handleHealth)
	mux.HandleFunc("GET /api/v1", s.handleInfo)
	mux.HandleFunc("GET /api/v1/{$}", s.handleInfo)
	mux.HandleFunc("GET /api/v1/agents/{id}/architecture", s.agentRoute(s.handleArchitecture))
	mux.HandleFunc("POST /api/v1/agents/{id}/run", s.agentRoute(s.handleRun))
	mux.HandleFunc("GET /api/v1/agents/{id}/run-stream", s.agentRoute(s.handleStream))
	mux.HandleFunc("GET /api/v1/agents/{id}/invocations", s.agentRoute(s.handleInvocations))
	mux.HandleFunc("GET /api/v1/agents/{id}/invocations/stats", s.agentRoute(s.handleStats))
	mux.HandleFunc("GET /api/v1/invocations/{invocation_id}", s.handleInvocation)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, http.StatusNotFound, &wire.Error{Code: wire.CodeNotFound,
			Message: fmt.Sprintf("no route %s %s; the routes are listed at GET /api/v1", r.Method, r.URL.Path)})
	})
	return cors(mux)
}

// agentRoute answers 404 for any agent but the one served.
func (s *Server) agentRoute(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if id := r.PathValue("id"); id != s.cfg.Agent.ID {
			s.writeError(w, http.StatusNotFound, &wire.Error{Code: wire.CodeNotFound,
				Message: fmt.Sprintf("Agent %s not found (this server serves agent %s)", id, s.cfg.Agent.ID)})
			return
		}
		h(w, r)
	}
}

// cors answers browsers the way the original's CORSMiddleware
// (allow_origins=*, allow_credentials=True, all methods and headers) does.
func cors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		if origin == "" {
			next.ServeHTTP(w, r)
			return
		}
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", origin)
		h.Set("Access-Control-Allow-Credentials", "true")
		h.Add("Vary", "Origin")
		if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
			h.Set("Access-Control-Allow-Methods", "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT")
			if req := r.Header.Get("Access-Control-Request-Headers"); req != "" {
				h.Set("Access-Control-Allow-Headers", req)
			}
			h.Set("Access-Control-Max-Age", "600")
			w.WriteHeader(http.StatusOK)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	body := map[string]any{
		"status":         "healthy",
		"server":         "RunAgent Go Local Server",
		"timestamp":      wire.Timestamp(time.Now()),
		"uptime_seconds": time.Since(s.started).Seconds(),
		"version":        s.cfg.Version,
		"agent_id":       s.cfg.Agent.ID,
		"agent_name":     s.cfg.Agent.Name,
		"framework":      s.cfg.Agent.Framework,
	}
	if s.cfg.Health != nil {
		for k, v := range s.cfg.Health() {
			body[k] = v
		}
	}
	s.writeJSON(w, http.StatusOK, body)
}

func (s *Server) handleInfo(w http.ResponseWriter, r *http.Request) {
	a := s.cfg.Agent
	s.writeJSON(w, http.StatusOK, map[string]any{
		"message": fmt.Sprintf("RunAgent API - %s(%s)", a.Name, a.ID),
		"version": a.Version,
		"host":    s.cfg.Host,
		"port":    s.cfg.Port,
		"config":  a.Config,
		"endpoints": map[string]string{
			"GET /api/v1/health":                              "Health check",
			"GET /api/v1/agents/{agent_id}/architecture":      "Agent entrypoints",
			"POST /api/v1/agents/{agent_id}/run":              "Run an entrypoint",
			"WS /api/v1/agents/{agent_id}/run-stream":         "Stream an entrypoint",
			"GET /api/v1/agents/{agent_id}/invocations":       "Get invocation history",
			"GET /api/v1/agents/{agent_id}/invocations/stats": "Get invocation stats",
			"GET /api/v1/invocations/{invocation_id}":         "Get one invocation",
		},
	})
}

func (s *Server) handleArchitecture(w http.ResponseWriter, r *http.Request) {
	s.writeEnvelope(w, http.StatusOK, &wire.Envelope{
		Success: true, Data: s.archJSON, Message: "Agent architecture retrieved successfully",
	})
}

// writeEnvelope fills the timestamp and request id and writes env.
func (s *Server) writeEnvelope(w http.ResponseWriter, status int, env *wire.Envelope) {
	bp := s.bufs.Get().(*[]byte)
	env.Timestamp = time.Now()
	if env.RequestID == "" {
		env.RequestID = uuid.NewString()
	}
	b := wire.AppendEnvelope((*bp)[:0], env)
	h := w.Header()
	h["Content-Type"] = jsonContentType
	w.WriteHeader(status)
	w.Write(b)
	*bp = b
	s.bufs.Put(bp)
}

var jsonContentType = []string{"application/json"}

func (s *Server) writeError(w http.ResponseWriter, status int, e *wire.Error) {
	s.writeEnvelope(w, status, &wire.Envelope{Error: e})
}

func (s *Server) writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		s.log.Error("encode response", "error", err)
		s.writeError(w, http.StatusInternalServerError, wire.Errorf(wire.CodeInternal, "encode response: %v", err))
		return
	}
	w.Header()["Content-Type"] = jsonContentType
	w.WriteHeader(status)
	w.Write(b)
}

// callContext bounds a call by the server's timeout, or by the request's
// timeout_seconds when that is shorter.
func (s *Server) callContext(parent context.Context, requested float64) (context.Context, context.CancelFunc) {
	d := s.cfg.CallTimeout
	if requested > 0 {
		if r := time.Duration(requested * float64(time.Second)); r < d {
			d = r
		}
	}
	return context.WithTimeoutCause(parent, d, &wire.Error{Code: wire.CodeTimeout,
		Message: fmt.Sprintf("the agent did not finish within the call timeout of %s", d)})
}

// callFailure turns an error from the invoker into the wire error and the
// error_detail recorded for the invocation.
func (s *Server) callFailure(err error) (e *wire.Error, agentRaised bool) {
	var ce *runner.CallError
	if errors.As(err, &ce) {
		if ce.Code == wire.CodeInternal {
			return &wire.Error{Code: wire.CodeInternal, Message: ce.Message}, true
		}
		return &wire.Error{Code: ce.Code, Message: ce.Message}, false
	}
	var we *wire.Error
	if errors.As(err, &we) {
		return we, false
	}
	if errors.Is(err, context.Canceled) {
		return &wire.Error{Code: wire.CodeCancelled, Message: "the client went away before the call finished"}, false
	}
	return &wire.Error{Code: wire.CodeInternal, Message: "the agent could not run: " + err.Error()}, false
}

// newInvocationID returns a time-ordered UUID (v7): the history's B-trees
// then grow at their ends instead of at random pages.
func newInvocationID() string {
	id, err := uuid.NewV7()
	if err != nil {
		return uuid.NewString()
	}
	return id.String()
}
