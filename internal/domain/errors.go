// Package domain holds what every layer of RunAgent shares, at the bottom of
// the import graph: the types (agents and their entrypoints, invocations,
// API keys, limits and usage, instance states), the error type with its
// stable codes, and the interfaces at the seams between the layers (the
// dispatcher between the gateway and where calls run, the stores). It
// imports nothing of the project.
package domain

import (
	"errors"
	"fmt"
	"time"
)

// Code is a stable error code, carried to clients in envelope.error.code
// and WebSocket error frames (../shared/docs/wire-v1.md and beyond).
type Code string

// The codes.
const (
	CodeValidation     Code = "VALIDATION_ERROR"     // the request is wrong: a field, a body, a bundle
	CodeAuthentication Code = "AUTHENTICATION_ERROR" // no key, a malformed, unknown or revoked key
	CodePermission     Code = "PERMISSION_ERROR"     // a valid key without the right
	CodeNotFound       Code = "NOT_FOUND"            // no such agent, entrypoint, invocation (or another tenant's)
	CodeAlreadyExists  Code = "RESOURCE_ALREADY_EXISTS"
	CodeRateLimit      Code = "RATE_LIMIT_EXCEEDED" // a key's or tenant's limit; RetryAfter says when to retry
	CodeTimeout        Code = "TIMEOUT"             // the call outlasted its timeout
	CodeConnection     Code = "CONNECTION_ERROR"
	CodeAgentCrashed   Code = "AGENT_CRASHED"  // the instance died or hung under the call
	CodeResourceLimit  Code = "RESOURCE_LIMIT" // an instance or a call went over a limit (Limit says which)
	CodeOverloaded     Code = "OVERLOADED"     // no capacity now; RetryAfter says when to retry
	CodeInternal       Code = "INTERNAL_ERROR" // the agent raised, or the server failed
	CodeCancelled      Code = "CANCELLED"      // the caller went away
)

// Limit names the limit of a RESOURCE_LIMIT error.
type Limit string

// The limits.
const (
	LimitMemory Limit = "memory"
	LimitCPU    Limit = "cpu"
	LimitPids   Limit = "pids"
	LimitResult Limit = "result" // one result's size
	LimitChunk  Limit = "chunk"  // one stream chunk's size
	LimitDisk   Limit = "disk"   // a user's persistent folders' quota
	LimitOther  Limit = "other"
)

// Error is a failure with a code and a message safe to show the caller.
type Error struct {
	Code    Code
	Message string
	Field   string // the request field at fault, when there is one
	Err     error  // the cause, for logs; never sent to clients
	// RetryAfter, when set, goes out as the Retry-After header (429, 503).
	RetryAfter time.Duration
	// Limit is the limit a RESOURCE_LIMIT error is about.
	Limit Limit
}

func (e *Error) Error() string {
	if e.Field != "" {
		return e.Field + ": " + e.Message
	}
	return e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf builds an *Error with a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// CodeOf returns the code of err, INTERNAL_ERROR when it has none.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// ErrNotFound is what the stores return for a record that does not exist
// (an invocation, an agent, a key); errors.Is finds it, CodeOf says
// NOT_FOUND.
var ErrNotFound = &Error{Code: CodeNotFound, Message: "not found"}
