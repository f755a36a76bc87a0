package runagent

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// Version is the version of this SDK, sent in the User-Agent header.
const Version = "0.1.0"

// Defaults used when neither Config nor the environment set a value.
const (
	DefaultBaseURL   = "https://backend.run-agent.ai"
	DefaultLocalHost = "127.0.0.1"
	DefaultTimeout   = 300 * time.Second
	apiPrefix        = "/api/v1"
)

// Config configures a Client for one agent entrypoint. Each setting is taken
// from the Config field when set, else from the environment, else from the
// default:
//
//	APIKey    RUNAGENT_API_KEY
//	BaseURL   RUNAGENT_BASE_URL    (default DefaultBaseURL)
//	Local     RUNAGENT_LOCAL=true  (Local is on when either says so)
//	Host      RUNAGENT_HOST        (only with Local)
//	Port      RUNAGENT_PORT        (only with Local)
//	Timeout   RUNAGENT_TIMEOUT     (seconds; default DefaultTimeout)
type Config struct {
	// AgentID is the agent's UUID. Required.
	AgentID string
	// EntrypointTag is the entrypoint to call. Required. A tag ending in
	// "_stream" is a streaming entrypoint, called with RunStream; any other
	// is called with Run.
	EntrypointTag string

	// Local selects a local server (`runagent serve`) at http://Host:Port.
	// When Host or Port is missing it is read from the local agent registry
	// (see LocalRegistryPath).
	Local bool
	Host  string
	Port  int

	// BaseURL is the remote server, e.g. "https://backend.run-agent.ai";
	// a trailing "/api/v1" is accepted. Ignored when Local.
	BaseURL string
	// APIKey is sent as "Authorization: Bearer KEY" (and as ?token=KEY on
	// WebSockets) when set.
	APIKey string

	// HTTPClient makes the REST calls; its *http.Transport's TLS config,
	// proxy and dialer are also used for WebSockets. When nil a shared client
	// tuned for many concurrent calls is used.
	HTTPClient *http.Client
	// Retry bounds retries; the zero value means the defaults, NoRetry none.
	Retry RetryPolicy
	// Timeout bounds each Run, RunInto, StartRun, GetRun, CancelRun,
	// Architecture and Health call (retries included; each request of
	// WaitRun beyond the wait it asks for) and is sent to the server as
	// timeout_seconds (by Run, RunInto and StartRun). It does not bound
	// streams: use the stream's context for that. Less than 0 means no
	// timeout.
	Timeout time.Duration
	// UserAgent replaces the default "runagent-go/<Version>".
	UserAgent string

	// UserID names the user the client's runs are for. When set it is sent,
	// with PersistentMemory, in the body of every run the client makes: Run
	// and RunInto, RunStream, RunStreamResumable and StartRun (whose record
	// then shows it), as the official SDKs' options of the same names are.
	UserID string
	// PersistentMemory asks the server (runagent server or runagent serve)
	// to run each call on an instance of UserID's own, which sees that
	// user's persistent folders (the agent's "persistent_folders"): what
	// the agent writes there is there again on the user's next run, and no
	// other user's run sees it. It needs UserID: without one New refuses
	// the config. Without PersistentMemory, UserID is sent but the call
	// runs on the agent's shared instances.
	PersistentMemory bool

	clk *clock // time source of the retry loop (tests); a pointer keeps Config comparable
}

// Client calls one entrypoint of one agent. It is safe for concurrent use;
// create it once and reuse it.
type Client struct {
	agentID, tag string
	local        bool
	baseURL      string // scheme://host[:port], no /api/v1
	restBase     string // baseURL + /api/v1
	agentPath    string // restBase + /agents/{id}
	runURL       string
	wsURL        string // ws(s)://.../run-stream[?token=KEY]
	timeout      time.Duration
	timeoutSecs  int
	retry        RetryPolicy
	clk          clock
	hc           *http.Client
	dialer       *websocket.Dialer

	// The user sent in every run body when userID is set.
	userID           string
	persistentMemory bool

	// Header values shared by every request (never modified).
	hdrAuth, hdrUA []string
}

var (
	hdrJSON       = []string{"application/json"}
	defaultClient = sync.OnceValue(newDefaultHTTPClient)
)

func newDefaultHTTPClient() *http.Client {
	t, ok := http.DefaultTransport.(*http.Transport)
	if ok {
		t = t.Clone()
	} else {
		t = &http.Transport{Proxy: http.ProxyFromEnvironment, ForceAttemptHTTP2: true, TLSHandshakeTimeout: 10 * time.Second}
	}
	t.MaxIdleConns = 1024
	t.MaxIdleConnsPerHost = 512
	t.IdleConnTimeout = 90 * time.Second
	return &http.Client{Transport: t}
}

