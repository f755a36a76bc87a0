package ratelimit

import (
	"fmt"
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// clock is a fake time source; tests move it forward instead of sleeping.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

const ms = time.Millisecond

func TestBurstThenRefusal(t *testing.T) {
	c := newClock()
	l := New(c.now)
	p := Policy{RatePerSecond: 10, Burst: 20}
	for i := range 20 {
		d, release := l.Acquire("k", p)
		want := Decision{Allowed: true, Limit: 20, Remaining: 19 - i, Reset: time.Duration(i+1) * 100 * ms}
		if d != want {
			t.Fatalf("request %d: %+v, want %+v", i+1, d, want)
		}
		release()
	}
	d, _ := l.Acquire("k", p)
	want := Decision{
		Limit: 20, Remaining: 0, Reset: 2 * time.Second, RetryAfter: 100 * ms, Reason: ReasonRate,
		Message: "rate limit of 10 requests/s (burst 20) exceeded for this API key; retry in 1s",
	}
	if d != want {
		t.Fatalf("request 21: %+v, want %+v", d, want)
	}
	// A refusal takes nothing: the wait does not grow.
	if d, _ := l.Acquire("k", p); d.RetryAfter != 100*ms {
		t.Errorf("second refusal RetryAfter %v, want 100ms", d.RetryAfter)
	}
}

func TestRefill(t *testing.T) {
	p := Policy{RatePerSecond: 2, Burst: 4} // a token every 500ms
	tests := []struct {
		wait        time.Duration
		wantAllowed int
	}{
		{0, 0},
		{499 * ms, 0},
		{500 * ms, 1},
		{1250 * ms, 2},
		{2 * time.Second, 4},
		{time.Hour, 4}, // never more than the burst
	}
	for _, tt := range tests {
		t.Run(tt.wait.String(), func(t *testing.T) {
			c := newClock()
			l := New(c.now)
			for range 4 {
				l.Acquire("k", p)
			}
			c.advance(tt.wait)
			allowed := 0
			for {
				d, _ := l.Acquire("k", p)
				if !d.Allowed {
					break
				}
				allowed++
			}
			if allowed != tt.wantAllowed {
				t.Errorf("after %v: %d allowed, want %d", tt.wait, allowed, tt.wantAllowed)
			}
		})
	}
}

func TestDecisionValues(t *testing.T) {
	c := newClock()
	l := New(c.now)
	p := Policy{RatePerSecond: 0.5, Burst: 2} // a token every 2s
	steps := []struct {
		advance time.Duration
		want    Decision
	}{
		{0, Decision{Allowed: true, Limit: 2, Remaining: 1, Reset: 2 * time.Second}},
		{0, Decision{Allowed: true, Limit: 2, Remaining: 0, Reset: 4 * time.Second}},
		{500 * ms, Decision{Limit: 2, Remaining: 0, Reset: 3500 * ms, RetryAfter: 1500 * ms, Reason: ReasonRate,
			Message: "rate limit of 0.5 requests/s (burst 2) exceeded for this API key; retry in 2s"}},
		{1500 * ms, Decision{Allowed: true, Limit: 2, Remaining: 0, Reset: 4 * time.Second}},
		{3 * time.Second, Decision{Allowed: true, Limit: 2, Remaining: 0, Reset: 3 * time.Second}},
		{10 * time.Second, Decision{Allowed: true, Limit: 2, Remaining: 1, Reset: 2 * time.Second}},
	}
	for i, s := range steps {
		c.advance(s.advance)
		if d, _ := l.Acquire("k", p); d != s.want {
			t.Errorf("step %d: %+v\n want %+v", i, d, s.want)
		}
	}
}

func TestDefaultBurst(t *testing.T) {
	for _, tt := range []struct {
		rate float64
		want int
	}{{2.5, 3}, {0.1, 1}, {10, 10}} {
		l := New(newClock().now)
		if d, _ := l.Acquire("k", Policy{RatePerSecond: tt.rate}); d.Limit != tt.want {
			t.Errorf("rate %v without burst: Limit %d, want %d", tt.rate, d.Limit, tt.want)
		}
	}
}

func TestConcurrencyCeiling(t *testing.T) {
	l := New(newClock().now)
	p := Policy{MaxConcurrency: 2}
	d1, r1 := l.Acquire("k", p)
	d2, r2 := l.Acquire("k", p)
	if !d1.Allowed || !d2.Allowed {
		t.Fatal("first two refused")
	}
	d3, r3 := l.Acquire("k", p)
	want := Decision{RetryAfter: time.Second, Reason: ReasonConcurrency,
		Message: "concurrency limit of 2 calls in flight reached for this API key; retry in 1s"}
	if d3 != want {
		t.Fatalf("third: %+v, want %+v", d3, want)
	}
	r3() // a refusal's release does nothing
	if d, _ := l.Acquire("k", p); d.Allowed {
		t.Fatal("refused release freed a slot")
	}
	if d, _ := l.Acquire("other", p); !d.Allowed {
		t.Fatal("keys share a ceiling")
	}

	r1()
	r1() // twice: must free one slot only
	d4, r4 := l.Acquire("k", p)
	if !d4.Allowed {
		t.Fatal("no slot after release")
	}
	if d, _ := l.Acquire("k", p); d.Allowed {
		t.Fatal("double release freed two slots")
	}
	r2()
	r4()
	// A lower ceiling applies at once.
	_, ra := l.Acquire("k", Policy{MaxConcurrency: 1})
	if d, _ := l.Acquire("k", Policy{MaxConcurrency: 1}); d.Allowed {
		t.Fatal("lowered ceiling not applied")
	}
	ra()
}

func TestRefusalsConsumeNothing(t *testing.T) {
	c := newClock()
	l := New(c.now)
	p := Policy{RatePerSecond: 1, Burst: 2, MaxConcurrency: 1}

	d, release := l.Acquire("k", p)
	if !d.Allowed || d.Remaining != 1 {
		t.Fatalf("first: %+v", d)
	}
	// Refused for concurrency: the token stays, and the headers still describe the bucket.
	d, _ = l.Acquire("k", p)
	if d.Allowed || d.Reason != ReasonConcurrency || d.Limit != 2 || d.Remaining != 1 || d.Reset != time.Second {
		t.Fatalf("concurrency refusal: %+v", d)
	}
	release()
	d, release = l.Acquire("k", p)
	if !d.Allowed || d.Remaining != 0 {
		t.Fatalf("after release: %+v", d)
	}
	release()
	// Refused for rate: no slot is held, so after a refill one call gets through.
	if d, _ := l.Acquire("k", p); d.Reason != ReasonRate {
		t.Fatalf("want a rate refusal: %+v", d)
	}
	c.advance(time.Second)
	if d, _ := l.Acquire("k", p); !d.Allowed {
		t.Fatalf("rate refusal held a slot: %+v", d)
	}
}

func TestUnlimited(t *testing.T) {
	tests := []struct {
		name string
		p    Policy
		keys int // entries the limiter should keep
	}{
		{"zero policy", Policy{}, 0},
		{"negative", Policy{RatePerSecond: -1, Burst: -1, MaxConcurrency: -1}, 0},
		{"infinite rate", Policy{RatePerSecond: math.Inf(1), Burst: 5}, 0},
		{"NaN rate", Policy{RatePerSecond: math.NaN()}, 0},
		{"burst without rate", Policy{Burst: 3}, 0},
		{"rate unlimited, concurrency limited", Policy{MaxConcurrency: 1000}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := New(newClock().now)
			for range 1000 {
				d, _ := l.Acquire("k", tt.p) // never released: no ceiling to hit
				if !d.Allowed || d.Limit != 0 {
					t.Fatalf("%+v", d)
				}
			}
			if l.Len() != tt.keys {
				t.Errorf("Len %d, want %d", l.Len(), tt.keys)
			}
			h := http.Header{}
			d, _ := l.Acquire("k2", tt.p)
			SetHeaders(h, d)
			if len(h) != 0 {
				t.Errorf("headers for an unlimited key: %v", h)
			}
		})
	}
}

