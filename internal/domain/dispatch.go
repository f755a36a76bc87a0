package domain

import "context"

// Chunk is one chunk of a stream: the structured string of a value (wire
// v1), or, with EncodeError, the JSON {"message"} of a chunk the runner
// could not encode (the stream goes on).
type Chunk struct {
	Body        []byte
	EncodeError bool
}

// ChunkFunc receives a stream's chunks in order. Returning an error stops
// the stream: the agent's generator is cancelled.
type ChunkFunc func(Chunk) error

// AgentError is the agent's own exception in a call (on the wire an
// INTERNAL_ERROR whose message is the exception's text).
type AgentError struct {
	Type      string // the exception's class, "ValueError"
	Message   string // str(exc)
	Traceback string // the agent's frames, for logs
}

func (e *AgentError) Error() string {
	if e.Type == "" {
		return e.Message
	}
	return e.Type + ": " + e.Message
}

// Invoker runs the entrypoints of one agent version: a pool of instances,
// one runner.
//
// Call returns the result's structured string (wire v1). Stream hands each
// chunk to fn in order and returns how many the agent produced; started,
// when not nil, is called once the call is on its way (before any chunk).
// Ending ctx cancels the call in the agent (a generator's finally runs).
// Errors: *AgentError when the agent raised; *Error with NOT_FOUND (the
// entrypoint is unknown or failed to load), VALIDATION_ERROR, TIMEOUT (the
// cause of ctx), OVERLOADED (no capacity, RetryAfter set), AGENT_CRASHED
// (the instance died or hung under the call), RESOURCE_LIMIT (Limit set);
// ctx's cause when the caller went away.
type Invoker interface {
	Call(ctx context.Context, tag string, args, kwargs []byte) ([]byte, error)
	Stream(ctx context.Context, tag string, args, kwargs []byte, started func(), fn ChunkFunc) (int, error)
}

// Target names the agent version a call is for.
type Target struct {
	AgentID string
	Version int
	// User, when set, is the user whose persistent folders the call sees
	// (user_id with persistent_memory): the call runs on an instance of
	// that user's own.
	User string
}

// Dispatcher sends calls to where an agent version runs: its pool in this
// process, a node over NATS. It is the seam between the gateway and
// execution; every implementation passes dispatchtest.
//
// Call and Stream are Invoker's for the target, with the same errors, plus
// NOT_FOUND when the target version does not run (anywhere).
type Dispatcher interface {
	Call(ctx context.Context, t Target, tag string, args, kwargs []byte) ([]byte, error)
	Stream(ctx context.Context, t Target, tag string, args, kwargs []byte, started func(), fn ChunkFunc) (int, error)
}

type invocationKey struct{}

// WithInvocation labels the calls made with ctx with an invocation id, so
// that what the agent prints during them is attributed to it, wherever the
// call runs.
func WithInvocation(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, invocationKey{}, id)
}

// InvocationOf returns the label WithInvocation put on ctx ("" if none).
func InvocationOf(ctx context.Context) string {
	id, _ := ctx.Value(invocationKey{}).(string)
	return id
}

type requestKey struct{}

// Request is what a call carries of the request it serves, across
// servers: its id (X-Request-Id) and its W3C trace context (the
// traceparent header), so that a node's logs and traces join the gateway's.
type Request struct{ ID, TraceParent string }

// WithRequest puts r on ctx.
func WithRequest(ctx context.Context, r Request) context.Context {
	return context.WithValue(ctx, requestKey{}, r)
}

// RequestOf returns what WithRequest put on ctx (zero if nothing).
func RequestOf(ctx context.Context) Request {
	r, _ := ctx.Value(requestKey{}).(Request)
	return r
}

// UserElsewhere is the error of a call with a user's persistent memory
// that reached a node other than the one holding the user's folders: the
// caller sends it again to Node. The call did not run.
type UserElsewhere struct{ Node string }

func (e *UserElsewhere) Error() string {
	return "this user's persistent folders are held by node " + e.Node
}