// New returns a Client for cfg, resolved as Config describes. With Local and
// no Host or Port it reads the local agent registry; a missing registry or
// agent is a NOT_FOUND error telling to run `runagent serve`. Invalid
// settings give one VALIDATION_ERROR listing every problem.
func New(cfg Config) (*Client, error) {
	var problems []string
	c := &Client{
		agentID: strings.TrimSpace(cfg.AgentID),
		tag:     strings.TrimSpace(cfg.EntrypointTag),
		retry:   cfg.Retry.normalized(),
		clk:     cfg.clk.withDefaults(),
		hc:      cfg.HTTPClient,
	}
	c.userID, c.persistentMemory = cfg.UserID, cfg.PersistentMemory
	if c.agentID == "" {
		problems = append(problems, "AgentID is required")
	}
	if c.tag == "" {
		problems = append(problems, "EntrypointTag is required")
	}
	if cfg.PersistentMemory && cfg.UserID == "" {
		problems = append(problems, "PersistentMemory needs a UserID: the user whose persistent folders the agent's runs see")
	}

	apiKey := firstNonEmpty(cfg.APIKey, os.Getenv("RUNAGENT_API_KEY"))
	if v := strings.TrimSpace(os.Getenv("RUNAGENT_LOCAL")); v != "" && !cfg.Local {
		b, err := strconv.ParseBool(v)
		if err != nil {
			problems = append(problems, "RUNAGENT_LOCAL is not a boolean: "+strconv.Quote(v))
		}
		cfg.Local = b
	}
	c.local = cfg.Local

	c.timeout = cfg.Timeout
	if c.timeout == 0 {
		c.timeout = DefaultTimeout
		if v := strings.TrimSpace(os.Getenv("RUNAGENT_TIMEOUT")); v != "" {
			secs, err := strconv.ParseFloat(v, 64)
			if err != nil || secs != secs {
				problems = append(problems, "RUNAGENT_TIMEOUT is not a number of seconds: "+strconv.Quote(v))
			} else {
				c.timeout = time.Duration(secs * float64(time.Second))
			}
		}
	}
	if c.timeout > 0 {
		c.timeoutSecs = int((c.timeout + time.Second - 1) / time.Second)
	}

	if c.local {
		host := firstNonEmpty(cfg.Host, os.Getenv("RUNAGENT_HOST"))
		port := cfg.Port
		if port == 0 {
			if v := strings.TrimSpace(os.Getenv("RUNAGENT_PORT")); v != "" {
				p, err := strconv.Atoi(v)
				if err != nil {
					problems = append(problems, "RUNAGENT_PORT is not a port number: "+strconv.Quote(v))
				}
				port = p
			}
		}
		if port < 0 || port > 65535 {
			problems = append(problems, "Port "+strconv.Itoa(port)+" is out of range")
		}
		if len(problems) > 0 {
			return nil, configError(problems)
		}
		if host == "" || port == 0 {
			h, p, e := discoverLocal(c.agentID)
			if e != nil {
				return nil, e
			}
			if host == "" {
				host = h
			}
			if port == 0 {
				port = p
			}
		}
		c.baseURL = "http://" + net.JoinHostPort(strings.Trim(host, "[]"), strconv.Itoa(port))
	} else {
		base, err := normalizeBaseURL(firstNonEmpty(cfg.BaseURL, os.Getenv("RUNAGENT_BASE_URL"), DefaultBaseURL))
		if err != "" {
			problems = append(problems, err)
		}
		c.baseURL = base
	}
	if len(problems) > 0 {
		return nil, configError(problems)
	}

	c.restBase = c.baseURL + apiPrefix
	c.agentPath = c.restBase + "/agents/" + url.PathEscape(c.agentID)
	c.runURL = c.agentPath + "/run"
	ws := "ws" + strings.TrimPrefix(c.agentPath, "http") + "/run-stream"
	if apiKey != "" {
		ws += "?token=" + url.QueryEscape(apiKey)
		c.hdrAuth = []string{"Bearer " + apiKey}
	}
	c.wsURL = ws
	c.hdrUA = []string{firstNonEmpty(cfg.UserAgent, "runagent-go/"+Version)}

	if c.hc == nil {
		c.hc = defaultClient()
	}
	c.dialer = newDialer(c.hc)
	return c, nil
}

func configError(problems []string) *Error {
	return &Error{Code: CodeValidation, Message: "invalid config: " + strings.Join(problems, "; ")}
}

