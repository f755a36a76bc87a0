// Package manager is the platform server's agent manager: it stages
// uploaded agent bundles as versions, installs their dependencies, runs
// each active version's instances in an autoscaled Pool, rolls new versions
// out warm before the old ones drain, and restores it all after a restart.
package manager

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/runagent-go/runagent/internal/agentfolder"
	"github.com/runagent-go/runagent/internal/autoscale"
	"github.com/runagent-go/runagent/internal/bundle"
	"github.com/runagent-go/runagent/internal/dispatch"
	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/pyenv"
	"github.com/runagent-go/runagent/internal/runproto"
	"github.com/runagent-go/runagent/internal/sandbox"
)

// LogSink takes the lines agent instances print (and system events).
type LogSink interface{ Add(domain.LogLine) }

// Config configures a Manager.
type Config struct {
	DB       domain.Agents
	DataDir  string // bundles go to DataDir/agents/<agent id>/<upload id>
	CacheDir string // virtualenvs and the runner script
	Python   pyenv.Python
	Script   string // the runner on disk (pyrunner.WriteScript)
	// Defaults apply to what an agent's deployment section leaves out;
	// they are also the ceilings it may not go over.
	Defaults Deployment
	// StableWindow, PanicWindow: the autoscaler's windows (0: its defaults).
	StableWindow, PanicWindow time.Duration
	// Tick is how often pools sample load and usage (default 1s).
	Tick           time.Duration
	HealthInterval time.Duration
	// Env is the environment every instance starts from (not the server's:
	// its secrets are not the agents' business); the agent's env_vars are
	// added to it.
	Env          []string
	Bundle       bundle.Limits
	Host         string
	Port         int
	Obs          Observer
	Logs         LogSink
	Log          *slog.Logger
	StartTimeout time.Duration // one instance's start-up (default 2 min)
	// Sandbox opens a sandbox driver by name (nil: only "process"). A
	// driver whose tool is missing is an error naming what to install.
	Sandbox func(name string) (sandbox.Driver, error)
	// Flow bounds the data of calls (results, chunks, streams in flight).
	Flow runproto.Flow
	// DenyNetwork refuses agents that ask for the network
	// (deployment.network) at upload, and runs any already deployed
	// without it.
	DenyNetwork bool

	// Cluster, when set, makes this manager one of a multi-node cluster's
	// (docs/multinode.md): the store is shared, bundles live in the
	// cluster's store, and the hooks tie the manager to the bus.
	Cluster *ClusterHooks
}

// ClusterHooks tie a manager to the other servers of its cluster.
type ClusterHooks struct {
	// Remote: this manager runs no instances (a gateway). It checks and
	// records versions; Prepare brings a version up on the nodes before
	// Start activates it.
	Remote  bool
	Prepare func(ctx context.Context, agentID string, version int, dep Deployment) error
	// Placed says whether this node is to run a version (a node's view of
	// the cluster's placement); nil: every version runs here.
	Placed func(agentID string, version int) bool
	// Bundles keeps every bundle by content hash for all servers: Stage
	// puts the upload there, and a version whose bundle is not unpacked
	// here yet is fetched (and checked against its hash).
	Bundles BundleStore
	// Changed announces that an agent changed in the store (gateways).
	Changed func(agentID string)
	// Serve and Unserve are told when a version starts and stops taking
	// calls here (a node's NATS subscriptions).
	Serve   func(t domain.Target) error
	Unserve func(t domain.Target)
	// Users keeps users' persistent folders across the nodes (a node's:
	// leases and saved folders; a gateway's: deletion). Node is this
	// server's node id.
	Users UserStore
	Node  string
}

// BundleStore keeps bundles (their zip) by SHA-256.
type BundleStore interface {
	PutBundle(ctx context.Context, sha string, r io.Reader) error
	FetchBundle(ctx context.Context, sha, path string) error
}

// Manager owns the deployed agents.
type Manager struct {
	cfg   Config
	log   *slog.Logger
	runID string

	mu     sync.RWMutex
	agents map[string]*agentState

	fetchMu   sync.Mutex   // a cluster's bundle fetches
	bundlesMu sync.RWMutex // held to read: bundles in use; to write: pruneBundles
}

