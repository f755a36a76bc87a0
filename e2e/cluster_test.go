package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/runagent-go/runagent/internal/apikeys"
	"github.com/runagent-go/runagent/internal/platformapi"
	"github.com/runagent-go/runagent/internal/store/pgstore/pgtest"
)

// runNATS starts a NATS server with JetStream in the test process, on a
// free loopback port, and returns its URL.
func runNATS(t testing.TB) string {
	t.Helper()
	s, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
		StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS server not ready")
	}
	t.Cleanup(s.Shutdown)
	return s.ClientURL()
}

// testCluster is gateways and nodes of the real binary on one NATS server
// and one PostgreSQL schema.
type testCluster struct {
	nats, db string
	gateways []*platformServer
	nodes    []*platformServer
	admin    string
	nodeArgs []string
}

// startCluster starts the gateways and nodes; serverArgs go to every
// server, nodeArgs after them to the nodes.
func startCluster(t testing.TB, gateways, nodes int, nodeArgs ...string) *testCluster {
	return startClusterWith(t, gateways, nodes, nil, nodeArgs...)
}

func startClusterWith(t testing.TB, gateways, nodes int, serverArgs []string, nodeArgs ...string) *testCluster {
	t.Helper()
	c := &testCluster{nats: runNATS(t), db: pgtest.Schema(t, filepath.Join(t.TempDir(), "cluster"))}
	common := append([]string{"--nats", c.nats, "--db", c.db}, serverArgs...)
	c.nodeArgs = nodeArgs
	for i := range gateways {
		g := startPlatform(t, "", 0, append([]string{"--role", "gateway", "--node-id", "g" + string(rune('1'+i))}, common...)...)
		if i == 0 {
			c.admin = g.Admin
		}
		g.Admin = c.admin
		c.gateways = append(c.gateways, g)
	}
	for i := range nodes {
		c.nodes = append(c.nodes, startPlatform(t, "", 0, append(append([]string{"--role", "node", "--node-id", "n" + string(rune('1'+i))}, common...), nodeArgs...)...))
	}
	return c
}

// servedBy says which node ran a call: the showcase agent's getenv("HOME")
// is the node's data directory.
func (c *testCluster) servedBy(t testing.TB, r reply) int {
	t.Helper()
	for i, n := range c.nodes {
		if strings.Contains(string(r.Env.Data), filepath.Join(n.DataDir, "home")) {
			return i
		}
	}
	t.Fatalf("a call's answer names no node's home: %s", r.Body)
	return -1
}

// load is callers calling one entrypoint in a loop, through the cluster's
// gateways in turn, until ended: it counts the calls each node served and
// records each failure with when it happened.
type load struct {
	stop    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	calls   int
	onNode  map[int]int
	failure []loadFailure
}

type loadFailure struct {
	at     time.Time
	status int
	code   string
	body   string
}

func startLoad(t testing.TB, c *testCluster, id, key string, workers int, tag string, kwargs map[string]any) *load {
	l := &load{stop: make(chan struct{}), onNode: map[int]int{}}
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				r := c.gateways[w%len(c.gateways)].do(t, "POST", "/api/v1/agents/"+id+"/run", key, runBody(tag, kwargs))
				l.mu.Lock()
				l.calls++
				if r.Status == 200 {
					for i, n := range c.nodes {
						if strings.Contains(string(r.Env.Data), filepath.Join(n.DataDir, "home")) {
							l.onNode[i]++
						}
					}
				} else {
					l.failure = append(l.failure, loadFailure{time.Now(), r.Status, r.code(), string(r.Body)})
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

// end stops the callers and waits for their calls.
func (l *load) end() {
	close(l.stop)
	l.wg.Wait()
}

// nodes is how many nodes have served a call so far.
func (l *load) nodes() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.onNode)
}

func (c *testCluster) logs() string {
	var b strings.Builder
	for i, g := range c.gateways {
		b.WriteString("--- gateway " + string(rune('1'+i)) + "\n" + g.Logs())
	}
	for i, n := range c.nodes {
		b.WriteString("--- node " + string(rune('1'+i)) + "\n" + n.Logs())
	}
	return b.String()
}

