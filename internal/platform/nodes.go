package platform

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/runagent-go/runagent/internal/cluster"
	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/platformapi"
	"github.com/runagent-go/runagent/internal/sandbox"
)

// advertEvery is how often a node rewrites its advert (its heartbeat);
// cluster.NodeTTL removes a node that stopped.
const advertEvery = 2 * time.Second

// nodeOps is a node's side of `runagent nodes`: its advert and its drain.
type nodeOps struct {
	mu          sync.Mutex
	draining    bool
	stopPrepare func()             // the prepare subscription, nil while draining
	stopAsync   context.CancelFunc // ends the async consumer's current run
	resumed     chan struct{}      // closed at resume (the async consumer waits on it)
	drivers     []string
	started     time.Time
	kick        chan struct{} // advertise now: what the node serves changed
}

// changed asks for a fresh advert.
func (o *nodeOps) changed() {
	select {
	case o.kick <- struct{}{}:
	default:
	}
}

// advertise writes the node's advert every advertEvery until ctx ends,
// then withdraws it.
func (p *Platform) advertise(ctx context.Context) {
	ops := p.cluster.ops
	ops.drivers = p.availableDrivers()
	t := time.NewTicker(advertEvery)
	defer t.Stop()
	for {
		if err := p.cluster.cl.Advertise(ctx, p.cfg.NodeID, p.advert()); err != nil && ctx.Err() == nil {
			p.log.Warn("write this node's advert to NATS", "error", err)
		}
		select {
		case <-ctx.Done():
			wctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			p.cluster.cl.Withdraw(wctx, p.cfg.NodeID)
			cancel()
			return
		case <-t.C:
		case <-ops.kick:
		}
	}
}

// availableDrivers are the sandboxes this node can open.
func (p *Platform) availableDrivers() []string {
	out := []string{}
	for _, name := range sandbox.Names() {
		if name == "process" || p.cfg.Sandbox == nil {
			if name == "process" {
				out = append(out, name)
			}
			continue
		}
		if _, err := p.cfg.Sandbox(name); err == nil {
			out = append(out, name)
		}
	}
	return out
}

// advert is this node's state for `runagent nodes list`.
func (p *Platform) advert() platformapi.Node {
	ops := p.cluster.ops
	ops.mu.Lock()
	draining := ops.draining
	ops.mu.Unlock()
	now := time.Now()
	n := platformapi.Node{ID: p.cfg.NodeID, Addr: p.cfg.Host + ":" + strconv.Itoa(p.cfg.Port), Version: p.cfg.Version,
		StartedAt: ops.started.UTC().Format(time.RFC3339), HeartbeatAt: now.UTC().Format(time.RFC3339Nano),
		Draining: draining, CPUs: runtime.NumCPU(), Drivers: ops.drivers, Agents: []platformapi.NodeAgent{},
		InFlight: p.cluster.node.InFlight()}
	n.MemoryBytes, n.MemoryAvailableBytes = memInfo()
	for _, id := range p.mgr.AgentIDs("") {
		st, ok := p.mgr.Status(id)
		if !ok || st.ActiveVersion == 0 || !st.Local {
			continue
		}
		n.Instances += st.Pool.Ready + st.Pool.Starting
		n.Agents = append(n.Agents, platformapi.NodeAgent{AgentID: id, Version: st.ActiveVersion, Ready: st.Pool.Ready,
			Starting: st.Pool.Starting, InFlight: st.Pool.InFlight, Queued: st.Pool.Queued, Calls: st.Pool.Calls,
			MaxInstances: st.Deployment.MaxInstances})
	}
	return n
}

// memInfo is the machine's memory and what is available, from
// /proc/meminfo (zero elsewhere).
func memInfo() (total, available int64) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(fields[1], 10, 64)
		switch fields[0] {
		case "MemTotal:":
			total = kb << 10
		case "MemAvailable:":
			available = kb << 10
		}
	}
	return total, available
}

