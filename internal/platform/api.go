package platform

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/runagent-go/runagent/internal/apikeys"
	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/manager"
	"github.com/runagent-go/runagent/internal/platformapi"
	"github.com/runagent-go/runagent/internal/server"
	"github.com/runagent-go/runagent/internal/wire"
)

// Handler serves the wire routes of every agent, the platform API and
// /metrics (unless metrics is false: served on its own listener).
func (p *Platform) Handler(metrics bool) http.Handler {
	mux := http.NewServeMux()
	if p.cfg.Role == RoleNode {
		// A node serves no API: its health, and its metrics to whoever
		// reaches its listener (keep it on the cluster's network).
		mux.HandleFunc("GET /api/v1/health", p.handleHealth)
		if metrics {
			mux.Handle("GET /metrics", p.MetricsHandler())
		}
		return p.middleware(mux)
	}
	p.wire.Register(mux)
	mux.HandleFunc("GET /api/v1/health", p.handleHealth)
	mux.HandleFunc("GET /api/v1", p.handleInfo)
	mux.HandleFunc("GET /api/v1/{$}", p.handleInfo)
	mux.HandleFunc("POST /api/v1/tokens/validate", p.handleValidate)
	mux.HandleFunc("POST /api/v1/agents/metadata-upload", p.handleMetadata)
	mux.HandleFunc("POST /api/v1/agents/upload", p.handleUpload)
	mux.HandleFunc("POST /api/v1/agents/{id}/start", p.handleStart)
	mux.HandleFunc("GET /api/v1/agents/{id}/status", p.handleStatus)
	mux.HandleFunc("GET /api/v1/agents", p.handleAgents)
	mux.HandleFunc("GET /api/v1/agents/{id}", p.handleAgent)
	mux.HandleFunc("DELETE /api/v1/agents/{id}", p.handleDelete)
	mux.HandleFunc("GET /api/v1/agents/{id}/logs", p.handleLogs)
	mux.HandleFunc("GET /api/v1/invocations", p.handleInvocations)
	mux.HandleFunc("GET /api/v1/runs", p.handleRuns)
	mux.HandleFunc("GET /api/v1/agents/{id}/webhook-secret", p.handleWebhookSecret)
	mux.HandleFunc("DELETE /api/v1/agents/{id}/users/{user_id}", p.handleDeleteUserData)
	mux.HandleFunc("POST /api/v1/agents/{id}/crons", p.handleCreateCron)
	mux.HandleFunc("GET /api/v1/agents/{id}/crons", p.handleCrons)
	mux.HandleFunc("GET /api/v1/crons/{cron_id}", p.handleCron)
	mux.HandleFunc("POST /api/v1/crons/{cron_id}/{action}", p.handleCronAction)
	mux.HandleFunc("DELETE /api/v1/crons/{cron_id}", p.handleDeleteCron)
	mux.HandleFunc("POST /api/v1/keys", p.handleCreateKey)
	mux.HandleFunc("GET /api/v1/keys", p.handleKeys)
	mux.HandleFunc("DELETE /api/v1/keys/{id}", p.handleRevokeKey)
	mux.HandleFunc("GET /api/v1/nodes", p.handleNodes)
	mux.HandleFunc("POST /api/v1/nodes/{id}/{action}", p.handleNodeAction)
	if metrics {
		mux.HandleFunc("GET /metrics", p.handleMetrics)
	}
	mux.HandleFunc("/", p.wire.NotFound)
	return p.middleware(server.CORSPolicy{Origins: p.cfg.CORSOrigins}.Handler(mux))
}

// MetricsHandler serves every Prometheus metric without a key: for
// --metrics-addr, a listener the operator keeps to their own network.
func (p *Platform) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(p.metrics.reg, promhttp.HandlerOpts{})
}

