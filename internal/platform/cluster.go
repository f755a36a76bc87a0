package platform

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/runagent-go/runagent/internal/cluster"
	"github.com/runagent-go/runagent/internal/dispatch/natsdispatch"
	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/manager"
	"github.com/runagent-go/runagent/internal/server"
)

// The roles of `runagent server` (docs/multinode.md).
const (
	RoleAll     = "all"     // alone: API, instances and state in one process
	RoleGateway = "gateway" // the API; calls go over NATS to the nodes
	RoleNode    = "node"    // instances, for the gateways
)

// resyncEvery is how often a cluster server re-reads every agent and key
// from the store, in case it missed a change notice (NATS was away).
const resyncEvery = 10 * time.Second

// clusterParts are a gateway's or a node's pieces on NATS.
type clusterParts struct {
	cl     *cluster.Cluster
	queue  *cluster.Queue // of async invocations
	table  *cluster.PlacementTable
	sched  atomic.Pointer[scheduling] // a gateway's, while it leads
	client *natsdispatch.Client       // calls to the nodes (a node's async invocations go through one too)
	node   *natsdispatch.Node         // a node's
	async  *nodeAsync                 // a node's
	ops    *nodeOps                   // a node's
	share  *rateShare                 // a gateway's
	users  *cluster.Users             // users' persistent folders: their leases, their saved archives
	stops  []func()
}

var nodeIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// checkRole checks the role and what it needs, and fills in the defaults.
func checkRole(cfg *Config) error {
	switch cfg.Role {
	case "":
		cfg.Role = RoleAll
	case RoleAll, RoleGateway, RoleNode:
	default:
		return fmt.Errorf("--role %q: want all (one server alone), gateway or node", cfg.Role)
	}
	if cfg.Role == RoleAll {
		if len(cfg.NATS) > 0 {
			return fmt.Errorf("--nats is for the servers of a cluster: give --role gateway or --role node too")
		}
		return nil
	}
	if len(cfg.NATS) == 0 {
		return fmt.Errorf("--role %s needs --nats nats://host:4222[,...]: the servers of a cluster talk over NATS", cfg.Role)
	}
	if !isPostgresURL(cfg.DB) {
		return fmt.Errorf("--role %s needs --db postgres://...: the servers of a cluster share their state in PostgreSQL", cfg.Role)
	}
	if cfg.NodeID == "" {
		host, _ := os.Hostname()
		host = regexp.MustCompile(`[^A-Za-z0-9_-]+`).ReplaceAllString(host, "-")
		if len(host) > 40 {
			host = host[:40]
		}
		cfg.NodeID = strings.Trim(host+"-"+strings.ToLower(nuid.Next()[16:]), "-")
	}
	if !nodeIDPattern.MatchString(cfg.NodeID) {
		return fmt.Errorf("--node-id %q: use 1 to 64 letters, digits, - or _ (it is part of NATS subjects)", cfg.NodeID)
	}
	return nil
}

func isPostgresURL(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
}

func connectCluster(ctx context.Context, cfg Config) (*clusterParts, error) {
	cl, err := cluster.Connect(ctx, cluster.Options{URLs: cfg.NATS, Name: "runagent " + cfg.Role + " " + cfg.NodeID,
		Replicas: cfg.Replicas, Log: cfg.Log})
	if err != nil {
		return nil, err
	}
	q, err := cl.Queue(ctx, cfg.Async.Lease)
	if err != nil {
		cl.Close()
		return nil, err
	}
	table, err := cl.Placements(ctx)
	if err == nil && cfg.Role == RoleGateway {
		err = cl.OpenLease(ctx) // now, at the start: Run competes for it
	}
	if err != nil {
		cl.Close()
		return nil, err
	}
	c := &clusterParts{cl: cl, queue: q, table: table}
	// Another node is asked whether it still serves a version before its
	// users are taken over; a gateway takes none over.
	c.users, err = cl.Users(ctx, cfg.NodeID, func(ctx context.Context, node string, t domain.Target) bool {
		return c.node == nil || c.node.Alive(ctx, node, t)
	})
	if err != nil {
		cl.Close()
		return nil, err
	}
	return c, nil
}

