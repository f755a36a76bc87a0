package manager

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/google/uuid"

	"github.com/runagent-go/runagent/internal/bundle"
	"github.com/runagent-go/runagent/internal/domain"
)

// A manager of a cluster (Config.Cluster) shares its store with the other
// gateways and nodes. Each keeps its own view of the agents in memory and
// brings it in line with the store (Reconcile) when told an agent changed
// and at every resync; a node brings versions up ahead of their activation
// when a gateway asks (PrepareVersion).

// remote reports whether this manager runs no instances (a gateway).
func (m *Manager) remote() bool { return m.cfg.Cluster != nil && m.cfg.Cluster.Remote }

// runsHere reports whether this server runs the version's instances: a
// single server does, a gateway never, a node where the cluster's
// placement lists it.
func (m *Manager) runsHere(agentID string, version int) bool {
	c := m.cfg.Cluster
	if c == nil {
		return true
	}
	return !c.Remote && (c.Placed == nil || c.Placed(agentID, version))
}

// changed announces that agentID changed in the store.
func (m *Manager) changed(agentID string) {
	if c := m.cfg.Cluster; c != nil && c.Changed != nil {
		c.Changed(agentID)
	}
}

// serve starts taking calls for v from the cluster.
func (m *Manager) serve(agentID string, v *version) error {
	if c := m.cfg.Cluster; c != nil && c.Serve != nil && v.pool != nil {
		return c.Serve(domain.Target{AgentID: agentID, Version: v.n})
	}
	return nil
}

// unserve stops taking calls for v from the cluster.
func (m *Manager) unserve(agentID string, v *version) {
	if c := m.cfg.Cluster; c != nil && c.Unserve != nil && v.pool != nil {
		c.Unserve(domain.Target{AgentID: agentID, Version: v.n})
	}
}

// close stops v's instances, if it runs any here.
func (v *version) close() {
	if v.users != nil {
		v.users.Close()
	}
	if v.pool != nil {
		v.pool.Close()
	}
}

// stopAll stops every version of st now (a deleted agent).
func (m *Manager) stopAll(st *agentState) {
	var vs []*version
	if v := st.active.Swap(nil); v != nil {
		vs = append(vs, v)
	}
	st.mu.Lock()
	vs = append(vs, st.retiring...)
	for _, v := range st.staged {
		vs = append(vs, v)
	}
	st.retiring, st.staged = nil, nil
	st.mu.Unlock()
	for _, v := range vs {
		m.unserve(st.id, v)
		v.close()
	}
}

// drop forgets an agent that is gone from the store; after any start or
// prepare of it here has finished (they hold st.deploy), so that none
// brings a version up after its instances were stopped.
func (m *Manager) drop(st *agentState) {
	st.deploy.Lock()
	defer st.deploy.Unlock()
	m.mu.Lock()
	if m.agents[st.id] == st {
		delete(m.agents, st.id)
	}
	m.mu.Unlock()
	m.stopAll(st)
	m.log.Info("agent removed", "agent_id", st.id)
}