// handleMetrics serves /metrics on the main listener to a key: an admin key
// sees every metric, another key only the series of the agents it may see
// (server-wide series are the operator's).
func (p *Platform) handleMetrics(w http.ResponseWriter, r *http.Request) {
	k, ok := p.requireKey(w, r, domain.ScopeAdmin, domain.ScopeRun, domain.ScopeDeploy)
	if !ok {
		return
	}
	if k.Has(domain.ScopeAdmin) {
		p.MetricsHandler().ServeHTTP(w, r)
		return
	}
	visible := map[string]bool{}
	for _, id := range p.visibleAgents(k) {
		visible[id] = true
	}
	promhttp.HandlerFor(agentGatherer{p.metrics.reg, visible}, promhttp.HandlerOpts{}).ServeHTTP(w, r)
}

// statusWriter remembers the status for the access log and metrics; it
// passes Flush and Hijack (WebSockets, log follow) through.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// middleware names the request, logs it and counts it.
func (p *Platform) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := requestID(r)
		w.Header()["X-Request-Id"] = []string{id}
		if p.cluster != nil { // the calls this request makes carry it to the nodes
			r = r.WithContext(domain.WithRequest(r.Context(), domain.Request{ID: id, TraceParent: r.Header.Get("traceparent")}))
		}
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		status := sw.status
		if status == 0 {
			status = http.StatusOK
		}
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		p.metrics.requests.WithLabelValues(route, strconv.Itoa(status)).Inc()
		if p.log.Enabled(r.Context(), slog.LevelDebug) || status >= 500 {
			p.log.Log(r.Context(), levelFor(status), "request", "request_id", id, "method", r.Method, "path", r.URL.Path,
				"status", status, "duration_ms", float64(time.Since(start).Microseconds())/1000)
		}
	})
}

// Hijack and Flush pass through for WebSockets and log follow.
func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.status == 0 {
		w.status = http.StatusSwitchingProtocols
	}
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

func (w *statusWriter) Flush() { http.NewResponseController(w.ResponseWriter).Flush() }

func levelFor(status int) slog.Level {
	if status >= 500 {
		return slog.LevelWarn
	}
	return slog.LevelDebug
}

func (p *Platform) handleHealth(w http.ResponseWriter, r *http.Request) {
	ids := p.mgr.AgentIDs("")
	ready := 0
	for _, id := range ids {
		if st, ok := p.mgr.Status(id); ok {
			ready += st.Pool.Ready
		}
	}
	p.wire.WriteJSON(w, http.StatusOK, platformapi.Health{
		Status: "healthy", Server: "RunAgent Go Platform Server", Timestamp: wire.Timestamp(time.Now()),
		UptimeSeconds: time.Since(p.started).Seconds(), Version: p.cfg.Version,
		Agents: len(ids), InstancesReady: ready,
	})
}

func (p *Platform) handleInfo(w http.ResponseWriter, r *http.Request) {
	p.wire.WriteJSON(w, http.StatusOK, platformapi.Info{
		Message: "RunAgent platform server", Version: p.cfg.Version, Host: p.cfg.Host, Port: p.cfg.Port,
		Docs: "docs/platform-api.md",
	})
}

func (p *Platform) handleValidate(w http.ResponseWriter, r *http.Request) {
	// The original CLI sends the key in the query here; a header is fine too.
	tok := apikeys.BearerToken(r)
	if tok == "" {
		tok = apikeys.QueryToken(r)
	}
	k, err := p.keys.Authenticate(tok)
	if err != nil {
		p.wire.WriteError(w, errBadKey)
		return
	}
	p.wire.WriteEnvelope(w, http.StatusOK, platformapi.TokenInfo{
		Valid: true, KeyID: k.ID, Name: k.Name, Tenant: k.Tenant, Scopes: scopeNames(k.Scopes), Agents: k.Agents,
		UserID: platformapi.Text(k.Tenant), UserTier: "self-hosted",
		DefaultProjectID: platformapi.Text(k.Tenant), DefaultProjectName: platformapi.Text(k.Tenant),
	}, "Token is valid")
}

