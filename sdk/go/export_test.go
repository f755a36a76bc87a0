package runagent

import (
	"context"
	"time"
)

// SetClock replaces the time source of cfg's retry loop, so that tests can
// check backoff delays without sleeping.
func SetClock(cfg *Config, now func() time.Time, sleep func(context.Context, time.Duration) error) {
	cfg.clk = &clock{now: now, sleep: sleep}
}

// ParseRunResponse parses a POST /run response the way Run does.
func ParseRunResponse(status int, body []byte) (any, error) {
	data, e := parseEnvelope(status, nil, body)
	if e != nil {
		return nil, e
	}
	v, e := decodeData(data)
	return v, errOrNil(e)
}

// ParseFrame parses a WebSocket frame the way Stream does and returns its
// type and, for an error frame, its error.
func ParseFrame(b []byte) (string, error) {
	fr, e := parseFrame(b)
	if e != nil {
		return "", e
	}
	if fr.Type == "error" {
		return fr.Type, frameError(&fr)
	}
	if fr.Type == "data" {
		if _, e := decodeData(fr.Content); e != nil {
			return fr.Type, e
		}
	}
	return fr.Type, nil
}

// Backoff returns the wait drawn before retry n (n >= 1) under p.
func Backoff(p RetryPolicy, n int) time.Duration {
	r := retrier{p: p.normalized(), attempts: n}
	return r.backoff()
}

// MaxBackoff returns p's effective MaxBackoff.
func MaxBackoff(p RetryPolicy) time.Duration { return p.normalized().MaxBackoff }

// ParseRetryAfter parses a Retry-After value.
func ParseRetryAfter(v string, now time.Time) time.Duration { return parseRetryAfter(v, now) }
