// Package webhook delivers a run's outcome to the URL the run names:
// signed (HMAC-SHA256 over the timestamp and the body), retried with
// exponential backoff and jitter on network errors, 5xx and 429, every
// attempt recorded, and never to an address the operator has not allowed
// (loopback, private, link-local, metadata and the like are refused by
// default; the check is made on every connection, after DNS resolution,
// so it holds across redirects and a name that changes its address).
package webhook

import (
	"bytes"
	"cmp"
	"context"
	"crypto/hmac"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

// The headers of a delivery.
const (
	HeaderID        = "RunAgent-Webhook-Id"      // the run's id
	HeaderAttempt   = "RunAgent-Webhook-Attempt" // 1, 2, ...
	HeaderTimestamp = "RunAgent-Timestamp"       // unix seconds, part of what is signed
	HeaderSignature = "RunAgent-Signature"       // "v1=" + hex HMAC-SHA256(secret, timestamp + "." + body)
)

// Sign is the signature header's value for a body sent at ts.
func Sign(secret string, ts int64, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(strconv.FormatInt(ts, 10)))
	m.Write([]byte{'.'})
	m.Write(body)
	return "v1=" + hex.EncodeToString(m.Sum(nil))
}

// NewSecret returns a fresh secret.
func NewSecret() string {
	b := make([]byte, 32)
	crand.Read(b) // never fails (it crashes the program where it could)
	return "whsec_" + hex.EncodeToString(b)
}

// Guard decides which addresses a webhook may reach.
type Guard struct {
	// Allow are the networks let through although they are refused by
	// default (the operator's --webhook-allow).
	Allow []netip.Prefix
}

// refused are the networks no webhook reaches unless allowed: besides
// loopback, private, link-local (the cloud metadata address
// 169.254.169.254 among them), multicast and unspecified addresses.
var refused = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"), // carrier-grade NAT
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("240.0.0.0/4"),
	netip.MustParsePrefix("64:ff9b::/96"),   // NAT64 of any of the above
	netip.MustParsePrefix("64:ff9b:1::/48"), // local-use NAT64
	netip.MustParsePrefix("::/96"),          // IPv4-compatible (deprecated)
	netip.MustParsePrefix("2002::/16"),      // 6to4: an IPv4 address inside
}

// Allowed says whether a webhook may connect to ip.
func (g Guard) Allowed(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range g.Allow {
		if p.Contains(ip) {
			return true
		}
	}
	if ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsInterfaceLocalMulticast() || ip.IsMulticast() || ip.IsUnspecified() {
		return false
	}
	for _, p := range refused {
		if p.Contains(ip) {
			return false
		}
	}
	return true
}

// CheckURL checks a webhook URL when a run names it: http or https, a
// host, and every address the host has now allowed. Field names the
// request field in the error.
func (g Guard) CheckURL(ctx context.Context, raw string) error {
	bad := func(format string, a ...any) error {
		return &domain.Error{Code: domain.CodeValidation, Field: "webhook", Message: fmt.Sprintf(format, a...)}
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return bad("expected an http:// or https:// URL, got %q", raw)
	}
	if len(raw) > 2048 {
		return bad("at most 2048 characters, got %d", len(raw))
	}
	host := u.Hostname()
	var addrs []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{ip}
	} else {
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		addrs, err = net.DefaultResolver.LookupNetIP(rctx, "ip", host)
		if err != nil || len(addrs) == 0 {
			return bad("%s does not resolve (%v): give a host this server can reach", host, err)
		}
	}
	for _, ip := range addrs {
		if !g.Allowed(ip) {
			return bad("%s is %s, a loopback, private, link-local or reserved address: webhooks may not reach it (an operator may allow a network with runagent server --webhook-allow)", host, ip)
		}
	}
	return nil
}

// errRefusedAddress is a connection the guard refused.
var errRefusedAddress = errors.New("refused address")

// Client is an HTTP client for webhooks: every connection it opens is to
// an allowed address, it uses no proxy, and it follows at most 3
// redirects, to http or https only.
func (g Guard) Client(timeout time.Duration) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second, Control: func(network, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil || !g.Allowed(ap.Addr()) {
			return fmt.Errorf("%w: %s: webhooks may not reach loopback, private, link-local or reserved addresses", errRefusedAddress, address)
		}
		return nil
	}}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy: nil, DialContext: d.DialContext, MaxIdleConnsPerHost: 4, IdleConnTimeout: 30 * time.Second,
			TLSHandshakeTimeout: 5 * time.Second, ResponseHeaderTimeout: timeout,
		},
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 3 {
				return errors.New("more than 3 redirects")
			}
			if req.URL.Scheme != "http" && req.URL.Scheme != "https" {
				return fmt.Errorf("a redirect to %s: only http and https", req.URL.Scheme)
			}
			return nil
		},
	}
}

