// Package server serves one agent over the RunAgent wire protocol v1: the
// eight routes of wire-v1.md, REST for results and a WebSocket for streams.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/wire"
)

// Agent is an agent as this server answers for it: its domain description
// with what answering needs computed once (Prepare). It is read-only and
// may be shared by any number of requests.
type Agent struct {
	*domain.Agent

	tags       map[string]bool // tag → streaming
	archJSON   []byte          // the "data" of /architecture
	clientInfo json.RawMessage // recorded with REST invocations
}

// Prepare computes what serving the agent needs; host and port are recorded
// as the invocations' client_info.
func Prepare(d *domain.Agent, host string, port int) *Agent {
	a := &Agent{Agent: d, tags: make(map[string]bool, len(d.Entrypoints))}
	eps := make([]json.RawMessage, 0, len(d.Entrypoints))
	for _, ep := range d.Entrypoints {
		a.tags[ep.Tag] = ep.Streaming()
		eps = append(eps, EntrypointJSON(ep))
	}
	a.archJSON, _ = json.Marshal(map[string]any{"agent_id": d.ID, "entrypoints": eps})
	a.clientInfo, _ = json.Marshal(map[string]any{
		"server_host": host, "server_port": port,
		"agent_name": d.Name, "agent_framework": d.Framework,
	})
	return a
}

// Action is what a request wants to do with an agent.
type Action int

const (
	// ActReadArchitecture reads the agent's entrypoints.
	ActReadArchitecture Action = iota
	// ActRun calls one of its entrypoints.
	ActRun
	// ActReadHistory reads the agent's invocation history (the list and the
	// stats). It holds other callers' inputs and outputs: never public.
	ActReadHistory
	// ActReadInvocation reads one invocation record of the agent: never
	// public either.
	ActReadInvocation
)

// Directory finds the agent a request names and decides whether the request
// may use it: in local mode the one agent served, on the platform server
// every deployed agent behind API keys and rate limits.
type Directory interface {
	// Admit returns the agent agentID for act, or the error to answer
	// (its HTTP status is wire.HTTPStatus of its code). With agentID ""
	// it only authenticates the request and returns a nil agent. Admit
	// may set response headers (rate limits). A non-nil release must be
	// called once the request is over.
	Admit(w http.ResponseWriter, r *http.Request, agentID string, act Action) (a *Agent, release func(), e *domain.Error)
}

// Single is the Directory of the local server: one agent, no keys.
func Single(a *Agent) Directory { return single{a} }

type single struct{ a *Agent }

func (d single) Admit(_ http.ResponseWriter, _ *http.Request, id string, act Action) (*Agent, func(), *domain.Error) {
	// The local history is shared by every agent served from this cache
	// directory, and the original shows any of its records.
	if id == "" || act == ActReadInvocation {
		return nil, nil, nil
	}
	if id != d.a.ID {
		return nil, nil, &domain.Error{Code: domain.CodeNotFound,
			Message: fmt.Sprintf("Agent %s not found (this server serves agent %s)", id, d.a.ID)}
	}
	return d.a, nil, nil
}

// AsyncFunc takes an async invocation (its record pending, its input in it)
// and must not return before the record is durable; the invocation then
// runs in the background.
// With an idempotency key that an earlier run of the agent was created
// with (and the same request), it records nothing and returns that run's
// id with replayed true.
type AsyncFunc func(ctx context.Context, a *domain.Agent, inv domain.Invocation, opts RunOptions) (runID string, replayed bool, err error)

// RunOptions are a background run's fields besides the wire /run body.
type RunOptions struct {
	IdempotencyKey string  // the Idempotency-Key header
	Webhook        string  // the URL its outcome is POSTed to
	TimeoutSeconds float64 // the body's timeout_seconds (0: the agent's)
	// ThreadID orders the run among its thread's; Multitask says what a
	// create does while another run of the thread is queued or running:
	// "reject" (the default: 409) or "enqueue" (it runs after it).
	ThreadID, Multitask string
	// User is the user whose persistent folders the run sees ("": none).
	User string
}

// RunService reads and cancels the background runs (the platform
// server's); with it and Async the server serves the runs routes.
type RunService interface {
	// Run returns a run (domain.ErrNotFound if there is none).
	Run(ctx context.Context, id string) (domain.Run, error)
	// CancelRun cancels a run that has not ended: at once if it has not
	// started, else by cancelling its call where it runs; it returns the
	// run as it is after up to a few seconds.
	CancelRun(ctx context.Context, run domain.Run) (domain.Run, error)
	// WebhookAttempts returns the attempts to deliver a run's webhook.
	WebhookAttempts(ctx context.Context, runID string) ([]domain.WebhookAttempt, error)
}

