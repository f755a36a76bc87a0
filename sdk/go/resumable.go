package runagent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"iter"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
)

var hdrSSE = []string{"text/event-stream"}

// ResumableStream is one run of a streaming entrypoint over Server-Sent
// Events that survives dropped connections (runagent server): it is started
// with POST /api/v1/agents/{id}/run-stream and "on_disconnect": "continue",
// so that the server runs it on while the client is away, and after a lost
// connection it re-joins with GET /api/v1/runs/{id}/stream and the id of the
// last event it received (Last-Event-ID), getting exactly the events after
// it. Each chunk is yielded once, in order, however often the connection
// drops. See docs/wire-extensions.md, "Streaming over HTTP".
//
// Read it like a Stream:
//
//	for st.Next() {
//		if err := st.ChunkErr(); err != nil {
//			continue // one chunk was lost; the stream goes on
//		}
//		fmt.Println(st.Value())
//	}
//	if err := st.Err(); err != nil { ... }
//
// or with range over Chunks. Chunks are decoded like Stream's (see
// DecodeStructured for the Go types).
//
// Next, Value, Decode, RawJSON, ChunkErr, Err, RunID, InvocationID and
// LastEventID must be called from one goroutine; Close may be called from
// any goroutine, also to abort a Next that is waiting.
type ResumableStream struct {
	c     *Client
	ctx   context.Context
	req   []byte // the body of the POST that starts the stream
	retry retrier
	fresh bool // the next failure starts a fresh retry budget

	mu     sync.Mutex // guards body, cancel and closed
	body   io.ReadCloser
	cancel context.CancelFunc // of the current connection's request
	closed bool

	// Used by the reading goroutine only.
	rd           *bufio.Reader
	line, data   bytes.Buffer
	started      bool // a 200 answer arrived: the run exists on the server
	runID        string
	invocationID string
	lastID       string // the id of the last chunk or chunk error yielded
	done         bool
	err          *Error

	// The current item.
	hasItem  bool
	payload  []byte
	val      any
	decoded  bool
	chunkErr *Error
}

// sseEvent is one Server-Sent Event. data is valid until the next event
// is read.
type sseEvent struct {
	kind  string
	id    string
	hasID bool
	data  []byte
}

// RunStreamResumable starts the streaming entrypoint over Server-Sent
// Events, re-joinable: the POST body is RunStream's (with the client's
// user) and "on_disconnect": "continue". It returns once the server has
// answered 200 with the run's id (Content-Location: /api/v1/runs/RUN_ID);
// errors the server reports before (NOT_FOUND for an unknown entrypoint,
// VALIDATION_ERROR from a server that keeps no event logs) are returned
// here. A tag that does not end in "_stream" is a VALIDATION_ERROR, without
// a request.
//
// Connection failures, 429 and 503 are retried under the Config's
// RetryPolicy: before the stream starts by posting again, after by
// re-joining the run from the last event received. The policy's budget
// (attempts, MaxElapsed) starts afresh after every connection that brought
// a chunk or a heartbeat. An error event ends the stream with its code
// (INTERNAL_ERROR when the agent raised; CANCELLED when the run was
// cancelled with CancelRun). ctx governs the whole stream: when it is done
// the connection is closed and Next returns false with a CANCELLED or
// TIMEOUT error; Config.Timeout does not bound the stream.
//
// Unlike RunStream, closing the stream (or losing the connection for good)
// does not stop the run: it goes on on the server, where CancelRun with
// RunID stops it and ResumeRunStream re-joins it.
func (c *Client) RunStreamResumable(ctx context.Context, in Input) (*ResumableStream, error) {
	if !IsStreamTag(c.tag) {
		return nil, &Error{Code: CodeValidation, Message: "entrypoint " + strconv.Quote(c.tag) + " is not a streaming entrypoint (its tag does not end in _stream): call Run or StartRun"}
	}
	buf := getBuf()
	r := c.newRequest(in, 0)
	r.OnDisconnect = "continue"
	if e := encodeRequest(buf, &r); e != nil {
		putBuf(buf)
		return nil, e
	}
	req := bytes.Clone(bytes.TrimSuffix(buf.Bytes(), []byte("\n")))
	putBuf(buf)
	s := &ResumableStream{c: c, ctx: ctx, req: req, fresh: true}
	return s.start()
}

