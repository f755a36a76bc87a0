package platform

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/runagent-go/runagent/internal/cluster"
	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/manager"
	"github.com/runagent-go/runagent/internal/placement"
	"github.com/runagent-go/runagent/internal/platformapi"
)

// The scheduler places agent versions on nodes (internal/placement has the
// rules). Every gateway is a candidate; the one holding the lease
// (cluster.Campaign) decides every scheduleEvery from the nodes' adverts
// and the versions in the store, writes the placement bucket the nodes
// watch, and answers the gateways' requests: place a new version before
// its start activates it, place a version a call found on no node.

const (
	scheduleEvery = time.Second
	// freshAdvert: a node whose last advert is older has stopped (kill -9
	// or cut off): its versions are placed elsewhere before the bucket's
	// TTL removes it.
	freshAdvert = 3*advertEvery + time.Second
	// refuseFor is how long a node that failed to start a version is not
	// asked to again.
	refuseFor = time.Minute
	// prepareTimeout bounds a node's start of a version (dependencies may
	// be installed).
	prepareTimeout = 15 * time.Minute
	// nodeWait is how long a start waits for a node that can run it.
	nodeWait = 2 * advertEvery
	// orphanAfter: the placement of a version newer than its agent's
	// active one, whose start ended this long ago (it failed after the
	// placement, or the activation was lost), is removed with the
	// instances the nodes warmed for it; one placed before this gateway
	// led is given prepareTimeout more.
	orphanAfter = time.Minute
)

// scheduling is the leader's state.
type scheduling struct {
	mu      sync.Mutex
	s       *placement.Scheduler
	refused map[refusal]time.Time
	kick    chan struct{}
	since   time.Time                   // when this gateway began to lead
	starts  map[placement.Key]startMark // the starts this leader placed
}

// startMark is a start's state: running, or when it ended.
type startMark struct {
	running int
	ended   time.Time
}

// startBegins and startEnds bracket placeStart.
func (sc *scheduling) startBegins(k placement.Key) {
	sc.mu.Lock()
	m := sc.starts[k]
	m.running++
	sc.starts[k] = m
	sc.mu.Unlock()
}

func (sc *scheduling) startEnds(k placement.Key) {
	sc.mu.Lock()
	m := sc.starts[k]
	m.running--
	m.ended = time.Now()
	sc.starts[k] = m
	sc.mu.Unlock()
}

// orphaned says whether the placement of k, a version newer than its
// agent's active one, belongs to no start any more. Call with sc.mu held.
func (sc *scheduling) orphaned(k placement.Key, now time.Time) bool {
	m, ok := sc.starts[k]
	if !ok {
		// Placed before this gateway led: its start may still be bringing
		// it up (installing dependencies) for up to prepareTimeout.
		return now.Sub(sc.since) > prepareTimeout+orphanAfter
	}
	return m.running == 0 && now.Sub(m.ended) > orphanAfter
}

type refusal struct {
	node string
	key  placement.Key
}

func (sc *scheduling) wake() {
	select {
	case sc.kick <- struct{}{}:
	default:
	}
}