// handleMetadata accepts the original CLI's metadata step: it checks the
// config and claims the agent id for the key's tenant.
func (p *Platform) handleMetadata(w http.ResponseWriter, r *http.Request) {
	k, ok := p.requireKey(w, r, domain.ScopeDeploy)
	if !ok {
		return
	}
	var body platformapi.MetadataRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 8<<20)).Decode(&body); err != nil {
		p.wire.WriteError(w, &domain.Error{Code: domain.CodeValidation, Message: "request body is not valid JSON: " + err.Error()})
		return
	}
	id, err := manager.NormalizeID(body.AgentID)
	if err != nil {
		p.wire.WriteError(w, &domain.Error{Code: domain.CodeValidation, Field: "agent_id", Message: err.Error()})
		return
	}
	name, _ := body.Config["agent_name"].(string)
	framework, _ := body.Config["framework"].(string)
	var tags []string
	if arch, ok := body.Config["agent_architecture"].(map[string]any); ok {
		eps, _ := arch["entrypoints"].([]any)
		for _, ep := range eps {
			if m, ok := ep.(map[string]any); ok {
				if t, ok := m["tag"].(string); ok {
					tags = append(tags, t)
				}
			}
		}
	}
	if e := p.mayDeploy(k, id); e != nil {
		p.wire.WriteError(w, e)
		return
	}
	if _, _, exists := p.mgr.Lookup(id); exists && !body.Overwrite {
		p.wire.WriteError(w, &domain.Error{Code: domain.CodeAlreadyExists, Message: fmt.Sprintf("agent %s already exists; send overwrite: true to deploy a new version", id)})
		return
	}
	meta, _ := json.Marshal(body)
	if _, err := p.db.PutAgentMetadata(r.Context(), id, k.Tenant, name, framework, meta); err != nil {
		p.storeError(w, err)
		return
	}
	p.mgr.Claim(id, k.Tenant)
	if tags == nil {
		tags = []string{}
	}
	p.wire.WriteEnvelope(w, http.StatusOK, platformapi.Metadata{AgentID: id, EntrypointsCreated: len(tags), EntrypointIDs: tags},
		"Agent metadata uploaded")
}

// mayDeploy decides whether key k may create or change agent id: the key's
// agent list allows it, and the id is not another tenant's.
func (p *Platform) mayDeploy(k *domain.Key, id string) *domain.Error {
	if !k.AllowsAgent(id) {
		return &domain.Error{Code: domain.CodePermission, Message: fmt.Sprintf("this API key may not use agent %s", id)}
	}
	if _, tenant, exists := p.mgr.Lookup(id); exists && tenant != k.Tenant {
		return domain.ErrOtherTenant
	}
	return nil
}

func (p *Platform) storeError(w http.ResponseWriter, err error) {
	var we *domain.Error
	if errors.As(err, &we) {
		p.wire.WriteError(w, we)
		return
	}
	if errors.Is(err, domain.ErrOtherTenant) {
		p.wire.WriteError(w, domain.ErrOtherTenant)
		return
	}
	// The cause (paths, SQL) is for the operator's log, not the client.
	id := w.Header().Get("X-Request-Id")
	p.log.Error("platform request failed", "request_id", id, "error", err)
	p.wire.WriteError(w, &domain.Error{Code: domain.CodeInternal,
		Message: "the server could not complete the request; its log has the cause under request_id " + id})
}