// ResumeRunStream re-joins the stream of run runID that RunStreamResumable
// (or any client sending "on_disconnect": "continue") started, after the
// event lastEventID ("" for the first): GET /api/v1/runs/{id}/stream with
// Last-Event-ID. It may be called from another process, for as long as the
// server keeps the run's event log (24 h after its end by default). A run
// without an event log is NOT_FOUND. Retries are as in RunStreamResumable.
func (c *Client) ResumeRunStream(ctx context.Context, runID, lastEventID string) (*ResumableStream, error) {
	if runID == "" {
		return nil, &Error{Code: CodeValidation, Message: "a run id is required"}
	}
	s := &ResumableStream{c: c, ctx: ctx, runID: runID, lastID: lastEventID, started: true, fresh: true}
	return s.start()
}

func (s *ResumableStream) start() (*ResumableStream, error) {
	if e := s.open(); e != nil {
		if e = s.reconnect(e); e != nil {
			s.Close()
			return nil, e
		}
	}
	return s, nil
}

// Next advances to the next item (a chunk or a per-chunk error) and
// reports whether there is one. It returns false at the end of the stream,
// after which Err tells whether it completed.
func (s *ResumableStream) Next() bool {
	s.hasItem, s.payload, s.val, s.decoded, s.chunkErr = false, nil, nil, false, nil
	if s.done {
		return false
	}
	if s.isClosed() {
		s.done = true
		s.dropConn()
		return false
	}
	for {
		ev, e := s.readEvent()
		if e == nil {
			switch ev.kind {
			case "chunk", "chunk_error":
				if s.seen(&ev) {
					continue // sent again by a server that replayed too much
				}
				if ev.hasID {
					s.lastID = ev.id
				}
				s.fresh, s.hasItem = true, true
				if ev.kind == "chunk" {
					s.setChunk(ev.data)
				} else {
					s.chunkErr = chunkEventError(ev.data)
				}
				return true
			case "start":
				s.setIDs(ev.data)
				continue
			case "done":
				s.setIDs(ev.data)
				s.finish(nil)
				return false
			case "error":
				e = eventError(&ev)
			default:
				continue // unknown events are ignored
			}
		}
		if e.retryable {
			if e = s.reconnect(e); e == nil {
				continue
			}
		}
		s.finish(e)
		return false
	}
}

// Value returns the current chunk decoded like DecodeStructured, or nil
// when the current item is a per-chunk error (see ChunkErr).
func (s *ResumableStream) Value() any {
	if !s.decoded && s.payload != nil {
		s.val, _ = decodeJSON(s.payload)
		s.decoded = true
	}
	return s.val
}

// Decode unmarshals the current chunk into v with encoding/json. It returns
// the per-chunk error when the current item is one.
func (s *ResumableStream) Decode(v any) error {
	if s.chunkErr != nil {
		return s.chunkErr
	}
	if !s.hasItem {
		return &Error{Code: CodeValidation, Message: "ResumableStream.Decode called without a current chunk"}
	}
	return errOrNil(unmarshalInto(s.payload, v))
}

// RawJSON returns the current chunk as JSON text (nil for a per-chunk
// error). It is valid until the next call to Next.
func (s *ResumableStream) RawJSON() json.RawMessage { return s.payload }

// ChunkErr returns the current item's per-chunk error (an event
// chunk_error: the server could not encode that chunk, or a chunk the
// client could not decode), or nil when the current item is a chunk. It
// wraps ErrChunkFailed (see IsChunkError).
func (s *ResumableStream) ChunkErr() error { return errOrNil(s.chunkErr) }

// Err returns the error that ended the stream, or nil when it completed
// (or has not ended yet).
func (s *ResumableStream) Err() error { return errOrNil(s.err) }

// RunID returns the id of the stream's run (for GetRun, CancelRun and
// ResumeRunStream), known once RunStreamResumable has returned.
func (s *ResumableStream) RunID() string { return s.runID }

// InvocationID returns the server's invocation id, once known (on
// runagent server it is the run id).
func (s *ResumableStream) InvocationID() string { return s.invocationID }

// LastEventID returns the id of the last chunk or per-chunk error yielded
// ("" before the first): where ResumeRunStream would go on from.
func (s *ResumableStream) LastEventID() string { return s.lastID }