// Reconcile brings this server's view of one agent in line with the store
// and, on a node, with the placement: it appears, its active version is
// brought up when it changed (the old one retiring, its calls finishing),
// its instances start or stop here as the placement lists this node or no
// longer does, or it goes.
func (m *Manager) Reconcile(ctx context.Context, agentID string) error {
	pa, err := m.cfg.DB.PlatformAgent(ctx, agentID)
	if errors.Is(err, domain.ErrNotFound) {
		if st := m.state(agentID); st != nil {
			m.drop(st)
		}
		return nil
	}
	if err != nil {
		return err
	}
	st, _ := m.putState(pa.ID, pa.Tenant)
	if st.tenant != pa.Tenant { // deleted and made again by another tenant
		m.drop(st)
		st, _ = m.putState(pa.ID, pa.Tenant)
	}
	m.markClaimed(st)
	inLine := func(cur *version) bool {
		return pa.ActiveVersion == 0 || (cur != nil && cur.n == pa.ActiveVersion && (cur.pool != nil) == m.runsHere(agentID, cur.n))
	}
	if inLine(st.active.Load()) {
		return nil // nothing to change: no lock (a start may hold it for minutes)
	}
	st.deploy.Lock()
	defer st.deploy.Unlock()
	cur := st.active.Load()
	if inLine(cur) {
		return nil
	}
	st.mu.Lock()
	v := st.staged[pa.ActiveVersion]
	delete(st.staged, pa.ActiveVersion)
	st.mu.Unlock()
	if v == nil {
		vrec, err := m.cfg.DB.Version(ctx, agentID, pa.ActiveVersion)
		if err != nil {
			return err
		}
		here := m.runsHere(agentID, vrec.Version)
		if v, err = m.bringUp(ctx, st, vrec, 0, here); err != nil {
			return err
		}
		if here {
			if err := m.stageAndServe(st, v); err != nil {
				return err
			}
			st.mu.Lock()
			delete(st.staged, v.n)
			st.mu.Unlock()
		}
	} // else prepared here at the scheduler's request: it runs here

	m.activate(st, v, cur)
	// Versions prepared before this one will never be activated.
	st.mu.Lock()
	var stale []*version
	for n, sv := range st.staged {
		if n < v.n {
			stale = append(stale, sv)
			delete(st.staged, n)
		}
	}
	st.mu.Unlock()
	for _, sv := range stale {
		m.retire(st, sv)
	}
	m.log.Info("agent version serving", "agent_id", agentID, "version", v.n, "here", v.pool != nil)
	return nil
}

// ReconcileAll reconciles every agent of the store and drops the ones that
// are gone; it returns the first error, after trying them all.
func (m *Manager) ReconcileAll(ctx context.Context) error {
	agents, err := m.cfg.DB.PlatformAgents(ctx)
	if err != nil {
		return err
	}
	var first error
	seen := make(map[string]bool, len(agents))
	for _, pa := range agents {
		seen[pa.ID] = true
		if err := m.Reconcile(ctx, pa.ID); err != nil && first == nil {
			first = fmt.Errorf("agent %s: %w", pa.ID, err)
		}
	}
	m.mu.RLock()
	var unseen []string
	for id, st := range m.agents {
		if !seen[id] && st.claimed {
			unseen = append(unseen, id)
		}
	}
	m.mu.RUnlock()
	for _, id := range unseen { // made since the list was read, or gone
		if err := m.Reconcile(ctx, id); err != nil && first == nil {
			first = fmt.Errorf("agent %s: %w", id, err)
		}
	}
	return first
}

// PrepareVersion brings a version up on this node, an instance warm and
// its calls taken, before a gateway activates it (Reconcile then makes it
// the active one here).
func (m *Manager) PrepareVersion(ctx context.Context, agentID string, n int) error {
	pa, err := m.cfg.DB.PlatformAgent(ctx, agentID)
	if err != nil {
		return err
	}
	st, _ := m.putState(pa.ID, pa.Tenant)
	m.markClaimed(st)
	st.deploy.Lock()
	defer st.deploy.Unlock()
	if cur := st.active.Load(); cur != nil && cur.n == n && cur.pool != nil {
		return cur.pool.Warm(ctx, 1)
	}
	st.mu.Lock()
	ready := st.staged[n] != nil
	st.mu.Unlock()
	if ready {
		return nil
	}
	vrec, err := m.cfg.DB.Version(ctx, agentID, n)
	if err != nil {
		return err
	}
	v, err := m.bringUp(ctx, st, vrec, 1, true)
	if err != nil {
		return err
	}
	return m.stageAndServe(st, v)
}

// stageAndServe makes v findable here (Invoker), then takes its calls from
// the cluster: a call may arrive the moment the subscription exists.
func (m *Manager) stageAndServe(st *agentState, v *version) error {
	st.mu.Lock()
	if st.staged == nil {
		st.staged = map[int]*version{}
	}
	st.staged[v.n] = v
	st.mu.Unlock()
	if err := m.serve(st.id, v); err != nil {
		st.mu.Lock()
		delete(st.staged, v.n)
		st.mu.Unlock()
		v.close()
		return err
	}
	return nil
}

