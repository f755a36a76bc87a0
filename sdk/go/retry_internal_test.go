package runagent

import (
	"math"
	"testing"
	"time"
)

// TestBackoffExtremes checks that extreme policies neither panic nor
// overflow.
func TestBackoffExtremes(t *testing.T) {
	for _, p := range []RetryPolicy{
		{MaxAttempts: 100, InitialBackoff: time.Duration(math.MaxInt64 / 3), MaxBackoff: time.Duration(math.MaxInt64)},
		{MaxAttempts: 100, InitialBackoff: 1, MaxBackoff: time.Duration(math.MaxInt64)},
		{MaxAttempts: 100, InitialBackoff: time.Hour, MaxBackoff: time.Nanosecond},
	} {
		r := retrier{p: p.normalized()}
		for r.attempts = 1; r.attempts < 100; r.attempts++ {
			if d := r.backoff(); d < 0 || d > r.p.MaxBackoff {
				t.Fatalf("policy %+v attempt %d: backoff %v", p, r.attempts, d)
			}
		}
	}
	if d := parseRetryAfter("1e300", time.Now()); d <= 0 || d > 366*24*time.Hour {
		t.Fatalf("huge Retry-After = %v", d)
	}
	for _, v := range []string{"", "-1", "NaN", "soon", "Inf"} {
		if d := parseRetryAfter(v, time.Now()); d < 0 || d > 366*24*time.Hour {
			t.Fatalf("Retry-After %q = %v", v, d)
		}
	}
}
