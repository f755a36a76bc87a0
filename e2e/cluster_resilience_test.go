package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/platformapi"
	"github.com/runagent-go/runagent/internal/store/pgstore"
	"github.com/runagent-go/runagent/internal/store/pgstore/pgtest"
)

// runNATSCluster starts three NATS servers with JetStream in one cluster,
// their client ports on every interface (a network namespace reaches them
// through its veth), and returns them with their client ports.
func runNATSCluster(t testing.TB) ([]*natsserver.Server, []int) {
	t.Helper()
	clientPorts := []int{freePort(t), freePort(t), freePort(t)}
	routePorts := []int{freePort(t), freePort(t), freePort(t)}
	var routes []string
	for _, p := range routePorts {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", p))
	}
	var servers []*natsserver.Server
	for i := range 3 {
		s, err := natsserver.NewServer(&natsserver.Options{ServerName: fmt.Sprintf("nats-%d", i+1), Host: "0.0.0.0", Port: clientPorts[i],
			JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
			Cluster: natsserver.ClusterOpts{Name: "runagent-test", Host: "127.0.0.1", Port: routePorts[i]},
			Routes:  natsserver.RoutesFromStr(strings.Join(routes, ","))})
		if err != nil {
			t.Fatal(err)
		}
		s.Start()
		t.Cleanup(s.Shutdown)
		servers = append(servers, s)
	}
	for _, s := range servers {
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatal("a NATS server is not ready")
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, s := range servers {
			if s.JetStreamIsLeader() {
				return servers, clientPorts
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("the NATS cluster elected no JetStream leader in 30 s")
	return nil, nil
}

// netns makes a network namespace joined to the host by a veth pair and
// returns its name, the host's address and the namespace's.
func netns(t testing.TB) (name, hostIP, nsIP string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("a network namespace needs root: the cluster resilience test is skipped")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("the cluster resilience test needs ip (iproute2; scripts/test-deps.sh installs it): %v", err)
	}
	n := os.Getpid() % 250
	name = fmt.Sprintf("ra-e2e-%d", os.Getpid())
	hostIP, nsIP = fmt.Sprintf("10.231.%d.1", n), fmt.Sprintf("10.231.%d.2", n)
	host, peer := fmt.Sprintf("rah%d", os.Getpid()), fmt.Sprintf("ran%d", os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	run("link", "add", host, "type", "veth", "peer", "name", peer)
	t.Cleanup(func() { exec.Command("ip", "link", "del", host).Run() })
	run("link", "set", peer, "netns", name)
	run("addr", "add", hostIP+"/30", "dev", host)
	run("link", "set", host, "up")
	run("netns", "exec", name, "ip", "addr", "add", nsIP+"/30", "dev", peer)
	run("netns", "exec", name, "ip", "link", "set", peer, "up")
	run("netns", "exec", name, "ip", "link", "set", "lo", "up")
	return name, hostIP, nsIP
}

// check fails the test for a failure outside [from, until] or not a clear
// retryable one (503 with Retry-After or 502 AGENT_CRASHED).
func (l *load) check(t testing.TB, what string, from, until time.Time) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	t.Logf("%s: %d calls, %d failed, by node %v", what, l.calls, len(l.failure), l.onNode)
	for _, f := range l.failure {
		clear := f.status == 503 && (f.code == "CONNECTION_ERROR" || f.code == "OVERLOADED") || f.status == 502 && f.code == "AGENT_CRASHED"
		if !clear || f.at.Before(from) || f.at.After(until) {
			t.Errorf("%s: a call failed at %s (window %s to %s): %d %s", what, f.at.Format("15:04:05.000"),
				from.Format("15:04:05.000"), until.Format("15:04:05.000"), f.status, f.body)
		}
	}
}

// TestClusterResilience runs two gateways and two nodes (one in its own
// network namespace, so that its traffic crosses a veth) on a three-server
// NATS cluster with JetStream replicas 3 and PostgreSQL, under load: one
// NATS server is killed, then PostgreSQL restarts. Clients see at most a
// short burst of clear, retryable errors; calls go on through both nodes;
// every async invocation accepted meanwhile ends exactly once.
func TestClusterResilience(t *testing.T) {
	ns, hostIP, nsIP := netns(t)
	servers, ports := runNATSCluster(t)
	urls := func(host string) string {
		var u []string
		for _, p := range ports {
			u = append(u, fmt.Sprintf("nats://%s:%d", host, p))
		}
		return strings.Join(u, ",")
	}
	c := &testCluster{db: pgtest.Schema(t, filepath.Join(t.TempDir(), "cluster"))}
	common := func(host string) []string {
		return []string{"--nats", urls(host), "--nats-replicas", "3", "--db", c.db, "--async-lease", "3s"}
	}
	for i := range 2 {
		g := startPlatform(t, "", 0, append([]string{"--role", "gateway", "--node-id", fmt.Sprintf("g%d", i+1)}, common("127.0.0.1")...)...)
		if i == 0 {
			c.admin = g.Admin
		}
		g.Admin = c.admin
		c.gateways = append(c.gateways, g)
	}
	c.nodes = append(c.nodes, startPlatform(t, "", 0, append([]string{"--role", "node", "--node-id", "n1"}, common("127.0.0.1")...)...))
	c.nodes = append(c.nodes, startPlatformOn(t, nsIP, []string{"ip", "netns", "exec", ns}, "", 0,
		append([]string{"--role", "node", "--node-id", "n2-netns"}, common(hostIP)...)...))

	dir, _ := newAgent(t, "showcase")
	id := c.gateways[0].deploy(t, dir, c.admin)
	key := c.gateways[0].createKey(t, map[string]any{"name": "load", "scopes": []string{"run"}, "rate_per_second": 100000, "burst": 100000, "max_concurrency": 1000})
	seen := map[int]bool{}
	eventually(t, 15*time.Second, "both nodes, one across the veth, to serve calls", func() bool {
		r := c.gateways[1].do(t, "POST", "/api/v1/agents/"+id+"/run", key, runBody("getenv", map[string]any{"name": "HOME"}))
		if r.Status == 200 {
			seen[c.servedBy(t, r)] = true
		}
		return len(seen) == 2
	}, func() string { return c.logs() })

	async := func(n int) []string {
		var ids []string
		for i := range n {
			r := asyncRun(t, c.gateways[i%2], key, id, "add", map[string]any{"a": i, "b": 1})
			if r.Status == 202 {
				ids = append(ids, acceptedID(t, r))
			} else if r.Status != 503 || r.Header.Get("Retry-After") == "" {
				t.Errorf("async accepted during a failure: %d %s, want 202 or 503 with Retry-After", r.Status, r.Body)
			}
		}
		return ids
	}

	// One NATS server dies.
	l := startLoad(t, c, id, key, 4, "getenv", map[string]any{"name": "HOME"})
	time.Sleep(time.Second)
	victim := servers[0] // the server most of the processes use
	for _, s := range servers {
		if s.NumClients() > victim.NumClients() {
			victim = s
		}
	}
	t.Logf("killing %s with %d of the clients", victim.Name(), victim.NumClients())
	killed := time.Now()
	victim.Shutdown()
	accepted := async(10)
	time.Sleep(10 * time.Second)
	l.end()
	l.check(t, "a NATS server killed", killed, killed.Add(8*time.Second))
	for i := range c.nodes {
		if l.onNode[i] == 0 {
			t.Errorf("no call ran on node %d while a NATS server was down", i+1)
		}
	}

	// PostgreSQL restarts.
	l = startLoad(t, c, id, key, 4, "getenv", map[string]any{"name": "HOME"})
	time.Sleep(500 * time.Millisecond)
	down := time.Now()
	restarted := make(chan struct{})
	go func() { defer close(restarted); pgtest.Restart(t, 2*time.Second) }()
	accepted = append(accepted, async(10)...)
	<-restarted
	time.Sleep(4 * time.Second)
	l.end()
	l.check(t, "PostgreSQL restarted", down, down.Add(8*time.Second))

	for _, inv := range accepted {
		if st, detail := waitInvocation(t, c.gateways[1], inv, 30*time.Second); st != "completed" {
			t.Errorf("async invocation %s: %s %s", inv, st, detail)
		}
	}
	if t.Failed() {
		t.Logf("servers:\n%s", c.logs())
	}
}

// Background runs on a cluster: an async invocation recorded in
// PostgreSQL whose gateway stopped before it reached the JetStream queue
// (written here straight to the store, as such a gateway leaves it) is
// found by the scheduler and run once, and one queued the normal way is
// not queued again; a create replayed by Idempotency-Key runs once; a
// run cancelled through the gateway is cancelled on the node running it.
func TestClusterRuns(t *testing.T) {
	c := startCluster(t, 2, 1)
	g := c.gateways[0]
	dir, _ := newAgent(t, "showcase")
	addPyEntrypoint(t, dir, "cancellable.py", cancellable, "wait_here", "wait_here")
	id := g.deploy(t, dir, c.admin)
	marks := t.TempDir()

	once := filepath.Join(marks, "once")
	key := map[string]string{"Idempotency-Key": "cluster-1"}
	a := acceptedRun(t, createRun(t, g, c.admin, id, "wait_here", map[string]any{"path": once, "seconds": 0}, key))
	b := acceptedRun(t, createRun(t, g, c.admin, id, "wait_here", map[string]any{"path": once, "seconds": 0}, key))
	if rec := runOf(t, g.do(t, "GET", "/api/v1/runs/"+a+"/wait", c.admin, nil)); a != b || rec.Status != "completed" {
		t.Fatalf("an idempotent create on a cluster: runs %s and %s, %+v", a, b, rec)
	}
	if got, _ := os.ReadFile(once); string(got) != "started\nfinished\n" {
		t.Fatalf("the idempotent run ran: %q, want once", got)
	}
	long := filepath.Join(marks, "long")
	longID := acceptedRun(t, createRun(t, g, c.admin, id, "wait_here", map[string]any{"path": long, "seconds": 60}, nil))
	waitFile(t, long, "started")
	if r := g.do(t, "POST", "/api/v1/runs/"+longID+"/cancel", c.admin, nil); r.Status != 200 || runOf(t, r).Status != "cancelled" {
		t.Fatalf("cancel a run running on a node: %d %s\n%s", r.Status, r.Body, c.logs())
	}
	if got := waitFile(t, long, "cancelled"); got != "started\ncancelled\n" {
		t.Fatalf("the cancelled run's function on the node: %q, want its task cancelled", got)
	}

	ctx := context.Background()
	db, err := pgstore.Open(ctx, c.db, pgstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	lost := fmt.Sprintf("lost-%d", time.Now().UnixNano())
	inv := domain.Invocation{ID: lost, AgentID: id, EntrypointTag: "add", SDKType: "async", InputArgs: json.RawMessage(`[]`),
		InputKwargs: json.RawMessage(`{"a": 2, "b": 40}`), Status: domain.StatusPending, RequestTime: time.Now()}
	if err := db.EnqueueAsync(ctx, domain.AsyncJob{Invocation: inv, Tenant: "default", TimeoutSeconds: 0}); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, c.db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// Recorded ten minutes ago, as a gateway that died then left it.
	if _, err := conn.Exec(ctx, `UPDATE async_queue SET enqueued_at = enqueued_at - $1 WHERE invocation_id = $2`, (10 * time.Minute).Microseconds(), lost); err != nil {
		t.Fatal(err)
	}
	normal := acceptedID(t, asyncRun(t, g, c.admin, id, "add", map[string]any{"a": 1, "b": 1}))
	if st, detail := waitInvocation(t, g, normal, 20*time.Second); st != "completed" {
		t.Fatalf("an async invocation queued the normal way: %s %s", st, detail)
	}
	if st, detail := waitInvocation(t, g, lost, 40*time.Second); st != "completed" {
		t.Fatalf("the invocation the queue never had: %s %s (want completed once the scheduler queued it)\n%s", st, detail, c.logs())
	}
	r := g.do(t, "GET", "/api/v1/invocations/"+lost, c.admin, nil)
	var got struct {
		OutputData json.RawMessage `json:"output_data"`
	}
	json.Unmarshal(r.Body, &got)
	if string(got.OutputData) != "42" {
		t.Fatalf("its output: %s, want 42", r.Body)
	}
	logs := c.logs()
	if n := strings.Count(logs, "queued again an async invocation"); n != 1 || !strings.Contains(logs, lost) {
		t.Fatalf("the gateways queued %d invocations again, want 1 (%s):\n%s", n, lost, logs)
	}

	// A thread's runs one after the other across the cluster.
	thread := func(path string, seconds float64) string {
		b := runBody("wait_here", map[string]any{"path": filepath.Join(marks, path), "seconds": seconds})
		b["thread_id"], b["multitask"] = "cluster-chat", "enqueue"
		return acceptedRun(t, c.gateways[1].do(t, "POST", "/api/v1/agents/"+id+"/runs", c.admin, b))
	}
	t1, t2 := thread("t1", 1), thread("t2", 0)
	var th1, th2 struct {
		Status            string  `json:"status"`
		ResponseTimestamp *string `json:"response_timestamp"`
		StartedAt         *string `json:"started_at"`
	}
	json.Unmarshal(g.do(t, "GET", "/api/v1/runs/"+t2+"/wait", c.admin, nil).Env.Data, &th2)
	json.Unmarshal(g.do(t, "GET", "/api/v1/runs/"+t1+"/wait", c.admin, nil).Env.Data, &th1)
	if th1.Status != "completed" || th2.Status != "completed" || th2.StartedAt == nil || th1.ResponseTimestamp == nil || *th2.StartedAt < *th1.ResponseTimestamp {
		t.Fatalf("a thread's runs on a cluster: %+v then %+v, want the second started after the first ended", th1, th2)
	}

	// A stream begun on one gateway, dropped, re-joined on the other.
	resp := postContinue(t, g, id, "count_stream", map[string]any{"n": 50, "delay": 0.02})
	runID := strings.TrimPrefix(resp.Header.Get("Content-Location"), "/api/v1/runs/")
	first, _, _ := readSSE(resp.Body, func(e sseEvent) bool { return e.ID == "4" })
	resp.Body.Close()
	r2 := getRunStream(t, "http://"+c.gateways[1].Addr, runID, c.admin, "4")
	rest, _, _ := readSSE(r2.Body, nil)
	r2.Body.Close()
	var ids []string
	for _, e := range append(first, rest...) {
		if e.Event == "chunk" {
			ids = append(ids, e.ID)
		}
	}
	if len(ids) != 50 || ids[5] != "5" || ids[49] != "49" || rest[len(rest)-1].Event != "done" {
		t.Fatalf("a stream re-joined on the other gateway: %d chunks (%v), last %+v", len(ids), ids, rest[len(rest)-1])
	}

	// A cron every second: one run per tick across the two gateways, also
	// while the scheduler gateway is killed and the other takes over.
	cr := g.do(t, "POST", "/api/v1/agents/"+id+"/crons", c.admin, map[string]any{"schedule": "* * * * * *", "entrypoint_tag": "add", "input_kwargs": map[string]any{"a": 1, "b": 1}})
	var cron struct {
		CronID string `json:"cron_id"`
	}
	json.Unmarshal(cr.Env.Data, &cron)
	if cr.Status != 201 {
		t.Fatalf("create a cron: %d %s", cr.Status, cr.Body)
	}
	count := func(g *platformServer) int { ticks, _ := cronRuns(t, g, id, cron.CronID); return len(ticks) }
	eventually(t, 15*time.Second, "three runs of the cron", func() bool { return count(g) >= 3 })
	var nodes platformapi.NodeList
	json.Unmarshal(g.do(t, "GET", "/api/v1/nodes", c.admin, nil).Env.Data, &nodes)
	leader, other := c.gateways[0], c.gateways[1]
	if nodes.Scheduler == "g2" {
		leader, other = other, leader
	}
	syscall.Kill(-leader.cmd.Process.Pid, syscall.SIGKILL)
	<-leader.exited
	before := count(other)
	eventually(t, 30*time.Second, "runs of the cron after the scheduler died", func() bool { return count(other) >= before+3 }, c.logs)
	if r := other.do(t, "DELETE", "/api/v1/crons/"+cron.CronID, c.admin, nil); r.Status != 200 {
		t.Fatalf("delete the cron: %d %s", r.Status, r.Body)
	}
	time.Sleep(500 * time.Millisecond)
	ticks, _ := cronRuns(t, other, id, cron.CronID)
	for i := 1; i < len(ticks); i++ {
		if !ticks[i].After(ticks[i-1]) {
			t.Errorf("tick %s fired twice or out of order (after %s)", ticks[i], ticks[i-1])
		}
	}
	t.Logf("%d runs of a cron every second, the scheduler killed after %d", len(ticks), before)
}
