package runagent_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"net"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	runagent "github.com/runagent-go/runagent/sdk/go"
)

func bigInt(s string) *big.Int {
	b, _ := new(big.Int).SetString(s, 10)
	return b
}

func TestRunDecodesEachStructuredType(t *testing.T) {
	tests := []struct {
		name string
		data string // the envelope's data, a structured string
		want any
	}{
		{"null", structured("null", "null"), nil},
		{"boolean", structured("boolean", "true"), true},
		{"integer", structured("integer", "42"), int64(42)},
		{"negative integer", structured("integer", "-7"), int64(-7)},
		{"big integer", structured("integer", "123456789012345678901234567890"), bigInt("123456789012345678901234567890")},
		{"number", structured("number", "3.5"), 3.5},
		{"integral float", structured("number", "2.0"), 2.0},
		{"exponent", structured("number", "1e+21"), 1e21},
		{"string", structured("string", `"héllo 世界 🎉"`), "héllo 世界 🎉"},
		{"infinity as string", structured("string", `"inf"`), "inf"},
		{"array", structured("array", `[1, "a", null, [true, 2.5]]`), []any{int64(1), "a", nil, []any{true, 2.5}}},
		{"object", structured("object", `{"a": 1, "b": {"c": [1.5, "x"]}, "d": null}`),
			map[string]any{"a": int64(1), "b": map[string]any{"c": []any{1.5, "x"}}, "d": nil}},
		{"serialization error", structured("object", `{"error": "Serialization Error: boom", "original_type": "Foo"}`),
			map[string]any{"error": "Serialization Error: boom", "original_type": "Foo"}},
		{"bare NaN in payload", structured("number", "NaN"), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newRESTServer(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
				writeJSON(w, 200, okEnvelope(tt.data))
			})
			c := newClient(t, srv.URL, "minimal", nil)
			got, err := c.Run(context.Background(), runagent.Input{})
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %#v, want %#v", got, tt.want)
			}
		})
	}
}

func TestRunLenientData(t *testing.T) {
	// data sent as an object instead of a string, and a plain JSON value.
	for _, tt := range []struct {
		body string
		want any
	}{
		{`{"success":true,"data":{"type":"string","payload":"\"x\""}}`, "x"},
		{`{"success":true,"data":[1,2]}`, []any{int64(1), int64(2)}},
		{`{"success":true,"data":null}`, nil},
		{`{"success":true,"data":{"type":"infinity","payload":"Infinity"}}`, math.Inf(1)},
	} {
		got, err := runagent.ParseRunResponse(200, []byte(tt.body))
		if err != nil {
			t.Fatalf("%s: %v", tt.body, err)
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: got %#v, want %#v", tt.body, got, tt.want)
		}
	}
}

