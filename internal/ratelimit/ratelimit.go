// Package ratelimit enforces per-key token buckets and ceilings of calls in
// flight, and writes the RateLimit-* and Retry-After headers that describe
// the decision (docs/platform-api.md, "Rate and concurrency limits").
//
// The bucket is kept as a GCRA "theoretical arrival time" (the instant the
// bucket will be full again) in integer nanoseconds, which gives the Remaining,
// Reset and RetryAfter values exactly, without float drift, and lets a refused
// request leave no trace. golang.org/x/time/rate was not used because it cannot
// check the rate and the concurrency ceiling together and consume neither when
// one of them refuses, nor report the time until the bucket is full.
package ratelimit

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Policy is the limits of one key.
type Policy struct {
	// RatePerSecond is the bucket's refill rate; 0 (or less) means no rate limit.
	RatePerSecond float64
	// Burst is the bucket's size; 0 (or less) with a rate means
	// max(1, ceil(RatePerSecond)), one second's worth.
	Burst int
	// MaxConcurrency is the most calls in flight; 0 (or less) means no ceiling.
	MaxConcurrency int
}

func (p Policy) rateLimited() bool {
	return p.RatePerSecond > 0 && !math.IsInf(p.RatePerSecond, 1) // also false for NaN
}

func (p Policy) burst() int {
	if p.Burst > 0 {
		return p.Burst
	}
	return int(max(1, math.Ceil(p.RatePerSecond)))
}

// Decision is the outcome of Acquire.
type Decision struct {
	Allowed bool
	// Limit is the burst; 0 when the key has no rate limit (and then
	// SetHeaders writes no RateLimit-* headers).
	Limit int
	// Remaining is the whole tokens left after this request.
	Remaining int
	// Reset is the time until the bucket is full again.
	Reset time.Duration
	// RetryAfter, when !Allowed, is the time until a token is available; for
	// the concurrency ceiling, when a slot frees is unknown and it is 1s.
	RetryAfter time.Duration
	// Reason, when !Allowed, is ReasonRate or ReasonConcurrency; Message says
	// the same for a human.
	Reason  string
	Message string
}

// Reasons for a refusal.
const (
	ReasonRate        = "rate"
	ReasonConcurrency = "concurrency"
)

// Idle entries are swept so memory stays bounded by the keys in use.
const (
	sweepEvery = time.Minute
	idleAfter  = 10 * time.Minute
	// concurrencyRetry is the Retry-After for a full concurrency ceiling: when
	// a call will finish is unknown.
	concurrencyRetry = time.Second
	// maxSpan bounds bucket durations so that absurdly low rates cannot overflow.
	maxSpan = time.Duration(math.MaxInt64 / 4)
)

// Limiter holds the state of every key seen recently. It is safe for
// concurrent use.
type Limiter struct {
	now func() time.Time

	mu      sync.RWMutex
	entries map[string]*entry

	nextSweep atomic.Int64 // UnixNano of the next sweep
}

// entry is one key's state, guarded by its own mutex so that keys do not
// contend with each other.
type entry struct {
	mu sync.Mutex

	// The bucket, built for rate and burst.
	rate     float64
	burst    int
	interval time.Duration // time to earn one token
	tau      time.Duration // time to fill the whole bucket: interval * burst
	full     time.Time     // when the bucket is full again; in the past means full now

	inFlight int
	lastUsed time.Time
	dead     bool // removed from the map by a sweep; look the key up again
}

// New returns an empty Limiter reading the time from now, or time.Now when
// now is nil.
func New(now func() time.Time) *Limiter {
	if now == nil {
		now = time.Now
	}
	l := &Limiter{now: now, entries: make(map[string]*entry)}
	l.nextSweep.Store(now().Add(sweepEvery).UnixNano())
	return l
}

func noop() {}

// Acquire takes one token and one concurrency slot for key under p. When
// d.Allowed, release must be called when the request ends; calling it again
// does nothing. When not, nothing was taken and release does nothing.
//
// p is read on every call: a changed MaxConcurrency applies at once, and a
// changed rate or burst rebuilds the bucket keeping the tokens it had (at most
// the new burst).
func (l *Limiter) Acquire(key string, p Policy) (d Decision, release func()) {
	if !p.rateLimited() && p.MaxConcurrency <= 0 {
		return Decision{Allowed: true}, noop
	}
	now := l.now()
	l.maybeSweep(now)
	e := l.lockedEntry(key, now)
	defer e.mu.Unlock()

	e.lastUsed = now
	e.setPolicy(p, now)

	next := e.full
	if p.rateLimited() {
		d.Limit = e.burst
		start := laterOf(e.full, now)
		next = start.Add(e.interval)
		d.Reset = start.Sub(now)
		if wait := next.Sub(now) - e.tau; wait > 0 {
			d.RetryAfter = wait
			d.Reason = ReasonRate
			d.Message = fmt.Sprintf("rate limit of %s requests/s (burst %d) exceeded for this API key; retry in %ds",
				strconv.FormatFloat(p.RatePerSecond, 'f', -1, 64), e.burst, ceilSeconds(wait, 1))
			return d, noop
		}
		d.Remaining = int((e.tau - d.Reset) / e.interval) // whole tokens before taking one
	}
	if p.MaxConcurrency > 0 && e.inFlight >= p.MaxConcurrency {
		d.RetryAfter = concurrencyRetry
		d.Reason = ReasonConcurrency
		d.Message = fmt.Sprintf("concurrency limit of %d calls in flight reached for this API key; retry in %ds",
			p.MaxConcurrency, ceilSeconds(concurrencyRetry, 1))
		return d, noop
	}

	d.Allowed = true
	if p.rateLimited() {
		e.full = next
		d.Reset = next.Sub(now)
		d.Remaining = int((e.tau - d.Reset) / e.interval)
	}
	e.inFlight++
	var done atomic.Bool
	return d, func() {
		if done.Swap(true) {
			return
		}
		e.mu.Lock()
		e.inFlight--
		e.lastUsed = l.now()
		e.mu.Unlock()
	}
}