// Chunks returns an iterator over the stream's items, to use with range,
// as Stream.Chunks does: each chunk as (value, nil), each per-chunk error
// as (nil, err) with IsChunkError(err) true, and an error ending the
// stream as a last (nil, err). The stream is closed when the loop ends,
// also by break (the run goes on on the server).
func (s *ResumableStream) Chunks() iter.Seq2[any, error] {
	return func(yield func(any, error) bool) {
		defer s.Close()
		for s.Next() {
			if s.chunkErr != nil {
				if !yield(nil, s.chunkErr) {
					return
				}
				continue
			}
			if !yield(s.Value(), nil) {
				return
			}
		}
		if s.err != nil {
			yield(nil, s.err)
		}
	}
}

// Close closes the stream's connection; the run goes on on the server (see
// CancelRun). It may be called more than once and from any goroutine.
func (s *ResumableStream) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.dropConn()
	return nil
}

func (s *ResumableStream) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *ResumableStream) finish(e *Error) {
	s.done = true
	s.err = e
	s.dropConn()
}

// dropConn closes the current connection, if any.
func (s *ResumableStream) dropConn() {
	s.mu.Lock()
	body, cancel := s.body, s.cancel
	s.body, s.cancel = nil, nil
	s.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	if body != nil {
		body.Close()
	}
}

// reconnect retries after the failure e (closing the current connection)
// until a connection is open or the policy gives up.
func (s *ResumableStream) reconnect(e *Error) *Error {
	for {
		s.dropConn()
		if s.started && s.runID == "" {
			// Posting again would start the stream a second time.
			return &Error{Code: CodeInternal, Message: "the server named no run to re-join (is it runagent server?) after: " + e.Message, Err: e.Err}
		}
		if s.fresh {
			s.retry, s.fresh = newRetrier(s.c.retry, s.c.clk), false
		}
		if e = s.retry.wait(s.ctx, e); e != nil {
			return e
		}
		if e = s.open(); e == nil {
			return nil
		}
	}
}

// open makes one attempt: the POST that starts the stream while it has no
// run yet, else the GET that re-joins the run after the last event.
func (s *ResumableStream) open() *Error {
	if s.ctx.Err() != nil {
		return ctxError(s.ctx)
	}
	method, u := http.MethodGet, s.c.restBase+"/runs/"+url.PathEscape(s.runID)+"/stream"
	var body io.Reader
	if !s.started {
		method, u, body = http.MethodPost, s.c.agentPath+"/run-stream", bytes.NewReader(s.req)
	}
	ctx, cancel := context.WithCancel(s.ctx)
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		cancel()
		return &Error{Code: CodeValidation, Message: "cannot build request: " + err.Error(), Err: err}
	}
	h := make(http.Header, 5)
	h["Accept"] = hdrSSE
	h["User-Agent"] = s.c.hdrUA
	if s.c.hdrAuth != nil {
		h["Authorization"] = s.c.hdrAuth
	}
	if body != nil {
		h["Content-Type"] = hdrJSON
	} else if s.lastID != "" {
		h.Set("Last-Event-ID", s.lastID)
	}
	req.Header = h

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		cancel()
		return closedError()
	}
	s.cancel = cancel
	s.mu.Unlock()

	resp, err := s.c.hc.Do(req)
	if err != nil {
		if s.isClosed() {
			return closedError()
		}
		return transportError(s.ctx, err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		return httpError(resp.StatusCode, resp.Header, b)
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "text/event-stream" {
		resp.Body.Close()
		return malformed("the server did not answer an event stream (Content-Type "+strconv.Quote(resp.Header.Get("Content-Type"))+")", resp.StatusCode)
	}
	s.started = true
	if s.runID == "" {
		s.runID = runIDFromLocation(resp.Header.Get("Content-Location"))
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		resp.Body.Close()
		return closedError()
	}
	s.body = resp.Body
	s.mu.Unlock()
	if s.rd == nil {
		s.rd = bufio.NewReaderSize(resp.Body, 32<<10)
	} else {
		s.rd.Reset(resp.Body)
	}
	return nil
}

// runIDFromLocation returns RUN_ID of a Content-Location .../api/v1/runs/RUN_ID.
func runIDFromLocation(loc string) string {
	i := strings.Index(loc, apiPrefix+"/runs/")
	if i < 0 {
		return ""
	}
	id := loc[i+len(apiPrefix+"/runs/"):]
	if j := strings.IndexAny(id, "/?#"); j >= 0 {
		id = id[:j]
	}
	if u, err := url.PathUnescape(id); err == nil {
		id = u
	}
	return id
}

// readEvent reads the next event of the current connection. A comment (a
// heartbeat) shows the connection alive: it renews the retry budget.
func (s *ResumableStream) readEvent() (sseEvent, *Error) {
	var ev sseEvent
	s.data.Reset()
	hasData := false
	if s.rd == nil {
		return ev, closedError()
	}
	for {
		line, err := s.readLine()
		if err != nil {
			return ev, s.readError(err)
		}
		if len(line) == 0 {
			if hasData || ev.kind != "" || ev.hasID {
				ev.data = s.data.Bytes()
				return ev, nil
			}
			continue
		}
		if line[0] == ':' {
			s.fresh = true
			continue
		}
		name, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(name) {
		case "event":
			ev.kind = string(value)
		case "data":
			if hasData {
				s.data.WriteByte('\n')
			}
			s.data.Write(value)
			hasData = true
		case "id":
			ev.id, ev.hasID = string(value), true
		}
	}
}

// readLine returns the next line without its end (\n or \r\n), valid
// until the next read.
func (s *ResumableStream) readLine() ([]byte, error) {
	s.line.Reset()
	for {
		b, err := s.rd.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			s.line.Write(b)
			continue
		}
		if err != nil {
			return nil, err
		}
		if s.line.Len() > 0 {
			s.line.Write(b)
			b = s.line.Bytes()
		}
		b = bytes.TrimSuffix(b[:len(b)-1], []byte("\r"))
		return b, nil
	}
}