// Config configures a Server.
type Config struct {
	// Agent is the agent of local mode; Directory replaces it on the
	// platform server.
	Agent *domain.Agent
	// Dispatcher runs the calls of the agents (a pool in this process, a
	// node of a cluster).
	Dispatcher domain.Dispatcher
	Directory  Directory
	Recorder   domain.History
	// Async, when set, serves "async_execution": true (202 and the
	// invocation id); without it the flag is ignored, as the original does.
	Async AsyncFunc
	// Runs serves GET /api/v1/runs/{id}, its wait and its cancel.
	Runs RunService
	// Events, with Runs, keeps the event logs of streams that outlive
	// their client ("on_disconnect": "continue") and serves their re-join.
	Events domain.RunEvents
	// OnCall is told about every finished call, code "" for success. It
	// must not block.
	OnCall func(a *domain.Agent, tag string, code domain.Code, elapsed time.Duration)
	// Health adds fields to GET /api/v1/health (runner state).
	Health func() map[string]any
	// SDKType is recorded with REST invocations ("local_server" if empty).
	SDKType string

	Host string
	Port int
	// MaxBodyBytes bounds a request body or the first WebSocket message.
	MaxBodyBytes int64
	// CallTimeout bounds one call; a request may ask for less with
	// "timeout_seconds".
	CallTimeout time.Duration
	// DurableHistory: a call is answered only once its history record is
	// committed (the platform server); otherwise the record is written a
	// few milliseconds after the answer, and a crash may lose the last
	// ones (runagent serve).
	DurableHistory bool
	// StallTimeout cuts off a stream whose client takes no frame for this
	// long (DefaultStallTimeout if zero): its call is cancelled.
	StallTimeout time.Duration
	// Heartbeat is how long a stream may be silent before the server sends
	// a heartbeat (an SSE comment; a WebSocket ping, every Heartbeat) so
	// that proxies keep it open: DefaultHeartbeat if zero, none if negative.
	Heartbeat time.Duration
	// CORS is the browser policy; its origins also bound which pages may
	// open a WebSocket (zero: any page, as the original).
	CORS    CORSPolicy
	Logger  *slog.Logger
	Version string
}

// Defaults for Config fields left zero.
const (
	DefaultMaxBodyBytes = 32 << 20
	DefaultCallTimeout  = 5 * time.Minute
	DefaultStallTimeout = 30 * time.Second
	// DefaultHeartbeat is below the idle cut of common proxies (60-100 s)
	// and load balancers.
	DefaultHeartbeat = 15 * time.Second
)

// Server serves agents over the wire protocol.
type Server struct {
	cfg      Config
	log      *slog.Logger
	dir      Directory
	started  time.Time
	bufs     sync.Pool
	upgrader *websocket.Upgrader
	detached detachedRuns // the streams that outlive their client, running here
}

// New returns a Server; call Handler (local mode) or Register (platform)
// to serve it.
func New(cfg Config) *Server {
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = DefaultStallTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.OnCall == nil {
		cfg.OnCall = func(*domain.Agent, string, domain.Code, time.Duration) {}
	}
	if cfg.SDKType == "" {
		cfg.SDKType = "local_server"
	}
	uuid.EnableRandPool()
	s := &Server{cfg: cfg, log: cfg.Logger, dir: cfg.Directory, started: time.Now(), upgrader: newUpgrader(cfg.CORS)}
	if s.dir == nil {
		s.dir = Single(Prepare(cfg.Agent, cfg.Host, cfg.Port))
	}
	s.bufs.New = func() any { b := make([]byte, 0, 1024); return &b }
	return s
}

