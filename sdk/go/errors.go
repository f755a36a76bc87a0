package runagent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Error codes carried by *Error. They are the codes of the RunAgent wire
// protocol (envelope error.code and WebSocket error frames); the client also
// uses them for failures it detects itself.
const (
	CodeAuthentication = "AUTHENTICATION_ERROR" // missing or invalid API key (HTTP 401)
	CodePermission     = "PERMISSION_ERROR"     // key not allowed to use the agent (HTTP 403)
	CodeValidation     = "VALIDATION_ERROR"     // bad input or config; never retried (HTTP 400, 413, 422)
	CodeNotFound       = "NOT_FOUND"            // unknown agent, entrypoint or local registry entry (HTTP 404)
	CodeRateLimit      = "RATE_LIMIT_EXCEEDED"  // retried, honouring Retry-After (HTTP 429)
	CodeTimeout        = "TIMEOUT"              // a deadline passed, the client's or the server's (HTTP 504)
	CodeConnection     = "CONNECTION_ERROR"     // transport failure, or a stream closed before completion
	CodeAgentCrashed   = "AGENT_CRASHED"        // the agent process died (HTTP 502)
	CodeOverloaded     = "OVERLOADED"           // retried, honouring Retry-After (HTTP 503)
	CodeInternal       = "INTERNAL_ERROR"       // the agent raised, or anything else (HTTP 500)
	CodeCancelled      = "CANCELLED"            // the caller's context was cancelled, or the stream closed

	// CodeAlreadyExists (HTTP 409) is a background run's create refused: its
	// Idempotency-Key was used by a run with another entrypoint or input, or
	// its thread has a run queued or running (RunOptions).
	CodeAlreadyExists = "RESOURCE_ALREADY_EXISTS"
)

// Sentinel causes, reachable with errors.Is through (*Error).Unwrap.
var (
	// ErrMalformed is the cause of an *Error for a response, frame or
	// structured value that does not follow the wire protocol.
	ErrMalformed = errors.New("runagent: malformed wire data")

	// ErrChunkFailed is the cause of a per-chunk stream error: the server
	// could not serialize one chunk (an error frame "Chunk serialization
	// failed: ...") or the client could not decode one. The stream goes on;
	// see Stream.ChunkErr.
	ErrChunkFailed = errors.New("runagent: stream chunk failed")
)

// Error is the error type returned by every Client method. Inspect it with
// errors.As, or with IsCode and CodeOf:
//
//	var e *runagent.Error
//	if errors.As(err, &e) && e.Code == runagent.CodeRateLimit {
//		time.Sleep(e.RetryAfter)
//	}
type Error struct {
	// Code is one of the Code constants, or any other code a server sent.
	Code string
	// Message is the server's message (for INTERNAL_ERROR from /run it
	// carries the agent's exception text) or the client's description.
	Message string
	// Status is the HTTP status, 0 when there was no HTTP response (a
	// transport failure, a WebSocket frame, a check done by the client).
	Status int
	// Details is the envelope's error.details (or FastAPI's "detail" list),
	// decoded as generic JSON.
	Details any
	// Field is the envelope's error.field: the request field at fault.
	Field string
	// RequestID is the envelope's request_id, when there was one.
	RequestID string
	// RetryAfter is the server's Retry-After, zero when it sent none.
	RetryAfter time.Duration
	// Err is the underlying cause (a net error, context.Canceled,
	// ErrMalformed, ErrChunkFailed, ...), or nil.
	Err error

	retryable bool // the failure may be retried under the RetryPolicy
}

// Error formats the error as "runagent: CODE (HTTP n): message".
func (e *Error) Error() string {
	var b strings.Builder
	b.Grow(len("runagent: ") + len(e.Code) + len(e.Message) + 16)
	b.WriteString("runagent: ")
	if e.Code != "" {
		b.WriteString(e.Code)
	}
	if e.Status >= 300 {
		b.WriteString(" (HTTP ")
		b.WriteString(strconv.Itoa(e.Status))
		b.WriteByte(')')
	}
	msg := e.Message
	if msg == "" && e.Err != nil {
		msg = e.Err.Error()
	}
	if msg != "" {
		if e.Code != "" || e.Status >= 300 {
			b.WriteString(": ")
		}
		b.WriteString(msg)
	}
	return b.String()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// IsCode reports whether err is (or wraps) an *Error with the given code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// CodeOf returns the code of the *Error in err's chain: "" for a nil error,
// INTERNAL_ERROR for an error that is not an *Error.
func CodeOf(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// IsChunkError reports whether err is a per-chunk stream error, after which
// the stream goes on.
func IsChunkError(err error) bool { return errors.Is(err, ErrChunkFailed) }

// codeForStatus maps an HTTP status without an envelope code to a code.
func codeForStatus(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return CodeAuthentication
	case http.StatusForbidden:
		return CodePermission
	case http.StatusNotFound:
		return CodeNotFound
	case http.StatusConflict:
		return CodeAlreadyExists
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusUnprocessableEntity:
		return CodeValidation
	case http.StatusTooManyRequests:
		return CodeRateLimit
	case http.StatusServiceUnavailable:
		return CodeOverloaded
	case http.StatusGatewayTimeout:
		return CodeTimeout
	default:
		return CodeInternal
	}
}

// retryableStatus reports whether a response status may be retried.
func retryableStatus(status int) bool {
	return status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable
}

// errOrNil converts a possibly nil *Error to an error without the typed-nil trap.
func errOrNil(e *Error) error {
	if e == nil {
		return nil
	}
	return e
}

func malformed(format string, status int) *Error {
	return &Error{Code: CodeInternal, Message: format, Status: status, Err: ErrMalformed}
}

// ctxError is the error for a call whose context is done.
func ctxError(ctx context.Context) *Error {
	err := ctx.Err()
	if err == nil {
		err = context.Canceled
	}
	msg := "request cancelled"
	code := CodeCancelled
	if errors.Is(err, context.DeadlineExceeded) {
		msg, code = "deadline exceeded", CodeTimeout
	}
	if cause := context.Cause(ctx); cause != nil && cause != err {
		msg += ": " + cause.Error()
	}
	return &Error{Code: code, Message: msg, Err: err}
}

// transportError classifies an error from http.Client.Do or a WebSocket dial,
// that is a failure before any response arrived.
func transportError(ctx context.Context, err error) *Error {
	if ctx.Err() != nil {
		return ctxError(ctx)
	}
	e := &Error{Code: CodeConnection, Message: "connection failed: " + err.Error(), Err: err, retryable: true}
	var dnsErr *net.DNSError
	var certErr *tls.CertificateVerificationError
	var unknownAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var recErr tls.RecordHeaderError
	var opErr *net.OpError
	var netErr net.Error
	switch {
	case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		e.retryable = false
	case errors.As(err, &certErr), errors.As(err, &unknownAuth), errors.As(err, &hostErr), errors.As(err, &recErr):
		e.retryable = false
	case errors.As(err, &opErr) && opErr.Op == "dial":
		// Refused, unreachable or a dial timeout: nothing was sent.
	case errors.As(err, &netErr) && netErr.Timeout():
		// The request may be running on the server: not retried.
		e.Code, e.Message, e.retryable = CodeTimeout, "request timed out: "+err.Error(), false
	}
	return e
}

// parseRetryAfter parses a Retry-After header: delay-seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseFloat(v, 64); err == nil {
		if secs <= 0 || secs != secs {
			return 0
		}
		if secs > 365*24*3600 {
			secs = 365 * 24 * 3600
		}
		return time.Duration(secs * float64(time.Second))
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}
