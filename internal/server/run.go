package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
	"unsafe"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/wire"
)

// runRequest is the body of POST /run and the first WebSocket message.
// Unknown fields (id, ...) are accepted and ignored, as the original does.
// user_id with persistent_memory true runs the call on an instance of the
// user's own, which sees the user's persistent folders.
type runRequest struct {
	EntrypointTag    *string         `json:"entrypoint_tag"`
	InputArgs        json.RawMessage `json:"input_args"`
	InputKwargs      json.RawMessage `json:"input_kwargs"`
	TimeoutSeconds   *float64        `json:"timeout_seconds"`
	AsyncExecution   bool            `json:"async_execution"`
	UserID           *string         `json:"user_id"`
	PersistentMemory *bool           `json:"persistent_memory"`
}

// maxUserID bounds a user id (it names a folder, hashed).
const maxUserID = 256

// user is the user whose persistent folders the call sees, "" for none.
func (r runRequest) user() string {
	if r.PersistentMemory == nil || !*r.PersistentMemory || r.UserID == nil {
		return ""
	}
	return *r.UserID
}

// target is where the call goes: the agent's version, for the user.
func (r runRequest) target(a *Agent) domain.Target {
	t := a.Target()
	t.User = r.user()
	return t
}

// decodeRunRequest parses and checks a request body; the error names the
// field at fault.
func decodeRunRequest(body []byte) (runRequest, *domain.Error) {
	var req runRequest
	if len(bytes.TrimSpace(body)) == 0 {
		return req, &domain.Error{Code: domain.CodeValidation,
			Message: `request body is empty; send a JSON object like {"entrypoint_tag": "...", "input_args": [], "input_kwargs": {}}`}
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return req, jsonError(err)
	}
	if req.EntrypointTag == nil {
		return req, &domain.Error{Code: domain.CodeValidation, Field: "entrypoint_tag", Message: "required: the tag of the entrypoint to run"}
	}
	var e *domain.Error
	if req.InputArgs, e = checkKind(req.InputArgs, '[', "input_args", "a list", "[]"); e != nil {
		return req, e
	}
	if req.InputKwargs, e = checkKind(req.InputKwargs, '{', "input_kwargs", "an object", "{}"); e != nil {
		return req, e
	}
	if req.TimeoutSeconds != nil && *req.TimeoutSeconds < 0 {
		return req, &domain.Error{Code: domain.CodeValidation, Field: "timeout_seconds", Message: "must not be negative"}
	}
	if req.PersistentMemory != nil && *req.PersistentMemory {
		switch {
		case req.UserID == nil || *req.UserID == "":
			return req, &domain.Error{Code: domain.CodeValidation, Field: "user_id",
				Message: "required with persistent_memory: the user whose persistent folders the run sees"}
		case len(*req.UserID) > maxUserID:
			return req, &domain.Error{Code: domain.CodeValidation, Field: "user_id", Message: fmt.Sprintf("is %d bytes; at most %d", len(*req.UserID), maxUserID)}
		}
	}
	return req, nil
}

// checkKind checks that raw is a JSON value starting with open (or null/absent,
// which become the default).
func checkKind(raw json.RawMessage, open byte, field, want, def string) (json.RawMessage, *domain.Error) {
	if len(raw) == 0 || string(raw) == "null" {
		return json.RawMessage(def), nil
	}
	if raw[0] != open {
		return nil, &domain.Error{Code: domain.CodeValidation, Field: field, Message: "expected " + want + ", got " + jsonKind(raw[0])}
	}
	return raw, nil
}

func jsonKind(c byte) string {
	switch c {
	case '{':
		return "an object"
	case '[':
		return "a list"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}

// jsonError explains an encoding/json error in the request's terms.
func jsonError(err error) *domain.Error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return &domain.Error{Code: domain.CodeValidation, Message: fmt.Sprintf("request body is not valid JSON: %v (at byte %d)", se, se.Offset)}
	case errors.As(err, &te):
		if te.Field == "" {
			return &domain.Error{Code: domain.CodeValidation, Message: "request body must be a JSON object, got " + articled(te.Value)}
		}
		want := map[string]string{"entrypoint_tag": "a string", "timeout_seconds": "a number", "user_id": "a string",
			"persistent_memory": "true or false"}[te.Field]
		if want == "" {
			want = te.Type.String()
		}
		return &domain.Error{Code: domain.CodeValidation, Field: te.Field, Message: "expected " + want + ", got " + articled(te.Value)}
	case errors.Is(err, io.ErrUnexpectedEOF):
		return &domain.Error{Code: domain.CodeValidation, Message: "request body is not valid JSON: it ends too early"}
	}
	return &domain.Error{Code: domain.CodeValidation, Message: "request body is not valid JSON: " + err.Error()}
}

