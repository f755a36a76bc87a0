// Package platformclient is a small typed client for the platform API of
// `runagent server` (docs/platform-api.md): deploy (upload, start), agents,
// API keys, invocations and logs.
//
// Every method sends the API key as "Authorization: Bearer KEY" and decodes
// the wire envelope {"success","data","message","error",...}; the requests
// and answers are the types of internal/platformapi, the one definition of
// the contract the server builds too. A failure the
// server reports comes back as *APIError; a server that cannot be reached as
// *UnreachableError.
package platformclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Client calls one platform server.
type Client struct {
	baseURL string
	apiKey  string
	hc      *http.Client
}

// New returns a client for the server at baseURL (e.g. http://127.0.0.1:8400)
// that authenticates with apiKey (none when empty). A nil httpClient means a
// client without an overall timeout: bound calls with their context, since an
// upload, a start or a followed log stream may rightly take long.
func New(baseURL, apiKey string, httpClient *http.Client) *Client {
	if httpClient == nil {
		httpClient = &http.Client{}
	}
	return &Client{baseURL: strings.TrimRight(baseURL, "/"), apiKey: apiKey, hc: httpClient}
}

// BaseURL is the server's URL without a trailing slash.
func (c *Client) BaseURL() string { return c.baseURL }

// APIError is a failure answered by the server.
type APIError struct {
	Status     int    // the HTTP status
	Code       string // envelope error.code, e.g. AUTHENTICATION_ERROR; "" when the answer was not an envelope
	Message    string
	Field      string          // the request field at fault, if any
	Details    json.RawMessage // envelope error.details, if any
	RetryAfter time.Duration   // from Retry-After (429, 503), 0 when absent
}

func (e *APIError) Error() string {
	var b strings.Builder
	if e.Code != "" {
		b.WriteString(e.Code + ": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field + ": ")
	}
	b.WriteString(e.Message)
	fmt.Fprintf(&b, " (HTTP %d", e.Status)
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, ", retry after %s", e.RetryAfter)
	}
	b.WriteString(")")
	return b.String()
}

// DetailLines returns error.details as lines when it is a string, a list of
// strings, or a list of objects with a "message" (and maybe "field" or
// "path"); nil otherwise.
func (e *APIError) DetailLines() []string {
	if len(e.Details) == 0 {
		return nil
	}
	var s string
	if json.Unmarshal(e.Details, &s) == nil {
		if s == "" {
			return nil
		}
		return []string{s}
	}
	var list []json.RawMessage
	if json.Unmarshal(e.Details, &list) != nil {
		return nil
	}
	var out []string
	for _, item := range list {
		if json.Unmarshal(item, &s) == nil {
			out = append(out, s)
			continue
		}
		var o struct{ Message, Field, Path, Msg string }
		if json.Unmarshal(item, &o) != nil {
			continue
		}
		msg := o.Message
		if msg == "" {
			msg = o.Msg
		}
		if f := o.Field + o.Path; f != "" && msg != "" {
			msg = f + ": " + msg
		}
		if msg != "" {
			out = append(out, msg)
		}
	}
	return out
}

// UnreachableError reports that no connection to the server could be made.
type UnreachableError struct {
	URL string
	Err error
}

func (e *UnreachableError) Error() string {
	reason := e.Err.Error()
	if errors.Is(e.Err, syscall.ECONNREFUSED) {
		reason = "connection refused"
	}
	return fmt.Sprintf("the RunAgent server at %s is not reachable (%s): start it with `runagent server`, or pass --server URL (or set $RUNAGENT_SERVER) to use another", e.URL, reason)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// envelope is the wire envelope; error is decoded leniently.
type envelope struct {
	Success *bool           `json:"success"`
	Data    json.RawMessage `json:"data"`
	Message *string         `json:"message"`
	Error   *struct {
		Code    string          `json:"code"`
		Message string          `json:"message"`
		Field   string          `json:"field"`
		Details json.RawMessage `json:"details"`
	} `json:"error"`
}

// path joins segments after /api/v1, escaping each.
func path(segments ...string) string {
	var b strings.Builder
	b.WriteString("/api/v1")
	for _, s := range segments {
		b.WriteString("/" + url.PathEscape(s))
	}
	return b.String()
}

// newRequest builds a request to path (already escaped) with the query q.
func (c *Client) newRequest(ctx context.Context, method, p string, q url.Values, body io.Reader) (*http.Request, error) {
	u := c.baseURL + p
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, fmt.Errorf("platform request %s %s: %w", method, p, err)
	}
	if c.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.apiKey)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "runagent-cli")
	return req, nil
}