// normalizeBaseURL returns scheme://host[:port][/path] without a trailing
// slash or /api/v1, or a problem.
func normalizeBaseURL(raw string) (string, string) {
	raw = strings.TrimSpace(raw)
	if !strings.Contains(raw, "://") {
		raw = "https://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", "BaseURL is not a URL: " + err.Error()
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", "BaseURL must be http or https, not " + strconv.Quote(u.Scheme)
	}
	if u.Host == "" {
		return "", "BaseURL has no host: " + strconv.Quote(raw)
	}
	u.RawQuery, u.Fragment, u.User = "", "", nil
	s := strings.TrimRight(u.String(), "/")
	s = strings.TrimSuffix(s, apiPrefix)
	return strings.TrimRight(s, "/"), ""
}

// newDialer builds the WebSocket dialer from the HTTP client's transport.
func newDialer(hc *http.Client) *websocket.Dialer {
	d := &websocket.Dialer{
		Proxy:            http.ProxyFromEnvironment,
		HandshakeTimeout: 30 * time.Second,
		WriteBufferPool:  wsWriteBufPool,
	}
	rt := hc.Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	if t, ok := rt.(*http.Transport); ok {
		d.Proxy = t.Proxy
		d.NetDialContext = t.DialContext
		if t.TLSClientConfig != nil {
			d.TLSClientConfig = t.TLSClientConfig.Clone()
		}
		if t.TLSHandshakeTimeout > 0 {
			d.HandshakeTimeout = max(d.HandshakeTimeout, t.TLSHandshakeTimeout)
		}
	}
	return d
}

var wsWriteBufPool = &sync.Pool{}

func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if v = strings.TrimSpace(v); v != "" {
			return v
		}
	}
	return ""
}

// AgentID returns the agent's id.
func (c *Client) AgentID() string { return c.agentID }

// EntrypointTag returns the entrypoint tag.
func (c *Client) EntrypointTag() string { return c.tag }

// BaseURL returns the resolved server URL, without /api/v1.
func (c *Client) BaseURL() string { return c.baseURL }

// WithEntrypoint returns a Client for another entrypoint of the same agent,
// sharing the configuration and connections.
func (c *Client) WithEntrypoint(tag string) *Client {
	cc := *c
	cc.tag = strings.TrimSpace(tag)
	return &cc
}

// IsStreamTag reports whether tag names a streaming entrypoint: it ends in
// "_stream".
func IsStreamTag(tag string) bool { return strings.HasSuffix(tag, "_stream") }

// Run calls the entrypoint with POST /api/v1/agents/{id}/run and returns the
// decoded result (see DecodeStructured for the Go types). Errors are *Error:
// INTERNAL_ERROR when the agent raised (Message holds the exception text),
// NOT_FOUND for an unknown entrypoint, VALIDATION_ERROR for a streaming tag
// (no request is made) or an input that cannot be encoded, and the codes of
// the HTTP status otherwise. Connection failures, 429 and 503 are retried
// under the Config's RetryPolicy.
func (c *Client) Run(ctx context.Context, in Input) (any, error) {
	var out any
	e := c.run(ctx, in, func(data json.RawMessage) *Error {
		v, e := decodeData(data)
		out = v
		return e
	})
	if e != nil {
		return nil, e
	}
	return out, nil
}

// RunInto is Run, decoding the result into out (a pointer) with
// encoding/json instead. A result that does not fit out is a
// VALIDATION_ERROR wrapping encoding/json's error.
func (c *Client) RunInto(ctx context.Context, in Input, out any) error {
	return errOrNil(c.run(ctx, in, func(data json.RawMessage) *Error {
		p, e := dataPayload(data)
		if e != nil {
			return e
		}
		return unmarshalInto(p, out)
	}))
}

func (c *Client) run(ctx context.Context, in Input, decode func(json.RawMessage) *Error) *Error {
	if IsStreamTag(c.tag) {
		return &Error{Code: CodeValidation, Message: "entrypoint " + strconv.Quote(c.tag) + " is a streaming entrypoint: call RunStream"}
	}
	buf := getBuf()
	req := c.newRequest(in, c.timeoutSecs)
	if e := encodeRequest(buf, &req); e != nil {
		putBuf(buf)
		return e
	}
	body := newSharedBody(buf)
	defer body.release()
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	return c.do(ctx, http.MethodPost, c.runURL, body, nil, func(status int, h http.Header, b []byte) *Error {
		data, e := parseEnvelope(status, h, b)
		if e != nil {
			return e
		}
		if e = decode(data); e != nil && e.Status == 0 {
			e.Status = status
		}
		return e
	})
}

