package e2e

import (
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/wire"
)

// napAgent deploys the showcase agent with nap(), which sleeps 50 ms: a
// fixed amount of work per call that the two cores are not the limit of.
func napAgent(b testing.TB, c *testCluster) string {
	dir, _ := newAgent(b, "showcase")
	addPyEntrypoint(b, dir, "nap.py", "import time\n\n\ndef nap():\n    time.sleep(0.05)\n    return 1\n", "nap", "nap")
	editConfig(b, dir, func(cfg map[string]any) {
		arch := cfg["agent_architecture"].(map[string]any)
		arch["entrypoints"] = append(arch["entrypoints"].([]any), map[string]any{"file": "nap.py", "module": "nap", "tag": "nap_idempotent", "idempotent": true})
	})
	return c.gateways[0].deploy(b, dir, c.admin)
}

// BenchmarkClusterThroughput: calls per second through two gateways with
// one node and with two, each node running at most 2 instances of 4 calls
// at once (8 calls of 50 ms: at most 160 calls/s a node), 32 clients. Also
// the memory of an idle gateway and of an idle node (its Go process; its
// agents' instances are Python processes of their own).
//
//	go test -run '^$' -bench ClusterThroughput -benchtime 400x ./e2e
func BenchmarkClusterThroughput(b *testing.B) {
	for _, nodes := range []int{1, 2} {
		b.Run(fmt.Sprintf("nodes=%d", nodes), func(b *testing.B) {
			c := startCluster(b, 2, nodes, "--min-instances", "2", "--max-instances", "2", "--instance-concurrency", "4", "--max-queue", "1000")
			id := napAgent(b, c)
			key := c.gateways[0].createKey(b, map[string]any{"name": "bench", "scopes": []string{"run"}, "rate_per_second": 100000, "burst": 100000, "max_concurrency": 1000})
			nap := func(g *platformServer) reply {
				return g.do(b, "POST", "/api/v1/agents/"+id+"/run", key, runBody("nap", nil))
			}
			eventually(b, 10*time.Second, "the key on both gateways", func() bool { return nap(c.gateways[1]).Status == 200 })
			time.Sleep(2 * time.Second) // idle, min instances warm on every node
			gatewayRSS, nodeRSS := rssMiB(b, c.gateways[1].cmd.Process.Pid), rssMiB(b, c.nodes[0].cmd.Process.Pid)
			const clients = 32
			var next sync.WaitGroup
			work := make(chan int, b.N)
			for i := range b.N {
				work <- i
			}
			close(work)
			var mu sync.Mutex
			var lat []time.Duration
			errs := 0
			b.ResetTimer()
			start := time.Now()
			for w := range clients {
				next.Add(1)
				go func() {
					defer next.Done()
					for range work {
						t0 := time.Now()
						r := nap(c.gateways[w%2])
						d := time.Since(t0)
						mu.Lock()
						lat = append(lat, d)
						if r.Status != 200 {
							errs++
						}
						mu.Unlock()
					}
				}()
			}
			next.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			if errs > 0 {
				b.Errorf("%d of %d calls failed", errs, b.N)
			}
			slices.Sort(lat)
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "calls/s")
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(gatewayRSS, "gateway-MiB")
			b.ReportMetric(nodeRSS, "node-MiB")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// BenchmarkClusterRedelivery: the time from a node's kill -9 to the last of
// its interrupted async invocations starting again on the other node, with
// a 2 s lease (an idempotent entrypoint, so that they do run again). It
// measures one kill, whatever b.N.
//
//	go test -run '^$' -bench ClusterRedelivery -benchtime 1x ./e2e
func BenchmarkClusterRedelivery(b *testing.B) {
	{ // once, whatever b.N: one kill is the measurement
		c := startCluster(b, 1, 2, "--async-lease", "2s", "--async-workers", "4", "--async-tenant-workers", "4")
		dir, _ := newAgent(b, "showcase")
		addPyEntrypoint(b, dir, "slow.py", "import time\n\n\ndef sleep_for(seconds):\n    time.sleep(seconds)\n    return seconds\n", "sleep_for", "sleep_for")
		editConfig(b, dir, func(cfg map[string]any) {
			arch := cfg["agent_architecture"].(map[string]any)
			arch["entrypoints"] = append(arch["entrypoints"].([]any), map[string]any{"file": "slow.py", "module": "sleep_for", "tag": "sleep_idempotent", "idempotent": true})
		})
		g := c.gateways[0]
		id := g.deploy(b, dir, c.admin)
		var ids []string
		for range 8 {
			ids = append(ids, acceptedID(b, asyncRun(b, g, c.admin, id, "sleep_idempotent", map[string]any{"seconds": 1})))
		}
		time.Sleep(500 * time.Millisecond)
		syscall.Kill(c.nodes[0].cmd.Process.Pid, syscall.SIGKILL)
		killed := time.Now()
		<-c.nodes[0].exited
		var last time.Duration
		for _, inv := range ids {
			if st, detail := waitInvocation(b, g, inv, 60*time.Second); st != "completed" {
				b.Fatalf("%s: %s %s", inv, st, detail)
			}
			r := g.do(b, "GET", "/api/v1/invocations/"+inv, c.admin, nil)
			var rec wire.InvocationJSON
			json.Unmarshal(r.Body, &rec)
			if rec.ResponseTimestamp == nil || rec.ExecutionTimeMS == nil {
				b.Fatalf("invocation record without its times: %s", r.Body)
			}
			done, err := time.Parse("2006-01-02T15:04:05.999999", *rec.ResponseTimestamp)
			if err != nil {
				b.Fatalf("invocation record without its times: %s", r.Body)
			}
			started := done.Add(-time.Duration(*rec.ExecutionTimeMS * float64(time.Millisecond)))
			if d := started.Sub(killed); d > last {
				last = d
			}
		}
		b.ReportMetric(last.Seconds(), "kill-to-last-restart-s")
		b.ReportMetric(0, "ns/op")
	}
}
