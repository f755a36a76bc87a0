// Package platform is `runagent server`: many agents deployed by upload,
// served at the wire protocol's routes behind API keys and per-key rate
// limits, each in an autoscaled instance pool (internal/manager), with
// durable async invocations, agent logs and Prometheus metrics.
package platform

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"

	"github.com/runagent-go/runagent/internal/apikeys"
	"github.com/runagent-go/runagent/internal/bundle"
	"github.com/runagent-go/runagent/internal/dispatch"
	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/manager"
	"github.com/runagent-go/runagent/internal/pyenv"
	"github.com/runagent-go/runagent/internal/ratelimit"
	"github.com/runagent-go/runagent/internal/runproto"
	"github.com/runagent-go/runagent/internal/sandbox"
	"github.com/runagent-go/runagent/internal/server"
	"github.com/runagent-go/runagent/internal/store"
	"github.com/runagent-go/runagent/internal/store/pgstore"
	"github.com/runagent-go/runagent/internal/webhook"
)

// Config configures the platform server.
type Config struct {
	DataDir string // platform.db, agents/, admin-key
	// DB is where the state is kept: "" for SQLite in DataDir/platform.db,
	// or a postgres:// URL (one server per database or schema).
	DB       string
	CacheDir string // virtualenvs (shared with runagent serve)
	Python   pyenv.Python
	Script   string
	Host     string
	Port     int

	Defaults manager.Deployment
	// DefaultPolicy is every key's rate and concurrency limit unless the
	// key sets its own.
	DefaultPolicy ratelimit.Policy
	// AllowPublic lets agents whose auth_settings.type is "none" be called
	// without a key.
	AllowPublic bool
	// CORSOrigins are the web pages that may call the server from a
	// browser (none: any page, without cookies).
	CORSOrigins []string
	// WebhookAllow are the networks runs' webhooks may reach although
	// they are loopback, private or reserved (none by default).
	WebhookAllow []netip.Prefix
	// Flow bounds results, chunks and streams in flight; StallTimeout cuts
	// off a stream reader that takes nothing for that long.
	Flow         runproto.Flow
	StallTimeout time.Duration
	// Heartbeat: see server.Config.Heartbeat.
	Heartbeat time.Duration
	// EventRetention is how long the event log of a stream that outlived
	// its client is kept after the stream ends (default 24 h).
	EventRetention time.Duration
	MaxUpload      int64
	Bundle         bundle.Limits
	MaxBody        int64
	Async          AsyncLimits

	Tick, HealthInterval      time.Duration
	StableWindow, PanicWindow time.Duration

	// Sandbox opens sandbox drivers by name (Defaults.Sandbox is the
	// server's); nil: only the process driver.
	Sandbox func(name string) (sandbox.Driver, error)
	// DenyNetwork: no agent may reach the network (deployment.network is
	// refused at upload).
	DenyNetwork bool

	// Role is this server's part in a cluster (docs/multinode.md): "" or
	// "all" runs alone; "gateway" serves the API and sends calls over
	// NATS to the nodes; "node" runs the instances. A gateway and a node
	// need NATS (URLs of one NATS cluster) and DB (PostgreSQL, shared).
	Role     string
	NATS     []string
	NodeID   string // a node's name in the cluster (default: host name and a random suffix)
	Replicas int    // JetStream replicas of the bundles (default 1; 3 in a three-server NATS cluster)

	Log     *slog.Logger
	Version string
}

// Platform is a running platform server.
type Platform struct {
	cfg      Config
	log      *slog.Logger
	db       domain.Store
	running  runningRuns // the background runs running here
	guard    webhook.Guard
	webhooks *webhook.Deliverer
	mgr      *manager.Manager
	keys     *apikeys.Keyring
	limiter  *ratelimit.Limiter
	wire     *server.Server
	metrics  *Metrics
	logs     *logHub
	async    *asyncRunner
	started  time.Time
	// servedAgents: agent id → its active version as the wire server
	// serves it (*server.Agent).
	servedAgents sync.Map
	dispatch     domain.Dispatcher
	// asyncDispatch runs async invocations: dispatch, or on a node the
	// cluster's (the version may run on another node).
	asyncDispatch domain.Dispatcher
	cluster       *clusterParts // nil unless Role is gateway or node

	// AdminKeyFile is where the first admin key was written ("" if the
	// store already had keys).
	AdminKeyFile string
}