// clusterHooks tie the manager to the cluster: a gateway's runs nothing
// and asks the nodes to prepare; a node's serves its versions over NATS.
func (p *Platform) clusterHooks() *manager.ClusterHooks {
	c := p.cluster
	if c == nil {
		return nil
	}
	if p.cfg.Role == RoleGateway {
		return &manager.ClusterHooks{Remote: true, Prepare: p.placeNew, Bundles: c.cl,
			Changed: func(id string) { c.cl.Changed(cluster.ChangeAgent, id) },
			Users:   c.users, Node: p.cfg.NodeID}
	}
	node := p.cfg.NodeID
	return &manager.ClusterHooks{Bundles: c.cl, Users: c.users, Node: node,
		Placed: func(agentID string, version int) bool { return c.table.Has(agentID, version, node) },
		Serve: func(t domain.Target) error {
			defer c.ops.changed()
			return c.node.Serve(t)
		},
		Unserve: func(t domain.Target) {
			c.node.Unserve(t)
			c.ops.changed()
		}}
}

// joinCluster starts the gateway's dispatcher or the node's serving, and
// the change notices; before Restore, so that no notice is missed.
func (p *Platform) joinCluster(ctx context.Context) error {
	c := p.cluster
	if c == nil {
		return nil
	}
	on := func(stop func(), err error) error {
		if err != nil {
			return fmt.Errorf("subscribe on NATS: %w", err)
		}
		c.stops = append(c.stops, stop)
		return nil
	}
	payloads, err := c.cl.Payloads(ctx)
	if err != nil {
		return err
	}
	opts := natsdispatch.Options{Spill: payloads}
	client, err := natsdispatch.NewClient(c.cl.Conn(), opts)
	if err != nil {
		return err
	}
	c.client = client
	remote := gatewayDispatch{Client: client, p: p}
	switch p.cfg.Role {
	case RoleGateway:
		p.dispatch, p.asyncDispatch = remote, remote
		c.share = &rateShare{spent: map[string]int{}}
		sub, err := c.cl.Conn().Subscribe(p.rateSubject(), p.onSpent)
		if err != nil {
			return fmt.Errorf("subscribe on NATS: %w", err)
		}
		sub.SetPendingLimits(-1, -1)
		c.stops = append(c.stops, func() { sub.Unsubscribe() })
		if err := on(c.cl.OnChange(cluster.ChangeKeys, func(string) { p.reloadKeys(context.Background()) })); err != nil {
			return err
		}
		if err := on(c.cl.OnChange(cluster.ChangeCancel, func(id string) { p.wire.CancelDetached(id, server.ErrRunCancelled) })); err != nil {
			return err
		}
	case RoleNode:
		c.async = &nodeAsync{running: map[string]int{}, done: make(chan struct{})}
		p.asyncDispatch = localFirst{local: p.dispatch, cluster: remote}
		node, err := natsdispatch.NewNode(c.cl.Conn(), p.cfg.NodeID, p.dispatch, p.log, opts)
		if err != nil {
			return err
		}
		c.node = node
		c.ops = &nodeOps{started: time.Now(), kick: make(chan struct{}, 1)}
		stopPrepare, err := c.cl.ServePrepare(p.cfg.NodeID, p.mgr.PrepareVersion)
		if err != nil {
			return fmt.Errorf("subscribe on NATS: %w", err)
		}
		c.ops.stopPrepare = stopPrepare
		c.table.OnChange(func(id string) { go p.reconcile(id) })
		if err := on(c.cl.ServeNodeControl(p.cfg.NodeID, p.nodeControl)); err != nil {
			return err
		}
		if err := on(c.users.ServeDelete(p.mgr.DeleteUserKey)); err != nil {
			return err
		}
		if err := on(c.cl.OnChange(cluster.ChangeCancel, func(id string) { p.running.cancel(id) })); err != nil {
			return err
		}
	}
	p.shareLogs()
	return on(c.cl.OnChange(cluster.ChangeAgent, func(id string) { go p.reconcile(id) }))
}

// logsSubject carries every stored batch of agent log lines, for the
// gateways' `runagent logs --follow` readers.
const logsSubject = "runagent.logs"

type sharedLogs struct {
	From  string           `json:"from"`
	Lines []domain.LogLine `json:"lines"`
}

