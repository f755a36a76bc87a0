package natsdispatch_test

import (
	"context"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/dispatch/natsdispatch"
)

// BenchmarkCallHop is the latency the NATS hop adds to a no-op call: a
// gateway's client, a node and a NATS server on loopback, the execution
// side answering at once. It reports the p50 and p99 per call.
func BenchmarkCallHop(b *testing.B) {
	s := runNATS(b)
	var mu sync.Mutex
	node, err := natsdispatch.NewNode(connect(b, s, "bench"), "bench", echoNode{"n", &mu, map[string]int{}}, nil, natsdispatch.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer node.Close()
	node.Serve(target)
	client, err := natsdispatch.NewClient(connect(b, s, "bench"), natsdispatch.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	ctx := context.Background()
	for range 1000 { // warm up
		client.Call(ctx, target, "who", nil, nil)
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if _, err := client.Call(ctx, target, "who", []byte(`[]`), []byte(`{"message": "hi"}`)); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