// handleUpload takes a multipart zip, streams it to a temporary file (never
// whole in memory), and stages it as the agent's next version.
func (p *Platform) handleUpload(w http.ResponseWriter, r *http.Request) {
	k, ok := p.requireKey(w, r, domain.ScopeDeploy)
	if !ok {
		return
	}
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ct != "multipart/form-data" {
		p.wire.WriteError(w, &domain.Error{Code: domain.CodeValidation, Message: "send the bundle as multipart/form-data with the zip in the field \"file\""})
		return
	}
	tooBig := &domain.Error{Code: domain.CodeValidation, Field: "file", Message: fmt.Sprintf(
		"the upload is larger than the server's limit of %d MiB (runagent server --max-upload); leave large data out of the bundle (.gitignore)", p.cfg.MaxUpload>>20)}
	if r.ContentLength > p.cfg.MaxUpload+1<<20 {
		p.wire.WriteErrorStatus(w, http.StatusRequestEntityTooLarge, tooBig)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, p.cfg.MaxUpload+1<<20)
	mr, err := r.MultipartReader()
	if err != nil {
		p.wire.WriteError(w, &domain.Error{Code: domain.CodeValidation, Message: "bad multipart body: " + err.Error()})
		return
	}
	var agentID, fileName string
	var tmp *os.File
	defer func() {
		if tmp != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	var size int64
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			p.wire.WriteError(w, &domain.Error{Code: domain.CodeValidation, Message: "bad multipart body: " + err.Error()})
			return
		}
		switch part.FormName() {
		case "agent_id":
			b, _ := io.ReadAll(io.LimitReader(part, 256))
			agentID = strings.TrimSpace(string(b))
			// Refuse before the bundle is read, when the id comes first
			// (runagent deploy sends it first).
			if id, err := manager.NormalizeID(agentID); err == nil {
				if e := p.mayDeploy(k, id); e != nil {
					p.wire.WriteError(w, e)
					return
				}
			}
		case "file":
			if tmp != nil {
				p.wire.WriteError(w, &domain.Error{Code: domain.CodeValidation, Field: "file", Message: "send one file"})
				return
			}
			fileName = part.FileName()
			tmp, err = os.CreateTemp(p.cfg.DataDir, "upload-*.zip")
			if err != nil {
				p.storeError(w, err)
				return
			}
			size, err = io.Copy(tmp, io.LimitReader(part, p.cfg.MaxUpload+1))
			if err != nil {
				p.wire.WriteError(w, &domain.Error{Code: domain.CodeValidation, Field: "file", Message: "the upload broke off: " + err.Error()})
				return
			}
			if size > p.cfg.MaxUpload {
				p.wire.WriteErrorStatus(w, http.StatusRequestEntityTooLarge, tooBig)
				return
			}
		}
		part.Close()
	}
	if tmp == nil {
		p.wire.WriteError(w, &domain.Error{Code: domain.CodeValidation, Field: "file", Message: "no bundle: send the zip of the agent folder in the form field \"file\""})
		return
	}
	authorize := func(id string) error {
		if e := p.mayDeploy(k, id); e != nil {
			return e
		}
		return nil
	}
	id, n, err := p.mgr.Stage(r.Context(), k.Tenant, agentID, authorize, tmp, size, fileName)
	if err != nil {
		p.storeError(w, err)
		return
	}
	p.wire.WriteEnvelope(w, http.StatusOK, platformapi.Upload{AgentID: id, Version: n, Status: string(domain.VersionUploaded),
		FileSize: size, FileName: fileName}, "Agent uploaded")
}

func (p *Platform) handleStart(w http.ResponseWriter, r *http.Request) {
	id, ok := p.agentRequest(w, r, domain.ScopeDeploy)
	if !ok {
		return
	}
	n, err := p.mgr.Start(r.Context(), id)
	if err != nil {
		p.storeError(w, err)
		return
	}
	p.wire.WriteEnvelope(w, http.StatusOK, platformapi.Deployment{AgentID: id, Version: n, Status: platformapi.AgentDeployed,
		Endpoint: "/agents/" + id, URL: "/api/v1/agents/" + id}, "Agent started")
}

// agentRequest authenticates a request about the agent in its path and
// resolves that agent for the key (any of scopes).
func (p *Platform) agentRequest(w http.ResponseWriter, r *http.Request, scopes ...domain.Scope) (string, bool) {
	k, ok := p.requireKey(w, r, scopes...)
	if !ok {
		return "", false
	}
	return p.ownedAgent(w, k, r.PathValue("id"))
}