// shareLogs publishes the lines this server stores and, on a gateway,
// hands the other servers' lines to its followers.
func (p *Platform) shareLogs() {
	c := p.cluster
	p.logs.published = func(lines []domain.LogLine) {
		b, err := json.Marshal(sharedLogs{From: p.cfg.NodeID, Lines: lines})
		if err == nil {
			err = c.cl.Conn().Publish(logsSubject, b)
		}
		if err != nil {
			p.log.Debug("publish agent log lines", "error", err)
		}
	}
	if p.cfg.Role != RoleGateway {
		return
	}
	sub, err := c.cl.Conn().Subscribe(logsSubject, func(m *nats.Msg) {
		var b sharedLogs
		if json.Unmarshal(m.Data, &b) == nil && b.From != p.cfg.NodeID {
			p.logs.deliver(b.Lines)
		}
	})
	if err != nil {
		p.log.Warn("subscribe to the agents' log lines; logs --follow on this gateway shows only what it reads from the store", "error", err)
		return
	}
	sub.SetPendingLimits(-1, -1)
	c.stops = append(c.stops, func() { sub.Unsubscribe() })
}

// readThrough reconciles an agent the gateway does not know (or knows
// without a serving version) from the store, now.
func (p *Platform) readThrough(ctx context.Context, agentID string) *domain.Error {
	id, err := manager.NormalizeID(agentID)
	if err != nil {
		return nil // not an agent id: it is not found
	}
	if err := p.mgr.Reconcile(ctx, id); err != nil {
		var de *domain.Error
		if errors.As(err, &de) {
			return de
		}
		return &domain.Error{Code: domain.CodeInternal, Message: "could not read the agent from the store", Err: err}
	}
	return nil
}

// gatewayDispatch sends calls to the nodes. A call that no node takes
// (natsdispatch.ErrNoNode: it did not run) waits at the gateway for up to
// activatorWait while a node brings its version up, as Knative's activator
// does; it goes to the agent's active version instead when another gateway
// activated a newer one that this one has not heard of yet. A call a full
// node refused (OVERLOADED: it did not run) is sent again, up to
// overloadResends times, for another node to take.
type gatewayDispatch struct {
	*natsdispatch.Client
	p *Platform
}

// activatorWait is how long a call waits at a gateway for a node to serve
// its version; overloadResends is how often a call a full node refused is
// sent again before the client gets the OVERLOADED.
const (
	activatorWait   = 10 * time.Second
	overloadResends = 2
)

func (g gatewayDispatch) Call(ctx context.Context, t domain.Target, tag string, args, kwargs []byte) (out []byte, err error) {
	err = g.untilTaken(ctx, &t, func() error {
		out, err = g.Client.Call(ctx, t, tag, args, kwargs)
		return err
	})
	return out, err
}

func (g gatewayDispatch) Stream(ctx context.Context, t domain.Target, tag string, args, kwargs []byte, started func(), fn domain.ChunkFunc) (n int, err error) {
	var once sync.Once // a node that started it may refuse it, and the next start it again
	announce := func() {
		if started != nil {
			once.Do(started)
		}
	}
	err = g.untilTaken(ctx, &t, func() error {
		n, err = g.Client.Stream(ctx, t, tag, args, kwargs, announce, fn)
		return err
	})
	return n, err
}

