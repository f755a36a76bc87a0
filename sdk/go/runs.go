package runagent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Background runs (runagent server): POST /api/v1/agents/{id}/runs creates
// a run of a plain entrypoint, which the server runs on its queue, and
// answers at once; the run is then read, waited for and cancelled by its id
// under /api/v1/runs. See docs/platform-api.md, "Background runs".

// The statuses of a Run.
const (
	RunPending   = "pending"   // queued, not started
	RunRunning   = "running"   // started
	RunCompleted = "completed" // ended with a result (Run.Output)
	RunFailed    = "failed"    // ended with an error (Run.ErrorDetail)
	RunCancelled = "cancelled" // ended by CancelRun
	RunTimeout   = "timeout"   // ended by its timeout
)

// The values of RunOptions.Multitask.
const (
	// MultitaskReject refuses a create while another run of the thread is
	// queued or running (409 RESOURCE_ALREADY_EXISTS): the server's default.
	MultitaskReject = "reject"
	// MultitaskEnqueue accepts it: it starts once the runs of the thread
	// created before it have ended.
	MultitaskEnqueue = "enqueue"
)

// maxRunWait is the longest wait one GET /runs/{id}/wait may ask for.
const maxRunWait = 300 * time.Second

// RunOptions are a background run's options beside its input (StartRun).
// The zero value (or a nil *RunOptions) means none.
type RunOptions struct {
	// IdempotencyKey is sent as the Idempotency-Key header (printable ASCII,
	// at most 255 characters): a create with a key that an earlier run of
	// the agent was created with answers that run again (Run.Replayed) and
	// runs nothing; the same key with another entrypoint or input is a
	// RESOURCE_ALREADY_EXISTS error (CodeAlreadyExists). When empty, StartRun
	// makes a random one (a UUID) per call, so that its own retries never
	// create a second run.
	IdempotencyKey string
	// Webhook is an http:// or https:// URL the server POSTs the ended run
	// to, signed with the agent's webhook secret.
	Webhook string
	// ThreadID (1 to 128 printable ASCII characters, a conversation's id)
	// makes the runs of one thread run one at a time, in the order they
	// were created.
	ThreadID string
	// Multitask says what a create does while another run of ThreadID is
	// queued or running: MultitaskReject (the server's default) or
	// MultitaskEnqueue. It needs ThreadID.
	Multitask string
}

// Run is a background run, as the runs API shows it: the invocation record
// of the wire protocol with the run's own fields. The answer of StartRun
// has RunID, InvocationID, AgentID, Status (pending), StatusURL,
// IdempotencyKey and Replayed; GetRun, WaitRun and CancelRun fill in the
// rest.
type Run struct {
	RunID        string
	InvocationID string
	AgentID      string
	// EntrypointTag is the entrypoint the run calls.
	EntrypointTag string
	// Status is one of RunPending, RunRunning, RunCompleted, RunFailed,
	// RunCancelled and RunTimeout.
	Status string
	// Input is what the entrypoint was called with, decoded like Output.
	Input Input
	// Output is the result of a completed run (the server's output_data),
	// decoded like Run's results (see DecodeStructured for the Go types);
	// nil before and for any other end. OutputJSON is the same as JSON
	// text, for DecodeOutput.
	Output     any
	OutputJSON json.RawMessage
	// ErrorDetail says why a run failed, was cancelled ("CANCELLED: ...")
	// or timed out ("TIMEOUT: ..."); empty otherwise. See Err.
	ErrorDetail string
	// Background is true for a run made by StartRun (or a cron); a plain,
	// streamed or async call read as a run by its id shows false.
	Background bool
	// Attempts is how many times the run was started.
	Attempts int
	// IdempotencyKey, Webhook, ThreadID and UserID are the run's, as it
	// was created (UserID with Config.PersistentMemory only).
	IdempotencyKey string
	Webhook        string
	ThreadID       string
	UserID         string
	// SDKType and StatusURL are the server's ("async" for a background
	// run; the path of GET /api/v1/runs/{id}).
	SDKType   string
	StatusURL string
	// RequestTime is when the run was created, StartedAt when it last
	// started and ResponseTime when it ended (UTC; zero when not yet).
	RequestTime  time.Time
	StartedAt    time.Time
	ResponseTime time.Time
	// ExecutionTime is how long it ran (zero until it ended).
	ExecutionTime time.Duration
	// Replayed is true when StartRun was answered with a run that an
	// earlier create with the same IdempotencyKey made (nothing new runs).
	Replayed bool
}

