package loadgen

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// ThroughputResult is what Throughput measured.
type ThroughputResult struct {
	Conns       int
	Window      time.Duration // the measured window (after warm-up)
	OK          int64         // successful calls that completed inside the window
	Errors      int64         // failed calls that completed inside the window
	WarmupOK    int64
	WarmupErr   int64
	FirstError  string
	CallsPerSec float64 // OK / Window
}

// Throughput runs conns keep-alive connections, each sending req back to back,
// for warmup+window. Only calls that complete inside the window count. Every
// call is bounded by timeout and by the end of the window, so it returns at
// most a little after warmup+window (or when ctx is done).
func Throughput(ctx context.Context, addr string, req []byte, conns int, warmup, window, timeout time.Duration) ThroughputResult {
	start := time.Now()
	measureFrom := start.Add(warmup)
	end := measureFrom.Add(window)
	type counts struct {
		ok, errs, wok, werr int64
		firstErr            string
	}
	results := make([]counts, conns)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		go func(r *counts) {
			defer wg.Done()
			c := NewConn(addr, req, timeout)
			defer c.Close()
			for ctx.Err() == nil {
				now := time.Now()
				if !now.Before(end) {
					return
				}
				ok, status, err := c.Do(end)
				t := time.Now()
				if !t.Before(end) {
					return // finished (or was cut) after the window: not counted
				}
				inWindow := !t.Before(measureFrom)
				switch {
				case ok && inWindow:
					r.ok++
				case ok:
					r.wok++
				default:
					if inWindow {
						r.errs++
					} else {
						r.werr++
					}
					if r.firstErr == "" {
						r.firstErr = describe(status, err, c.Body())
					}
					if err != nil {
						sleepCtx(ctx, 10*time.Millisecond) // do not spin on a dead server
					}
				}
			}
		}(&results[i])
	}
	wg.Wait()
	res := ThroughputResult{Conns: conns, Window: window}
	for _, r := range results {
		res.OK += r.ok
		res.Errors += r.errs
		res.WarmupOK += r.wok
		res.WarmupErr += r.werr
		if res.FirstError == "" {
			res.FirstError = r.firstErr
		}
	}
	if ctx.Err() != nil {
		res.Window = time.Since(measureFrom)
		if res.Window < 0 {
			res.Window = 0
		}
	}
	if res.Window > 0 {
		res.CallsPerSec = float64(res.OK) / res.Window.Seconds()
	}
	return res
}

// LatencyResult is what Latency measured.
type LatencyResult struct {
	Samples    []time.Duration // successful calls, in order
	Errors     int
	FirstError string
	Limited    bool // stopped by the time limit before n calls
}

// Latency sends req over one keep-alive connection: warm-up calls for at
// most warmupCalls / warmupMax, then up to n measured calls, stopping early
// after maxDur.
func Latency(ctx context.Context, addr string, req []byte, warmupCalls int, warmupMax time.Duration, n int, maxDur, timeout time.Duration) LatencyResult {
	c := NewConn(addr, req, timeout)
	defer c.Close()
	var res LatencyResult
	wEnd := time.Now().Add(warmupMax)
	for i := 0; i < warmupCalls && ctx.Err() == nil && time.Now().Before(wEnd); i++ {
		if ok, _, err := c.Do(wEnd); !ok && err != nil {
			sleepCtx(ctx, 10*time.Millisecond)
		}
	}
	res.Samples = make([]time.Duration, 0, n)
	end := time.Now().Add(maxDur)
	for i := 0; i < n && ctx.Err() == nil; i++ {
		t0 := time.Now()
		if !t0.Before(end) {
			res.Limited = true
			break
		}
		ok, status, err := c.Do(end)
		d := time.Since(t0)
		if ok {
			res.Samples = append(res.Samples, d)
			continue
		}
		if err != nil && !time.Now().Before(end) {
			res.Limited = true // cut by the time limit, not a server error
			break
		}
		res.Errors++
		if res.FirstError == "" {
			res.FirstError = describe(status, err, c.Body())
		}
		if err != nil {
			sleepCtx(ctx, 10*time.Millisecond)
		}
	}
	return res
}

// Percentile is the p-th percentile (0..100) of samples by the nearest-rank
// method; 0 for no samples. samples is not modified.
func Percentile(samples []time.Duration, p float64) time.Duration {
	if len(samples) == 0 {
		return 0
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	rank := int(p/100*float64(len(s))+0.9999999) - 1
	rank = max(0, min(rank, len(s)-1))
	return s[rank]
}

// Mean of samples; 0 for none.
func Mean(samples []time.Duration) time.Duration {
	if len(samples) == 0 {
		return 0
	}
	var sum time.Duration
	for _, d := range samples {
		sum += d
	}
	return sum / time.Duration(len(samples))
}

func describe(status int, err error, body []byte) string {
	if err != nil {
		return err.Error()
	}
	const max = 300
	if len(body) > max {
		body = body[:max]
	}
	return fmt.Sprintf("HTTP %d: %s", status, body)
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