func TestRunRequest(t *testing.T) {
	tests := []struct {
		name string
		in   runagent.Input
		want string
	}{
		{"empty", runagent.Input{}, `{"entrypoint_tag":"minimal","input_args":[],"input_kwargs":{},"timeout_seconds":300}`},
		{"args", runagent.Args("hi", 3), `{"entrypoint_tag":"minimal","input_args":["hi",3],"input_kwargs":{},"timeout_seconds":300}`},
		{"kwargs", runagent.Kwargs(map[string]any{"message": "<b>&é", "n": 1.5}), `{"entrypoint_tag":"minimal","input_args":[],"input_kwargs":{"message":"<b>&é","n":1.5},"timeout_seconds":300}`},
		{"mixed", runagent.Args("hi").With("role", "user").WithArgs(true), `{"entrypoint_tag":"minimal","input_args":["hi",true],"input_kwargs":{"role":"user"},"timeout_seconds":300}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body, auth, ctype, path, method string
			srv := newRESTServer(t, func(_ int, w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				body, auth, ctype, path, method = strings.TrimSpace(string(b)), r.Header.Get("Authorization"), r.Header.Get("Content-Type"), r.URL.Path, r.Method
				writeJSON(w, 200, okEnvelope(structured("null", "null")))
			})
			c := newClient(t, srv.URL, "minimal", nil)
			if _, err := c.Run(context.Background(), tt.in); err != nil {
				t.Fatalf("Run: %v", err)
			}
			if body != tt.want {
				t.Errorf("body\n got %s\nwant %s", body, tt.want)
			}
			if method != "POST" || path != "/api/v1/agents/"+testAgent+"/run" {
				t.Errorf("request = %s %s", method, path)
			}
			if auth != "Bearer secret-key" || ctype != "application/json" {
				t.Errorf("Authorization = %q, Content-Type = %q", auth, ctype)
			}
		})
	}
}

func TestRunWithoutKeySendsNoAuthorization(t *testing.T) {
	var auth []string
	srv := newRESTServer(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		auth = r.Header.Values("Authorization")
		writeJSON(w, 200, okEnvelope(structured("null", "null")))
	})
	c := newClient(t, srv.URL, "minimal", nil, func(cfg *runagent.Config) { cfg.APIKey = "" })
	if _, err := c.Run(context.Background(), runagent.Input{}); err != nil {
		t.Fatal(err)
	}
	if len(auth) != 0 {
		t.Fatalf("Authorization = %q, want none", auth)
	}
}

func TestRunInto(t *testing.T) {
	srv := newRESTServer(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, 200, okEnvelope(structured("object", `{"content": "hi", "tokens": 3}`)))
	})
	c := newClient(t, srv.URL, "minimal", nil)
	var out struct {
		Content string `json:"content"`
		Tokens  int    `json:"tokens"`
	}
	if err := c.RunInto(context.Background(), runagent.Input{}, &out); err != nil {
		t.Fatal(err)
	}
	if out.Content != "hi" || out.Tokens != 3 {
		t.Fatalf("out = %+v", out)
	}
	var wrong []int
	err := c.RunInto(context.Background(), runagent.Input{}, &wrong)
	wantCode(t, err, runagent.CodeValidation)
}

func TestRunErrors(t *testing.T) {
	tests := []struct {
		name    string
		status  int
		body    string
		code    string
		message string // a substring of Message
	}{
		{"agent raised", 200, errEnvelope("INTERNAL_ERROR", "Agent execution failed: ValueError: bad input"), runagent.CodeInternal, "ValueError: bad input"},
		{"success false without error", 200, `{"success":false,"data":null,"message":"it broke","error":null}`, runagent.CodeInternal, "it broke"},
		{"unknown tag", 404, errEnvelope("NOT_FOUND", "Entrypoint nope not found"), runagent.CodeNotFound, "Entrypoint nope not found"},
		{"stream tag on run", 400, errEnvelope("VALIDATION_ERROR", "use the stream endpoint"), runagent.CodeValidation, "stream endpoint"},
		{"401 plain", 401, `Unauthorized`, runagent.CodeAuthentication, "Unauthorized"},
		{"403 fastapi", 403, `{"detail":"Forbidden for this key"}`, runagent.CodePermission, "Forbidden for this key"},
		{"404 fastapi", 404, `{"detail":"Not Found"}`, runagent.CodeNotFound, "Not Found"},
		{"413", 413, ``, runagent.CodeValidation, "Too Large"},
		{"422 fastapi list", 422, `{"detail":[{"loc":["body","entrypoint_tag"],"msg":"field required","type":"value_error.missing"}]}`, runagent.CodeValidation, "field required"},
		{"504", 504, `<html>gateway</html>`, runagent.CodeTimeout, "Gateway Timeout"},
		{"502 envelope", 502, errEnvelope("AGENT_CRASHED", "agent process exited"), runagent.CodeAgentCrashed, "exited"},
		{"500 other", 500, `oops`, runagent.CodeInternal, "oops"},
		{"418 other", 418, ``, runagent.CodeInternal, "teapot"},
		{"2xx not an envelope", 200, `{"result": 1}`, runagent.CodeInternal, "malformed"},
		{"2xx not JSON", 200, `hello`, runagent.CodeInternal, "malformed"},
		{"undecodable data", 200, `{"success":true,"data":"not structured"}`, runagent.CodeInternal, "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newRESTServer(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
				writeJSON(w, tt.status, tt.body)
			})
			clk := newFakeClock()
			c := newClient(t, srv.URL, "minimal", clk)
			_, err := c.Run(context.Background(), runagent.Input{})
			e := wantCode(t, err, tt.code)
			if !strings.Contains(e.Message, tt.message) {
				t.Errorf("Message = %q, want it to contain %q", e.Message, tt.message)
			}
			if e.Status != tt.status {
				t.Errorf("Status = %d, want %d", e.Status, tt.status)
			}
			if n := srv.hits.Load(); n != 1 {
				t.Errorf("server hit %d times, want 1 (no retry)", n)
			}
			if !strings.HasPrefix(err.Error(), "runagent: "+tt.code) {
				t.Errorf("Error() = %q", err.Error())
			}
		})
	}
}

func TestRunErrorEnvelopeFields(t *testing.T) {
	srv := newRESTServer(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, 400, `{"success":false,"data":null,"message":null,"error":{"code":"VALIDATION_ERROR","message":"bad","details":{"max":3},"field":"input_args"},"timestamp":"t","request_id":"rid-9"}`)
	})
	c := newClient(t, srv.URL, "minimal", nil)
	_, err := c.Run(context.Background(), runagent.Input{})
	e := wantCode(t, err, runagent.CodeValidation)
	if e.Field != "input_args" || e.RequestID != "rid-9" || !reflect.DeepEqual(e.Details, map[string]any{"max": int64(3)}) {
		t.Fatalf("error = %+v", e)
	}
	if !runagent.IsCode(err, runagent.CodeValidation) || runagent.CodeOf(err) != runagent.CodeValidation {
		t.Fatal("IsCode/CodeOf disagree")
	}
	if runagent.CodeOf(nil) != "" || runagent.CodeOf(errors.New("x")) != runagent.CodeInternal {
		t.Fatal("CodeOf on nil / foreign error")
	}
}

func TestRunRetries(t *testing.T) {
	httpDate := func() string { return time.Now().Add(3 * time.Second).UTC().Format(http.TimeFormat) }
	tests := []struct {
		name      string
		policy    runagent.RetryPolicy
		respond   func(attempt int, w http.ResponseWriter)
		code      string // "" for success
		hits      int32
		minSleeps []time.Duration // lower bounds of the waits
	}{
		{
			name: "429 with Retry-After seconds, then success",
			respond: func(a int, w http.ResponseWriter) {
				if a == 1 {
					w.Header().Set("Retry-After", "1")
					writeJSON(w, 429, `{"detail":"slow down"}`)
					return
				}
				writeJSON(w, 200, okEnvelope(structured("string", `"ok"`)))
			},
			hits: 2, minSleeps: []time.Duration{time.Second},
		},
		{
			name: "429 with Retry-After date, then success",
			respond: func(a int, w http.ResponseWriter) {
				if a == 1 {
					w.Header().Set("Retry-After", httpDate())
					writeJSON(w, 429, errEnvelope("RATE_LIMIT_EXCEEDED", "slow down"))
					return
				}
				writeJSON(w, 200, okEnvelope(structured("string", `"ok"`)))
			},
			hits: 2, minSleeps: []time.Duration{time.Second},
		},
		{
			name: "503 twice, then success",
			respond: func(a int, w http.ResponseWriter) {
				if a <= 2 {
					writeJSON(w, 503, errEnvelope("OVERLOADED", "busy"))
					return
				}
				writeJSON(w, 200, okEnvelope(structured("string", `"ok"`)))
			},
			hits: 3, minSleeps: []time.Duration{0, 0},
		},
		{
			name: "429 always: attempts exhausted",
			respond: func(_ int, w http.ResponseWriter) {
				w.Header().Set("Retry-After", "2")
				writeJSON(w, 429, `{"detail":"slow down"}`)
			},
			code: runagent.CodeRateLimit, hits: 4, minSleeps: []time.Duration{2 * time.Second, 2 * time.Second, 2 * time.Second},
		},
		{
			name:   "Retry-After beyond MaxElapsed: no retry",
			policy: runagent.RetryPolicy{MaxElapsed: 5 * time.Second},
			respond: func(_ int, w http.ResponseWriter) {
				w.Header().Set("Retry-After", "60")
				writeJSON(w, 503, errEnvelope("OVERLOADED", "busy"))
			},
			code: runagent.CodeOverloaded, hits: 1,
		},
		{
			name:   "NoRetry",
			policy: runagent.NoRetry,
			respond: func(_ int, w http.ResponseWriter) {
				writeJSON(w, 503, `{"detail":"busy"}`)
			},
			code: runagent.CodeOverloaded, hits: 1,
		},
		{
			name:   "MaxAttempts 2",
			policy: runagent.RetryPolicy{MaxAttempts: 2},
			respond: func(_ int, w http.ResponseWriter) {
				writeJSON(w, 503, `{"detail":"busy"}`)
			},
			code: runagent.CodeOverloaded, hits: 2, minSleeps: []time.Duration{0},
		},
		{
			name: "500 is not retried",
			respond: func(_ int, w http.ResponseWriter) {
				writeJSON(w, 500, `{"detail":"boom"}`)
			},
			code: runagent.CodeInternal, hits: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newRESTServer(t, func(a int, w http.ResponseWriter, _ *http.Request) { tt.respond(a, w) })
			clk := newFakeClock()
			c := newClient(t, srv.URL, "minimal", clk, func(cfg *runagent.Config) { cfg.Retry = tt.policy })
			got, err := c.Run(context.Background(), runagent.Input{})
			if tt.code == "" {
				if err != nil || got != "ok" {
					t.Fatalf("Run = %v, %v; want ok", got, err)
				}
			} else {
				wantCode(t, err, tt.code)
			}
			if n := srv.hits.Load(); n != tt.hits {
				t.Errorf("server hit %d times, want %d", n, tt.hits)
			}
			sleeps := clk.Sleeps()
			if len(sleeps) != len(tt.minSleeps) {
				t.Fatalf("waits = %v, want %d waits", sleeps, len(tt.minSleeps))
			}
			for i, d := range sleeps {
				if d < tt.minSleeps[i] {
					t.Errorf("wait %d = %v, want at least %v", i, d, tt.minSleeps[i])
				}
				if tt.minSleeps[i] == 0 && d > runagent.DefaultMaxBackoff {
					t.Errorf("wait %d = %v, above MaxBackoff", i, d)
				}
			}
		})
	}
}

func TestRunRetryAfterIsReported(t *testing.T) {
	srv := newRESTServer(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Retry-After", "7")
		writeJSON(w, 429, errEnvelope("RATE_LIMIT_EXCEEDED", "slow down"))
	})
	c := newClient(t, srv.URL, "minimal", newFakeClock(), func(cfg *runagent.Config) { cfg.Retry = runagent.NoRetry })
	_, err := c.Run(context.Background(), runagent.Input{})
	e := wantCode(t, err, runagent.CodeRateLimit)
	if e.RetryAfter != 7*time.Second || e.Status != 429 || e.Message != "slow down" {
		t.Fatalf("error = %+v", e)
	}
}

func TestRunBackoffGrowsWithJitterBounds(t *testing.T) {
	srv := newRESTServer(t, func(_ int, w http.ResponseWriter, _ *http.Request) { writeJSON(w, 503, ``) })
	clk := newFakeClock()
	policy := runagent.RetryPolicy{MaxAttempts: 6, InitialBackoff: 100 * time.Millisecond, MaxBackoff: 400 * time.Millisecond}
	c := newClient(t, srv.URL, "minimal", clk, func(cfg *runagent.Config) { cfg.Retry = policy })
	_, err := c.Run(context.Background(), runagent.Input{})
	wantCode(t, err, runagent.CodeOverloaded)
	caps := []time.Duration{100, 200, 400, 400, 400}
	sleeps := clk.Sleeps()
	if len(sleeps) != len(caps) {
		t.Fatalf("waits = %v", sleeps)
	}
	for i, d := range sleeps {
		if d < 0 || d > caps[i]*time.Millisecond {
			t.Errorf("wait %d = %v, want within [0, %v]", i, d, caps[i]*time.Millisecond)
		}
	}
}

func TestRunConnectionRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	clk := newFakeClock()
	c := newClient(t, "http://"+addr, "minimal", clk)
	_, err = c.Run(context.Background(), runagent.Input{})
	e := wantCode(t, err, runagent.CodeConnection)
	if e.Err == nil || e.Status != 0 {
		t.Fatalf("error = %+v", e)
	}
	if n := len(clk.Sleeps()); n != runagent.DefaultMaxAttempts-1 {
		t.Fatalf("waits = %d, want %d (4 attempts)", n, runagent.DefaultMaxAttempts-1)
	}
}

func TestRunContext(t *testing.T) {
	t.Run("deadline shorter than Retry-After: no wait", func(t *testing.T) {
		srv := newRESTServer(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Retry-After", "10")
			writeJSON(w, 503, ``)
		})
		c := newClient(t, srv.URL, "minimal", nil)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		start := time.Now()
		_, err := c.Run(ctx, runagent.Input{})
		wantCode(t, err, runagent.CodeOverloaded)
		if d := time.Since(start); d > 500*time.Millisecond {
			t.Fatalf("Run took %v", d)
		}
	})
	t.Run("cancel during the wait", func(t *testing.T) {
		srv := newRESTServer(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Retry-After", "5")
			writeJSON(w, 503, ``)
		})
		c := newClient(t, srv.URL, "minimal", nil)
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(100*time.Millisecond, cancel)
		start := time.Now()
		_, err := c.Run(ctx, runagent.Input{})
		wantCode(t, err, runagent.CodeCancelled)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("errors.Is(err, context.Canceled) = false: %v", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("Run took %v", d)
		}
	})
	t.Run("Config.Timeout", func(t *testing.T) {
		srv := newRESTServer(t, func(_ int, w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body) // so that the server notices the client leaving
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		})
		c := newClient(t, srv.URL, "minimal", nil, func(cfg *runagent.Config) { cfg.Timeout = 100 * time.Millisecond })
		start := time.Now()
		_, err := c.Run(context.Background(), runagent.Input{})
		wantCode(t, err, runagent.CodeTimeout)
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("Run took %v", d)
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("errors.Is(err, context.DeadlineExceeded) = false: %v", err)
		}
	})
}

func TestTagGuardrails(t *testing.T) {
	srv := newRESTServer(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, 200, okEnvelope(structured("null", "null")))
	})
	streamClient := newClient(t, srv.URL, "minimal_stream", nil)
	_, err := streamClient.Run(context.Background(), runagent.Input{})
	wantCode(t, err, runagent.CodeValidation)
	err = streamClient.RunInto(context.Background(), runagent.Input{}, new(any))
	wantCode(t, err, runagent.CodeValidation)

	plain := newClient(t, srv.URL, "minimal", nil)
	_, err = plain.RunStream(context.Background(), runagent.Input{})
	wantCode(t, err, runagent.CodeValidation)
	if n := srv.hits.Load(); n != 0 {
		t.Fatalf("server hit %d times, want 0", n)
	}
	if !runagent.IsStreamTag("x_stream") || runagent.IsStreamTag("stream") || runagent.IsStreamTag("x_streams") {
		t.Fatal("IsStreamTag")
	}
	if got := plain.WithEntrypoint("minimal_stream").EntrypointTag(); got != "minimal_stream" {
		t.Fatalf("WithEntrypoint tag = %q", got)
	}
}

func TestRunInputNotEncodable(t *testing.T) {
	srv := newRESTServer(t, func(_ int, w http.ResponseWriter, _ *http.Request) {})
	c := newClient(t, srv.URL, "minimal", nil)
	_, err := c.Run(context.Background(), runagent.Args(math.NaN()))
	wantCode(t, err, runagent.CodeValidation)
	_, err = c.Run(context.Background(), runagent.Kwargs(map[string]any{"f": func() {}}))
	wantCode(t, err, runagent.CodeValidation)
	if n := srv.hits.Load(); n != 0 {
		t.Fatalf("server hit %d times", n)
	}
}

// TestRunConcurrent checks, under -race, that pooled request and response
// buffers never mix calls.
func TestRunConcurrent(t *testing.T) {
	srv := newRESTServer(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		var req struct {
			Args []string `json:"input_args"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.Args) != 1 {
			writeJSON(w, 400, `{"detail":"bad body"}`)
			return
		}
		p, _ := json.Marshal(req.Args[0])
		writeJSON(w, 200, okEnvelope(structured("string", string(p))))
	})
	c := newClient(t, srv.URL, "minimal", nil)
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for g := range 32 {
		wg.Go(func() {
			for i := range 40 {
				want := fmt.Sprintf("g%d-call%d-%s", g, i, strings.Repeat("x", (g*i)%300))
				got, err := c.Run(context.Background(), runagent.Args(want))
				if err != nil || got != want {
					errs <- fmt.Errorf("Run(%q) = %v, %v", want, got, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestArchitectureAndHealth(t *testing.T) {
	srv := newRESTServer(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/v1/agents/" + testAgent + "/architecture":
			writeJSON(w, 200, `{"success":true,"data":{"agent_id":"`+testAgent+`","entrypoints":[{"file":"main.py","module":"mock_response","tag":"minimal","extractor":{}},{"file":"main.py","module":"mock_stream","tag":"minimal_stream"}]},"message":"ok","error":null}`)
		case "/api/v1/health":
			writeJSON(w, 200, `{"status":"healthy","server":"RunAgent Local Server","timestamp":"2025-01-01T00:00:00","uptime_seconds":1.5,"version":"0.1.49","agent_id":"`+testAgent+`","agent_name":"a","framework":"default"}`)
		default:
			writeJSON(w, 404, errEnvelope("NOT_FOUND", "no route"))
		}
	})
	c := newClient(t, srv.URL, "minimal", nil)
	arch, err := c.Architecture(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if arch.AgentID != testAgent || len(arch.Entrypoints) != 2 || arch.Entrypoints[1].Tag != "minimal_stream" {
		t.Fatalf("architecture = %+v", arch)
	}
	h, err := c.Health(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if h.Status != "healthy" || h.UptimeSeconds != 1.5 || h.Framework != "default" {
		t.Fatalf("health = %+v", h)
	}
	other := newClient(t, srv.URL+"/nowhere", "minimal", nil)
	_, err = other.Health(context.Background())
	wantCode(t, err, runagent.CodeNotFound)
}