// Ended reports whether the run has ended: completed, failed, cancelled or
// timed out.
func (r *Run) Ended() bool {
	switch r.Status {
	case RunCompleted, RunFailed, RunCancelled, RunTimeout:
		return true
	}
	return false
}

// Err returns the failure of a run that ended without a result, as an
// *Error: CANCELLED for a cancelled run, TIMEOUT for one that timed out,
// and for a failed one the code its ErrorDetail starts with ("AGENT_CRASHED:
// ...") or INTERNAL_ERROR (the agent raised); Message is the ErrorDetail.
// It is nil for a run that completed or has not ended.
func (r *Run) Err() error {
	code := CodeInternal
	switch r.Status {
	case RunFailed:
		if c, ok := detailCode(r.ErrorDetail); ok {
			code = c
		}
	case RunCancelled:
		code = CodeCancelled
	case RunTimeout:
		code = CodeTimeout
	default:
		return nil
	}
	msg := r.ErrorDetail
	if msg == "" {
		msg = "run " + r.RunID + " " + r.Status
	}
	return &Error{Code: code, Message: msg}
}

// detailCode returns the CODE of an error detail "CODE: ...".
func detailCode(detail string) (string, bool) {
	code, _, ok := strings.Cut(detail, ":")
	if !ok || len(code) < 3 {
		return "", false
	}
	for _, c := range []byte(code) {
		if (c < 'A' || c > 'Z') && c != '_' {
			return "", false
		}
	}
	return code, true
}

// DecodeOutput unmarshals the run's Output into v with encoding/json. A
// run without output (null) leaves v as encoding/json does for null.
func (r *Run) DecodeOutput(v any) error {
	raw := r.OutputJSON
	if len(raw) == 0 {
		raw = json.RawMessage("null")
	}
	return errOrNil(unmarshalInto(raw, v))
}

// StartRun creates a background run of the entrypoint with in (runagent
// server: POST /api/v1/agents/{id}/runs) and returns it once the server has
// it, pending. opts may be nil. The body is Run's (timeout_seconds from
// Config.Timeout, the client's user) with the options'; the create carries
// an Idempotency-Key, RunOptions.IdempotencyKey or a random one made for
// this call, so that the retries of the Config's RetryPolicy (connection
// failures, 429, 503) never create a second run.
//
// A streaming tag is a VALIDATION_ERROR, without a request (a background
// run calls a plain entrypoint; stream with RunStreamResumable), as is an
// IdempotencyKey that is not printable ASCII of at most 255 characters.
// Errors are *Error as for Run; CodeAlreadyExists for a key reused with
// another input or a thread busy under MultitaskReject.
func (c *Client) StartRun(ctx context.Context, in Input, opts *RunOptions) (*Run, error) {
	if IsStreamTag(c.tag) {
		return nil, &Error{Code: CodeValidation, Message: "entrypoint " + strconv.Quote(c.tag) + " is a streaming entrypoint: a background run calls a plain one (stream it with RunStreamResumable)"}
	}
	var o RunOptions
	if opts != nil {
		o = *opts
	}
	key := o.IdempotencyKey
	if key == "" {
		key = newUUID()
	} else if problem := checkIdempotencyKey(key); problem != "" {
		return nil, &Error{Code: CodeValidation, Field: "Idempotency-Key", Message: "invalid IdempotencyKey: " + problem}
	}
	req := c.newRequest(in, c.timeoutSecs)
	req.Webhook, req.ThreadID, req.Multitask = o.Webhook, o.ThreadID, o.Multitask
	buf := getBuf()
	if e := encodeRequest(buf, &req); e != nil {
		putBuf(buf)
		return nil, e
	}
	body := newSharedBody(buf)
	defer body.release()
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	var run *Run
	e := c.do(ctx, http.MethodPost, c.agentPath+"/runs", body, http.Header{"Idempotency-Key": {key}}, func(status int, h http.Header, b []byte) *Error {
		r, e := parseRun(status, h, b)
		if e != nil {
			return e
		}
		r.Replayed = strings.EqualFold(strings.TrimSpace(h.Get("Idempotent-Replayed")), "true")
		if r.IdempotencyKey == "" {
			r.IdempotencyKey = key
		}
		run = r
		return nil
	})
	if e != nil {
		return nil, e
	}
	return run, nil
}

