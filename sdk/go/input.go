package runagent

import (
	"bytes"
	"encoding/json"
	"maps"
)

// Input is what the agent function is called with: fn(*Args, **Kwargs) in
// Python terms. Values are encoded with encoding/json (struct tags apply);
// nil Args and Kwargs are sent as [] and {}.
//
//	runagent.Input{}                                            // fn()
//	runagent.Args("hello", 3)                                   // fn("hello", 3)
//	runagent.Kwargs(map[string]any{"message": "hi"})            // fn(message="hi")
//	runagent.Args("hello").With("role", "user")                 // fn("hello", role="user")
type Input struct {
	Args   []any
	Kwargs map[string]any
}

// Args returns an Input with positional arguments only.
func Args(args ...any) Input { return Input{Args: args} }

// Kwargs returns an Input with keyword arguments only. The map is used as
// is, not copied.
func Kwargs(kwargs map[string]any) Input { return Input{Kwargs: kwargs} }

// With returns a copy of in with the keyword argument key set to value. The
// receiver's map is not modified.
func (in Input) With(key string, value any) Input {
	kw := make(map[string]any, len(in.Kwargs)+1)
	maps.Copy(kw, in.Kwargs)
	kw[key] = value
	in.Kwargs = kw
	return in
}

// WithArgs returns a copy of in with args appended to the positional
// arguments. The receiver's slice is not modified.
func (in Input) WithArgs(args ...any) Input {
	a := make([]any, 0, len(in.Args)+len(args))
	a = append(a, in.Args...)
	in.Args = append(a, args...)
	return in
}

// runRequest is the body of POST /run, of POST /runs (a background run),
// of the SSE POST /run-stream and the first WebSocket frame. The fields
// after TimeoutSeconds are sent only when set.
type runRequest struct {
	EntrypointTag  string         `json:"entrypoint_tag"`
	InputArgs      []any          `json:"input_args"`
	InputKwargs    map[string]any `json:"input_kwargs"`
	TimeoutSeconds int            `json:"timeout_seconds,omitempty"`

	// The client's user (Config.UserID, Config.PersistentMemory):
	// PersistentMemory is set exactly when UserID is.
	UserID           string `json:"user_id,omitempty"`
	PersistentMemory *bool  `json:"persistent_memory,omitempty"`

	// A background run's options (RunOptions).
	Webhook   string `json:"webhook,omitempty"`
	ThreadID  string `json:"thread_id,omitempty"`
	Multitask string `json:"multitask,omitempty"`

	// "continue" for a stream that outlives its client (RunStreamResumable).
	OnDisconnect string `json:"on_disconnect,omitempty"`
}

var (
	emptyArgs   = []any{}
	emptyKwargs = map[string]any{}
)

// newRequest returns the request calling the client's entrypoint with in,
// with the client's user.
func (c *Client) newRequest(in Input, timeoutSeconds int) runRequest {
	req := runRequest{EntrypointTag: c.tag, InputArgs: in.Args, InputKwargs: in.Kwargs, TimeoutSeconds: timeoutSeconds}
	if c.userID != "" {
		req.UserID = c.userID
		pm := c.persistentMemory
		req.PersistentMemory = &pm
	}
	return req
}

// encodeRequest appends req as JSON to buf (with a trailing newline).
// Non-ASCII and HTML characters are written as is; nil input args and
// kwargs are written as [] and {}.
func encodeRequest(buf *bytes.Buffer, req *runRequest) *Error {
	if req.InputArgs == nil {
		req.InputArgs = emptyArgs
	}
	if req.InputKwargs == nil {
		req.InputKwargs = emptyKwargs
	}
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(req); err != nil {
		return &Error{Code: CodeValidation, Message: "cannot encode input as JSON: " + err.Error(), Err: err}
	}
	return nil
}