// TestCluster runs two gateways and two nodes of the real binary on a real
// NATS server (JetStream: the bundles) and PostgreSQL: an agent deployed
// through one gateway is called through the other, its calls spread over
// both nodes; keys made or revoked on one gateway count on the other at
// once; a new version rolls out everywhere; a node stopped under calls
// lets them finish; a node that joins serves; kill -9 of a node leaves the
// calls to the others; a deleted agent is gone from every server.
func TestCluster(t *testing.T) {
	c := startCluster(t, 2, 2)
	g1, g2 := c.gateways[0], c.gateways[1]
	dir, _ := newAgent(t, "showcase")
	addPyEntrypoint(t, dir, "shout.py", "def shout(marker):\n    print(\"marker \" + marker)\n    return \"ok\"\n", "shout", "shout")
	id := g1.deploy(t, dir, c.admin)

	// Called through the other gateway, at once: the deploy returned
	// once the nodes had the version warm and the store said it is active.
	add := func(g *platformServer, key string) reply {
		return g.do(t, "POST", "/api/v1/agents/"+id+"/run", key, runBody("add", map[string]any{"a": 2, "b": 3}))
	}
	if r := add(g2, c.admin); r.Status != 200 || !strings.Contains(string(r.Env.Data), `\"payload\": \"5\"`) {
		t.Fatalf("a call through the second gateway: %d %s\n%s", r.Status, r.Body, c.logs())
	}
	if st, frames := g2.stream(t, id, c.admin, "count_stream", map[string]any{"n": 3}); st != 101 || len(frames) != 5 || frames[4]["status"] != "stream_completed" {
		t.Errorf("a stream through the second gateway: %d %v", st, frames)
	}
	// runagent logs --follow on one gateway shows the lines a node stored
	// for a call made through the other.
	follow := exec.Command(binary, "logs", id, "--follow", "--server", "http://"+g2.Addr, "--api-key", c.admin)
	follow.Env = append(os.Environ(), "RUNAGENT_CACHE_DIR="+sharedCache)
	lr := readLines(t, follow)
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { follow.Process.Kill(); follow.Wait() })
	if !pollUntil(10*time.Second, func() bool { return len(lr.with("version 1 is serving")) > 0 }) {
		t.Fatalf("logs --follow through gateway 2 printed no past line:\n%s", lr.all())
	}
	for i := range 3 {
		m := fmt.Sprintf("m%d-%d", i, time.Now().UnixNano())
		if r := g1.do(t, "POST", "/api/v1/agents/"+id+"/run", c.admin, runBody("shout", map[string]any{"marker": m})); r.Status != 200 {
			t.Fatalf("shout: %d %s", r.Status, r.Body)
		}
		if !pollUntil(5*time.Second, func() bool { return len(lr.with("marker "+m)) == 1 }) {
			t.Fatalf("a line a node stored did not reach logs --follow on the other gateway:\n%s", lr.all())
		}
	}

	// Both nodes take calls (NATS's queue group spreads them).
	home := func(g *platformServer) reply {
		return g.do(t, "POST", "/api/v1/agents/"+id+"/run", c.admin, runBody("getenv", map[string]any{"name": "HOME"}))
	}
	seen := map[int]int{}
	for i := range 40 {
		r := home(c.gateways[i%2])
		if r.Status != 200 {
			t.Fatalf("call %d: %d %s", i, r.Status, r.Body)
		}
		seen[c.servedBy(t, r)]++
	}
	if len(seen) != 2 {
		t.Errorf("40 calls all ran on one node: %v", seen)
	}

	// A key made on one gateway works on the other; revoked, it stops.
	key := g1.createKey(t, map[string]any{"name": "runner", "scopes": []string{"run"}})
	eventually(t, 3*time.Second, "a key made on gateway 1 to work on gateway 2", func() bool { return add(g2, key).Status == 200 })
	keyID, _, err := apikeys.Parse(key)
	if err != nil {
		t.Fatal(err)
	}
	if r := g1.do(t, "DELETE", "/api/v1/keys/"+keyID, c.admin, nil); r.Status != 200 {
		t.Fatalf("revoke: %d %s", r.Status, r.Body)
	}
	eventually(t, 3*time.Second, "a key revoked on gateway 1 to be refused on gateway 2", func() bool { return add(g2, key).Status == 401 })

	// Rate limits are shared by the gateways: a key of 5/s, burst 10, used
	// through both at once gets, over a burst and 3 s, at most its burst,
	// its rate and the documented overshoot of one gateway's burst plus
	// 0.1 s of rate (two gateways on their own would admit about 50).
	const rate, burst, share = 5.0, 10.0, 0.1
	limited := g1.createKey(t, map[string]any{"name": "limited", "scopes": []string{"run"}, "rate_per_second": rate, "burst": burst})
	list := func(g *platformServer) int { return g.do(t, "GET", "/api/v1/agents", limited, nil).Status }
	eventually(t, 3*time.Second, "the limited key on gateway 2", func() bool { return list(g2) == 200 })
	time.Sleep(time.Duration(burst/rate*float64(time.Second)) + 500*time.Millisecond) // both buckets full again
	admitted := 0
	began := time.Now()
	for i := range 40 { // a burst, through both
		if st := list(c.gateways[i%2]); st == 200 {
			admitted++
		} else if st != 429 {
			t.Fatalf("a limited request: %d", st)
		}
	}
	for i := 0; time.Since(began) < 3*time.Second; i++ { // then a steady stream
		if list(c.gateways[i%2]) == 200 {
			admitted++
		}
		time.Sleep(20 * time.Millisecond)
	}
	elapsed := time.Since(began).Seconds()
	most := burst + rate*elapsed + (burst + rate*share) + 2 // 2: the refill during a report's flight
	t.Logf("shared rate limit: %d admitted in %.1f s (at most %.1f; alone, each gateway would admit %.0f)", admitted, elapsed, most, burst+rate*elapsed)
	if float64(admitted) > most || float64(admitted) < burst+rate*elapsed/2 {
		t.Errorf("a key of %g/s burst %g through two gateways was admitted %d times in %.1f s, want between %.1f and %.1f",
			rate, burst, admitted, elapsed, burst+rate*elapsed/2, most)
	}

	// An async invocation accepted by one gateway runs on a node; its
	// outcome is read through the other.
	async := acceptedID(t, asyncRun(t, g2, c.admin, id, "add", map[string]any{"a": 40, "b": 2}))
	if st, detail := waitInvocation(t, g1, async, 20*time.Second); st != "completed" {
		t.Errorf("async on a cluster: %s %s\n%s", st, detail, c.logs())
	}

	// The official SDKs' view of a gateway.
	others := 0 // agents besides id
	if checker, ok := wireChecker(t); ok {
		wireKey := g1.createKey(t, map[string]any{"name": "wire", "scopes": []string{"run"}, "rate_per_second": 10000, "burst": 10000, "max_concurrency": 1000})
		eventually(t, 3*time.Second, "the wire key on gateway 2", func() bool { return add(g2, wireKey).Status == 200 })
		defDir, _ := newAgent(t, "default")
		defID := g1.deploy(t, defDir, c.admin)
		others++
		out, err := exec.Command("python3", checker, g2.Addr, defID, wireKey).CombinedOutput()
		if !strings.Contains(string(out), "wire: 16 passed, 1 failed") || !strings.Contains(string(out), "FAIL health") {
			t.Errorf("check_wire against a gateway (%v):\n%s", err, out)
		}
	}

	// A new version rolls out on both nodes; both gateways send it calls.
	addPyEntrypoint(t, dir, "v2.py", "import os, time\n\n\ndef version():\n    return 2\n\n\n"+
		"def slow_home(seconds):\n    time.sleep(seconds)\n    return os.environ['HOME']\n", "version", "version")
	editConfig(t, dir, func(cfg map[string]any) {
		arch := cfg["agent_architecture"].(map[string]any)
		arch["entrypoints"] = append(arch["entrypoints"].([]any), map[string]any{"file": "v2.py", "module": "slow_home", "tag": "slow_home"})
	})
	g2.deploy(t, dir, c.admin)
	for i, g := range c.gateways {
		var r reply
		eventually(t, 5*time.Second, "version 2 through gateway "+string(rune('1'+i)), func() bool {
			r = g.do(t, "POST", "/api/v1/agents/"+id+"/run", c.admin, runBody("version", nil))
			return r.Status == 200 && strings.Contains(string(r.Env.Data), "2")
		}, func() string { return fmt.Sprintf("%d %s\n%s", r.Status, r.Body, c.logs()) })
	}

	// Both nodes run version 2 (the deploy returned when the first had it).
	onNode := map[int]bool{}
	eventually(t, 10*time.Second, "both nodes to run version 2", func() bool {
		r := g1.do(t, "POST", "/api/v1/agents/"+id+"/run", c.admin, runBody("slow_home", map[string]any{"seconds": 0}))
		if r.Status == 200 {
			onNode[c.servedBy(t, r)] = true
		}
		return len(onNode) == 2
	})

	// runagent nodes list: both nodes, each serving the agent.
	var nodes []platformapi.Node
	eventually(t, 5*time.Second, "both nodes to advertise the agent", func() bool {
		nodes = c.listNodes(t, g1)
		if len(nodes) != 2 || nodes[0].ID != "n1" || nodes[1].ID != "n2" {
			return false
		}
		for _, n := range nodes {
			if !slices.ContainsFunc(n.Agents, func(a platformapi.NodeAgent) bool { return a.AgentID == id && a.Version == 2 && a.Ready >= 1 }) {
				return false
			}
		}
		return true
	}, func() string { return fmt.Sprintf("%+v", nodes) })
	for _, n := range nodes {
		if n.Draining || n.CPUs < 1 || n.MemoryBytes <= 0 || len(n.Drivers) == 0 || n.Drivers[0] != "process" ||
			n.HeartbeatAgeSeconds > 10 || n.Instances < 1 {
			t.Errorf("node advert: %+v", n)
		}
	}
	loadKey := g1.createKey(t, map[string]any{"name": "load", "scopes": []string{"run"}, "rate_per_second": 100000, "burst": 100000, "max_concurrency": 1000})
	eventually(t, 3*time.Second, "the load key on gateway 2", func() bool { return add(g2, loadKey).Status == 200 })

	// Drain node 1 under load: no call fails, and then none goes there;
	// resumed, it takes calls again.
	load := startLoad(t, c, id, loadKey, 4, "getenv", map[string]any{"name": "HOME"})
	time.Sleep(300 * time.Millisecond)
	if out, errOut, err := runCLI(t, t.TempDir(), "nodes", "drain", "n1", "--server", "http://"+g2.Addr, "--api-key", c.admin); err != nil || !strings.Contains(out, "draining") {
		t.Fatalf("runagent nodes drain n1: %v\n%s%s", err, out, errOut)
	}
	for i := range 10 {
		if r := home(c.gateways[i%2]); r.Status != 200 || c.servedBy(t, r) != 1 {
			t.Fatalf("call %d after node 1 was drained: %d %s", i, r.Status, r.Body)
		}
	}
	time.Sleep(300 * time.Millisecond)
	load.end()
	if f := load.failure; len(f) > 0 {
		t.Errorf("%d calls failed while a node was drained: %v", len(f), f[:min(3, len(f))])
	}
	if n := c.listNodes(t, g1); !n[0].Draining || n[1].Draining {
		t.Errorf("after the drain, nodes list says %+v", n)
	}
	if out, errOut, err := runCLI(t, t.TempDir(), "nodes", "resume", "n1", "--server", "http://"+g1.Addr, "--api-key", c.admin); err != nil {
		t.Fatalf("runagent nodes resume n1: %v\n%s%s", err, out, errOut)
	}
	onNode = map[int]bool{}
	eventually(t, 10*time.Second, "node 1 to take calls again after resume", func() bool {
		if r := home(g1); r.Status == 200 {
			onNode[c.servedBy(t, r)] = true
		}
		return len(onNode) == 2
	})
	if _, errOut, err := runCLI(t, t.TempDir(), "nodes", "drain", "nope", "--server", "http://"+g1.Addr, "--api-key", c.admin); err == nil || !strings.Contains(errOut, "node nope is not in the cluster") {
		t.Errorf("drain of an unknown node: %v %s", err, errOut)
	}

	// A node stopped (SIGINT) while calls run on it: they finish, and the
	// calls after go to the other node.
	const inFlight = 12 // all on node 2: one run in 4096
	slow := make(chan reply, inFlight)
	for i := range inFlight {
		go func() {
			slow <- c.gateways[i%2].do(t, "POST", "/api/v1/agents/"+id+"/run", c.admin, runBody("slow_home", map[string]any{"seconds": 1.5}))
		}()
	}
	time.Sleep(500 * time.Millisecond) // the calls are running
	syscall.Kill(c.nodes[0].cmd.Process.Pid, syscall.SIGINT)
	onStopped := 0
	for range inFlight {
		r := <-slow
		if r.Status != 200 {
			t.Errorf("a call running when a node was stopped: %d %s", r.Status, r.Body)
		} else if c.servedBy(t, r) == 0 {
			onStopped++
		}
	}
	if onStopped == 0 {
		t.Errorf("none of %d calls ran on node 1, so its stop was not tested", inFlight)
	}
	select {
	case <-c.nodes[0].exited:
	case <-time.After(15 * time.Second):
		t.Fatalf("the stopped node did not exit\n%s", c.logs())
	}
	for i := range 10 {
		if r := home(c.gateways[i%2]); r.Status != 200 || c.servedBy(t, r) != 1 {
			t.Fatalf("call %d after node 1 stopped: %d %s", i, r.Status, r.Body)
		}
	}

	// A node that joins serves the active version (its instances start on
	// demand); kill -9 the other: calls keep succeeding on the new one.
	c.nodes = append(c.nodes, startPlatform(t, "", 0, "--role", "node", "--node-id", "n3", "--nats", c.nats, "--db", c.db))
	syscall.Kill(c.nodes[1].cmd.Process.Pid, syscall.SIGKILL)
	<-c.nodes[1].exited
	for i := range 20 {
		r := home(c.gateways[i%2])
		if r.Status != 200 {
			t.Fatalf("call %d after a node was killed: %d %s\n%s", i, r.Status, r.Body, c.logs())
		}
		if n := c.servedBy(t, r); n != 2 {
			t.Fatalf("call %d ran on node %d, not the one that joined", i, n+1)
		}
	}

	// Deleted through one gateway: gone from the other, and from the node.
	if r := g2.do(t, "DELETE", "/api/v1/agents/"+id, c.admin, nil); r.Status != 200 {
		t.Fatalf("delete: %d %s", r.Status, r.Body)
	}
	eventually(t, 3*time.Second, "the deleted agent to be gone from gateway 1", func() bool { return add(g1, c.admin).Status == 404 })
	eventually(t, 5*time.Second, "the node to stop the deleted agent's instances", func() bool {
		r := c.nodes[2].do(t, "GET", "/api/v1/health", "", nil)
		var h struct {
			Agents int `json:"agents"`
		}
		json.Unmarshal(r.Body, &h)
		return r.Status == 200 && h.Agents == others
	})
}