// agentSummary is the agent's entry of GET /api/v1/agents, with the
// manager's view of it (the status and detail routes start from it).
func (p *Platform) agentSummary(ctx context.Context, id string) (platformapi.Agent, manager.AgentStatus, error) {
	pa, err := p.db.PlatformAgent(ctx, id)
	if err != nil {
		return platformapi.Agent{}, manager.AgentStatus{}, err
	}
	st, _ := p.mgr.Status(id)
	status := platformapi.AgentUploaded
	switch {
	case st.ActiveVersion > 0:
		status = platformapi.AgentDeployed
	case pa.LatestVersion == 0:
		status = platformapi.AgentRegistered
	}
	return platformapi.Agent{
		AgentID: id, Name: pa.Name, Framework: pa.Framework, Tenant: pa.Tenant, Status: status,
		ActiveVersion: st.ActiveVersion, LatestVersion: pa.LatestVersion,
		CreatedAt: wire.IsoFormat(pa.CreatedAt), UpdatedAt: wire.IsoFormat(pa.UpdatedAt),
		Instances: platformapi.Instances{Starting: st.Pool.Starting, Ready: st.Pool.Ready, Draining: st.Pool.Draining},
	}, st, nil
}

func (p *Platform) handleStatus(w http.ResponseWriter, r *http.Request) {
	id, ok := p.agentRequest(w, r, domain.ScopeRun, domain.ScopeDeploy)
	if !ok {
		return
	}
	s, _, err := p.agentSummary(r.Context(), id)
	if err != nil {
		p.storeError(w, err)
		return
	}
	out := platformapi.AgentStatus{AgentID: s.AgentID, Name: s.Name, Framework: s.Framework, Tenant: s.Tenant, Status: s.Status,
		ActiveVersion: s.ActiveVersion, LatestVersion: s.LatestVersion, CreatedAt: s.CreatedAt, UpdatedAt: s.UpdatedAt, Instances: s.Instances}
	vs, _ := p.db.Versions(r.Context(), id)
	if len(vs) > 0 && vs[0].Status == domain.VersionFailed {
		out.Error = platformapi.TextPtr(vs[0].Error)
	}
	p.wire.WriteEnvelope(w, http.StatusOK, out, "Agent status")
}

func (p *Platform) visibleAgents(k *domain.Key) []string {
	tenant := k.Tenant
	if k.Has(domain.ScopeAdmin) {
		tenant = ""
	}
	var out []string
	for _, id := range p.mgr.AgentIDs(tenant) {
		if k.AllowsAgent(id) {
			out = append(out, id)
		}
	}
	return out
}

func (p *Platform) handleAgents(w http.ResponseWriter, r *http.Request) {
	k, ok := p.requireKey(w, r, domain.ScopeRun, domain.ScopeDeploy)
	if !ok {
		return
	}
	list := platformapi.AgentList{Agents: []platformapi.Agent{}}
	for _, id := range p.visibleAgents(k) {
		s, _, err := p.agentSummary(r.Context(), id)
		if err == nil {
			list.Agents = append(list.Agents, s)
		}
	}
	p.wire.WriteEnvelope(w, http.StatusOK, list, "Agents")
}