// GetRun returns the run runID (GET /api/v1/runs/{id}) as it is now. Any
// invocation's id works: a plain or streamed call shows as a run that is
// not Background. An unknown id is NOT_FOUND.
func (c *Client) GetRun(ctx context.Context, runID string) (*Run, error) {
	u, e := c.runPath(runID, "")
	if e != nil {
		return nil, e
	}
	var run *Run
	e = c.get(ctx, u, func(status int, h http.Header, b []byte) *Error {
		var e *Error
		run, e = parseRun(status, h, b)
		return e
	})
	if e != nil {
		return nil, e
	}
	return run, nil
}

// WaitRun returns the run runID once it has ended, or as it is after
// timeout when it has not (check Run.Ended). It asks GET
// /api/v1/runs/{id}/wait?timeout_seconds=N, at most 300 s at a time, again
// until the run has ended or timeout has passed; each of these requests is
// bounded by its wait plus Config.Timeout. A timeout of 0 or less reads the
// run once, without waiting. ctx bounds the whole wait.
func (c *Client) WaitRun(ctx context.Context, runID string, timeout time.Duration) (*Run, error) {
	base, e := c.runPath(runID, "/wait")
	if e != nil {
		return nil, e
	}
	end := c.clk.now().Add(timeout)
	for {
		wait := min(max(end.Sub(c.clk.now()), 0), maxRunWait)
		u := base + "?timeout_seconds=" + strconv.FormatFloat(wait.Seconds(), 'f', 3, 64)
		var run *Run
		rctx, cancel := ctx, context.CancelFunc(func() {})
		if c.timeout > 0 {
			rctx, cancel = context.WithTimeout(ctx, wait+c.timeout)
		}
		e := c.do(rctx, http.MethodGet, u, nil, nil, func(status int, h http.Header, b []byte) *Error {
			var e *Error
			run, e = parseRun(status, h, b)
			return e
		})
		cancel()
		if e != nil {
			return nil, e
		}
		if run.Ended() || !c.clk.now().Before(end) {
			return run, nil
		}
	}
}

// CancelRun cancels the run runID (POST /api/v1/runs/{id}/cancel) and
// returns it: cancelled, or as it had ended before. A run still queued
// never runs; a running one has its call cancelled where it runs (an async
// def gets asyncio.CancelledError, a generator's finally runs; a plain def
// runs on, its result dropped). The server answers once the run has ended,
// or after 5 s with the run not ended yet while the cancel is on its way:
// then WaitRun for its end. A call that is not a background run is a
// VALIDATION_ERROR (HTTP 400).
func (c *Client) CancelRun(ctx context.Context, runID string) (*Run, error) {
	u, e := c.runPath(runID, "/cancel")
	if e != nil {
		return nil, e
	}
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	var run *Run
	e = c.do(ctx, http.MethodPost, u, nil, nil, func(status int, h http.Header, b []byte) *Error {
		var e *Error
		run, e = parseRun(status, h, b)
		return e
	})
	if e != nil {
		return nil, e
	}
	return run, nil
}

// runPath returns the URL of run id's route tail ("", "/wait", ...).
func (c *Client) runPath(id, tail string) (string, *Error) {
	if id == "" {
		return "", &Error{Code: CodeValidation, Message: "a run id is required"}
	}
	return c.restBase + "/runs/" + url.PathEscape(id) + tail, nil
}

// checkIdempotencyKey returns what is wrong with an Idempotency-Key, or "".
func checkIdempotencyKey(k string) string {
	if len(k) > 255 {
		return "at most 255 characters, got " + strconv.Itoa(len(k))
	}
	for _, c := range []byte(k) {
		if c < 0x20 || c > 0x7e {
			return "printable ASCII only (a UUID is a good key)"
		}
	}
	if strings.TrimSpace(k) != k {
		return "no leading or trailing spaces"
	}
	return ""
}

// newUUID returns a random (version 4) UUID.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails: crypto/rand crashes the program rather than return an error
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}