// untilTaken sends a call until a node takes it, following the agent to a
// newer active version; it gives up with OVERLOADED after activatorWait
// (or the caller's deadline).
func (g gatewayDispatch) untilTaken(ctx context.Context, t *domain.Target, send func() error) error {
	deadline := time.Now().Add(activatorWait)
	pause := 20 * time.Millisecond
	resent := 0
	asked := false
	for {
		err := send()
		if errors.Is(err, natsdispatch.ErrNoNode) && !asked {
			asked = true // the scheduler places it (it may be at zero) while the call waits
			go g.p.askActivate(*t)
		}
		if domain.CodeOf(err) == domain.CodeOverloaded && !errors.Is(err, natsdispatch.ErrNoNode) && resent < overloadResends {
			// A node refused it unrun (full, or its version retiring):
			// the queue group may pick one with room.
			resent++
			continue
		}
		if !errors.Is(err, natsdispatch.ErrNoNode) {
			return err
		}
		if g.p.mgr.Reconcile(ctx, t.AgentID) == nil {
			if a, _, _ := g.p.mgr.Lookup(t.AgentID); a != nil && a.Version != t.Version {
				*t = domain.Target{AgentID: t.AgentID, Version: a.Version, User: t.User}
				continue
			} else if a == nil {
				return err // deleted, or no longer serving: NOT_FOUND
			}
		}
		if time.Now().Add(pause).After(deadline) {
			return &domain.Error{Code: domain.CodeOverloaded, RetryAfter: time.Second, Err: err, Message: fmt.Sprintf(
				"no node runs version %d of agent %s right now (the nodes are starting it, or none is up); retry shortly", t.Version, t.AgentID)}
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(pause):
		}
		pause = min(2*pause, 500*time.Millisecond)
	}
}

// reconcile brings one agent in line with the store after a notice.
func (p *Platform) reconcile(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute) // a start may install dependencies
	defer cancel()
	if err := p.mgr.Reconcile(ctx, id); err != nil {
		p.log.Warn("could not bring an agent in line with the store; retrying at the next resync", "agent_id", id, "error", err)
	}
}

// resync re-reads every agent (and a gateway's keys) every resyncEvery.
func (p *Platform) resync(ctx context.Context) {
	t := time.NewTicker(resyncEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := p.mgr.ReconcileAll(ctx); err != nil && ctx.Err() == nil {
			p.log.Warn("resync with the store", "error", err)
		}
		if p.cfg.Role == RoleGateway {
			p.reloadKeys(ctx)
		}
	}
}

// staleEvery is how often a gateway fails the calls a stopped server left
// pending in the history.
const staleEvery = time.Minute

// sweepStale marks failed, every staleEvery, the pending sync calls older
// than any call may last (the call timeout, and room for the history
// writer's retries): the server that ran them stopped. On a cluster no
// server may fail the pending calls at its start, as a single server does,
// because the other servers' calls are running.
func (p *Platform) sweepStale(ctx context.Context) {
	t := time.NewTicker(staleEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		n, err := p.db.FailStale(ctx, now.Add(-p.cfg.Defaults.CallTimeout-2*time.Minute), now)
		switch {
		case err != nil && ctx.Err() == nil:
			p.log.Warn("fail the calls left pending by a stopped server", "error", err)
		case n > 0:
			p.log.Warn("calls left pending by a server that stopped are marked failed", "count", n)
		}
	}
}

// reloadKeys replaces the keyring with the store's keys.
func (p *Platform) reloadKeys(ctx context.Context) {
	stored, err := p.db.APIKeys(ctx)
	if err != nil {
		p.log.Warn("reload the API keys; keeping the ones loaded", "error", err)
		return
	}
	p.keys.Replace(stored)
}

// keysChanged tells the other gateways to reload the keys.
func (p *Platform) keysChanged() {
	if p.cluster != nil {
		p.cluster.cl.Changed(cluster.ChangeKeys, "")
	}
}

// leaveCluster stops taking calls and notices (in-flight calls of a node
// end) before the instances stop.
func (p *Platform) leaveCluster() {
	c := p.cluster
	if c == nil {
		return
	}
	for _, stop := range c.stops {
		stop()
	}
	if c.ops != nil {
		c.ops.mu.Lock()
		if c.ops.stopPrepare != nil {
			c.ops.stopPrepare()
			c.ops.stopPrepare = nil
		}
		c.ops.mu.Unlock()
	}
	if c.node != nil {
		c.node.Pause() // no new call while the async invocations finish
	}
	if c.async != nil && c.async.started.Load() {
		select { // Run's end stopped the consumer; its runs get asyncGrace
		case <-c.async.done:
		case <-time.After(asyncGrace + 5*time.Second):
		}
	}
	if c.node != nil {
		c.node.Leave(asyncGrace)
	}
	if c.client != nil {
		c.client.Close()
	}
	c.table.Close()
}

func (p *Platform) closeCluster() {
	if p.cluster != nil {
		p.cluster.users.Close() // after the manager's Close: its users' leases are given back
		p.cluster.cl.Close()
	}
}
