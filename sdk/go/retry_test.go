package runagent_test

import (
	"math"
	"net/http"
	"testing"
	"time"

	runagent "github.com/runagent-go/runagent/sdk/go"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 6, 25, 13, 42, 3, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0}, {"0", 0}, {"-1", 0}, {"soon", 0}, {"NaN", 0},
		{"1", time.Second}, {" 120 ", 2 * time.Minute}, {"1.5", 1500 * time.Millisecond},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},
		{"1e300", 365 * 24 * time.Hour}, {"Inf", 365 * 24 * time.Hour},
	}
	for _, tt := range tests {
		if got := runagent.ParseRetryAfter(tt.in, now); got != tt.want {
			t.Errorf("ParseRetryAfter(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

// TestBackoffBounds checks full jitter within the exponential cap, and that
// extreme policies neither panic nor overflow.
func TestBackoffBounds(t *testing.T) {
	for _, p := range []runagent.RetryPolicy{
		{},
		{InitialBackoff: 10 * time.Millisecond, MaxBackoff: time.Second},
		{InitialBackoff: time.Duration(math.MaxInt64 / 3), MaxBackoff: time.Duration(math.MaxInt64)},
		{InitialBackoff: 1, MaxBackoff: time.Duration(math.MaxInt64)},
		{InitialBackoff: time.Hour, MaxBackoff: time.Nanosecond},
	} {
		maxB := runagent.MaxBackoff(p)
		for n := 1; n < 100; n++ {
			if d := runagent.Backoff(p, n); d < 0 || d > maxB {
				t.Fatalf("policy %+v retry %d: backoff %v outside [0, %v]", p, n, d, maxB)
			}
		}
	}
	// The default cap doubles from 200ms: retry 3 waits at most 800ms.
	for range 200 {
		if d := runagent.Backoff(runagent.RetryPolicy{}, 3); d > 800*time.Millisecond {
			t.Fatalf("default retry 3 waited %v", d)
		}
	}
}