// nodeControl is a node's answer to `runagent nodes drain|resume`.
func (p *Platform) nodeControl(action string) error {
	c, ops := p.cluster, p.cluster.ops
	ops.mu.Lock()
	defer ops.mu.Unlock()
	switch action {
	case cluster.ActionDrain:
		if ops.draining {
			return nil
		}
		ops.draining = true
		ops.resumed = make(chan struct{})
		if ops.stopPrepare != nil {
			ops.stopPrepare() // it brings no new version up
			ops.stopPrepare = nil
		}
		stopAsync := ops.stopAsync
		ops.mu.Unlock() // pausing waits for NATS: the advert must not wait behind it
		if stopAsync != nil {
			stopAsync() // it takes no new async invocation; the running ones finish
		}
		c.node.Pause() // no new call; the ones here finish
		p.log.Info("draining: this node takes no new calls; its instances stop as they go idle")
		ops.changed()
		ops.mu.Lock() // for the deferred unlock
		return nil
	case cluster.ActionResume:
		if !ops.draining {
			return nil
		}
		if err := c.node.Resume(); err != nil {
			return err
		}
		stop, err := c.cl.ServePrepare(p.cfg.NodeID, p.mgr.PrepareVersion)
		if err != nil {
			return err
		}
		ops.draining, ops.stopPrepare = false, stop
		close(ops.resumed)
		p.log.Info("resumed: this node takes calls again")
	default:
		return fmt.Errorf("unknown node action %q: want drain or resume", action)
	}
	ops.changed()
	return nil
}

// handleNodes is GET /api/v1/nodes (admin): the live nodes' adverts.
func (p *Platform) handleNodes(w http.ResponseWriter, r *http.Request) {
	if _, ok := p.requireKey(w, r, domain.ScopeAdmin); !ok {
		return
	}
	if p.cluster == nil {
		p.wire.WriteError(w, errNotCluster)
		return
	}
	adverts, err := p.cluster.cl.Adverts(r.Context())
	if err != nil {
		p.wire.WriteError(w, &domain.Error{Code: domain.CodeConnection, RetryAfter: time.Second, Err: err,
			Message: "could not read the nodes from NATS; retry shortly"})
		return
	}
	list := platformapi.NodeList{Nodes: []platformapi.Node{}}
	if leader, err := p.cluster.cl.Leader(r.Context()); err == nil {
		list.Scheduler = leader
	} else {
		p.log.Warn("read which gateway schedules the cluster", "error", err)
	}
	for id, raw := range adverts {
		var n platformapi.Node
		if err := json.Unmarshal(raw, &n); err != nil {
			p.log.Warn("a node's advert is not readable", "node", id, "error", err)
			continue
		}
		if at, err := time.Parse(time.RFC3339Nano, n.HeartbeatAt); err == nil {
			n.HeartbeatAgeSeconds = time.Since(at).Seconds()
		}
		list.Nodes = append(list.Nodes, n)
	}
	slices.SortFunc(list.Nodes, func(a, b platformapi.Node) int { return strings.Compare(a.ID, b.ID) })
	p.wire.WriteEnvelope(w, http.StatusOK, list, fmt.Sprintf("%d nodes", len(list.Nodes)))
}

// handleNodeAction is POST /api/v1/nodes/{id}/{action} (admin).
func (p *Platform) handleNodeAction(w http.ResponseWriter, r *http.Request) {
	if _, ok := p.requireKey(w, r, domain.ScopeAdmin); !ok {
		return
	}
	if p.cluster == nil {
		p.wire.WriteError(w, errNotCluster)
		return
	}
	id, action := r.PathValue("id"), r.PathValue("action")
	if action != cluster.ActionDrain && action != cluster.ActionResume {
		p.wire.WriteError(w, &domain.Error{Code: domain.CodeNotFound, Message: fmt.Sprintf("no node action %q: use drain or resume", action)})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	if err := p.cluster.cl.NodeControl(ctx, id, action); errors.Is(err, cluster.ErrNoSuchNode) {
		p.wire.WriteError(w, &domain.Error{Code: domain.CodeNotFound, Message: err.Error()})
		return
	} else if err != nil {
		p.wire.WriteError(w, &domain.Error{Code: domain.CodeConnection, RetryAfter: time.Second, Message: err.Error()})
		return
	}
	p.wire.WriteEnvelope(w, http.StatusOK, platformapi.NodeAction{ID: id, Action: action}, fmt.Sprintf("node %s: %s", id, action))
}

var errNotCluster = &domain.Error{Code: domain.CodeValidation,
	Message: "this server is not part of a cluster: nodes exist with runagent server --role gateway and --role node (docs/multinode.md)"}