func (p *Platform) handleAgent(w http.ResponseWriter, r *http.Request) {
	id, ok := p.agentRequest(w, r, domain.ScopeRun, domain.ScopeDeploy)
	if !ok {
		return
	}
	s, _, err := p.agentSummary(r.Context(), id)
	if err != nil {
		p.storeError(w, err)
		return
	}
	out := platformapi.AgentDetail{AgentID: s.AgentID, Name: s.Name, Framework: s.Framework, Tenant: s.Tenant, Status: s.Status,
		ActiveVersion: s.ActiveVersion, LatestVersion: s.LatestVersion, CreatedAt: s.CreatedAt, UpdatedAt: s.UpdatedAt, Instances: s.Instances,
		Versions: []platformapi.Version{}}
	vs, _ := p.db.Versions(r.Context(), id)
	for _, v := range vs {
		out.Versions = append(out.Versions, platformapi.Version{Version: v.Version, Status: string(v.Status), UploadedAt: wire.IsoFormat(v.UploadedAt),
			FileSize: v.FileSize, SHA256: v.SHA256, Error: platformapi.Text(v.Error)})
	}
	st, _ := p.mgr.Status(id)
	if a, _, _ := p.mgr.Lookup(id); a != nil {
		out.Entrypoints = []platformapi.Entrypoint{}
		for _, ep := range a.Entrypoints {
			out.Entrypoints = append(out.Entrypoints, platformapi.Entrypoint(server.EntrypointJSON(ep))) // as /architecture lists them
		}
		d := st.Deployment
		out.Limits = &platformapi.Limits{MinInstances: d.MinInstances, MaxInstances: d.MaxInstances,
			TargetConcurrency: d.TargetConcurrency, MaxConcurrency: d.MaxConcurrency, MaxQueue: d.MaxQueue,
			IdleTimeoutSeconds: d.IdleTimeout.Seconds(), MemoryMB: d.MemoryMB, CPUSeconds: d.CPUSeconds,
			MaxPids: d.MaxPids, CallTimeoutSeconds: d.CallTimeout.Seconds(),
			Sandbox: d.Sandbox, Network: d.Network, WorkDirMB: d.WorkDirMB, OpenFiles: d.OpenFiles}
	}
	out.Pool = platformapi.Pool{InFlight: st.Pool.InFlight, Queued: st.Pool.Queued, RetiringVersions: st.Retiring}
	for _, in := range st.Pool.Instances {
		out.Pool.Instances = append(out.Pool.Instances, platformapi.Instance{ID: in.ID, State: in.State, PID: in.PID, InFlight: in.InFlight,
			RSSBytes: in.RSSBytes, CPUSeconds: in.CPU, Tasks: in.Tasks, UptimeSeconds: in.Uptime})
	}
	p.wire.WriteEnvelope(w, http.StatusOK, out, "Agent")
}

func (p *Platform) handleDelete(w http.ResponseWriter, r *http.Request) {
	id, ok := p.agentRequest(w, r, domain.ScopeDeploy)
	if !ok {
		return
	}
	if err := p.mgr.Delete(r.Context(), id); err != nil {
		p.storeError(w, err)
		return
	}
	p.servedAgents.Delete(id)
	p.wire.WriteEnvelope(w, http.StatusOK, platformapi.Deleted{AgentID: id, Deleted: true}, "Agent deleted")
}

func (p *Platform) handleLogs(w http.ResponseWriter, r *http.Request) {
	id, ok := p.agentRequest(w, r, domain.ScopeRun, domain.ScopeDeploy)
	if !ok {
		return
	}
	q := r.URL.Query()
	after, _ := strconv.ParseInt(q.Get("after"), 10, 64)
	limit, _ := strconv.Atoi(q.Get("limit"))
	if limit <= 0 || limit > 10000 {
		limit = 500
	}
	inv := q.Get("invocation_id")
	if q.Get("follow") != "true" && q.Get("follow") != "1" {
		lines, err := p.db.Logs(r.Context(), id, inv, after, limit)
		if err != nil {
			p.storeError(w, err)
			return
		}
		next := after
		if len(lines) > 0 {
			next = lines[len(lines)-1].Seq
		}
		p.wire.WriteEnvelope(w, http.StatusOK, platformapi.LogPage{AgentID: id, Logs: logLines(lines), NextAfter: next}, "Agent logs")
		return
	}
	// Follow: subscribe before reading the backlog so nothing falls between.
	ch, cancel := p.logs.subscribe(id)
	defer cancel()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	// A follower that stops reading is cut off instead of holding the
	// handler (and its connection) forever.
	deadline := func() { rc.SetWriteDeadline(time.Now().Add(followWriteWait)) }
	deadline()
	enc := json.NewEncoder(w)
	last := after
	// seen drops the lines of the backlog the subscription brings again.
	// Lines are not dropped for being older than the last one sent: on a
	// cluster, several servers store lines, and one may commit a lower
	// seq after another's higher one.
	seen := map[int64]bool{}
	for {
		lines, err := p.db.Logs(r.Context(), id, inv, last, 1000)
		if err != nil {
			return
		}
		for _, l := range lines {
			enc.Encode(logLine(l))
			last = l.Seq
			seen[l.Seq] = true
		}
		if len(lines) < 1000 {
			break
		}
	}
	rc.Flush()
	keepAlive := time.NewTicker(15 * time.Second)
	defer keepAlive.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-keepAlive.C:
			deadline()
			if _, err := w.Write([]byte("\n")); err != nil || rc.Flush() != nil {
				return
			}
		case l := <-ch:
			if l.Seq <= after || seen[l.Seq] || (inv != "" && l.InvocationID != inv) {
				continue
			}
			deadline()
			if enc.Encode(logLine(l)) != nil || rc.Flush() != nil {
				return
			}
			if len(seen) > 50000 { // long past the backlog's overlap
				clear(seen)
			}
			seen[l.Seq] = true
		}
	}
}

