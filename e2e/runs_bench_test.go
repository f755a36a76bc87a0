package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Background runs created per second on one server (SQLite), 16 clients
// at once; each create is durable before its 202.
func BenchmarkRunsCreate(b *testing.B) {
	s := startPlatform(b, "", 0, "--async-tenant-backlog", "1000000", "--async-agent-backlog", "1000000")
	dir, _ := newAgent(b, "showcase")
	id := s.deploy(b, dir, s.Admin)
	key := s.createKey(b, map[string]any{"name": "bench", "scopes": []string{"run"}, "rate_per_second": 1e6, "burst": 1e6, "max_concurrency": 1000})
	body := `{"entrypoint_tag":"add","input_args":[],"input_kwargs":{"a":1,"b":2}}`
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	var next, failed atomic.Int64
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				req, _ := http.NewRequest("POST", "http://"+s.Addr+"/api/v1/agents/"+id+"/runs", strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+key)
				resp, err := client.Do(req)
				if err != nil || resp.StatusCode != 202 {
					failed.Add(1)
				}
				if resp != nil {
					resp.Body.Close()
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	if failed.Load() > 0 {
		b.Fatalf("%d creates failed", failed.Load())
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "runs/s")
}

// A 10,000-chunk stream over SSE: plain, and outliving its client (each
// event written to the run's log and read back from it).
func BenchmarkStream10k(b *testing.B) {
	s := startPlatform(b, "", 0)
	dir, _ := newAgent(b, "showcase")
	id := s.deploy(b, dir, s.Admin)
	const n = 10000
	for _, mode := range []string{"cancel", "continue"} {
		b.Run(mode, func(b *testing.B) {
			var chunks int
			start := time.Now()
			for range b.N {
				body := fmt.Sprintf(`{"entrypoint_tag":"count_stream","input_args":[],"input_kwargs":{"n":%d},"on_disconnect":%q}`, n, mode)
				req, _ := http.NewRequest("POST", "http://"+s.Addr+"/api/v1/agents/"+id+"/run-stream", strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+s.Admin)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				events, _, _ := readSSE(resp.Body, nil)
				resp.Body.Close()
				for _, e := range events {
					if e.Event == "chunk" {
						chunks++
					}
				}
				if len(events) == 0 || events[len(events)-1].Event != "done" {
					b.Fatalf("the stream did not end with done: %d events", len(events))
				}
			}
			b.ReportMetric(float64(chunks)/time.Since(start).Seconds(), "chunks/s")
		})
	}
}

// Re-join latency: from the request to the first replayed event of a
// stream that ended (its whole log on disk).
func BenchmarkRejoin(b *testing.B) {
	s := startPlatform(b, "", 0)
	dir, _ := newAgent(b, "showcase")
	id := s.deploy(b, dir, s.Admin)
	key := s.createKey(b, map[string]any{"name": "bench", "scopes": []string{"run"}, "rate_per_second": 1e6, "burst": 1e6})
	resp := postContinue(b, s, id, "count_stream", map[string]any{"n": 1000})
	runID := strings.TrimPrefix(resp.Header.Get("Content-Location"), "/api/v1/runs/")
	readSSE(resp.Body, nil)
	resp.Body.Close()
	b.ResetTimer()
	for i := range b.N {
		r := getRunStream(b, "http://"+s.Addr, runID, key, fmt.Sprint(i%900))
		readSSE(r.Body, func(e sseEvent) bool { return e.Event == "chunk" })
		r.Body.Close()
	}
}