// lead schedules the cluster while this gateway holds the lease.
func (p *Platform) lead(ctx context.Context) {
	c := p.cluster
	sc := &scheduling{s: placement.New(), refused: map[refusal]time.Time{}, kick: make(chan struct{}, 1),
		since: time.Now(), starts: map[placement.Key]startMark{}}
	c.sched.Store(sc)
	defer c.sched.Store(nil)
	var stop func()
	for stop == nil {
		var err error
		if stop, err = c.cl.ServeScheduler(p.onSchedule); err != nil {
			p.log.Warn("answer the scheduler's requests on NATS; retrying", "error", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}
	defer stop()
	lost, crons, events := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() { defer close(lost); p.requeueLost(ctx) }()
	go func() { defer close(crons); p.fireCrons(ctx) }()
	go func() { defer close(events); p.pruneEvents(ctx) }()
	defer func() { <-lost; <-crons; <-events }()
	t := time.NewTicker(scheduleEvery)
	defer t.Stop()
	for {
		p.schedule(ctx, sc)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-sc.kick:
		}
	}
}

// schedule makes one decision and writes it.
func (p *Platform) schedule(ctx context.Context, sc *scheduling) {
	nodes, err := p.placementNodes(ctx, sc)
	if err != nil {
		if ctx.Err() == nil {
			p.log.Warn("read the nodes' adverts to schedule; retrying", "error", err)
		}
		return
	}
	now := time.Now()
	sc.mu.Lock()
	versions, current := p.placementVersions(sc, now)
	changes := sc.s.Decide(now, versions, nodes, current)
	sc.mu.Unlock()
	for k, list := range changes {
		p.place(ctx, sc, k, current[k], list)
	}
}

// place writes a version's nodes and asks the nodes that join to start
// it; a node that fails is refused it for a while and taken off.
func (p *Platform) place(ctx context.Context, sc *scheduling, k placement.Key, was, now []string) {
	table := p.cluster.table
	key := cluster.VersionKey{Agent: k.Agent, Version: k.Version}
	var err error
	if len(now) == 0 {
		err = table.Delete(ctx, key)
	} else {
		err = table.Set(ctx, key, now, p.cfg.NodeID)
	}
	if err != nil {
		p.log.Warn("write the placement; retrying at the next decision", "agent_id", k.Agent, "version", k.Version, "error", err)
		return
	}
	p.log.Info("placement", "agent_id", k.Agent, "version", k.Version, "nodes", now, "was", was)
	for _, n := range now {
		if !slices.Contains(was, n) {
			go p.prepareOn(sc, n, key)
		}
	}
}

// prepareOn asks node to start a version it was placed; if it cannot,
// the version is placed without it and it is not asked again for
// refuseFor.
func (p *Platform) prepareOn(sc *scheduling, node string, key cluster.VersionKey) error {
	ctx, cancel := context.WithTimeout(context.Background(), prepareTimeout)
	defer cancel()
	err := p.cluster.cl.PrepareOn(ctx, node, key.Agent, key.Version)
	if err == nil {
		return nil
	}
	p.log.Warn("a node could not start a version it was placed; placing it elsewhere", "node", node,
		"agent_id", key.Agent, "version", key.Version, "error", err)
	sc.mu.Lock()
	sc.refused[refusal{node, placement.Key{Agent: key.Agent, Version: key.Version}}] = time.Now()
	sc.mu.Unlock()
	if nodes, ok := p.cluster.table.Nodes(key); ok && slices.Contains(nodes, node) {
		nodes = slices.DeleteFunc(nodes, func(n string) bool { return n == node })
		if len(nodes) == 0 {
			p.cluster.table.Delete(ctx, key)
		} else {
			p.cluster.table.Set(ctx, key, nodes, p.cfg.NodeID)
		}
	}
	sc.wake()
	return err
}

// placementNodes reads the nodes' adverts.
func (p *Platform) placementNodes(ctx context.Context, sc *scheduling) ([]placement.Node, error) {
	adverts, err := p.cluster.cl.Adverts(ctx)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	sc.mu.Lock()
	refused := map[string]map[placement.Key]bool{}
	for r, at := range sc.refused {
		if now.Sub(at) > refuseFor {
			delete(sc.refused, r)
			continue
		}
		if refused[r.node] == nil {
			refused[r.node] = map[placement.Key]bool{}
		}
		refused[r.node][r.key] = true
	}
	sc.mu.Unlock()
	out := make([]placement.Node, 0, len(adverts))
	for id, raw := range adverts {
		var a platformapi.Node
		if err := json.Unmarshal(raw, &a); err != nil {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, a.HeartbeatAt)
		n := placement.Node{ID: id, Fresh: err == nil && now.Sub(at) < freshAdvert, Draining: a.Draining, Drivers: a.Drivers,
			MemoryAvailable: a.MemoryAvailableBytes, Instances: a.Instances, Versions: map[placement.Key]placement.Load{},
			Refused: refused[id]}
		for _, v := range a.Agents {
			n.Versions[placement.Key{Agent: v.AgentID, Version: v.Version}] = placement.Load{Instances: v.Ready + v.Starting,
				InFlight: v.InFlight, Queued: v.Queued, Calls: v.Calls, MaxInstances: v.MaxInstances}
		}
		out = append(out, n)
	}
	return out, nil
}

// placementVersions are the active versions this gateway knows, and the
// placement of every version but those a start is bringing up (newer
// than their agent's active one) and not orphaned. Call with sc.mu held.
func (p *Platform) placementVersions(sc *scheduling, now time.Time) ([]placement.Version, map[placement.Key][]string) {
	active := map[string]int{}
	var versions []placement.Version
	for _, id := range p.mgr.AgentIDs("") {
		st, ok := p.mgr.Status(id)
		if !ok {
			continue
		}
		active[id] = st.ActiveVersion
		if st.ActiveVersion == 0 {
			continue
		}
		versions = append(versions, placementVersion(placement.Key{Agent: id, Version: st.ActiveVersion}, st.Deployment))
	}
	current := map[placement.Key][]string{}
	for vk, nodes := range p.cluster.table.Snapshot() {
		k := placement.Key{Agent: vk.Agent, Version: vk.Version}
		if a, known := active[k.Agent]; known && (a == 0 || k.Version > a) && !sc.orphaned(k, now) {
			continue // a start in progress
		}
		current[k] = nodes // Decide removes a version that is not active
	}
	for k, m := range sc.starts {
		if m.running == 0 && now.Sub(m.ended) > orphanAfter {
			delete(sc.starts, k)
		}
	}
	return versions, current
}

func placementVersion(k placement.Key, d manager.Deployment) placement.Version {
	return placement.Version{Key: k, MinInstances: d.MinInstances, MaxInstances: d.MaxInstances, MaxConcurrency: d.MaxConcurrency,
		MinNodes: d.MinNodes, Driver: d.Sandbox, MemoryBytes: int64(d.MemoryMB) << 20, IdleTimeout: d.IdleTimeout}
}

// onSchedule answers a gateway's (or a node's) request to the scheduler.
func (p *Platform) onSchedule(ctx context.Context, r cluster.SchedRequest) error {
	sc := p.cluster.sched.Load()
	if sc == nil {
		return &domain.Error{Code: domain.CodeOverloaded, RetryAfter: time.Second, Message: "this gateway no longer schedules the cluster; retry"}
	}
	k := placement.Key{Agent: r.Agent, Version: r.Version}
	switch r.Op {
	case cluster.SchedActivate:
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		p.mgr.Reconcile(rctx, r.Agent) // it may be newer than this gateway knows
		cancel()
		sc.mu.Lock()
		sc.s.Activate(k, time.Now())
		sc.mu.Unlock()
		sc.wake()
		return nil
	case cluster.SchedStart:
		return p.placeStart(ctx, sc, r)
	}
	return fmt.Errorf("unknown scheduler request %q", r.Op)
}

// placeStart places a new version, on the nodes of the version it
// replaces and at least min_nodes, and returns once one of them has it
// warm (the others go on starting it).
func (p *Platform) placeStart(ctx context.Context, sc *scheduling, r cluster.SchedRequest) error {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	p.mgr.Reconcile(rctx, r.Agent)
	cancel()
	v := placement.Version{Key: placement.Key{Agent: r.Agent, Version: r.Version}, MinNodes: r.MinNodes, Driver: r.Driver, MemoryBytes: r.MemoryBytes}
	sc.startBegins(v.Key)
	defer sc.startEnds(v.Key)
	var holding []string
	if st, ok := p.mgr.Status(r.Agent); ok && st.ActiveVersion > 0 {
		holding, _ = p.cluster.table.Nodes(cluster.VersionKey{Agent: r.Agent, Version: st.ActiveVersion})
	}
	// A node may be joining (its first advert comes as it starts): wait
	// for one a little before refusing.
	var chosen []string
	for deadline := time.Now().Add(nodeWait); ; {
		nodes, err := p.placementNodes(ctx, sc)
		if err != nil {
			return &domain.Error{Code: domain.CodeConnection, RetryAfter: time.Second, Message: "could not read the nodes from NATS; start the agent again shortly", Err: err}
		}
		if chosen = placement.Pick(nodes, v, holding); len(chosen) > 0 {
			break
		}
		if time.Now().After(deadline) {
			return &domain.Error{Code: domain.CodeOverloaded, RetryAfter: 5 * time.Second, Message: noNodeMessage(nodes, v)}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	key := cluster.VersionKey{Agent: r.Agent, Version: r.Version}
	if err := p.cluster.table.Set(ctx, key, chosen, p.cfg.NodeID); err != nil {
		return &domain.Error{Code: domain.CodeConnection, RetryAfter: time.Second, Message: "could not write the placement on NATS; start the agent again shortly", Err: err}
	}
	p.log.Info("placement", "agent_id", r.Agent, "version", r.Version, "nodes", chosen, "for", "start")
	results := make(chan error, len(chosen))
	for _, n := range chosen {
		go func() { results <- p.prepareOn(sc, n, key) }()
	}
	var errs []error
	for range chosen {
		err := <-results
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	p.cluster.table.Delete(context.WithoutCancel(ctx), key)
	return errors.Join(errs...)
}

// noNodeMessage says why no node can take a version.
func noNodeMessage(nodes []placement.Node, v placement.Version) string {
	if len(nodes) == 0 {
		return "no node is in the cluster to run the agent: start one with runagent server --role node, then start the agent again"
	}
	return fmt.Sprintf("none of the %d nodes can run the agent now (each is draining, silent, lacks the %q sandbox, lacks %d MiB of free memory, or failed to start it in the last minute): "+
		"runagent nodes list shows them; resume or add a node, then start the agent again", len(nodes), v.Driver, v.MemoryBytes>>20)
}

// placeNew is a gateway's start of a new version: the scheduler places
// it, and answers once a node has it warm. While no gateway leads (an
// election takes up to cluster.LeaderTTL) it asks again.
func (p *Platform) placeNew(ctx context.Context, agentID string, version int, dep manager.Deployment) error {
	r := cluster.SchedRequest{Op: cluster.SchedStart, Agent: agentID, Version: version, MinNodes: dep.MinNodes,
		Driver: dep.Sandbox, MemoryBytes: int64(dep.MemoryMB) << 20}
	deadline := time.Now().Add(2 * cluster.LeaderTTL)
	for {
		err := p.cluster.cl.AskScheduler(ctx, r)
		if !errors.Is(err, cluster.ErrNoScheduler) {
			return err
		}
		if time.Now().After(deadline) {
			return &domain.Error{Code: domain.CodeOverloaded, RetryAfter: 5 * time.Second, Err: err,
				Message: "no gateway schedules the cluster (is every gateway connected to NATS?); start the agent again shortly"}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// askActivate tells the scheduler that a call found no node for t.
func (p *Platform) askActivate(t domain.Target) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.cluster.cl.AskScheduler(ctx, cluster.SchedRequest{Op: cluster.SchedActivate, Agent: t.AgentID, Version: t.Version}); err != nil {
		p.log.Debug("ask the scheduler to place a version a call waits for", "agent_id", t.AgentID, "version", t.Version, "error", err)
	}
}