// followWriteWait is how long a log follower may leave a write unread.
const followWriteWait = 30 * time.Second

func (p *Platform) handleInvocations(w http.ResponseWriter, r *http.Request) {
	k, ok := p.requireKey(w, r, domain.ScopeRun, domain.ScopeDeploy)
	if !ok {
		return
	}
	q := r.URL.Query()
	limit := 50
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10000 {
			p.wire.WriteError(w, &domain.Error{Code: domain.CodeValidation, Field: "limit", Message: fmt.Sprintf("expected a whole number from 1 to 10000, got %q", v)})
			return
		}
		limit = n
	}
	status := domain.Status(q.Get("status"))
	switch status {
	case "", domain.StatusPending, domain.StatusCompleted, domain.StatusFailed:
	default:
		p.wire.WriteError(w, &domain.Error{Code: domain.CodeValidation, Field: "status", Message: fmt.Sprintf("expected pending, completed or failed, got %q", status)})
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
	if ids == nil {
		ids = []string{}
	}
	invs, err := p.db.ListForAgents(r.Context(), ids, status, limit)
	if err != nil {
		p.storeError(w, err)
		return
	}
	p.wire.WriteEnvelope(w, http.StatusOK, platformapi.InvocationList[wire.InvocationRecord]{Invocations: wire.InvocationRecords(invs), TotalCount: len(invs)}, "Invocations")
}

func (p *Platform) handleCreateKey(w http.ResponseWriter, r *http.Request) {
	if _, ok := p.requireKey(w, r, domain.ScopeAdmin); !ok {
		return
	}
	var req platformapi.KeyRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		p.wire.WriteError(w, &domain.Error{Code: domain.CodeValidation, Message: "request body: " + err.Error()})
		return
	}
	bad := func(field, msg string) {
		p.wire.WriteError(w, &domain.Error{Code: domain.CodeValidation, Field: field, Message: msg})
	}
	if strings.TrimSpace(req.Name) == "" {
		bad("name", "required: a name that says who or what uses the key")
		return
	}
	scopes, err := domain.ParseScopes(req.Scopes)
	if err != nil {
		bad("scopes", err.Error())
		return
	}
	for i, a := range req.Agents {
		id, err := manager.NormalizeID(a)
		if err != nil {
			bad(fmt.Sprintf("agents[%d]", i), err.Error())
			return
		}
		req.Agents[i] = id
	}
	rate, burst, maxConc := deref(req.RatePerSecond), deref(req.Burst), deref(req.MaxConcurrency)
	if rate < 0 || burst < 0 || maxConc < 0 {
		bad("rate_per_second", "limits must be 0 (the server's default) or more")
		return
	}
	token, k, err := apikeys.Generate()
	if err != nil {
		p.storeError(w, err)
		return
	}
	k.Name, k.Scopes, k.Agents = req.Name, scopes, req.Agents
	if req.Tenant != "" {
		k.Tenant = req.Tenant
	}
	k.RatePerSecond, k.Burst, k.MaxConcurrency = rate, burst, maxConc
	if err := p.db.InsertAPIKey(r.Context(), k); err != nil {
		p.storeError(w, err)
		return
	}
	p.keys.Put(k)
	p.keysChanged()
	out := keyRecord(&k)
	out.Key = token
	p.wire.WriteEnvelope(w, http.StatusCreated, out, "API key created; it is shown only once")
}