func TestPolicyChange(t *testing.T) {
	c := newClock()
	l := New(c.now)
	slow := Policy{RatePerSecond: 1, Burst: 5}
	for range 3 {
		l.Acquire("k", slow) // 2 tokens left
	}
	steps := []struct {
		name          string
		p             Policy
		wantLimit     int
		wantRemaining int
	}{
		{"bigger burst keeps the tokens", Policy{RatePerSecond: 1, Burst: 10}, 10, 1},
		{"smaller burst caps them", Policy{RatePerSecond: 1, Burst: 1}, 1, 0},
	}
	for _, s := range steps {
		d, _ := l.Acquire("k", s.p)
		if !d.Allowed || d.Limit != s.wantLimit || d.Remaining != s.wantRemaining {
			t.Errorf("%s: %+v", s.name, d)
		}
	}
	// The bucket is empty; a faster rate keeps that but refills at the new
	// rate: one token in 10ms at 100/s instead of 1s.
	if d, _ := l.Acquire("k", Policy{RatePerSecond: 100, Burst: 1}); d.Allowed || d.RetryAfter != 10*ms {
		t.Errorf("faster rate on an empty bucket: %+v", d)
	}
	c.advance(10 * ms)
	if d, _ := l.Acquire("k", Policy{RatePerSecond: 100, Burst: 1}); !d.Allowed {
		t.Errorf("new rate not applied: %+v", d)
	}
	// From a rate limit to none: only the ceiling is left.
	if d, _ := l.Acquire("k", Policy{MaxConcurrency: 100}); !d.Allowed || d.Limit != 0 { // earlier calls were never released
		t.Errorf("rate limit removed: %+v", d)
	}
	// From no rate limit to one: the bucket starts full.
	l.Acquire("u", Policy{MaxConcurrency: 5})
	if d, _ := l.Acquire("u", slow); !d.Allowed || d.Remaining != 4 {
		t.Errorf("unlimited then limited: %+v", d)
	}
}

