package runagent

import (
	"context"
	"math"
	"math/rand/v2"
	"time"
)

// Default retry policy, used for the zero fields of RetryPolicy.
const (
	DefaultMaxAttempts    = 4
	DefaultInitialBackoff = 200 * time.Millisecond
	DefaultMaxBackoff     = 5 * time.Second
	DefaultMaxElapsed     = 30 * time.Second
)

// RetryPolicy bounds the retries of a call. Only these failures are retried:
//   - a connection failure before any response arrived (refused, reset,
//     unreachable, a keep-alive connection the server had closed);
//   - HTTP 429 (RATE_LIMIT_EXCEEDED) and 503 (OVERLOADED), also on the
//     WebSocket handshake and as a stream error frame with that code.
//
// A stream is retried only while no data frame has arrived; never after.
//
// The wait before retry n (n = 1, 2, ...) is drawn uniformly from
// [0, min(MaxBackoff, InitialBackoff·2^(n-1))] ("full jitter"), and is at
// least the server's Retry-After (delay-seconds or HTTP date). No retry is
// made when that wait would end after MaxElapsed from the call's start or
// after the context's deadline; the last error is returned instead (with its
// RetryAfter). Waiting ends early when the context is done.
//
// The zero value means the defaults (4 attempts, 200ms, 5s, 30s); NoRetry
// disables retries.
type RetryPolicy struct {
	// MaxAttempts is the number of attempts, the first one included.
	// 0 means DefaultMaxAttempts; 1 or less than 0 means no retry.
	MaxAttempts int
	// InitialBackoff is the cap of the first wait. 0 means the default.
	InitialBackoff time.Duration
	// MaxBackoff caps every wait except a server's Retry-After. 0 means the default.
	MaxBackoff time.Duration
	// MaxElapsed bounds the time from the first attempt to the start of the
	// last one. 0 means the default; less than 0 means no bound.
	MaxElapsed time.Duration
}

// NoRetry is a RetryPolicy making exactly one attempt.
var NoRetry = RetryPolicy{MaxAttempts: 1}

// normalized returns p with the defaults applied.
func (p RetryPolicy) normalized() RetryPolicy {
	switch {
	case p.MaxAttempts == 0:
		p.MaxAttempts = DefaultMaxAttempts
	case p.MaxAttempts < 0:
		p.MaxAttempts = 1
	}
	if p.InitialBackoff <= 0 {
		p.InitialBackoff = DefaultInitialBackoff
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = DefaultMaxBackoff
	}
	if p.MaxBackoff < p.InitialBackoff {
		p.MaxBackoff = p.InitialBackoff
	}
	if p.MaxElapsed == 0 {
		p.MaxElapsed = DefaultMaxElapsed
	}
	return p
}

// clock is the time source of the retry loop; tests replace it.
type clock struct {
	now   func() time.Time
	sleep func(ctx context.Context, d time.Duration) error
}

func (p *clock) withDefaults() clock {
	var c clock
	if p != nil {
		c = *p
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.sleep == nil {
		c.sleep = sleepCtx
	}
	return c
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// retrier tracks the attempts of one call.
type retrier struct {
	p        RetryPolicy
	clk      clock
	start    time.Time
	attempts int
}

func newRetrier(p RetryPolicy, clk clock) retrier {
	return retrier{p: p, clk: clk, start: clk.now()}
}

// wait is called after a failed attempt. It returns nil after waiting when
// the call may be retried, else the error to return: e itself, or the
// context's error when the context ended the wait.
func (r *retrier) wait(ctx context.Context, e *Error) *Error {
	r.attempts++
	if !e.retryable || r.attempts >= r.p.MaxAttempts {
		return e
	}
	d := r.backoff()
	if e.RetryAfter > d {
		d = e.RetryAfter
	}
	end := r.clk.now().Add(d)
	if r.p.MaxElapsed > 0 && end.Sub(r.start) > r.p.MaxElapsed {
		return e
	}
	if dl, ok := ctx.Deadline(); ok && end.After(dl) {
		return e
	}
	if err := r.clk.sleep(ctx, d); err != nil {
		return ctxError(ctx)
	}
	return nil
}

// backoff draws the wait after r.attempts attempts, with full jitter.
func (r *retrier) backoff() time.Duration {
	c := r.p.InitialBackoff
	for i := 1; i < r.attempts && c < r.p.MaxBackoff; i++ {
		if c > r.p.MaxBackoff/2 {
			c = r.p.MaxBackoff
			break
		}
		c *= 2
	}
	if c > r.p.MaxBackoff {
		c = r.p.MaxBackoff
	}
	if c <= 0 {
		return 0
	}
	n := int64(c)
	if n < math.MaxInt64 {
		n++
	}
	return time.Duration(rand.Int64N(n))
}