type agentState struct {
	id, tenant string
	deploy     sync.Mutex // one upload or start at a time per agent
	active     atomic.Pointer[version]
	claimed    bool // guarded by Manager.mu: recorded in the store (a version or metadata)

	mu       sync.Mutex
	retiring []*version
	staged   map[int]*version // a node's versions prepared before they are active
}

// version is a running version of an agent.
type version struct {
	n      int
	folder *agentfolder.Folder
	dep    Deployment
	pool   *Pool
	users  *UserPools // per-user instances, for persistent_folders (nil: the agent has none)
	agent  *domain.Agent
}

// New returns a Manager; call Restore, then Run.
func New(cfg Config) *Manager {
	if cfg.Tick <= 0 {
		cfg.Tick = time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 2 * time.Minute
	}
	if cfg.Obs == nil {
		cfg.Obs = nopObserver{}
	}
	// Sandboxes are named after their instance; the run id keeps the names
	// of this server's instances apart from any another server (or this one
	// before a restart) left on the machine.
	runID := strconv.FormatUint(uint64(time.Now().UnixNano())%(36*36*36*36*36*36), 36)
	return &Manager{cfg: cfg, log: cfg.Log, agents: map[string]*agentState{}, runID: runID}
}

func (m *Manager) state(id string) *agentState {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.agents[id]
}
func validationError(field, format string, a ...any) *domain.Error {
	return &domain.Error{Code: domain.CodeValidation, Field: field, Message: fmt.Sprintf(format, a...)}
}

// putState returns the agent's state, creating it for tenant if it is new.
func (m *Manager) putState(id, tenant string) (st *agentState, created bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st = m.agents[id]
	if st == nil {
		st = &agentState{id: id, tenant: tenant}
		m.agents[id] = st
		created = true
	}
	return st, created
}

// forget removes a state that putState created for an upload that failed,
// unless something else (a version, a metadata claim) made it real since.
func (m *Manager) forget(st *agentState) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.agents[st.id] == st && !st.claimed && st.active.Load() == nil {
		delete(m.agents, st.id)
	}
}

// Claim records a new agent of tenant (from a metadata upload, already in
// the store) so that it can be found before its first bundle arrives.
func (m *Manager) Claim(id, tenant string) {
	st, _ := m.putState(id, tenant)
	m.markClaimed(st)
	m.changed(id)
}

func (m *Manager) markClaimed(st *agentState) {
	m.mu.Lock()
	st.claimed = true
	m.mu.Unlock()
}

// Lookup returns the agent's tenant and the version serving it (nil agent
// while none is started). ok is false for an agent that does not exist.
func (m *Manager) Lookup(id string) (a *domain.Agent, tenant string, ok bool) {
	st := m.state(id)
	if st == nil {
		return nil, "", false
	}
	if v := st.active.Load(); v != nil {
		return v.agent, st.tenant, true
	}
	return nil, st.tenant, true
}

// AgentIDs returns the ids of the agents of tenant ("" for every tenant),
// sorted (so that listings are stable).
func (m *Manager) AgentIDs(tenant string) []string {
	m.mu.RLock()
	ids := []string{}
	for id, st := range m.agents {
		if tenant == "" || st.tenant == tenant {
			ids = append(ids, id)
		}
	}
	m.mu.RUnlock()
	slices.Sort(ids)
	return ids
}

// NormalizeID checks an agent id (it names folders, so nothing but a UUID
// will do) and returns its canonical form.
func NormalizeID(id string) (string, error) {
	u, err := uuid.Parse(id)
	if err != nil || len(id) != 36 {
		return "", fmt.Errorf("%q is not an agent id: expected a UUID like 3f2a0c1e-8b7d-4e5f-9a6b-1c2d3e4f5a6b", id)
	}
	if u == uuid.Nil {
		return "", fmt.Errorf("the agent id is the all-zero UUID of a template; give the agent its own id (runagent deploy does this)")
	}
	return u.String(), nil
}