// Register adds the agent routes of the wire protocol to mux: architecture,
// run, run-stream, invocation history and one invocation.
func (s *Server) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/agents/{id}/architecture", s.agentRoute(ActReadArchitecture, s.handleArchitecture))
	mux.HandleFunc("POST /api/v1/agents/{id}/run", s.agentRoute(ActRun, s.handleRun))
	mux.HandleFunc("GET /api/v1/agents/{id}/run-stream", s.agentRoute(ActRun, s.handleStream))
	mux.HandleFunc("POST /api/v1/agents/{id}/run-stream", s.agentRoute(ActRun, s.handleStreamSSE))
	if s.cfg.Async != nil && s.cfg.Runs != nil {
		mux.HandleFunc("POST /api/v1/agents/{id}/runs", s.agentRoute(ActRun, s.handleCreateRun))
		mux.HandleFunc("GET /api/v1/runs/{run_id}", s.handleGetRun)
		mux.HandleFunc("GET /api/v1/runs/{run_id}/wait", s.handleWaitRun)
		mux.HandleFunc("POST /api/v1/runs/{run_id}/cancel", s.handleCancelRun)
		mux.HandleFunc("GET /api/v1/runs/{run_id}/webhook-attempts", s.handleWebhookAttempts)
		if s.cfg.Events != nil {
			mux.HandleFunc("GET /api/v1/runs/{run_id}/stream", s.handleRunStream)
		}
	}
	mux.HandleFunc("GET /api/v1/agents/{id}/invocations", s.agentRoute(ActReadHistory, s.handleInvocations))
	mux.HandleFunc("GET /api/v1/agents/{id}/invocations/stats", s.agentRoute(ActReadHistory, s.handleStats))
	mux.HandleFunc("GET /api/v1/invocations/{invocation_id}", s.handleInvocation)
}

// Handler returns the local server's handler: the agent routes, health,
// the API index, a 404 for anything else, and CORS.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	s.Register(mux)
	mux.HandleFunc("GET /api/v1/health", s.handleHealth)
	mux.HandleFunc("GET /api/v1", s.handleInfo)
	mux.HandleFunc("GET /api/v1/{$}", s.handleInfo)
	mux.HandleFunc("/", s.NotFound)
	return s.cfg.CORS.Handler(mux)
}

// NotFound answers a request for a route that does not exist.
func (s *Server) NotFound(w http.ResponseWriter, r *http.Request) {
	s.WriteError(w, &domain.Error{Code: domain.CodeNotFound,
		Message: fmt.Sprintf("no route %s %s; the routes are listed at GET /api/v1", r.Method, r.URL.Path)})
}

// agentHandler serves one request for an admitted agent.
type agentHandler func(w http.ResponseWriter, r *http.Request, a *Agent)

// agentRoute admits the request to the agent in the path, or answers why not.
func (s *Server) agentRoute(act Action, h agentHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		a, release, e := s.dir.Admit(w, r, r.PathValue("id"), act)
		if e != nil {
			s.WriteError(w, e)
			return
		}
		if release != nil {
			defer release()
		}
		h(w, r, a)
	}
}

// CORS answers browsers the way the original's CORSMiddleware
// (allow_origins=*, allow_credentials=True, all methods and headers) does:
// the local server's policy, where there are no keys or cookies to protect.
func CORS(next http.Handler) http.Handler {
	return CORSPolicy{Credentials: true}.Handler(next)
}

// CORSPolicy says which web pages may call the server from a browser.
type CORSPolicy struct {
	// Origins may call ("https://app.example.com"); none: any origin.
	Origins []string
	// Credentials lets pages send cookies (Access-Control-Allow-Credentials).
	// With any origin allowed it turns any web page the user visits into a
	// caller with the user's cookies: the platform server never sets it.
	Credentials bool
}

func (c CORSPolicy) allowed() map[string]bool {
	allowed := make(map[string]bool, len(c.Origins))
	for _, o := range c.Origins {
		allowed[strings.TrimRight(o, "/")] = true
	}
	return allowed
}

