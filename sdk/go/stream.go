package runagent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"iter"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// Stream is one run of a streaming entrypoint over the WebSocket
// /api/v1/agents/{id}/run-stream. Read it like a bufio.Scanner:
//
//	for st.Next() {
//		if err := st.ChunkErr(); err != nil {
//			log.Print(err) // one chunk was lost; the stream goes on
//			continue
//		}
//		fmt.Println(st.Value())
//	}
//	if err := st.Err(); err != nil { ... }
//
// or with range over Chunks. Each item of the stream is either a chunk
// (Value, Decode, RawJSON) or a per-chunk error (ChunkErr): the server could
// not serialize that chunk ("Chunk serialization failed", wire-v1 rule 7) or
// the client could not decode it. A per-chunk error does not end the stream.
//
// Next, Value, Decode, RawJSON, ChunkErr and Err must be called from one
// goroutine; Close may be called from any goroutine, also to abort a Next
// that is waiting.
type Stream struct {
	c     *Client
	ctx   context.Context
	req   []byte // the first frame, kept for retries
	retry retrier

	mu     sync.Mutex // guards conn, stop and closed
	conn   *websocket.Conn
	stop   func() bool // stops the context watcher of conn
	closed bool

	// Used by the reading goroutine only.
	rbuf         bytes.Buffer
	pending      *frame // a frame read by open, not yet handled
	gotData      bool   // a data (or chunk error) frame arrived: no more retries
	done         bool
	invocationID string
	err          *Error

	// The current item.
	hasItem  bool
	payload  []byte
	val      any
	decoded  bool
	chunkErr *Error
}

// frame is a server WebSocket frame. Fields are raw so that an unexpected
// type in one does not hide the others.
type frame struct {
	Type         string          `json:"type"`
	Status       string          `json:"status"`
	Content      json.RawMessage `json:"content"`
	Error        json.RawMessage `json:"error"`
	Detail       json.RawMessage `json:"detail"`
	Code         json.RawMessage `json:"code"`
	InvocationID json.RawMessage `json:"invocation_id"`
}

func parseFrame(b []byte) (frame, *Error) {
	var raw struct {
		Type   json.RawMessage `json:"type"`
		Status json.RawMessage `json:"status"`
		frame
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return frame{}, &Error{Code: CodeInternal, Message: "malformed stream frame: " + err.Error(), Err: ErrMalformed}
	}
	fr := raw.frame
	fr.Type, _ = rawString(raw.Type)
	fr.Status, _ = rawString(raw.Status)
	return fr, nil
}

// RunStream starts the streaming entrypoint over a WebSocket: it connects,
// sends {"entrypoint_tag","input_args","input_kwargs"} and waits until the
// server has started the stream. ctx governs the whole stream: when it is
// done the socket is closed at once (which makes the server cancel the
// agent's generator) and Next returns false with a CANCELLED or TIMEOUT
// error.
//
// A tag that does not end in "_stream" is a VALIDATION_ERROR, without a
// request. Errors the server reports before the stream starts are returned
// here (NOT_FOUND for an unknown entrypoint). Connection failures, 429 and
// 503 are retried under the Config's RetryPolicy, here and in Next, as long
// as no data frame has arrived.
func (c *Client) RunStream(ctx context.Context, in Input) (*Stream, error) {
	if !IsStreamTag(c.tag) {
		return nil, &Error{Code: CodeValidation, Message: "entrypoint " + strconv.Quote(c.tag) + " is not a streaming entrypoint (its tag does not end in _stream): call Run"}
	}
	buf := getBuf()
	r := c.newRequest(in, 0)
	if e := encodeRequest(buf, &r); e != nil {
		putBuf(buf)
		return nil, e
	}
	req := bytes.Clone(bytes.TrimSuffix(buf.Bytes(), []byte("\n")))
	putBuf(buf)
	s := &Stream{c: c, ctx: ctx, req: req, retry: newRetrier(c.retry, c.clk)}
	if e := s.open(); e != nil {
		if e = s.reconnect(e); e != nil {
			s.Close()
			return nil, e
		}
	}
	return s, nil
}