// Stage extracts and checks an uploaded bundle and records it as the
// agent's next version. agentID "" takes the id from the bundle's config.
// authorize decides whether the uploader may deploy the agent, once its id
// is known and before anything about it is recorded. Nothing is left
// behind when it fails.
func (m *Manager) Stage(ctx context.Context, tenant, agentID string, authorize func(id string) error, zip io.ReaderAt, size int64, fileName string) (string, int, error) {
	incoming := filepath.Join(m.cfg.DataDir, "agents", ".incoming")
	if err := os.MkdirAll(incoming, 0o755); err != nil {
		return "", 0, err
	}
	dir := filepath.Join(incoming, uuid.NewString())
	if err := bundle.Extract(zip, size, dir, m.cfg.Bundle); err != nil {
		var be *bundle.Error
		if errors.As(err, &be) {
			return "", 0, validationError("file", "%s", be.Error())
		}
		return "", 0, fmt.Errorf("unpack the bundle: %w", err)
	}
	keep := false
	defer func() {
		if !keep {
			os.RemoveAll(dir)
		}
	}()
	folder, err := agentfolder.Load(dir)
	if err != nil {
		return "", 0, validationError("file", "the bundle's agent is not valid:\n%s", strings.ReplaceAll(err.Error(), dir+string(filepath.Separator), ""))
	}
	cfg := folder.Config
	if cfg.AgentArchitecture == nil || len(cfg.AgentArchitecture.Entrypoints) == 0 {
		return "", 0, validationError("file", "%s: agent_architecture.entrypoints: the agent has no entrypoints to serve", folder.ConfigFile)
	}
	if dep, err := ParseDeployment(folder.RawConfig["deployment"], m.cfg.Defaults); err != nil {
		return "", 0, validationError("file", "%s: %v", folder.ConfigFile, err)
	} else if dep.Network && m.cfg.DenyNetwork {
		return "", 0, validationError("file", "%s: deployment.network: this server does not let agents reach the network "+
			"(runagent server --allow-agent-network=false); remove the setting, or ask the operator", folder.ConfigFile)
	}
	if agentID == "" {
		agentID = cfg.AgentID
	}
	id, err := NormalizeID(agentID)
	if err != nil {
		return "", 0, validationError("agent_id", "%v", err)
	}
	if err := authorize(id); err != nil {
		return "", 0, err
	}
	sum, err := hashReader(zip, size)
	if err != nil {
		return "", 0, err
	}

	st, created := m.putState(id, tenant)
	if st.tenant != tenant {
		return "", 0, domain.ErrOtherTenant
	}
	st.deploy.Lock()
	defer st.deploy.Unlock()
	if created {
		defer func() {
			if !keep {
				m.forget(st)
			}
		}()
	}
	final := filepath.Join(m.cfg.DataDir, "agents", id, uuid.NewString())
	if c := m.cfg.Cluster; c != nil && c.Bundles != nil {
		// In a cluster the bundle is kept by its hash, for every server.
		if err := c.Bundles.PutBundle(ctx, sum, io.NewSectionReader(zip, 0, size)); err != nil {
			return "", 0, err
		}
		final = m.bundleDir(sum)
	}
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return "", 0, err
	}
	shared := m.cfg.Cluster != nil && m.cfg.Cluster.Bundles != nil
	if err := os.Rename(dir, final); err != nil {
		if !shared || !dirExists(final) {
			return "", 0, err
		}
		os.RemoveAll(dir) // the same bundle is already unpacked here
	}
	n, err := m.cfg.DB.AddVersion(ctx, tenant, cfg.AgentName, cfg.Framework, domain.Version{
		AgentID: id, Dir: final, FileName: fileName, FileSize: size, SHA256: sum,
	})
	if err != nil {
		if !shared { // a cached bundle may be another version's too
			os.RemoveAll(final)
		}
		if errors.Is(err, domain.ErrOtherTenant) {
			return "", 0, domain.ErrOtherTenant
		}
		return "", 0, err
	}
	keep = true
	m.markClaimed(st)
	m.system(id, n, "", fmt.Sprintf("version %d uploaded (%s, %d bytes)", n, fileName, size))
	m.changed(id)
	return id, n, nil
}