// TestClusterAsync: async invocations on the cluster's JetStream queue.
// Accepted by a gateway that is then killed, they still run; a node killed
// under a backlog has its running invocations delivered to the other node
// once their lease expires: each ends exactly once in the record, the
// idempotent ones completed, the others run again never (failed, saying
// why).
func TestClusterAsync(t *testing.T) {
	c := startCluster(t, 2, 2, "--async-lease", "2s", "--async-workers", "4", "--async-tenant-workers", "4")
	g1, g2 := c.gateways[0], c.gateways[1]
	dir, _ := newAgent(t, "showcase")
	addPyEntrypoint(t, dir, "work.py", "import os, time\n\n\ndef work(seconds):\n    time.sleep(seconds)\n    return os.environ['HOME']\n", "work", "work")
	editConfig(t, dir, func(cfg map[string]any) {
		arch := cfg["agent_architecture"].(map[string]any)
		arch["entrypoints"] = append(arch["entrypoints"].([]any), map[string]any{"file": "work.py", "module": "work", "tag": "work_idempotent", "idempotent": true})
	})
	id := g1.deploy(t, dir, c.admin)

	// Accepted, then the gateway is killed: nothing acknowledged is lost.
	var quick []string
	for i := range 4 {
		quick = append(quick, acceptedID(t, asyncRun(t, g1, c.admin, id, "add", map[string]any{"a": i, "b": 1})))
	}
	syscall.Kill(g1.cmd.Process.Pid, syscall.SIGKILL)
	<-g1.exited
	for _, inv := range quick {
		if st, detail := waitInvocation(t, g2, inv, 20*time.Second); st != "completed" {
			t.Errorf("accepted by a gateway killed after: %s %s", st, detail)
		}
	}

	// A backlog, then a node is killed under it.
	var plain, idem []string
	for i := range 16 {
		// In pairs: the nodes' pulls take turns, so each gets both kinds.
		if i%4 < 2 {
			plain = append(plain, acceptedID(t, asyncRun(t, g2, c.admin, id, "work", map[string]any{"seconds": 1.5})))
		} else {
			idem = append(idem, acceptedID(t, asyncRun(t, g2, c.admin, id, "work_idempotent", map[string]any{"seconds": 1.5})))
		}
	}
	time.Sleep(700 * time.Millisecond) // both nodes run some
	syscall.Kill(c.nodes[0].cmd.Process.Pid, syscall.SIGKILL)
	<-c.nodes[0].exited
	interrupted := 0
	for _, inv := range idem {
		if st, detail := waitInvocation(t, g2, inv, 60*time.Second); st != "completed" {
			t.Errorf("an idempotent invocation: %s %s, want completed (run again after the kill)", st, detail)
		}
	}
	for _, inv := range plain {
		switch st, detail := waitInvocation(t, g2, inv, 60*time.Second); {
		case st == "completed":
		case st == "failed" && strings.Contains(detail, "not run again") && strings.Contains(detail, "not declared idempotent"):
			interrupted++
		default:
			t.Errorf("an invocation running when its node was killed: %s %q, want completed, or failed saying it was not run again", st, detail)
		}
	}
	reran := strings.Count(c.nodes[1].Logs(), "running an interrupted async invocation again")
	t.Logf("after the kill: %d failed as interrupted, %d run again", interrupted, reran)
	if interrupted+reran == 0 {
		t.Errorf("the kill interrupted no invocation, so redelivery was not tested\n%s", c.logs())
	}
	if interrupted > 4 || reran > 4 {
		t.Errorf("%d failed as interrupted and %d run again: more than the 4 the killed node ran", interrupted, reran)
	}
	// Exactly once in the record: every one there, once, ended.
	r := g2.do(t, "GET", "/api/v1/agents/"+id+"/invocations?limit=100", c.admin, nil)
	var list struct {
		Invocations []struct {
			ID     string `json:"invocation_id"`
			Status string
		} `json:"invocations"`
	}
	json.Unmarshal(r.Body, &list)
	seen := map[string]int{}
	for _, inv := range list.Invocations {
		seen[inv.ID]++
		if inv.Status == "pending" {
			t.Errorf("invocation %s still pending", inv.ID)
		}
	}
	for _, inv := range append(append(quick, plain...), idem...) {
		if seen[inv] != 1 {
			t.Errorf("invocation %s is %d times in the history", inv, seen[inv])
		}
	}
}

