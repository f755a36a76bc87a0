package webhook

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

func TestAllowed(t *testing.T) {
	loopback := Guard{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
	tests := []struct {
		ip    string
		g     Guard
		allow bool
	}{
		{"8.8.8.8", Guard{}, true},
		{"2001:4860:4860::8888", Guard{}, true},
		{"127.0.0.1", Guard{}, false},
		{"::1", Guard{}, false},
		{"::ffff:127.0.0.1", Guard{}, false},
		{"10.1.2.3", Guard{}, false},
		{"172.16.0.1", Guard{}, false},
		{"192.168.1.1", Guard{}, false},
		{"169.254.169.254", Guard{}, false}, // cloud metadata
		{"fd00:ec2::254", Guard{}, false},   // AWS metadata over IPv6
		{"fe80::1", Guard{}, false},
		{"100.64.0.1", Guard{}, false},
		{"0.0.0.0", Guard{}, false},
		{"224.0.0.1", Guard{}, false},
		{"64:ff9b::7f00:1", Guard{}, false},
		{"::7f00:1", Guard{}, false},
		{"2002:7f00:1::1", Guard{}, false},
		{"127.0.0.1", loopback, true},
		{"169.254.169.254", loopback, false},
	}
	for _, tt := range tests {
		if got := tt.g.Allowed(netip.MustParseAddr(tt.ip)); got != tt.allow {
			t.Errorf("Allowed(%s) with %v = %v, want %v", tt.ip, tt.g.Allow, got, tt.allow)
		}
	}
}

func TestCheckURL(t *testing.T) {
	tests := []struct {
		url, wantErr string
	}{
		{"https://8.8.8.8/hook", ""},
		{"http://[2001:4860:4860::8888]:8080/h", ""},
		{"ftp://8.8.8.8/x", "http:// or https://"},
		{"https:///nohost", "http:// or https://"},
		{"not a url", "http:// or https://"},
		{"http://127.0.0.1:9/hook", "127.0.0.1 is 127.0.0.1, a loopback"},
		{"http://[::1]/hook", "loopback, private"},
		{"http://169.254.169.254/latest/meta-data", "169.254.169.254"},
		{"http://localhost/hook", "loopback, private"},
		{"https://8.8.8.8/" + strings.Repeat("x", 2100), "at most 2048"},
	}
	for _, tt := range tests {
		err := Guard{}.CheckURL(context.Background(), tt.url)
		if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("CheckURL(%.60s) = %v, want %q", tt.url, err, tt.wantErr)
		}
		if err != nil && domain.CodeOf(err) != domain.CodeValidation {
			t.Errorf("CheckURL(%.60s): code %s, want VALIDATION_ERROR", tt.url, domain.CodeOf(err))
		}
	}
}

// The signature is the one a receiver computes with its language's HMAC
// (this one by Python's hmac module).
func TestSign(t *testing.T) {
	got := Sign("whsec_test", 1700000000, []byte(`{"run_id":"r1"}`))
	if want := "v1=2f968c749c27df9501758a9f038da504a81a51cfcab8bc95bdc210cdf4c061f2"; got != want {
		t.Fatalf("Sign = %s, want %s", got, want)
	}
}

type memAttempts struct {
	mu sync.Mutex
	a  []domain.WebhookAttempt
}

func (m *memAttempts) RecordWebhookAttempt(_ context.Context, a domain.WebhookAttempt) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.a = append(m.a, a)
	return nil
}