func hashReader(r io.ReaderAt, size int64) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(r, 0, size)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Start brings the agent's newest version up: dependencies installed,
// instances warm (at least as many as the old version runs), then it takes
// the traffic and the old version drains. It returns the version number.
func (m *Manager) Start(ctx context.Context, agentID string) (int, error) {
	st := m.state(agentID)
	if st == nil {
		return 0, &domain.Error{Code: domain.CodeNotFound, Message: fmt.Sprintf("Agent %s not found", agentID)}
	}
	st.deploy.Lock()
	defer st.deploy.Unlock()
	pa, err := m.cfg.DB.PlatformAgent(ctx, agentID)
	if err != nil {
		return 0, err
	}
	if pa.LatestVersion == 0 {
		return 0, validationError("agent_id", "agent %s has no uploaded version; upload a bundle first", agentID)
	}
	old := st.active.Load()
	if old != nil && old.n == pa.LatestVersion {
		return old.n, nil // already serving
	}
	vrec, err := m.cfg.DB.Version(ctx, agentID, pa.LatestVersion)
	if err != nil {
		return 0, err
	}
	m.cfg.DB.SetVersionStatus(ctx, agentID, vrec.Version, domain.VersionStarting, "")
	m.system(agentID, vrec.Version, "", fmt.Sprintf("starting version %d", vrec.Version))
	warm := 1
	if old != nil && old.pool != nil {
		warm = max(warm, old.pool.Status().Ready)
	}
	v, err := m.bringUp(ctx, st, vrec, warm, !m.remote())
	if err == nil && m.remote() {
		err = m.cfg.Cluster.Prepare(ctx, agentID, vrec.Version, v.dep)
	}
	if err != nil {
		m.cfg.DB.SetVersionStatus(context.WithoutCancel(ctx), agentID, vrec.Version, domain.VersionFailed, err.Error())
		m.system(agentID, vrec.Version, "", "start failed: "+err.Error())
		if c := domain.CodeOf(err); c == domain.CodeOverloaded || c == domain.CodeConnection {
			return 0, err // no node, or the bus away: retryable, not the version's fault
		}
		return 0, &domain.Error{Code: domain.CodeValidation, Message: fmt.Sprintf("version %d of agent %s did not start: %v", vrec.Version, agentID, err)}
	}
	if err := m.cfg.DB.ActivateVersion(context.WithoutCancel(ctx), agentID, v.n); err != nil {
		v.close()
		return 0, err
	}
	m.activate(st, v, old)
	m.system(agentID, v.n, "", fmt.Sprintf("version %d is serving", v.n))
	m.changed(agentID)
	return v.n, nil
}

// activate makes v the version serving st in place of old (nil), which
// retires.
func (m *Manager) activate(st *agentState, v, old *version) {
	st.active.Store(v)
	if old != nil {
		m.retire(st, old)
	}
}

// retire drains an old version; calls already on it finish there.
func (m *Manager) retire(st *agentState, old *version) {
	if old.pool == nil {
		return // a gateway's: nothing runs here
	}
	st.mu.Lock()
	st.retiring = append(st.retiring, old)
	st.mu.Unlock()
	m.unserve(st.id, old) // first: the cluster sends it no new call while it drains
	old.pool.Drain()
	go func() {
		<-old.pool.Drained()
		st.mu.Lock()
		for i, v := range st.retiring {
			if v == old {
				st.retiring = append(st.retiring[:i], st.retiring[i+1:]...)
				break
			}
		}
		st.mu.Unlock()
		m.system(st.id, old.n, "", fmt.Sprintf("version %d drained and stopped", old.n))
	}()
}

// redactor hides the server's own folders in what the platform tells an
// agent's owner and callers (start errors, install progress): paths in a
// version's bundle become relative to it, the data and cache folders are
// named rather than spelled out.
func (m *Manager) redactor(bundleDir string) *strings.Replacer {
	var pairs []string
	add := func(old, new string) {
		if old != "" && old != "/" {
			pairs = append(pairs, old, new)
		}
	}
	add(bundleDir+string(filepath.Separator), "")
	add(bundleDir, "the bundle")
	add(m.cfg.DataDir, "$DATA_DIR")
	add(m.cfg.CacheDir, "$CACHE_DIR")
	return strings.NewReplacer(pairs...)
}