// TestClusterRoleErrors: a role without what it needs is refused, naming
// the flag.
func TestClusterRoleErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--role", "gateway"}, "--role gateway needs --nats"},
		{[]string{"--role", "node", "--nats", "nats://127.0.0.1:1"}, "--role node needs --db postgres://"},
		{[]string{"--role", "boss"}, `--role "boss": want all`},
		{[]string{"--nats", "nats://127.0.0.1:1"}, "--nats is for the servers of a cluster"},
		{[]string{"--role", "node", "--nats", "nats://127.0.0.1:1", "--db", "postgres://127.0.0.1:1/x"}, "connect to NATS at nats://127.0.0.1:1"},
	} {
		args := append([]string{"server", "--port", "0", "--data-dir", t.TempDir()}, tc.args...)
		out, err := exec.Command(binary, args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("runagent %s: %v\n%s\nwant %q", strings.Join(args, " "), err, out, tc.want)
		}
	}
}

// eventually polls cond every 20 ms for up to d, failing the test with
// what it waited for.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool, detail ...func() string) {
	t.Helper()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	if !cond() {
		more := ""
		for _, f := range detail {
			more += "\n" + f()
		}
		t.Fatalf("waited %s for %s%s", d, what, more)
	}
}

// listNodes is `runagent nodes list --json` through g.
func (c *testCluster) listNodes(t testing.TB, g *platformServer) []platformapi.Node {
	t.Helper()
	out, errOut, err := runCLI(t, t.TempDir(), "nodes", "list", "--json", "--server", "http://"+g.Addr, "--api-key", c.admin)
	if err != nil {
		t.Fatalf("runagent nodes list: %v\n%s%s", err, out, errOut)
	}
	var nodes []platformapi.Node
	if err := json.Unmarshal([]byte(out), &nodes); err != nil {
		t.Fatalf("runagent nodes list --json printed %q: %v", out, err)
	}
	return nodes
}