func articled(kind string) string {
	switch kind {
	case "object", "array", "array of", "":
		return "an " + kind
	case "number", "string", "bool":
		return "a " + kind
	}
	return kind
}

// readBody reads a request body up to the server's limit.
// The status is 413 when the body is too large.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, int, *domain.Error) {
	limit := s.cfg.MaxBodyBytes
	tooLarge := &domain.Error{Code: domain.CodeValidation, Message: fmt.Sprintf(
		"request body is larger than the limit of %s; send less data or raise the limit (runagent serve --max-body)", byteSize(limit))}
	if r.ContentLength > limit {
		return nil, http.StatusRequestEntityTooLarge, tooLarge
	}
	size := r.ContentLength
	if size < 0 {
		size = 512
	}
	buf := bytes.NewBuffer(make([]byte, 0, size+1))
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			return nil, http.StatusRequestEntityTooLarge, tooLarge
		}
		return nil, http.StatusBadRequest, &domain.Error{Code: domain.CodeValidation, Message: "could not read the request body: " + err.Error()}
	}
	return buf.Bytes(), 0, nil
}

func byteSize(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

func (s *Server) handleRun(w http.ResponseWriter, r *http.Request, a *Agent) {
	start := time.Now()
	body, status, e := s.readBody(w, r)
	if e != nil {
		s.writeError(w, status, e)
		return
	}
	req, e := decodeRunRequest(body)
	if e != nil {
		s.writeError(w, http.StatusBadRequest, e)
		return
	}
	tag := *req.EntrypointTag
	streaming, ok := a.tags[tag]
	if !ok {
		s.writeError(w, http.StatusNotFound, &domain.Error{Code: domain.CodeNotFound, Message: fmt.Sprintf("Entrypoint %s not found", tag)})
		return
	}
	if streaming {
		s.writeError(w, http.StatusBadRequest, &domain.Error{Code: domain.CodeValidation,
			Message: fmt.Sprintf("Can't use Streaming Entrypoint `%s` through non-streaming endpoint.", tag)})
		return
	}

	inv := domain.Invocation{
		ID: newInvocationID(), AgentID: a.ID, EntrypointTag: tag, SDKType: s.cfg.SDKType,
		InputArgs: req.InputArgs, InputKwargs: req.InputKwargs, Status: domain.StatusPending,
		RequestTime: start, ClientInfo: a.clientInfo,
	}
	if req.AsyncExecution && s.cfg.Async != nil {
		s.runAsync(w, r, a, inv, RunOptions{User: req.user()}, false)
		return
	}
	s.cfg.Recorder.Start(inv)

	ctx, cancel := s.callContext(domain.WithInvocation(r.Context(), inv.ID), a, deref(req.TimeoutSeconds))
	result, err := s.cfg.Dispatcher.Call(ctx, req.target(a), tag, req.InputArgs, req.InputKwargs)
	cancel()
	inv.ResponseTime = time.Now()
	elapsed := inv.ResponseTime.Sub(start)
	inv.ExecutionMS = float64(elapsed.Microseconds()) / 1000

	if err == nil {
		inv.Status = domain.StatusCompleted
		inv.Output = payloadOf(result)
		s.finish(r.Context(), inv)
		bp := s.bufs.Get().(*[]byte)
		// result is not changed after this: no copy into a string.
		data := wire.AppendString((*bp)[:0], unsafe.String(unsafe.SliceData(result), len(result)))
		s.writeEnvelope(w, http.StatusOK, &wire.Envelope{Success: true, Data: data, Message: wire.MessageRunOK})
		s.putBuf(bp, data)
		s.cfg.OnCall(a.Agent, tag, "", elapsed)
		return
	}

	we, agentRaised := s.callFailure(err)
	inv.Status = domain.StatusFailed
	if agentRaised {
		detail := fmt.Sprintf("Server error running agent %s: %s", a.ID, we.Message)
		inv.ErrorDetail = detail
		s.finish(r.Context(), inv)
		s.writeEnvelope(w, http.StatusOK, &wire.Envelope{Error: &domain.Error{Code: domain.CodeInternal, Message: "Agent execution failed: " + detail}})
	} else {
		inv.ErrorDetail = string(we.Code) + ": " + we.Message
		if we.Code != domain.CodeCancelled {
			s.finish(r.Context(), inv)
			s.writeError(w, wire.HTTPStatus(we.Code), we)
		} else {
			s.cfg.Recorder.Finish(inv) // nobody is answered
		}
		s.log.Warn("call failed", "tag", tag, "invocation_id", inv.ID, "code", we.Code, "error", we.Message)
	}
	s.cfg.OnCall(a.Agent, tag, we.Code, elapsed)
}

// finish records a call's outcome before its answer goes out. With
// DurableHistory it waits for the commit: no call that was answered is
// missing from the history after a crash (the wait shares commits with
// the calls finishing meanwhile).
func (s *Server) finish(ctx context.Context, inv domain.Invocation) {
	if !s.cfg.DurableHistory {
		s.cfg.Recorder.Finish(inv)
		return
	}
	if err := s.cfg.Recorder.FinishDurable(context.WithoutCancel(ctx), inv); err != nil {
		s.log.Error("the history could not record an answered call", "invocation_id", inv.ID, "error", err)
	}
}

// runAsync answers an async invocation once it is durable: 202 and the id to
// fetch its result with. asRun answers as POST /runs does (a Location, the
// run's URL); the wire route keeps the original's status_url beside it.
func (s *Server) runAsync(w http.ResponseWriter, r *http.Request, a *Agent, inv domain.Invocation, opts RunOptions, asRun bool) {
	inv.SDKType = "async"
	key, e := idempotencyKey(r)
	if e != nil {
		s.WriteError(w, e)
		return
	}
	opts.IdempotencyKey = key
	id, replayed, err := s.cfg.Async(r.Context(), a.Agent, inv, opts)
	if err != nil {
		we, _ := s.callFailure(err)
		s.WriteError(w, we)
		return
	}
	runURL := "/api/v1/runs/" + id
	if s.cfg.Runs != nil {
		w.Header().Set("Location", runURL)
	}
	if replayed {
		w.Header().Set("Idempotent-Replayed", "true")
	}
	data := map[string]any{"run_id": id, "invocation_id": id, "agent_id": a.ID, "status": domain.StatusPending,
		"status_url": "/api/v1/invocations/" + id}
	message := "Agent execution accepted; fetch the result at status_url"
	if asRun {
		data["status_url"] = runURL
		message = "Run accepted; wait for it at " + runURL + "/wait"
	}
	s.WriteEnvelope(w, http.StatusAccepted, data, message)
}

// idempotencyKey is the request's Idempotency-Key ("" if none): printable
// ASCII, at most 255 characters.
func idempotencyKey(r *http.Request) (string, *domain.Error) {
	k := r.Header.Get("Idempotency-Key")
	if len(k) > 255 {
		return "", &domain.Error{Code: domain.CodeValidation, Field: "Idempotency-Key", Message: fmt.Sprintf("at most 255 characters, got %d", len(k))}
	}
	for _, c := range []byte(k) {
		if c < 0x20 || c > 0x7e {
			return "", &domain.Error{Code: domain.CodeValidation, Field: "Idempotency-Key", Message: "printable ASCII only (a UUID is a good key)"}
		}
	}
	return k, nil
}

func deref(f *float64) float64 {
	if f == nil {
		return 0
	}
	return *f
}

// payloadOf returns the JSON value inside a structured string, recorded as
// the invocation's output_data.
func payloadOf(structured []byte) json.RawMessage {
	if p, ok := runnerPayload(structured); ok {
		return p
	}
	var v struct{ Payload string }
	if json.Unmarshal(structured, &v) != nil || !json.Valid([]byte(v.Payload)) {
		return nil
	}
	return json.RawMessage(v.Payload)
}

// runnerPayload is payloadOf's fast path for the runner's own encoding,
// `{"type": "T", "payload": "JSON"}` (pyrunner's structured_bytes): the
// payload string's body unescaped without decoding the object. ok is false
// for anything else, which the general path then reads.
func runnerPayload(b []byte) (json.RawMessage, bool) {
	const head, mid = `{"type": "`, `", "payload": "`
	if !bytes.HasPrefix(b, []byte(head)) || !bytes.HasSuffix(b, []byte(`"}`)) {
		return nil, false
	}
	i := bytes.Index(b[len(head):], []byte(mid))
	if i < 0 || bytes.IndexByte(b[len(head):len(head)+i], '\\') >= 0 {
		return nil, false
	}
	lit := b[len(head)+i+len(mid)-1 : len(b)-1] // the payload's string literal, quotes included
	var out []byte
	if bytes.IndexByte(lit, '\\') < 0 {
		out = lit[1 : len(lit)-1]
	} else {
		var s string
		if json.Unmarshal(lit, &s) != nil {
			return nil, false
		}
		out = []byte(s)
	}
	if !json.Valid(out) {
		return nil, false
	}
	return out, true
}