// Bundles unpacked here that no version uses are removed once unused for
// bundleKeep (a version started again within it finds its bundle here).
const (
	bundleKeep       = time.Hour
	bundlePruneEvery = 10 * time.Minute
)

// pruneBundles removes the unpacked bundles no version here uses (active,
// staged or retiring) and none has asked for within bundleKeep; it
// returns how many it removed.
func (m *Manager) pruneBundles(now time.Time) int {
	root := filepath.Join(m.cfg.DataDir, "bundles")
	inUse := map[string]bool{}
	m.mu.RLock()
	for _, st := range m.agents {
		vs := []*version{st.active.Load()}
		st.mu.Lock()
		vs = append(vs, st.retiring...)
		for _, v := range st.staged {
			vs = append(vs, v)
		}
		st.mu.Unlock()
		for _, v := range vs {
			if v != nil && v.folder != nil {
				// By name (the SHA): a folder's Dir is absolute with its
				// symlinks resolved, the data directory may be neither.
				inUse[filepath.Base(v.folder.Dir)] = true
			}
		}
	}
	m.mu.RUnlock()
	m.bundlesMu.Lock() // not while one is fetched or taken up again
	defer m.bundlesMu.Unlock()
	entries, _ := os.ReadDir(root)
	removed := 0
	for _, e := range entries {
		dir := filepath.Join(root, e.Name())
		info, err := e.Info()
		if !e.IsDir() || e.Name() == ".incoming" || err != nil || inUse[e.Name()] || now.Sub(info.ModTime()) < bundleKeep {
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			m.cfg.Log.Warn("remove an unused bundle", "dir", dir, "error", err)
			continue
		}
		removed++
	}
	if removed > 0 {
		m.cfg.Log.Info("removed unused agent bundles", "count", removed)
	}
	return removed
}

// bundleDir is where a cluster server keeps the bundle with that hash
// unpacked.
func (m *Manager) bundleDir(sha string) string { return filepath.Join(m.cfg.DataDir, "bundles", sha) }

func dirExists(dir string) bool {
	fi, err := os.Stat(dir)
	return err == nil && fi.IsDir()
}

// ensureBundle unpacks the bundle with that SHA-256 here, fetched from the
// cluster's store and checked against its hash, unless it already is.
func (m *Manager) ensureBundle(ctx context.Context, sha string) (string, error) {
	if b, err := hex.DecodeString(sha); err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("the store names its bundle %q, which is not a SHA-256: upload the agent again", sha)
	}
	dir := m.bundleDir(sha)
	m.bundlesMu.RLock()
	defer m.bundlesMu.RUnlock()
	if dirExists(dir) {
		now := time.Now()
		os.Chtimes(dir, now, now) // in use again: pruneBundles leaves it
		return dir, nil
	}
	m.fetchMu.Lock() // one fetch at a time: two versions of one bundle fetch it once
	defer m.fetchMu.Unlock()
	if dirExists(dir) {
		return dir, nil
	}
	incoming := filepath.Join(m.cfg.DataDir, "bundles", ".incoming")
	if err := os.MkdirAll(incoming, 0o755); err != nil {
		return "", err
	}
	tmp := filepath.Join(incoming, uuid.NewString())
	zipPath := tmp + ".zip"
	defer os.Remove(zipPath)
	if err := m.cfg.Cluster.Bundles.FetchBundle(ctx, sha, zipPath); err != nil {
		return "", err
	}
	f, err := os.Open(zipPath)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	size, err := io.Copy(h, f)
	if err != nil {
		return "", err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sha {
		return "", fmt.Errorf("the bundle fetched as %s hashes to %s: the copy in the cluster's store is damaged; upload the agent again", sha, got)
	}
	if err := bundle.Extract(f, size, tmp, m.cfg.Bundle); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("unpack bundle %s: %w", sha, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		if !dirExists(dir) {
			return "", err
		}
	}
	return dir, nil
}