// A receiver that fails, refuses or redirects: what is retried, what is
// not, and that every attempt is recorded and signed.
func TestDeliver(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]int{}
	var lastSig, lastTS, lastBody string
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.URL.Path]++
		n := seen[r.URL.Path]
		b, _ := io.ReadAll(r.Body)
		lastSig, lastTS, lastBody = r.Header.Get(HeaderSignature), r.Header.Get(HeaderTimestamp), string(b)
		mu.Unlock()
		switch {
		case r.URL.Path == "/flaky" && n <= 2:
			w.WriteHeader(http.StatusServiceUnavailable)
		case r.URL.Path == "/busy" && n == 1:
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
		case r.URL.Path == "/bad":
			w.WriteHeader(http.StatusBadRequest)
		case r.URL.Path == "/redirect":
			http.Redirect(w, r, "http://169.254.169.254/latest/meta-data", http.StatusFound)
		default:
			w.WriteHeader(http.StatusNoContent)
		}
	}))
	defer recv.Close()
	allowLoopback := Guard{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}}
	tests := []struct {
		name     string
		guard    Guard
		path     string
		attempts int
		codes    []int
		ok       bool
	}{
		{"taken at once", allowLoopback, "/ok", 1, []int{204}, true},
		{"fails twice, then taken", allowLoopback, "/flaky", 3, []int{503, 503, 204}, true},
		{"429 with Retry-After", allowLoopback, "/busy", 2, []int{429, 204}, true},
		{"a 400 is not retried", allowLoopback, "/bad", 1, []int{400}, false},
		{"a redirect to the metadata address is refused", allowLoopback, "/redirect", 1, []int{0}, false},
		{"loopback refused by default", Guard{}, "/ok", 1, []int{0}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := &memAttempts{}
			d := &Deliverer{Client: tt.guard.Client(5 * time.Second), Store: store, Log: slog.New(slog.DiscardHandler),
				MaxAttempts: 4, BaseDelay: 10 * time.Millisecond}
			body := []byte(`{"run_id":"r1","status":"completed"}`)
			err := d.Deliver(context.Background(), "r1", recv.URL+tt.path, "whsec_test", body)
			if (err == nil) != tt.ok {
				t.Fatalf("Deliver = %v, want ok %v", err, tt.ok)
			}
			if len(store.a) != tt.attempts {
				t.Fatalf("%d attempts recorded, want %d: %+v", len(store.a), tt.attempts, store.a)
			}
			for i, a := range store.a {
				if a.Attempt != i+1 || a.StatusCode != tt.codes[i] || a.RunID != "r1" || (a.Error == "") != (a.StatusCode/100 == 2) {
					t.Errorf("attempt %d: %+v, want status %d", i+1, a, tt.codes[i])
				}
			}
			if tt.ok {
				mu.Lock()
				ts, _ := strconv.ParseInt(lastTS, 10, 64)
				if lastBody != string(body) || lastSig != Sign("whsec_test", ts, body) {
					t.Errorf("the delivery's signature %q does not verify over %q at %s", lastSig, lastBody, lastTS)
				}
				mu.Unlock()
			}
		})
	}
}

// A delivery resumed after a restart goes on from its last attempt, or
// not at all when that attempt ended it.
func TestResume(t *testing.T) {
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	defer recv.Close()
	guard := Guard{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
	refused := "Post \"http://10.0.0.1/\": dial: " + errRefusedAddress.Error() + " 10.0.0.1"
	tests := []struct {
		name string
		past []domain.WebhookAttempt
		next int // the attempt made, 0: none
	}{
		{"nothing tried yet", nil, 1},
		{"after a 503", []domain.WebhookAttempt{{Attempt: 1, StatusCode: 503}}, 2},
		{"after a network error", []domain.WebhookAttempt{{Attempt: 1, Error: "connection refused"}, {Attempt: 2, StatusCode: 429}}, 3},
		{"taken", []domain.WebhookAttempt{{Attempt: 1, StatusCode: 200}}, 0},
		{"refused for good", []domain.WebhookAttempt{{Attempt: 1, StatusCode: 404}}, 0},
		{"a refused address", []domain.WebhookAttempt{{Attempt: 1, Error: refused}}, 0},
		{"out of attempts", []domain.WebhookAttempt{{Attempt: 1, StatusCode: 503}, {Attempt: 2, StatusCode: 503}, {Attempt: 3, StatusCode: 503}}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := &memAttempts{}
			d := &Deliverer{Client: guard.Client(5 * time.Second), Store: store, Log: slog.New(slog.DiscardHandler), MaxAttempts: 3, BaseDelay: time.Millisecond}
			if err := d.Resume(context.Background(), "r1", recv.URL, "whsec_test", []byte(`{}`), tt.past); err != nil {
				t.Fatal(err)
			}
			switch {
			case tt.next == 0 && len(store.a) != 0:
				t.Fatalf("attempts made: %+v, want none", store.a)
			case tt.next > 0 && (len(store.a) != 1 || store.a[0].Attempt != tt.next || store.a[0].StatusCode != 204):
				t.Fatalf("attempts made: %+v, want attempt %d taken", store.a, tt.next)
			}
		})
	}
}