func TestIdleSweep(t *testing.T) {
	c := newClock()
	l := New(c.now)
	fast := Policy{RatePerSecond: 100, Burst: 10}
	for i := range 100 {
		_, release := l.Acquire(fmt.Sprint("idle", i), fast)
		release()
	}
	_, busyRelease := l.Acquire("busy", fast)                                    // in flight across the sweep
	_, release := l.Acquire("slow", Policy{RatePerSecond: 1.0 / 3600, Burst: 1}) // empty bucket for an hour
	release()
	if l.Len() != 102 {
		t.Fatalf("Len %d", l.Len())
	}

	c.advance(9 * time.Minute)
	l.Acquire("recent", fast)
	if l.Len() != 103 {
		t.Fatalf("swept before idleAfter: Len %d", l.Len())
	}
	c.advance(2 * time.Minute)
	l.Acquire("recent", fast) // triggers the sweep
	if got := l.Len(); got != 3 {
		t.Fatalf("after sweep Len %d, want 3 (busy, slow, recent)", got)
	}
	// The slow bucket kept its state: still empty.
	if d, _ := l.Acquire("slow", Policy{RatePerSecond: 1.0 / 3600, Burst: 1}); d.Allowed {
		t.Error("sweep reset a bucket that was not full")
	}
	// A swept key comes back with a full bucket, which it would have had anyway.
	d, release := l.Acquire("idle7", fast)
	if !d.Allowed || d.Remaining != 9 {
		t.Errorf("swept key: %+v", d)
	}
	release()
	busyRelease()
	c.advance(11 * time.Minute)
	l.Acquire("recent", fast)
	if got := l.Len(); got != 2 { // recent (just used) and slow (still refilling)
		t.Errorf("second sweep Len %d, want 2", got)
	}
}

// TestManyGoroutines checks the counts under contention; run it with -race too.
func TestManyGoroutines(t *testing.T) {
	c := newClock()
	l := New(c.now)
	const burst, workers, tries = 100, 50, 10
	p := Policy{RatePerSecond: 1, Burst: burst, MaxConcurrency: 7}

	var allowed, inFlight, peak atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range tries {
				d, release := l.Acquire("k", p)
				if d.Allowed {
					allowed.Add(1)
					n := inFlight.Add(1)
					for {
						old := peak.Load()
						if n <= old || peak.CompareAndSwap(old, n) {
							break
						}
					}
					inFlight.Add(-1)
					release()
					release()
				}
			}
		}()
	}
	wg.Wait()
	if peak.Load() > 7 {
		t.Errorf("%d calls in flight, ceiling 7", peak.Load())
	}
	// The clock stood still and the concurrency ceiling may refuse some, so at
	// most the burst got through; the rest of the bucket is what remains.
	d, _ := l.Acquire("k", Policy{RatePerSecond: 1, Burst: burst})
	used := allowed.Load()
	if used > burst || (used < burst && d.Remaining != int(burst-used-1)) {
		t.Errorf("allowed %d, then Remaining %d", used, d.Remaining)
	}

	// Many keys, a moving clock and sweeps at once.
	var wg2 sync.WaitGroup
	for w := range 8 {
		wg2.Add(1)
		go func() {
			defer wg2.Done()
			for i := range 500 {
				if w == 0 && i%50 == 0 {
					c.advance(3 * time.Minute)
				}
				_, release := l.Acquire(fmt.Sprint("key", i%37), Policy{RatePerSecond: 1000, Burst: 5, MaxConcurrency: 2})
				release()
			}
		}()
	}
	wg2.Wait()
}