// Store records delivery attempts.
type Store interface {
	RecordWebhookAttempt(ctx context.Context, a domain.WebhookAttempt) error
}

// Deliverer delivers webhooks.
type Deliverer struct {
	Client *http.Client
	Store  Store
	Log    *slog.Logger
	// MaxAttempts bounds the attempts of one delivery (default 8);
	// BaseDelay is the wait before the second (default 1 s), doubled
	// for each next one up to MaxDelay (default 5 min), each wait a
	// random half to whole of it.
	MaxAttempts         int
	BaseDelay, MaxDelay time.Duration
}

// Deliver POSTs body (a run's record) to target until it is taken (2xx),
// refused for good (another 4xx, a refused address), out of attempts, or
// ctx ends; it records every attempt and returns the last error.
func (d *Deliverer) Deliver(ctx context.Context, runID, target, secret string, body []byte) error {
	return d.deliverFrom(ctx, runID, target, secret, body, 1)
}

// Resume goes on with a delivery that past attempts (first first) left
// unfinished, as a server that stopped during its retries left it; a
// delivery that was taken, refused for good or out of attempts is done.
func (d *Deliverer) Resume(ctx context.Context, runID, target, secret string, body []byte, past []domain.WebhookAttempt) error {
	most := cmp.Or(d.MaxAttempts, 8)
	if len(past) >= most {
		return nil
	}
	if n := len(past); n > 0 && Finished(past[n-1]) {
		return nil
	}
	return d.deliverFrom(ctx, runID, target, secret, body, len(past)+1)
}

// Finished says whether an attempt ended its delivery: taken (2xx), or
// refused for good (a 4xx but 429, an address the guard refuses).
func Finished(a domain.WebhookAttempt) bool {
	switch {
	case a.StatusCode >= 200 && a.StatusCode < 300:
		return true
	case a.StatusCode > 0:
		return a.StatusCode < 500 && a.StatusCode != http.StatusTooManyRequests
	}
	return strings.Contains(a.Error, errRefusedAddress.Error())
}

// deliverFrom makes attempts first... of a delivery.
func (d *Deliverer) deliverFrom(ctx context.Context, runID, target, secret string, body []byte, first int) error {
	most := cmp.Or(d.MaxAttempts, 8)
	wait := cmp.Or(d.BaseDelay, time.Second)
	maxDelay := cmp.Or(d.MaxDelay, 5*time.Minute)
	for range first - 1 { // the backoff where the earlier attempts left it
		wait = min(2*wait, maxDelay)
	}
	var last error
	for attempt := first; attempt <= most; attempt++ {
		retryAfter, retry, err := d.attempt(ctx, runID, target, secret, body, attempt)
		if err == nil {
			return nil
		}
		last = err
		if !retry || attempt == most {
			break
		}
		pause := wait/2 + rand.N(wait/2+1)
		if retryAfter > pause {
			pause = min(retryAfter, maxDelay)
		}
		select {
		case <-ctx.Done():
			return last
		case <-time.After(pause):
		}
		wait = min(2*wait, maxDelay)
	}
	d.Log.Warn("a run's webhook was not delivered", "run_id", runID, "url", target, "error", last)
	return last
}

// attempt makes one delivery attempt and records it.
func (d *Deliverer) attempt(ctx context.Context, runID, target, secret string, body []byte, n int) (retryAfter time.Duration, retry bool, err error) {
	start := time.Now()
	rec := domain.WebhookAttempt{RunID: runID, Attempt: n, At: start.UTC().Truncate(time.Microsecond), URL: target}
	defer func() {
		rec.DurationMS = float64(time.Since(start).Microseconds()) / 1000
		if err != nil {
			rec.Error = err.Error()
		}
		if rerr := d.Store.RecordWebhookAttempt(context.WithoutCancel(ctx), rec); rerr != nil {
			d.Log.Warn("record a webhook attempt", "run_id", runID, "attempt", n, "error", rerr)
		}
	}()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return 0, false, err
	}
	ts := start.Unix()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "RunAgent-Webhook/1")
	req.Header.Set(HeaderID, runID)
	req.Header.Set(HeaderAttempt, strconv.Itoa(n))
	req.Header.Set(HeaderTimestamp, strconv.FormatInt(ts, 10))
	req.Header.Set(HeaderSignature, Sign(secret, ts, body))
	resp, err := d.Client.Do(req)
	if err != nil {
		return 0, !errors.Is(err, errRefusedAddress), err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	rec.StatusCode = resp.StatusCode
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return 0, false, nil
	}
	err = fmt.Errorf("the receiver answered %s", resp.Status)
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500 {
		if s, perr := strconv.Atoi(resp.Header.Get("Retry-After")); perr == nil && s > 0 {
			retryAfter = time.Duration(s) * time.Second
		}
		return retryAfter, true, err
	}
	return 0, false, err
}