// Architecture returns the agent's entrypoints, from GET
// /api/v1/agents/{id}/architecture.
func (c *Client) Architecture(ctx context.Context) (*Architecture, error) {
	var arch Architecture
	e := c.get(ctx, c.agentPath+"/architecture", func(status int, h http.Header, b []byte) *Error {
		data, e := parseEnvelope(status, h, b)
		if e != nil {
			return e
		}
		if s, ok := rawString(data); ok { // tolerate data sent as a JSON string
			data = json.RawMessage(s)
		}
		if err := json.Unmarshal(data, &arch); err != nil {
			return &Error{Code: CodeInternal, Status: status, Message: "malformed architecture: " + err.Error(), Err: ErrMalformed}
		}
		return nil
	})
	if e != nil {
		return nil, e
	}
	return &arch, nil
}

// Health returns the server's GET /api/v1/health answer.
func (c *Client) Health(ctx context.Context) (*Health, error) {
	var h Health
	e := c.get(ctx, c.restBase+"/health", func(status int, hdr http.Header, b []byte) *Error {
		if status < 200 || status > 299 {
			return httpError(status, hdr, b)
		}
		if err := json.Unmarshal(b, &h); err != nil {
			return &Error{Code: CodeInternal, Status: status, Message: "malformed health response: " + err.Error(), Err: ErrMalformed}
		}
		return nil
	})
	if e != nil {
		return nil, e
	}
	return &h, nil
}

// Architecture is the data of GET /agents/{id}/architecture.
type Architecture struct {
	AgentID     string       `json:"agent_id"`
	Entrypoints []Entrypoint `json:"entrypoints"`
}

// Entrypoint is one entrypoint of an agent.
type Entrypoint struct {
	File      string            `json:"file,omitempty"`
	Module    string            `json:"module,omitempty"`
	Tag       string            `json:"tag"`
	Extractor map[string]string `json:"extractor,omitempty"`
}

// Health is the answer of GET /api/v1/health.
type Health struct {
	Status        string  `json:"status"`
	Server        string  `json:"server"`
	Timestamp     string  `json:"timestamp"`
	UptimeSeconds float64 `json:"uptime_seconds"`
	Version       string  `json:"version"`
	AgentID       string  `json:"agent_id"`
	AgentName     string  `json:"agent_name"`
	Framework     string  `json:"framework"`
}

func (c *Client) get(ctx context.Context, u string, handle func(int, http.Header, []byte) *Error) *Error {
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	return c.do(ctx, http.MethodGet, u, nil, nil, handle)
}

// do sends a request, with the extra headers (nil: none), retrying under
// the policy, and passes the response of the last attempt to handle
// (unless that attempt failed with a retryable status or before any
// response).
func (c *Client) do(ctx context.Context, method, u string, body *sharedBody, extra http.Header, handle func(int, http.Header, []byte) *Error) *Error {
	r := newRetrier(c.retry, c.clk)
	for {
		e := c.attempt(ctx, method, u, body, extra, handle)
		if e == nil {
			return nil
		}
		if e = r.wait(ctx, e); e != nil {
			return e
		}
	}
}

func (c *Client) attempt(ctx context.Context, method, u string, body *sharedBody, extra http.Header, handle func(int, http.Header, []byte) *Error) *Error {
	if ctx.Err() != nil {
		return ctxError(ctx)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return &Error{Code: CodeValidation, Message: "cannot build request: " + err.Error(), Err: err}
	}
	req.Header = c.header(body != nil)
	for k, v := range extra {
		req.Header[k] = v
	}
	if body != nil {
		req.Body = body.open()
		req.ContentLength = body.len()
		req.GetBody = func() (io.ReadCloser, error) { return body.open(), nil }
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return transportError(ctx, err)
	}
	buf := getBuf()
	defer putBuf(buf)
	if n := resp.ContentLength; n > 0 && n <= maxPooledBuf {
		buf.Grow(int(n))
	}
	_, err = buf.ReadFrom(resp.Body)
	resp.Body.Close()
	if err != nil {
		if ctx.Err() != nil {
			return ctxError(ctx)
		}
		return &Error{Code: CodeConnection, Status: resp.StatusCode, Message: "reading the response failed: " + err.Error(), Err: err}
	}
	if retryableStatus(resp.StatusCode) {
		return httpError(resp.StatusCode, resp.Header, buf.Bytes())
	}
	return handle(resp.StatusCode, resp.Header, buf.Bytes())
}

// header returns a fresh header map sharing the client's value slices.
func (c *Client) header(hasBody bool) http.Header {
	h := make(http.Header, 4)
	h["Accept"] = hdrJSON
	h["User-Agent"] = c.hdrUA
	if hasBody {
		h["Content-Type"] = hdrJSON
	}
	if c.hdrAuth != nil {
		h["Authorization"] = c.hdrAuth
	}
	return h
}