func TestSetHeaders(t *testing.T) {
	tests := []struct {
		name string
		d    Decision
		want map[string]string
	}{
		{"allowed", Decision{Allowed: true, Limit: 20, Remaining: 19, Reset: 100 * ms},
			map[string]string{"RateLimit-Limit": "20", "RateLimit-Remaining": "19", "RateLimit-Reset": "1"}},
		{"full bucket", Decision{Allowed: true, Limit: 5, Remaining: 5},
			map[string]string{"RateLimit-Limit": "5", "RateLimit-Remaining": "5", "RateLimit-Reset": "0"}},
		{"reset rounds up", Decision{Allowed: true, Limit: 5, Remaining: 0, Reset: 2*time.Second + 1},
			map[string]string{"RateLimit-Limit": "5", "RateLimit-Remaining": "0", "RateLimit-Reset": "3"}},
		{"exact seconds", Decision{Allowed: true, Limit: 5, Reset: 4 * time.Second},
			map[string]string{"RateLimit-Limit": "5", "RateLimit-Remaining": "0", "RateLimit-Reset": "4"}},
		{"rate refusal", Decision{Limit: 20, Reset: 2 * time.Second, RetryAfter: 100 * ms, Reason: ReasonRate},
			map[string]string{"RateLimit-Limit": "20", "RateLimit-Remaining": "0", "RateLimit-Reset": "2", "Retry-After": "1"}},
		{"long retry rounds up", Decision{Limit: 1, Reset: 7 * time.Second, RetryAfter: 6500 * ms, Reason: ReasonRate},
			map[string]string{"RateLimit-Limit": "1", "RateLimit-Remaining": "0", "RateLimit-Reset": "7", "Retry-After": "7"}},
		{"concurrency refusal, no rate", Decision{RetryAfter: time.Second, Reason: ReasonConcurrency},
			map[string]string{"Retry-After": "1"}},
		{"retry at least 1", Decision{Limit: 1, Reason: ReasonRate},
			map[string]string{"RateLimit-Limit": "1", "RateLimit-Remaining": "0", "RateLimit-Reset": "0", "Retry-After": "1"}},
		{"no limit", Decision{Allowed: true}, map[string]string{}},
	}
	for _, tt := range tests {
		h := http.Header{}
		SetHeaders(h, tt.d)
		if len(h) != len(tt.want) {
			t.Errorf("%s: headers %v, want %v", tt.name, h, tt.want)
			continue
		}
		for k, v := range tt.want {
			if got := h.Get(k); got != v {
				t.Errorf("%s: %s = %q, want %q", tt.name, k, got, v)
			}
		}
	}
}

func BenchmarkAcquire(b *testing.B) {
	l := New(nil)
	p := Policy{RatePerSecond: 1e9, Burst: 1 << 30, MaxConcurrency: 1 << 20}
	b.Run("one key", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, release := l.Acquire("k", p)
			release()
		}
	})
	b.Run("parallel, 64 keys", func(b *testing.B) {
		keys := make([]string, 64)
		for i := range keys {
			keys[i] = fmt.Sprint("key", i)
		}
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				_, release := l.Acquire(keys[i%len(keys)], p)
				release()
				i++
			}
		})
	})
}

// Tokens spent elsewhere (another gateway) come off the bucket: what is
// left is admitted, a debt is paid by waiting, and an unlimited policy or
// nothing spent changes nothing.
func TestSpend(t *testing.T) {
	p := Policy{RatePerSecond: 10, Burst: 20}
	for _, tc := range []struct {
		name      string
		policy    Policy
		spend     int
		wait      time.Duration
		wantAdmit int // Acquire calls allowed in a row after the spend and the wait
	}{
		{"nothing spent", p, 0, 0, 20},
		{"part of the burst", p, 5, 0, 15},
		{"the whole burst", p, 20, 0, 0},
		{"a debt, not yet paid", p, 30, 500 * ms, 0},
		{"a debt, paid and refilled", p, 30, 1500 * ms, 5},
		{"refills after a spend", p, 20, 300 * ms, 3},
		{"no rate limit", Policy{MaxConcurrency: 5}, 100, 0, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClock()
			l := New(c.now)
			l.Spend("k", tc.policy, tc.spend)
			c.advance(tc.wait)
			admitted := 0
			for range 100 {
				d, _ := l.Acquire("k", tc.policy) // never released: concurrency caps the no-rate case
				if !d.Allowed {
					break
				}
				admitted++
			}
			if admitted != tc.wantAdmit {
				t.Errorf("admitted %d after spending %d and waiting %s, want %d", admitted, tc.spend, tc.wait, tc.wantAdmit)
			}
		})
	}
}
