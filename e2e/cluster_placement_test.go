package e2e

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/platformapi"
)

// TestClusterPlacement: the scheduler places versions on nodes. Two
// gateways (one elected scheduler) and three nodes of the real binary. An
// agent with min_nodes 1 runs on one node; under more calls than that
// node's instances take, a second node joins; idle, it runs on no node
// (scaled to zero across the cluster) and the next call waits while it is
// placed again, then succeeds. The scheduler gateway killed (-9), the
// other takes over within seconds and places the agent again.
func TestClusterPlacement(t *testing.T) {
	c := startCluster(t, 2, 3)
	dir, _ := newAgent(t, "showcase")
	addPyEntrypoint(t, dir, "slow.py", "import os, time\n\n\ndef slow_home(seconds):\n    time.sleep(seconds)\n    return os.environ['HOME']\n", "slow_home", "slow_home")
	editConfig(t, dir, func(cfg map[string]any) {
		cfg["deployment"] = map[string]any{"min_nodes": 1, "min_instances": 0, "max_instances": 1, "max_concurrency": 1, "idle_timeout_seconds": 4}
	})
	g1 := c.gateways[0]
	id := g1.deploy(t, dir, c.admin)

	nodesOf := func(g *platformServer) (platformapi.NodeList, []string) {
		r := g.do(t, "GET", "/api/v1/nodes", c.admin, nil)
		var list platformapi.NodeList
		if r.Status != 200 || json.Unmarshal(r.Env.Data, &list) != nil {
			t.Fatalf("GET /api/v1/nodes: %d %s", r.Status, r.Body)
		}
		var on []string
		for _, n := range list.Nodes {
			if slices.ContainsFunc(n.Agents, func(a platformapi.NodeAgent) bool { return a.AgentID == id }) {
				on = append(on, n.ID)
			}
		}
		return list, on
	}
	var list platformapi.NodeList
	var on []string
	show := func() string { return fmt.Sprintf("scheduler %q, agent on %v\n%s", list.Scheduler, on, c.logs()) }
	eventually(t, 5*time.Second, "the agent on exactly one node", func() bool {
		list, on = nodesOf(g1)
		return len(on) == 1 && len(list.Nodes) == 3
	}, show)
	if list.Scheduler != "g1" && list.Scheduler != "g2" {
		t.Errorf("the nodes list names scheduler %q", list.Scheduler)
	}

	// Six callers at once of a 1.5 s call, where the node runs one
	// instance of one call at a time: the calls queue there, so a second
	// node joins and takes some.
	key := g1.createKey(t, map[string]any{"name": "load", "scopes": []string{"run"}, "rate_per_second": 10000, "burst": 10000, "max_concurrency": 100})
	eventually(t, 3*time.Second, "the key made on gateway 1 to work on gateway 2", func() bool {
		return c.gateways[1].do(t, "GET", "/api/v1/agents", key, nil).Status != 401
	})
	load := startLoad(t, c, id, key, 6, "slow_home", map[string]any{"seconds": 1.5})
	eventually(t, 25*time.Second, "a second node to take calls under load", func() bool { return load.nodes() >= 2 }, show)
	load.end()
	if f := load.failure; len(f) > 0 {
		t.Errorf("%d calls failed under load: %v", len(f), f[:min(3, len(f))])
	}
	t.Logf("calls by node under load: %v", load.onNode)

	// Idle for its idle timeout: on no node at all.
	began := time.Now()
	eventually(t, 30*time.Second, "the idle agent to run on no node", func() bool {
		list, on = nodesOf(g1)
		return len(on) == 0
	}, show)
	t.Logf("scaled to zero %s after the last call", time.Since(began).Round(100*time.Millisecond))

	// A call at zero waits while the scheduler places it, then succeeds.
	began = time.Now()
	if r := c.gateways[1].do(t, "POST", "/api/v1/agents/"+id+"/run", key, runBody("slow_home", map[string]any{"seconds": 0})); r.Status != 200 {
		t.Fatalf("a call at zero instances: %d %s\n%s", r.Status, r.Body, c.logs())
	}
	t.Logf("a call at zero took %s", time.Since(began).Round(10*time.Millisecond))

	// The scheduler killed: the other gateway takes over, and places the
	// agent again from zero.
	list, _ = nodesOf(g1)
	leader := list.Scheduler
	other := c.gateways[0]
	if leader == "g1" {
		other = c.gateways[1]
	}
	killed := c.gateways[0]
	if leader == "g2" {
		killed = c.gateways[1]
	}
	eventually(t, 30*time.Second, "the agent to scale to zero again", func() bool {
		_, on = nodesOf(other)
		return len(on) == 0
	}, show)
	began = time.Now()
	syscall.Kill(killed.cmd.Process.Pid, syscall.SIGKILL)
	<-killed.exited
	eventually(t, 15*time.Second, "the other gateway to schedule", func() bool {
		list, _ = nodesOf(other)
		return list.Scheduler != "" && list.Scheduler != leader
	}, show)
	t.Logf("scheduler %s killed; %s took over in %s", leader, list.Scheduler, time.Since(began).Round(100*time.Millisecond))
	if r := other.do(t, "POST", "/api/v1/agents/"+id+"/run", key, runBody("slow_home", map[string]any{"seconds": 0})); r.Status != 200 ||
		!strings.Contains(string(r.Env.Data), "home") {
		t.Fatalf("a call at zero after the scheduler changed: %d %s\n%s", r.Status, r.Body, c.logs())
	}
}