// Handler wraps next with the policy.
func (c CORSPolicy) Handler(next http.Handler) http.Handler {
	allowed := c.allowed()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		if origin == "" {
			next.ServeHTTP(w, r)
			return
		}
		h := w.Header()
		switch {
		case len(allowed) > 0 && !allowed[origin]:
			// Not an allowed page: no CORS headers, so the browser keeps
			// the answer from it (a preflight gets none either).
			h.Add("Vary", "Origin")
			next.ServeHTTP(w, r)
			return
		case len(allowed) == 0 && !c.Credentials:
			h.Set("Access-Control-Allow-Origin", "*")
		default:
			h.Set("Access-Control-Allow-Origin", origin)
			h.Add("Vary", "Origin")
			if c.Credentials {
				h.Set("Access-Control-Allow-Credentials", "true")
			}
		}
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
	a := s.cfg.Agent
	body := map[string]any{
		"status":         "healthy",
		"server":         "RunAgent Go Local Server",
		"timestamp":      wire.Timestamp(time.Now()),
		"uptime_seconds": time.Since(s.started).Seconds(),
		"version":        s.cfg.Version,
		"agent_id":       a.ID,
		"agent_name":     a.Name,
		"framework":      a.Framework,
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

func (s *Server) handleArchitecture(w http.ResponseWriter, r *http.Request, a *Agent) {
	s.writeEnvelope(w, http.StatusOK, &wire.Envelope{
		Success: true, Data: a.archJSON, Message: "Agent architecture retrieved successfully",
	})
}

// writeEnvelope fills the timestamp and request id and writes env.
func (s *Server) writeEnvelope(w http.ResponseWriter, status int, env *wire.Envelope) {
	bp := s.bufs.Get().(*[]byte)
	env.Timestamp = time.Now()
	if env.RequestID == "" {
		// The platform's middleware names each request; local mode does not.
		if id := w.Header()["X-Request-Id"]; len(id) > 0 {
			env.RequestID = id[0]
		} else {
			env.RequestID = uuid.NewString()
		}
	}
	b := wire.AppendEnvelope((*bp)[:0], env)
	h := w.Header()
	h["Content-Type"] = jsonContentType
	w.WriteHeader(status)
	w.Write(b)
	s.putBuf(bp, b)
}

var jsonContentType = []string{"application/json"}

// putBuf returns a buffer to the pool, unless a big answer grew it: the
// pool would keep that memory for the next small one.
func (s *Server) putBuf(bp *[]byte, b []byte) {
	if cap(b) > maxPooledBuf {
		return
	}
	*bp = b
	s.bufs.Put(bp)
}

const maxPooledBuf = 64 << 10

func (s *Server) writeError(w http.ResponseWriter, status int, e *domain.Error) {
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(max(1, math.Ceil(e.RetryAfter.Seconds())))))
	}
	s.writeEnvelope(w, status, &wire.Envelope{Error: e})
}

// WriteError answers e with the HTTP status of its code.
func (s *Server) WriteError(w http.ResponseWriter, e *domain.Error) {
	s.writeError(w, wire.HTTPStatus(e.Code), e)
}

// WriteErrorStatus answers e with the given HTTP status.
func (s *Server) WriteErrorStatus(w http.ResponseWriter, status int, e *domain.Error) {
	s.writeError(w, status, e)
}

// WriteEnvelope answers a success envelope with data (JSON) and message.
func (s *Server) WriteEnvelope(w http.ResponseWriter, status int, data any, message string) {
	b, err := json.Marshal(data)
	if err != nil {
		s.log.Error("encode response", "error", err)
		s.writeError(w, http.StatusInternalServerError, domain.Errorf(domain.CodeInternal, "encode response: %v", err))
		return
	}
	s.writeEnvelope(w, status, &wire.Envelope{Success: true, Data: b, Message: message})
}

// WriteJSON answers v as plain JSON.
func (s *Server) WriteJSON(w http.ResponseWriter, status int, v any) { s.writeJSON(w, status, v) }

func (s *Server) writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		s.log.Error("encode response", "error", err)
		s.writeError(w, http.StatusInternalServerError, domain.Errorf(domain.CodeInternal, "encode response: %v", err))
		return
	}
	w.Header()["Content-Type"] = jsonContentType
	w.WriteHeader(status)
	w.Write(b)
}

// callContext bounds a call by the server's timeout, or by the request's
// timeout_seconds when that is shorter.
func (s *Server) callContext(parent context.Context, a *Agent, requested float64) (context.Context, context.CancelFunc) {
	d := s.cfg.CallTimeout
	if a.CallTimeout > 0 {
		d = a.CallTimeout
	}
	// Compared in seconds: a huge request (1e308) would overflow a Duration.
	if requested > 0 && requested < d.Seconds() {
		d = time.Duration(requested * float64(time.Second))
	}
	return context.WithTimeoutCause(parent, d, &domain.Error{Code: domain.CodeTimeout,
		Message: fmt.Sprintf("the agent did not finish within the call timeout of %s", d)})
}

// callFailure turns an error from the invoker into the wire error and the
// error_detail recorded for the invocation.
func (s *Server) callFailure(err error) (e *domain.Error, agentRaised bool) { return CallFailure(err) }

// CallFailure turns an error from an invoker into the wire error and
// whether it is the agent's own exception.
func CallFailure(err error) (e *domain.Error, agentRaised bool) {
	var ae *domain.AgentError
	if errors.As(err, &ae) {
		return &domain.Error{Code: domain.CodeInternal, Message: ae.Message}, true
	}
	var we *domain.Error
	if errors.As(err, &we) {
		return we, false
	}
	if errors.Is(err, context.Canceled) {
		return &domain.Error{Code: domain.CodeCancelled, Message: "the client went away before the call finished"}, false
	}
	return &domain.Error{Code: domain.CodeInternal, Message: "the agent could not run: " + err.Error()}, false
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