// Spend takes n tokens from key's bucket under p without asking: tokens
// another gateway admitted for the same key (a cluster shares its limits
// this way). The bucket may go into debt; the key's next requests here wait
// until it is paid. Concurrency is not touched: it stays per server.
func (l *Limiter) Spend(key string, p Policy, n int) {
	if !p.rateLimited() || n <= 0 {
		return
	}
	now := l.now()
	e := l.lockedEntry(key, now)
	defer e.mu.Unlock()
	e.lastUsed = now
	e.setPolicy(p, now)
	debt := min(maxSpan, time.Duration(n)*e.interval)
	e.full = laterOf(e.full, now).Add(debt)
}

// lockedEntry returns key's live entry, creating it if needed, with its mutex held.
func (l *Limiter) lockedEntry(key string, now time.Time) *entry {
	for {
		l.mu.RLock()
		e := l.entries[key]
		l.mu.RUnlock()
		if e == nil {
			l.mu.Lock()
			if e = l.entries[key]; e == nil {
				e = &entry{lastUsed: now}
				l.entries[key] = e
			}
			l.mu.Unlock()
		}
		e.mu.Lock()
		if !e.dead {
			return e
		}
		e.mu.Unlock() // swept between the lookup and the lock
	}
}

// setPolicy rebuilds the bucket when the rate or burst differ from the ones
// it was built for.
func (e *entry) setPolicy(p Policy, now time.Time) {
	rate, burst := 0.0, 0
	if p.rateLimited() {
		rate, burst = p.RatePerSecond, p.burst()
	}
	if rate == e.rate && burst == e.burst {
		return
	}
	tokens := float64(burst) // a bucket that had no rate limit starts full
	if e.rate > 0 && e.full.After(now) {
		tokens = float64(e.tau-e.full.Sub(now)) / float64(e.interval)
	}
	e.rate, e.burst = rate, burst
	e.interval, e.tau, e.full = 0, 0, time.Time{}
	if rate == 0 {
		return
	}
	e.interval = min(maxSpan, max(1, time.Duration(float64(time.Second)/rate)))
	e.tau = min(maxSpan, time.Duration(float64(e.interval)*float64(burst)))
	if tokens = max(0, min(tokens, float64(burst))); tokens < float64(burst) {
		e.full = now.Add(time.Duration((float64(burst) - tokens) * float64(e.interval)))
	}
}

// maybeSweep drops idle entries at most once per sweepEvery, on the calling
// goroutine, so the Limiter needs no goroutine of its own and no Close.
func (l *Limiter) maybeSweep(now time.Time) {
	next := l.nextSweep.Load()
	if now.UnixNano() < next || !l.nextSweep.CompareAndSwap(next, now.Add(sweepEvery).UnixNano()) {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for key, e := range l.entries {
		e.mu.Lock()
		// Only a full bucket with nothing in flight is dropped, so a key that
		// comes back finds exactly the state it left.
		if e.inFlight == 0 && now.Sub(e.lastUsed) >= idleAfter && !e.full.After(now) {
			e.dead = true
			delete(l.entries, key)
		}
		e.mu.Unlock()
	}
}

// Len returns the number of keys with state, for metrics and tests.
func (l *Limiter) Len() int {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return len(l.entries)
}

// SetHeaders writes RateLimit-Limit, RateLimit-Remaining and RateLimit-Reset
// (whole seconds, rounded up) when the key has a rate limit, and Retry-After
// (whole seconds, at least 1) when d refused the request.
func SetHeaders(h http.Header, d Decision) {
	if d.Limit > 0 {
		h.Set("RateLimit-Limit", strconv.Itoa(d.Limit))
		h.Set("RateLimit-Remaining", strconv.Itoa(max(0, d.Remaining)))
		h.Set("RateLimit-Reset", strconv.FormatInt(ceilSeconds(d.Reset, 0), 10))
	}
	if !d.Allowed {
		h.Set("Retry-After", strconv.FormatInt(ceilSeconds(d.RetryAfter, 1), 10))
	}
}

// ceilSeconds is d in whole seconds rounded up, at least least.
func ceilSeconds(d time.Duration, least int64) int64 {
	s := int64(d / time.Second)
	if d%time.Second > 0 {
		s++
	}
	return max(least, s)
}

func laterOf(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