// Open opens the platform's store, loads its keys (creating the first admin
// key on a fresh data directory), restores the deployed agents and requeues
// unfinished async invocations. Call Run, then serve Handler.
func Open(ctx context.Context, cfg Config) (*Platform, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxUpload <= 0 {
		cfg.MaxUpload = 128 << 20
	}
	cfg.Async = cfg.Async.withDefaults()
	if err := checkRole(&cfg); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory %s: %w", cfg.DataDir, err)
	}
	p := &Platform{cfg: cfg, log: cfg.Log, limiter: ratelimit.New(nil), started: time.Now()}
	if cfg.Role != RoleAll {
		cp, err := connectCluster(ctx, cfg)
		if err != nil {
			return nil, err
		}
		p.cluster = cp
	}
	db, err := openStore(ctx, cfg)
	if err != nil {
		p.closeCluster()
		return nil, err
	}
	p.db = db
	p.guard = webhook.Guard{Allow: cfg.WebhookAllow}
	p.webhooks = &webhook.Deliverer{Client: p.guard.Client(10 * time.Second), Store: db, Log: cfg.Log}
	fail := func(err error) (*Platform, error) {
		p.closeCluster()
		db.Close()
		return nil, err
	}
	p.metrics = newMetrics()
	p.logs = newLogHub(db, p.metrics, cfg.Log)
	if cfg.Role == RoleNode {
		p.keys = apikeys.NewKeyring(nil) // a node serves no API
	} else if err := p.loadKeys(ctx); err != nil {
		return fail(err)
	}
	if cfg.Role == RoleAll {
		// In a cluster the running calls may be another server's.
		if n, err := db.FailAbandoned(ctx, time.Now()); err != nil {
			return fail(err)
		} else if n > 0 {
			p.log.Warn("calls that were running when the server stopped are marked failed", "count", n)
		}
	}
	p.mgr = manager.New(manager.Config{
		DB: db, DataDir: cfg.DataDir, CacheDir: cfg.CacheDir, Python: cfg.Python, Script: cfg.Script,
		Defaults: cfg.Defaults, StableWindow: cfg.StableWindow, PanicWindow: cfg.PanicWindow,
		Tick: cfg.Tick, HealthInterval: cfg.HealthInterval, Env: instanceEnv(cfg.DataDir),
		Bundle: cfg.Bundle, Host: cfg.Host, Port: cfg.Port, Obs: p.metrics, Logs: p.logs, Log: cfg.Log,
		Sandbox: cfg.Sandbox, DenyNetwork: cfg.DenyNetwork, Flow: cfg.Flow, Cluster: p.clusterHooks(),
	})
	p.dispatch = dispatch.NewLocal(p.mgr)
	p.asyncDispatch = p.dispatch
	if err := p.joinCluster(ctx); err != nil {
		return fail(err)
	}
	if err := p.mgr.Restore(ctx); err != nil {
		return fail(err)
	}
	p.metrics.watch(p.mgr)
	p.wire = server.New(server.Config{
		Directory: p, Dispatcher: p.dispatch, Recorder: db, Async: p.enqueueAsync, Runs: runService{p}, Events: db, OnCall: p.metrics.call, SDKType: "platform_server",
		Host: cfg.Host, Port: cfg.Port, MaxBodyBytes: cfg.MaxBody, CallTimeout: cfg.Defaults.CallTimeout,
		Logger: cfg.Log, Version: cfg.Version, CORS: server.CORSPolicy{Origins: cfg.CORSOrigins}, DurableHistory: true,
		StallTimeout: cfg.StallTimeout, Heartbeat: cfg.Heartbeat,
	})
	p.async = newAsyncRunner(p, cfg.Async)
	if cfg.Role == RoleAll {
		if err := p.async.resume(ctx); err != nil {
			return fail(err)
		}
		p.resumeWebhooks(ctx)
	}
	return p, nil
}