// Next advances to the next item (a chunk or a per-chunk error) and reports
// whether there is one. It returns false at the end of the stream, after
// which Err tells whether it completed.
func (s *Stream) Next() bool {
	s.hasItem, s.payload, s.val, s.decoded, s.chunkErr = false, nil, nil, false, nil
	if s.done {
		return false
	}
	if s.isClosed() {
		s.done = true
		return false
	}
	for {
		var fr frame
		var e *Error
		if s.pending != nil {
			fr, s.pending = *s.pending, nil
		} else {
			fr, e = s.readFrame()
		}
		if e == nil {
			switch fr.Type {
			case "data":
				s.gotData, s.hasItem = true, true
				p, de := dataPayload(fr.Content)
				if de != nil {
					s.chunkErr = &Error{Code: CodeInternal, Message: "undecodable stream chunk: " + de.Message, Err: errors.Join(ErrChunkFailed, ErrMalformed)}
				}
				s.payload = p
				return true
			case "status":
				switch fr.Status {
				case "stream_started":
					s.setInvocationID(fr.InvocationID)
				case "stream_completed":
					s.setInvocationID(fr.InvocationID)
					s.finish(nil)
					return false
				}
				continue
			case "error":
				fe := frameError(&fr)
				if errors.Is(fe, ErrChunkFailed) {
					s.gotData, s.hasItem, s.chunkErr = true, true, fe
					return true
				}
				e = fe
			default:
				continue // unknown frame types are ignored
			}
		}
		if !s.gotData && e.retryable {
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
func (s *Stream) Value() any {
	if !s.decoded && s.payload != nil {
		s.val, _ = decodeJSON(s.payload)
		s.decoded = true
	}
	return s.val
}

// Decode unmarshals the current chunk into v with encoding/json. It returns
// the per-chunk error when the current item is one.
func (s *Stream) Decode(v any) error {
	if s.chunkErr != nil {
		return s.chunkErr
	}
	if !s.hasItem {
		return &Error{Code: CodeValidation, Message: "Stream.Decode called without a current chunk"}
	}
	return errOrNil(unmarshalInto(s.payload, v))
}

// RawJSON returns the current chunk's payload as JSON text (nil for a
// per-chunk error). It is valid until the next call to Next.
func (s *Stream) RawJSON() json.RawMessage { return s.payload }

// ChunkErr returns the current item's per-chunk error, or nil when the
// current item is a chunk. It wraps ErrChunkFailed (see IsChunkError).
func (s *Stream) ChunkErr() error { return errOrNil(s.chunkErr) }

// Err returns the error that ended the stream, or nil when it completed
// (or has not ended yet).
func (s *Stream) Err() error { return errOrNil(s.err) }

// InvocationID returns the server's invocation id, once known.
func (s *Stream) InvocationID() string { return s.invocationID }

// Chunks returns an iterator over the stream's items, to use with range:
// each chunk is yielded as (value, nil), each per-chunk error as (nil, err)
// with IsChunkError(err) true, and an error ending the stream as a last
// (nil, err). The stream is closed when the loop ends, also by break.
//
//	for v, err := range st.Chunks() {
//		if err != nil {
//			if runagent.IsChunkError(err) {
//				continue
//			}
//			return err
//		}
//		fmt.Println(v)
//	}
func (s *Stream) Chunks() iter.Seq2[any, error] {
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

// Close closes the stream. Closing before the end cancels the run on the
// server. It may be called more than once and from any goroutine.
func (s *Stream) Close() error {
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

func (s *Stream) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *Stream) finish(e *Error) {
	s.done = true
	s.err = e
	s.dropConn()
}

func (s *Stream) setInvocationID(raw json.RawMessage) {
	if id, ok := rawString(raw); ok {
		s.invocationID = id
	}
}

// reconnect retries after the failure e (closing the current connection)
// until a connection is open or the policy gives up.
func (s *Stream) reconnect(e *Error) *Error {
	for {
		s.dropConn()
		s.pending = nil
		if e = s.retry.wait(s.ctx, e); e != nil {
			return e
		}
		if e = s.open(); e == nil {
			return nil
		}
	}
}

// open makes one attempt: dial, send the request, and read until the
// stream has started (or a first data or chunk-error frame arrived).
func (s *Stream) open() *Error {
	if s.ctx.Err() != nil {
		return ctxError(s.ctx)
	}
	h := make(http.Header, 2)
	h["User-Agent"] = s.c.hdrUA
	if s.c.hdrAuth != nil {
		h["Authorization"] = s.c.hdrAuth
	}
	conn, resp, err := s.c.dialer.DialContext(s.ctx, s.c.wsURL, h)
	if err != nil {
		if resp != nil && errors.Is(err, websocket.ErrBadHandshake) {
			var body []byte
			if resp.Body != nil {
				body, _ = io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			}
			if resp.StatusCode >= 200 && resp.StatusCode <= 299 {
				return &Error{Code: CodeConnection, Status: resp.StatusCode, Message: "the server did not upgrade to a WebSocket", Err: err}
			}
			return httpError(resp.StatusCode, resp.Header, body)
		}
		return transportError(s.ctx, err)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		conn.Close()
		return closedError()
	}
	s.conn = conn
	s.stop = context.AfterFunc(s.ctx, func() { closeConn(conn, "client cancelled") })
	s.mu.Unlock()

	if err := conn.WriteMessage(websocket.TextMessage, s.req); err != nil {
		return s.readError(err)
	}
	for {
		fr, e := s.readFrame()
		if e != nil {
			return e
		}
		switch fr.Type {
		case "status":
			switch fr.Status {
			case "stream_started":
				s.setInvocationID(fr.InvocationID)
				return nil
			case "stream_completed":
				s.pending = &fr
				return nil
			}
		case "data":
			s.pending = &fr
			return nil
		case "error":
			fe := frameError(&fr)
			if errors.Is(fe, ErrChunkFailed) {
				s.pending = &fr
				return nil
			}
			return fe
		}
	}
}

func (s *Stream) readFrame() (frame, *Error) {
	s.mu.Lock()
	conn := s.conn
	s.mu.Unlock()
	if conn == nil {
		return frame{}, closedError()
	}
	_, r, err := conn.NextReader()
	if err != nil {
		return frame{}, s.readError(err)
	}
	s.rbuf.Reset()
	if _, err := s.rbuf.ReadFrom(r); err != nil {
		return frame{}, s.readError(err)
	}
	return parseFrame(s.rbuf.Bytes())
}

// readError classifies a failure to read or write the socket.
func (s *Stream) readError(err error) *Error {
	if s.ctx.Err() != nil {
		return ctxError(s.ctx)
	}
	if s.isClosed() {
		return closedError()
	}
	e := &Error{Code: CodeConnection, Message: "stream closed before completion: " + err.Error(), Err: err, retryable: true}
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		e.Message = "stream closed before completion (close " + strconv.Itoa(ce.Code)
		if ce.Text != "" {
			e.Message += ": " + ce.Text
		}
		e.Message += ")"
		if ce.Code == websocket.CloseTryAgainLater {
			e.Code = CodeOverloaded
		}
	}
	return e
}

func closedError() *Error {
	return &Error{Code: CodeCancelled, Message: "stream closed by the client", Err: net.ErrClosed}
}

// dropConn closes the current connection, if any, with a close frame.
func (s *Stream) dropConn() {
	s.mu.Lock()
	conn, stop := s.conn, s.stop
	s.conn, s.stop = nil, nil
	s.mu.Unlock()
	if stop != nil {
		stop()
	}
	if conn != nil {
		closeConn(conn, "")
	}
}

func closeConn(conn *websocket.Conn, reason string) {
	_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, reason), time.Now().Add(time.Second))
	_ = conn.Close()
}

// frameError builds the error of an error frame. The frame's "code" is used
// when present; otherwise the code is derived from the message.
func frameError(fr *frame) *Error {
	msg, ok := rawString(fr.Error)
	if !ok {
		msg, ok = rawString(fr.Detail)
	}
	if !ok {
		switch {
		case len(fr.Detail) > 0 && string(fr.Detail) != "null":
			msg = string(fr.Detail)
		case len(fr.Error) > 0 && string(fr.Error) != "null":
			msg = string(fr.Error)
		default:
			msg = "stream failed"
		}
	}
	if strings.TrimSpace(msg) == "" {
		msg = "stream failed"
	}
	code, _ := rawString(fr.Code)
	if strings.HasPrefix(strings.TrimSpace(msg), "Chunk serialization failed") {
		if code == "" {
			code = CodeInternal
		}
		return &Error{Code: code, Message: msg, Err: ErrChunkFailed}
	}
	if code == "" {
		code = classifyMessage(msg)
	}
	return &Error{Code: code, Message: msg, retryable: code == CodeRateLimit || code == CodeOverloaded}
}

// classifyMessage derives a code from an error frame without one.
func classifyMessage(msg string) string {
	l := strings.ToLower(msg)
	has := func(words ...string) bool {
		for _, w := range words {
			if strings.Contains(l, w) {
				return true
			}
		}
		return false
	}
	switch {
	case strings.HasPrefix(l, "streaming error"), strings.HasPrefix(l, "agent execution failed"):
		return CodeInternal // the agent raised: its text is not classified
	case has("not found"):
		return CodeNotFound
	case has("unauthorized", "authentication", "invalid token", "invalid api key", "api key required"):
		return CodeAuthentication
	case has("permission", "forbidden"):
		return CodePermission
	case has("rate limit"):
		return CodeRateLimit
	case has("overloaded"):
		return CodeOverloaded
	case has("timed out", "timeout"):
		return CodeTimeout
	case has("crashed"):
		return CodeAgentCrashed
	case has("invalid", "missing", "required", "must ", "not a stream", "non-stream", "json"):
		return CodeValidation
	default:
		return CodeInternal
	}
}