// redactedError is an error whose text had the server's paths taken out.
type redactedError struct {
	msg   string
	cause error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.cause }

func redactErr(r *strings.Replacer, err error) error {
	if err == nil {
		return nil
	}
	return &redactedError{msg: r.Replace(err.Error()), cause: err}
}

// bringUp prepares a version's environment and pool, warming n instances
// (0: none, for a restore that scales from zero).
// bringUp loads a version and, if here, starts its pool with n instances
// warm; a version not run here (a gateway's, or a node's placed
// elsewhere) is its config only.
func (m *Manager) bringUp(ctx context.Context, st *agentState, vrec domain.Version, n int, here bool) (*version, error) {
	if c := m.cfg.Cluster; c != nil && c.Bundles != nil {
		dir, err := m.ensureBundle(ctx, vrec.SHA256)
		if err != nil {
			return nil, fmt.Errorf("version %d of agent %s: %w", vrec.Version, st.id, err)
		}
		vrec.Dir = dir
	}
	r := m.redactor(vrec.Dir)
	v, err := m.bringUpWith(ctx, st.id, st.tenant, vrec, n, here, r)
	return v, redactErr(r, err)
}

func (m *Manager) bringUpWith(ctx context.Context, agentID, tenant string, vrec domain.Version, n int, here bool, r *strings.Replacer) (*version, error) {
	folder, err := agentfolder.Load(vrec.Dir)
	if err != nil {
		return nil, err
	}
	dep, err := ParseDeployment(folder.RawConfig["deployment"], m.cfg.Defaults)
	if err != nil {
		return nil, err
	}
	dep = dep.Capped(m.cfg.Defaults)
	if dep.Network && m.cfg.DenyNetwork {
		dep.Network = false
		m.system(agentID, vrec.Version, "", "deployment.network is ignored: this server does not let agents reach the network")
	}
	v := &version{n: vrec.Version, folder: folder, dep: dep}
	a := folder.Agent()
	a.ID, a.Version = agentID, vrec.Version // the deployed id, whatever the bundle's config says
	a.Tenant = tenant
	a.CallTimeout = dep.CallTimeout
	v.agent = a
	if !here {
		return v, nil // the nodes run it, or other nodes
	}
	progress := &lineWriter{fn: func(line string) { m.system(agentID, vrec.Version, "", r.Replace(line)) }}
	env, err := pyenv.Prepare(ctx, m.cfg.Python, folder.Dir, m.cfg.CacheDir, progress)
	progress.Flush()
	if err != nil {
		return nil, err
	}
	drv, err := m.driver(dep.Sandbox)
	if err != nil {
		return nil, err
	}
	limits := domain.Limits{MemoryBytes: int64(dep.MemoryMB) << 20, CPUSeconds: dep.CPUSeconds, CPUs: dep.CPUs, Pids: dep.MaxPids,
		OpenFiles: dep.OpenFiles, WorkDirBytes: int64(dep.WorkDirMB) << 20}
	spec := InstanceSpec{
		Folder: folder, Env: env, Script: m.cfg.Script, BaseEnv: m.cfg.Env, Driver: drv, Network: dep.Network, Limits: limits,
		Threads: dep.MaxConcurrency + 2, Flow: m.cfg.Flow, NamePrefix: agentID + "-" + m.runID + "-",
		StartTimeout: m.cfg.StartTimeout, Log: m.log.With("agent_id", agentID, "version", vrec.Version), Redact: r,
		OnLog: func(instance, invocation, stream, text string) {
			m.cfg.Logs.Add(domain.LogLine{At: time.Now(), AgentID: agentID, Version: vrec.Version, Instance: instance,
				InvocationID: invocation, Stream: stream, Line: text})
		},
	}
	pc := PoolConfig{
		Scale: autoscale.Config{Min: dep.MinInstances, Max: dep.MaxInstances, TargetConcurrency: dep.TargetConcurrency,
			StableWindow: m.cfg.StableWindow, PanicWindow: m.cfg.PanicWindow, ScaleToZeroGrace: dep.IdleTimeout},
		MaxConcurrency: dep.MaxConcurrency, MaxQueue: dep.MaxQueue,
		Limits:         domain.Limits{MemoryBytes: limits.MemoryBytes, CPUSeconds: limits.CPUSeconds, Pids: limits.Pids},
		HealthInterval: m.cfg.HealthInterval,
	}
	pool, err := NewPool(agentID, vrec.Version, pc, spec.StartFunc(), m.cfg.Obs, m.log)
	if err != nil {
		return nil, err
	}
	v.pool = pool
	if len(folder.Config.PersistentFolders) > 0 {
		if v.users, err = NewUserPools(UserPoolsConfig{
			AgentID: agentID, Version: vrec.Version, Dir: filepath.Join(m.cfg.DataDir, "users", agentID), Bundle: folder.Dir,
			Folders: folder.Config.PersistentFolders, Spec: spec, Pool: pc, QuotaMB: dep.PersistentQuotaMB, MaxUsers: dep.MaxInstances, Obs: m.cfg.Obs,
			Store: m.userStore(),
		}); err != nil {
			pool.Close()
			return nil, err
		}
	}
	if n > 0 {
		if err := pool.Warm(ctx, max(n, dep.MinInstances)); err != nil {
			pool.Close()
			return nil, err
		}
	}
	return v, nil
}