// openStore opens the state store cfg names: SQLite in the data directory,
// or PostgreSQL.
func openStore(ctx context.Context, cfg Config) (domain.Store, error) {
	switch {
	case cfg.DB == "":
		return store.Open(filepath.Join(cfg.DataDir, "platform.db"), store.WithLogger(cfg.Log), store.WithBatch(0, 5*time.Millisecond))
	case strings.HasPrefix(cfg.DB, "postgres://"), strings.HasPrefix(cfg.DB, "postgresql://"):
		return pgstore.Open(ctx, cfg.DB, pgstore.Options{Log: cfg.Log, SingleServer: cfg.Role == RoleAll})
	}
	return nil, fmt.Errorf("--db %q: want a postgres:// (or postgresql://) URL, or nothing for SQLite in the data directory", cfg.DB)
}

// instanceEnv is what agent instances start from: enough to run Python,
// none of the server's own variables (its secrets are not the agents').
func instanceEnv(dataDir string) []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "LANG=C.UTF-8", "HOME=" + filepath.Join(dataDir, "home")}
	os.MkdirAll(filepath.Join(dataDir, "home"), 0o755)
	for _, k := range []string{"TZ", "SSL_CERT_FILE", "SSL_CERT_DIR", "PIP_INDEX_URL", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// loadKeys fills the keyring from the store; a store without keys gets an
// admin key, written once to DataDir/admin-key for the operator.
func (p *Platform) loadKeys(ctx context.Context) error {
	stored, err := p.db.APIKeys(ctx)
	if err != nil {
		return err
	}
	p.keys = apikeys.NewKeyring(stored)
	if len(stored) > 0 {
		return nil
	}
	token, k, err := apikeys.Generate()
	if err != nil {
		return err
	}
	k.Name, k.Scopes = "admin (created at first start)", []domain.Scope{domain.ScopeAdmin}
	if err := p.db.InsertAPIKey(ctx, k); err != nil {
		return err
	}
	p.keys.Put(k)
	p.AdminKeyFile = filepath.Join(p.cfg.DataDir, "admin-key")
	if err := os.WriteFile(p.AdminKeyFile, []byte(token+"\n"), 0o600); err != nil {
		return fmt.Errorf("write the first admin key: %w", err)
	}
	return nil
}

// Run drives the manager, the log writer and the async workers until ctx
// ends.
func (p *Platform) Run(ctx context.Context) {
	go p.logs.run(ctx)
	if p.cfg.Role == RoleAll {
		p.async.start(p.cfg.Async.Workers)
		if p.cluster == nil {
			go p.fireCrons(ctx)
			go p.pruneEvents(ctx)
		}
	}
	if p.cluster != nil {
		go p.resync(ctx)
		if p.cluster.share != nil { // a gateway
			if err := p.cluster.cl.Campaign(ctx, p.cfg.NodeID, p.lead); err != nil {
				p.log.Error("this gateway cannot compete to schedule the cluster; the others do", "error", err)
			}
			go p.shareRates(ctx)
			go p.sweepStale(ctx)
		}
		if na := p.cluster.async; na != nil {
			na.started.Store(true)
			go p.consumeAsync(ctx)
			go p.advertise(ctx)
		}
	}
	p.mgr.Run(ctx)
}

// asyncGrace is how long async invocations running at shutdown may take
// to finish before they are cut off.
const asyncGrace = 10 * time.Second

// Close lets running async invocations finish (for a while), stops every
// instance and closes the store.
func (p *Platform) Close() error {
	p.async.close(asyncGrace)
	p.leaveCluster()
	p.mgr.Close()
	p.logs.flush()
	p.closeCluster()
	return p.db.Close()
}

// policy is key's limits, the server's defaults where it sets none.
func (p *Platform) policy(k *domain.Key) ratelimit.Policy {
	pol := p.cfg.DefaultPolicy
	if k.RatePerSecond > 0 {
		pol.RatePerSecond = k.RatePerSecond
	}
	if k.Burst > 0 {
		pol.Burst = k.Burst
	}
	if k.MaxConcurrency > 0 {
		pol.MaxConcurrency = k.MaxConcurrency
	}
	return pol
}

var (
	errNoKey = &domain.Error{Code: domain.CodeAuthentication,
		Message: "an API key is required: send it as Authorization: Bearer <key> (or ?token=<key> on a WebSocket)"}
	errBadKey   = &domain.Error{Code: domain.CodeAuthentication, Message: "invalid or revoked API key"}
	errKeyInURL = &domain.Error{Code: domain.CodeAuthentication,
		Message: "an API key in the URL (?token=) is accepted only on WebSocket routes, because URLs end up in proxy and access logs; send it as Authorization: Bearer <key>"}
)

// requestToken is the key a request sends: its Authorization header, or on
// a WebSocket handshake the token query parameter (browsers cannot set
// headers there). A key in the URL of any other route is refused rather
// than ignored, so that the caller learns why.
func requestToken(r *http.Request) (string, *domain.Error) {
	if tok := apikeys.BearerToken(r); tok != "" {
		return tok, nil
	}
	tok := apikeys.QueryToken(r)
	if tok != "" && !websocket.IsWebSocketUpgrade(r) {
		return "", errKeyInURL
	}
	return tok, nil
}

// authenticate checks the request's key and takes its rate-limit token.
// release is nil when e is not.
func (p *Platform) authenticate(w http.ResponseWriter, r *http.Request) (k *domain.Key, release func(), e *domain.Error) {
	tok, e := requestToken(r)
	if e != nil {
		return nil, nil, e
	}
	if tok == "" {
		return nil, nil, errNoKey
	}
	k, err := p.keys.Authenticate(tok)
	if err != nil {
		return nil, nil, errBadKey
	}
	return p.limit(w, "key:"+k.ID, p.policy(k), k)
}

// limit takes a rate-limit token and a concurrency slot for id.
func (p *Platform) limit(w http.ResponseWriter, id string, pol ratelimit.Policy, k *domain.Key) (*domain.Key, func(), *domain.Error) {
	d, release := p.limiter.Acquire(id, pol)
	ratelimit.SetHeaders(w.Header(), d)
	if !d.Allowed {
		p.metrics.rateLimited.WithLabelValues(d.Reason).Inc()
		return nil, nil, &domain.Error{Code: domain.CodeRateLimit, Message: d.Message, RetryAfter: d.RetryAfter}
	}
	if p.cluster != nil && p.cluster.share != nil && pol.RatePerSecond > 0 {
		p.cluster.share.took(id)
	}
	return k, release, nil
}

// publicAction reports whether act may be done on a public agent without a
// key: reading its architecture and running it, never reading its history
// (which holds other callers' inputs and outputs).
func publicAction(act server.Action) bool {
	return act == server.ActReadArchitecture || act == server.ActRun
}

// Admit implements server.Directory: key, tenant, agent restriction, scope
// and rate limit, in that order; another tenant's agent is not found.
func (p *Platform) Admit(w http.ResponseWriter, r *http.Request, agentID string, act server.Action) (*server.Agent, func(), *domain.Error) {
	a, tenant, exists := p.mgr.Lookup(agentID)
	if agentID != "" && exists && a != nil && p.cfg.AllowPublic && publicAction(act) && a.Public &&
		apikeys.BearerToken(r) == "" && apikeys.QueryToken(r) == "" {
		// Public agents are limited per client address instead of per key.
		_, release, e := p.limit(w, "ip:"+clientIP(r), p.cfg.DefaultPolicy, nil)
		if e != nil {
			return nil, nil, e
		}
		return p.served(a), release, nil
	}
	k, release, e := p.authenticate(w, r)
	if e != nil {
		return nil, nil, e
	}
	if agentID == "" {
		release()
		return nil, nil, nil
	}
	if p.cluster != nil && (!exists || a == nil) {
		// Deployed through another gateway a moment ago: read it from the
		// store rather than wait for the notice (only for a caller with a
		// valid key, within its rate limit).
		if err := p.readThrough(r.Context(), agentID); err != nil {
			release()
			return nil, nil, err
		}
		a, tenant, exists = p.mgr.Lookup(agentID)
	}
	notFound := &domain.Error{Code: domain.CodeNotFound, Message: fmt.Sprintf("Agent %s not found", agentID)}
	switch {
	case !exists || !k.CanSee(tenant):
		release()
		return nil, nil, notFound
	case !k.AllowsAgent(agentID):
		release()
		return nil, nil, &domain.Error{Code: domain.CodePermission, Message: fmt.Sprintf("this API key may not use agent %s", agentID)}
	case act == server.ActRun && !k.Has(domain.ScopeRun):
		release()
		return nil, nil, &domain.Error{Code: domain.CodePermission, Message: "this API key cannot run agents: it lacks the run scope"}
	case !k.Has(domain.ScopeRun) && !k.Has(domain.ScopeDeploy):
		release()
		return nil, nil, &domain.Error{Code: domain.CodePermission, Message: "this API key cannot read agents: it needs the run or deploy scope"}
	case a == nil:
		release()
		return nil, nil, &domain.Error{Code: domain.CodeNotFound, Message: fmt.Sprintf(
			"Agent %s is not started: start it with POST /api/v1/agents/%s/start (runagent deploy does this)", agentID, agentID)}
	}
	return p.served(a), release, nil
}

// served is the wire server's view of the agent version a, prepared once
// per version (a changes when a new version takes the traffic).
func (p *Platform) served(a *domain.Agent) *server.Agent {
	if v, ok := p.servedAgents.Load(a.ID); ok {
		if s := v.(*server.Agent); s.Agent == a {
			return s
		}
	}
	s := server.Prepare(a, p.cfg.Host, p.cfg.Port)
	p.servedAgents.Store(a.ID, s)
	return s
}

func clientIP(r *http.Request) string {
	host := r.RemoteAddr
	for i := len(host) - 1; i >= 0; i-- {
		if host[i] == ':' {
			return host[:i]
		}
	}
	return host
}

// requireKey authenticates a platform API request and checks its scope
// (any of scopes).
func (p *Platform) requireKey(w http.ResponseWriter, r *http.Request, scopes ...domain.Scope) (*domain.Key, bool) {
	k, release, e := p.authenticate(w, r)
	if e != nil {
		p.wire.WriteError(w, e)
		return nil, false
	}
	release()
	for _, s := range scopes {
		if k.Has(s) {
			return k, true
		}
	}
	names := make([]string, len(scopes))
	for i, s := range scopes {
		names[i] = string(s)
	}
	p.wire.WriteError(w, &domain.Error{Code: domain.CodePermission, Message: fmt.Sprintf("this API key lacks the %s scope", joinOr(names))})
	return nil, false
}

func joinOr(s []string) string {
	switch len(s) {
	case 0:
		return ""
	case 1:
		return s[0]
	}
	out := s[0]
	for _, x := range s[1 : len(s)-1] {
		out += ", " + x
	}
	return out + " or " + s[len(s)-1]
}

// ownedAgent resolves an agent id of the path for key k, answering 404 for
// a missing agent or another tenant's.
func (p *Platform) ownedAgent(w http.ResponseWriter, k *domain.Key, id string) (string, bool) {
	norm, err := manager.NormalizeID(id)
	if err == nil {
		if _, tenant, ok := p.mgr.Lookup(norm); ok && k.CanSee(tenant) && k.AllowsAgent(norm) {
			return norm, true
		}
	}
	p.wire.WriteError(w, &domain.Error{Code: domain.CodeNotFound, Message: fmt.Sprintf("Agent %s not found", id)})
	return "", false
}

// requestID names each request: the client's X-Request-ID if it sent a
// sane one, else a fresh UUID. Envelopes and logs carry it.
func requestID(r *http.Request) string {
	if id := r.Header.Get("X-Request-ID"); id != "" && len(id) <= 128 {
		for _, c := range id {
			if c < 0x21 || c > 0x7e {
				return uuid.NewString()
			}
		}
		return id
	}
	return uuid.NewString()
}