// readError classifies a failure to read the stream.
func (s *ResumableStream) readError(err error) *Error {
	if s.ctx.Err() != nil {
		return ctxError(s.ctx)
	}
	if s.isClosed() {
		return closedError()
	}
	msg := "stream connection lost before its end: " + err.Error()
	if errors.Is(err, io.EOF) {
		msg = "the stream ended before its last event"
	}
	return &Error{Code: CodeConnection, Message: msg, Err: err, retryable: true}
}

// seen reports whether ev is a chunk already yielded: its id is not after
// the last one.
func (s *ResumableStream) seen(ev *sseEvent) bool {
	if !ev.hasID || s.lastID == "" {
		return false
	}
	id, err1 := strconv.ParseInt(ev.id, 10, 64)
	last, err2 := strconv.ParseInt(s.lastID, 10, 64)
	return err1 == nil && err2 == nil && id <= last
}

// setChunk makes data (a chunk event's JSON value) the current chunk.
func (s *ResumableStream) setChunk(data []byte) {
	if json.Valid(data) {
		s.payload = data
		return
	}
	if fixed, ok := replaceNonFinite(data); ok && json.Valid(fixed) {
		s.payload = fixed
		return
	}
	s.chunkErr = &Error{Code: CodeInternal, Message: "undecodable stream chunk: not JSON", Err: errors.Join(ErrChunkFailed, ErrMalformed)}
}

// setIDs reads run_id and invocation_id of a start or done event.
func (s *ResumableStream) setIDs(data []byte) {
	var d struct {
		RunID        json.RawMessage `json:"run_id"`
		InvocationID json.RawMessage `json:"invocation_id"`
	}
	if json.Unmarshal(data, &d) != nil {
		return
	}
	if id, ok := rawString(d.RunID); ok && s.runID == "" {
		s.runID = id
	}
	if id, ok := rawString(d.InvocationID); ok {
		s.invocationID = id
	}
}

// eventData reads the {"code", "message"} of an error or chunk_error event.
func eventData(data []byte) (code, msg string) {
	var d struct {
		Code    json.RawMessage `json:"code"`
		Message json.RawMessage `json:"message"`
	}
	if json.Unmarshal(data, &d) == nil {
		code, _ = rawString(d.Code)
		msg, _ = rawString(d.Message)
	} else {
		msg = strings.TrimSpace(string(data))
	}
	return code, msg
}

func chunkEventError(data []byte) *Error {
	code, msg := eventData(data)
	if code == "" {
		code = CodeInternal
	}
	if msg == "" {
		msg = "chunk error"
	}
	return &Error{Code: code, Message: msg, Err: ErrChunkFailed}
}

// eventError builds the error of an error event. The server's code is
// used when present; otherwise it is derived from the message. Only an
// error that is not in the run's event log (it has no id) and says the
// connection failed ("the event log could not be read") is retried, by
// re-joining: one in the log is the run's end.
func eventError(ev *sseEvent) *Error {
	code, msg := eventData(ev.data)
	if strings.TrimSpace(msg) == "" {
		msg = "stream failed"
	}
	if code == "" {
		code = classifyMessage(msg)
	}
	return &Error{Code: code, Message: msg, retryable: !ev.hasID && code == CodeConnection}
}