// driver opens the named sandbox driver.
func (m *Manager) driver(name string) (sandbox.Driver, error) {
	if name == "" || (name == "process" && m.cfg.Sandbox == nil) {
		return sandbox.ProcessDriver{}, nil
	}
	if m.cfg.Sandbox == nil {
		return nil, fmt.Errorf("deployment.sandbox: %q is not available on this server", name)
	}
	d, err := m.cfg.Sandbox(name)
	if err != nil {
		return nil, fmt.Errorf("deployment.sandbox %q: %w", name, err)
	}
	return d, nil
}

// Restore loads the agents recorded in the store and brings their active
// versions back (instances start as their minimum says, or on demand).
func (m *Manager) Restore(ctx context.Context) error {
	agents, err := m.cfg.DB.PlatformAgents(ctx)
	if err != nil {
		return err
	}
	for _, pa := range agents {
		st, _ := m.putState(pa.ID, pa.Tenant)
		m.markClaimed(st)
		vs, err := m.cfg.DB.Versions(ctx, pa.ID)
		if err != nil {
			return err
		}
		for _, v := range vs {
			// A cluster's store is shared: a version starting there may
			// be another gateway's start in progress.
			if v.Status == domain.VersionStarting && m.cfg.Cluster == nil {
				m.cfg.DB.SetVersionStatus(ctx, pa.ID, v.Version, domain.VersionFailed, "the server stopped while this version was starting; start it again")
			}
		}
		if pa.ActiveVersion == 0 {
			continue
		}
		st.deploy.Lock()
		if st.active.Load() != nil { // a notice brought it up meanwhile
			st.deploy.Unlock()
			continue
		}
		vrec, err := m.cfg.DB.Version(ctx, pa.ID, pa.ActiveVersion)
		if err != nil {
			st.deploy.Unlock()
			return err
		}
		v, err := m.bringUp(ctx, st, vrec, 0, m.runsHere(pa.ID, vrec.Version))
		st.deploy.Unlock()
		if err != nil {
			m.log.Error("could not restore an agent; it will not serve until started again", "agent_id", pa.ID, "version", vrec.Version, "error", err)
			if m.cfg.Cluster == nil { // in a cluster, the failure is this server's, not the version's
				m.cfg.DB.SetVersionStatus(ctx, pa.ID, vrec.Version, domain.VersionFailed, err.Error())
			}
			continue
		}
		st.active.Store(v) // findable before the cluster may send it calls
		if err := m.serve(pa.ID, v); err != nil {
			st.active.Store(nil)
			v.close()
			return err
		}
		m.log.Info("agent restored", "agent_id", pa.ID, "version", v.n)
	}
	return nil
}