// deref is *v, 0 for nil (a limit left to the server's default).
func deref[T int | float64](v *T) T {
	if v == nil {
		return 0
	}
	return *v
}

func keyRecord(k *domain.Key) platformapi.Key {
	out := platformapi.Key{ID: k.ID, Name: k.Name, Tenant: k.Tenant, Scopes: scopeNames(k.Scopes), Agents: k.Agents,
		RatePerSecond: k.RatePerSecond, Burst: k.Burst, MaxConcurrency: k.MaxConcurrency,
		CreatedAt: wire.IsoFormat(k.CreatedAt)}
	if out.Agents == nil {
		out.Agents = []string{}
	}
	if !k.RevokedAt.IsZero() {
		at := wire.IsoFormat(k.RevokedAt)
		out.RevokedAt = &at
	}
	return out
}

// scopeNames lists scopes as strings (nil for nil).
func scopeNames(scopes []domain.Scope) []string {
	if scopes == nil {
		return nil
	}
	out := make([]string, len(scopes))
	for i, s := range scopes {
		out[i] = string(s)
	}
	return out
}

// logLine is a stored log line as the logs route sends it.
func logLine(l domain.LogLine) platformapi.LogLine {
	return platformapi.LogLine{Seq: l.Seq, Time: l.At.Format(time.RFC3339Nano), AgentID: l.AgentID, Version: l.Version,
		Instance: platformapi.Text(l.Instance), InvocationID: platformapi.Text(l.InvocationID), Stream: l.Stream, Line: l.Line}
}

// logLines converts a page of lines (nil stays nil: "logs": null).
func logLines(lines []domain.LogLine) []platformapi.LogLine {
	if lines == nil {
		return nil
	}
	out := make([]platformapi.LogLine, len(lines))
	for i, l := range lines {
		out[i] = logLine(l)
	}
	return out
}

func (p *Platform) handleKeys(w http.ResponseWriter, r *http.Request) {
	if _, ok := p.requireKey(w, r, domain.ScopeAdmin); !ok {
		return
	}
	stored, err := p.db.APIKeys(r.Context())
	if err != nil {
		p.storeError(w, err)
		return
	}
	list := platformapi.KeyList{Keys: []platformapi.Key{}}
	for _, s := range stored {
		list.Keys = append(list.Keys, keyRecord(&s))
	}
	p.wire.WriteEnvelope(w, http.StatusOK, list, "API keys")
}

func (p *Platform) handleRevokeKey(w http.ResponseWriter, r *http.Request) {
	if _, ok := p.requireKey(w, r, domain.ScopeAdmin); !ok {
		return
	}
	id := r.PathValue("id")
	at := time.Now()
	if err := p.db.RevokeAPIKey(r.Context(), id, at); errors.Is(err, domain.ErrNotFound) {
		p.wire.WriteError(w, &domain.Error{Code: domain.CodeNotFound, Message: fmt.Sprintf("API key %s not found", id)})
		return
	} else if err != nil {
		p.storeError(w, err)
		return
	}
	p.keys.Revoke(id, at)
	p.keysChanged()
	p.wire.WriteEnvelope(w, http.StatusOK, platformapi.Revoked{ID: id, Revoked: true}, "API key revoked")
}