// send performs req and returns the response, mapping dial failures to
// *UnreachableError.
func (c *Client) send(req *http.Request) (*http.Response, error) {
	resp, err := c.hc.Do(req)
	if err == nil {
		return resp, nil
	}
	if ctxErr := req.Context().Err(); ctxErr != nil {
		return nil, fmt.Errorf("%s %s: %w", req.Method, req.URL.Path, ctxErr)
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return nil, &UnreachableError{URL: c.baseURL, Err: op.Err}
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return nil, &UnreachableError{URL: c.baseURL, Err: dns}
	}
	return nil, fmt.Errorf("%s %s: %w", req.Method, req.URL.Path, err)
}

// do sends a JSON request (body nil: none) and decodes the answer's data into
// out (nil: ignore it).
func (c *Client) do(ctx context.Context, method, p string, q url.Values, body, out any) error {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		r = bytes.NewReader(b)
	}
	req, err := c.newRequest(ctx, method, p, q, r)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return decode(resp, out)
}

// maxAnswer bounds a JSON answer read into memory.
const maxAnswer = 64 << 20

// decode reads an answer: an error status or success:false becomes an
// *APIError; otherwise data (or the whole body, for the routes that answer
// without an envelope, like the wire invocation records) goes into out.
func decode(resp *http.Response, out any) error {
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return fmt.Errorf("read answer of %s: %w", resp.Request.URL.Path, err)
	}
	var env envelope
	isEnvelope := json.Unmarshal(b, &env) == nil && env.Success != nil
	if resp.StatusCode >= 300 || (isEnvelope && !*env.Success) {
		return apiError(resp, b, &env, isEnvelope)
	}
	if out == nil {
		return nil
	}
	data := b
	if isEnvelope {
		data = env.Data
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode answer of %s %s: %w", resp.Request.Method, resp.Request.URL.Path, err)
	}
	return nil
}

func apiError(resp *http.Response, body []byte, env *envelope, isEnvelope bool) *APIError {
	e := &APIError{Status: resp.StatusCode, RetryAfter: retryAfter(resp.Header.Get("Retry-After"))}
	switch {
	case isEnvelope && env.Error != nil:
		e.Code, e.Message, e.Field, e.Details = env.Error.Code, env.Error.Message, env.Error.Field, env.Error.Details
		if len(e.Details) > 0 && string(e.Details) == "null" {
			e.Details = nil
		}
	case isEnvelope && env.Message != nil:
		e.Message = *env.Message
	default:
		// Not an envelope: a proxy's page, or FastAPI-style {"detail": ...}.
		var fa struct {
			Detail json.RawMessage `json:"detail"`
		}
		if json.Unmarshal(body, &fa) == nil && len(fa.Detail) > 0 {
			var s string
			if json.Unmarshal(fa.Detail, &s) == nil {
				e.Message = s
			} else {
				e.Message = string(fa.Detail)
			}
		} else if s := strings.TrimSpace(string(body)); s != "" && !strings.HasPrefix(s, "<") {
			if len(s) > 200 {
				s = s[:200] + "…"
			}
			e.Message = s
		}
	}
	if e.Message == "" {
		e.Message = http.StatusText(resp.StatusCode)
		if e.Message == "" {
			e.Message = "request failed"
		}
	}
	return e
}

// retryAfter parses Retry-After: whole seconds or an HTTP date.
func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n > 0 {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 {
			return d.Round(time.Second)
		}
	}
	return 0
}