// Delete stops an agent's instances and removes it with its files.
func (m *Manager) Delete(ctx context.Context, agentID string) error {
	st := m.state(agentID)
	if st == nil {
		return &domain.Error{Code: domain.CodeNotFound, Message: fmt.Sprintf("Agent %s not found", agentID)}
	}
	st.deploy.Lock()
	defer st.deploy.Unlock()
	m.mu.Lock()
	delete(m.agents, agentID)
	m.mu.Unlock()
	m.stopAll(st)
	if err := m.cfg.DB.DeletePlatformAgent(ctx, agentID); err != nil {
		return err
	}
	m.changed(agentID)
	if us := m.userStore(); us != nil {
		if err := us.RemoveAgent(ctx, agentID); err != nil {
			m.log.Warn("could not delete the agent's users' persistent folders from the cluster's store", "agent_id", agentID, "error", err)
		}
	}
	if err := os.RemoveAll(filepath.Join(m.cfg.DataDir, "users", agentID)); err != nil {
		return err
	}
	return os.RemoveAll(filepath.Join(m.cfg.DataDir, "agents", agentID))
}

// DeleteUserData removes what a user's runs wrote to the agent's
// persistent folders, once the user's instances (of every version) have
// stopped. Nothing there is not an error: deleting twice is fine. In a
// cluster the node holding the user stops its instances and deletes the
// folders, saved ones included.
func (m *Manager) DeleteUserData(ctx context.Context, agentID, user string) error {
	if m.state(agentID) == nil {
		return &domain.Error{Code: domain.CodeNotFound, Message: fmt.Sprintf("Agent %s not found", agentID)}
	}
	key := userKey(user)
	if us := m.userStore(); us != nil {
		holder, err := us.Holder(ctx, agentID, key)
		if err != nil {
			return err
		}
		if holder != "" && holder != m.cfg.Cluster.Node {
			if err := us.AskDelete(ctx, holder, agentID, key); err != nil {
				return err
			}
		}
	}
	return m.DeleteUserKey(ctx, agentID, key)
}

// DeleteUserKey is DeleteUserData on this server, for the user's folder
// key: a node answering a gateway's request (cluster.Users.ServeDelete).
func (m *Manager) DeleteUserKey(ctx context.Context, agentID, key string) error {
	var users []*UserPools
	for _, v := range m.versions() {
		if v.users != nil && v.agent.ID == agentID {
			users = append(users, v.users)
		}
	}
	us := m.userStore()
	if us != nil && len(users) > 0 {
		// Held through the deletion, so that no other node takes the user
		// up from what is being deleted.
		if _, err := us.Hold(ctx, domain.Target{AgentID: agentID, Version: users[0].version}, key); err == nil {
			defer us.Release(agentID, key)
		}
	}
	for _, u := range users {
		u.drop(key)
	}
	defer func() {
		for _, u := range users {
			u.unblock(key)
		}
	}()
	if us != nil {
		if err := us.Remove(ctx, agentID, key); err != nil {
			return err
		}
	}
	return os.RemoveAll(filepath.Join(m.cfg.DataDir, "users", agentID, key))
}

// userStore is the cluster's store of users' folders (nil alone).
func (m *Manager) userStore() UserStore {
	if m.cfg.Cluster == nil {
		return nil
	}
	return m.cfg.Cluster.Users
}

// AgentStatus is a snapshot of an agent's serving state.
type AgentStatus struct {
	ActiveVersion int
	Deployment    Deployment
	Pool          PoolStatus
	Local         bool // its instances run here
	Retiring      []int
}

// Status returns the serving state of an agent (ok false if unknown).
func (m *Manager) Status(agentID string) (AgentStatus, bool) {
	st := m.state(agentID)
	if st == nil {
		return AgentStatus{}, false
	}
	var s AgentStatus
	if v := st.active.Load(); v != nil {
		s.ActiveVersion, s.Deployment, s.Local = v.n, v.dep, v.pool != nil
		if v.pool != nil {
			s.Pool = v.pool.Status()
		}
		if v.users != nil {
			for _, p := range v.users.list() {
				s.Pool.add(p.Status())
			}
		}
	}
	st.mu.Lock()
	for _, v := range st.retiring {
		s.Retiring = append(s.Retiring, v.n)
	}
	st.mu.Unlock()
	return s, true
}