// runJSON is a run as the server sends it (wire.RunJSON, and the create's
// {run_id, invocation_id, agent_id, status, status_url}).
type runJSON struct {
	RunID        string `json:"run_id"`
	InvocationID string `json:"invocation_id"`
	AgentID      string `json:"agent_id"`
	InputData    *struct {
		InputArgs   json.RawMessage `json:"input_args"`
		InputKwargs json.RawMessage `json:"input_kwargs"`
	} `json:"input_data"`
	OutputData        json.RawMessage `json:"output_data"`
	ErrorDetail       *string         `json:"error_detail"`
	RequestTimestamp  *string         `json:"request_timestamp"`
	ResponseTimestamp *string         `json:"response_timestamp"`
	ExecutionTimeMS   *float64        `json:"execution_time_ms"`
	Status            string          `json:"status"`
	EntrypointTag     string          `json:"entrypoint_tag"`
	SDKType           string          `json:"sdk_type"`
	Background        bool            `json:"background"`
	Attempts          int             `json:"attempts"`
	StartedAt         *string         `json:"started_at"`
	IdempotencyKey    *string         `json:"idempotency_key"`
	Webhook           *string         `json:"webhook"`
	ThreadID          *string         `json:"thread_id"`
	UserID            *string         `json:"user_id"`
	StatusURL         string          `json:"status_url"`
}

// parseRun parses an enveloped answer whose data is a run.
func parseRun(status int, h http.Header, b []byte) (*Run, *Error) {
	data, e := parseEnvelope(status, h, b)
	if e != nil {
		return nil, e
	}
	var j runJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return nil, &Error{Code: CodeInternal, Status: status, Message: "malformed run: " + err.Error(), Err: ErrMalformed}
	}
	if j.RunID == "" || j.Status == "" {
		return nil, malformed("malformed run: no run_id or status", status)
	}
	r := &Run{
		RunID: j.RunID, InvocationID: j.InvocationID, AgentID: j.AgentID, EntrypointTag: j.EntrypointTag,
		Status: j.Status, ErrorDetail: deref(j.ErrorDetail), Background: j.Background, Attempts: j.Attempts,
		IdempotencyKey: deref(j.IdempotencyKey), Webhook: deref(j.Webhook), ThreadID: deref(j.ThreadID),
		UserID: deref(j.UserID), SDKType: j.SDKType, StatusURL: j.StatusURL,
	}
	if j.InputData != nil {
		if v, _ := decodeJSON(orNull(j.InputData.InputArgs)); v != nil {
			r.Input.Args, _ = v.([]any)
		}
		if v, _ := decodeJSON(orNull(j.InputData.InputKwargs)); v != nil {
			r.Input.Kwargs, _ = v.(map[string]any)
		}
	}
	if len(j.OutputData) > 0 && string(j.OutputData) != "null" {
		v, e := decodeJSON(j.OutputData)
		if e != nil {
			e.Status = status
			return nil, e
		}
		r.Output, r.OutputJSON = v, j.OutputData
	}
	if j.ExecutionTimeMS != nil {
		r.ExecutionTime = time.Duration(*j.ExecutionTimeMS * float64(time.Millisecond))
	}
	for _, ts := range []struct {
		raw *string
		t   *time.Time
	}{{j.RequestTimestamp, &r.RequestTime}, {j.StartedAt, &r.StartedAt}, {j.ResponseTimestamp, &r.ResponseTime}} {
		t, ok := parseWireTime(deref(ts.raw))
		if !ok {
			return nil, malformed("malformed run: bad timestamp "+strconv.Quote(deref(ts.raw)), status)
		}
		*ts.t = t
	}
	return r, nil
}

// parseWireTime parses a wire timestamp, ISO 8601 in UTC without a zone
// (2026-11-24T10:00:00.123456) or RFC 3339; "" is the zero time.
func parseWireTime(s string) (time.Time, bool) {
	if s == "" {
		return time.Time{}, true
	}
	for _, layout := range []string{"2006-01-02T15:04:05.999999999", time.RFC3339Nano} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), true
		}
	}
	return time.Time{}, false
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func orNull(raw json.RawMessage) json.RawMessage {
	if len(raw) == 0 {
		return json.RawMessage("null")
	}
	return raw
}