// Run drives every pool's sampling, scaling, limits and health checks
// until ctx ends.
func (m *Manager) Run(ctx context.Context) {
	t := time.NewTicker(m.cfg.Tick)
	defer t.Stop()
	pruned := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			m.tick(now)
			if m.cfg.Cluster != nil && now.Sub(pruned) >= bundlePruneEvery {
				pruned = now
				go m.pruneBundles(now)
			}
		}
	}
}

func (m *Manager) pools() []*Pool {
	var out []*Pool
	for _, v := range m.versions() {
		if v.pool != nil { // a gateway has versions without pools
			out = append(out, v.pool)
		}
		if v.users != nil {
			out = append(out, v.users.list()...)
		}
	}
	return out
}

// versions is every version loaded: active, retiring and staged.
func (m *Manager) versions() []*version {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var out []*version
	for _, st := range m.agents {
		if v := st.active.Load(); v != nil {
			out = append(out, v)
		}
		st.mu.Lock()
		out = append(out, st.retiring...)
		for _, v := range st.staged {
			out = append(out, v)
		}
		st.mu.Unlock()
	}
	return out
}

func (m *Manager) tick(now time.Time) {
	tickPools(now, m.pools())
	for _, v := range m.versions() {
		if v.users != nil {
			v.users.reap(now)
		}
	}
}

// tickPools ticks pools with one /proc reading for all of them.
func tickPools(now time.Time, pools []*Pool) {
	var pids []int
	for _, p := range pools {
		pids = append(pids, p.PIDs()...)
	}
	usage := SampleGroups(pids)
	for _, p := range pools {
		p.Tick(now, usage)
	}
}

// Close stops every instance.
func (m *Manager) Close() {
	var wg sync.WaitGroup
	for _, p := range m.pools() {
		wg.Add(1)
		go func() { defer wg.Done(); p.Close() }()
	}
	wg.Wait()
}

// system records an event in the agent's log.
func (m *Manager) system(agentID string, version int, invocation, text string) {
	m.cfg.Logs.Add(domain.LogLine{At: time.Now(), AgentID: agentID, Version: version, Instance: "-",
		InvocationID: invocation, Stream: "system", Line: text})
}

// lineWriter turns written bytes into lines (pip's progress).
type lineWriter struct {
	fn  func(string)
	buf []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := strings.IndexByte(string(w.buf), '\n')
		if i < 0 {
			return len(p), nil
		}
		if line := strings.TrimRight(string(w.buf[:i]), "\r"); line != "" {
			w.fn(line)
		}
		w.buf = w.buf[i+1:]
	}
}

func (w *lineWriter) Flush() {
	if len(w.buf) > 0 {
		w.fn(string(w.buf))
		w.buf = nil
	}
}

// Invoker implements dispatch.Resolver: the pool of an agent version that
// runs here, the active one or one still draining its calls.
func (m *Manager) Invoker(t domain.Target) (domain.Invoker, error) {
	v, err := m.target(t)
	if err != nil {
		return nil, err
	}
	if t.User != "" && v.users != nil {
		if m.cfg.Cluster != nil && m.userStore() == nil {
			return nil, &domain.Error{Code: domain.CodeValidation, Field: "persistent_memory", Message: fmt.Sprintf(
				"agent %s has persistent_folders, but this cluster server has no store for users' folders", t.AgentID)}
		}
		return v.users.Invoker(t.User), nil
	}
	return v.pool, nil
}

// target is the version a call is for, with a pool here.
func (m *Manager) target(t domain.Target) (*version, error) {
	st := m.state(t.AgentID)
	if st != nil {
		if v := st.active.Load(); v != nil && v.n == t.Version && v.pool != nil {
			return v, nil
		}
		st.mu.Lock()
		defer st.mu.Unlock()
		for _, v := range st.retiring {
			if v.n == t.Version {
				return v, nil
			}
		}
		if v := st.staged[t.Version]; v != nil && v.pool != nil {
			return v, nil // a node's, prepared: a gateway may call it as it activates
		}
		if v := st.active.Load(); v != nil && v.n > t.Version {
			return nil, errPoolClosed // replaced as the call arrived: retry
		}
	}
	return nil, dispatch.NotRunning(t)
}
