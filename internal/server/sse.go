package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/wire"
)

// The SSE route: POST /api/v1/agents/{id}/run-stream with the wire /run
// body streams a streaming entrypoint's chunks as Server-Sent Events, for
// browsers (fetch), curl and any HTTP client:
//
//	event: start   data: {"run_id", "invocation_id", "agent_id"}
//	id: N          event: chunk  data: the chunk's JSON value (N from 0)
//	id: N          event: chunk_error  data: {"message"} (the chunk could not be encoded; the stream goes on)
//	event: done    data: {"total_chunks", "execution_time", "invocation_id"}
//	event: error   data: {"code", "message"} (the stream ends)
//	: heartbeat    (a comment, every Heartbeat of silence, so proxies keep the connection)
//
// The answer starts (200, text/event-stream, Content-Location naming the
// run) at the first chunk, the end, or the first heartbeat; an error
// before that is the wire envelope with its HTTP status.

var sseStreamInfo, _ = json.Marshal(map[string]any{"connection_type": "sse", "stream_mode": true})

// acceptsSSE says whether the request's Accept allows text/event-stream.
func acceptsSSE(accept string) bool {
	if accept == "" {
		return true
	}
	for _, part := range strings.Split(accept, ",") {
		mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err == nil && (mt == "text/event-stream" || mt == "text/*" || mt == "*/*") {
			return true
		}
	}
	return false
}

// sseWriter writes events, one at a time (the chunks and the heartbeat).
type sseWriter struct {
	s       *Server
	w       http.ResponseWriter
	rc      *http.ResponseController
	mu      sync.Mutex
	started bool
	last    time.Time // the last write
	begin   func()    // writes the headers and the start event
	buf     []byte
}

// event writes one event (id < 0: none) and flushes it.
func (sw *sseWriter) event(id int, name string, data []byte) error {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	if !sw.started {
		sw.begin()
	}
	b := sw.buf[:0]
	if id >= 0 {
		b = strconv.AppendInt(append(b, "id: "...), int64(id), 10)
		b = append(b, '\n')
	}
	b = append(append(append(b, "event: "...), name...), '\n')
	for line := range bytes.SplitSeq(data, []byte{'\n'}) { // SSE joins data lines with \n
		b = append(append(append(b, "data: "...), line...), '\n')
	}
	b = append(b, '\n')
	sw.buf = b
	return sw.write(b)
}

func (sw *sseWriter) write(b []byte) error {
	sw.rc.SetWriteDeadline(time.Now().Add(sw.s.cfg.StallTimeout))
	if _, err := sw.w.Write(b); err != nil {
		return errClientGone
	}
	if err := sw.rc.Flush(); err != nil {
		return errClientGone
	}
	sw.last = time.Now()
	return nil
}

// heartbeat writes a comment if nothing was written for every.
func (sw *sseWriter) heartbeat(every time.Duration) error {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	if time.Since(sw.last) < every {
		return nil
	}
	if !sw.started {
		sw.begin()
	}
	return sw.write([]byte(": heartbeat\n\n"))
}

// newSSEWriter is the writer of run runID's events; its answer begins
// (200, the headers, the start event) with the first event or heartbeat.
func (s *Server) newSSEWriter(w http.ResponseWriter, runID, agentID string) *sseWriter {
	sw := &sseWriter{s: s, w: w, rc: http.NewResponseController(w), last: time.Now(), buf: make([]byte, 0, 1024)}
	sw.begin = func() {
		sw.started = true
		h := w.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
		h.Set("Content-Location", "/api/v1/runs/"+runID)
		w.WriteHeader(http.StatusOK)
		b := append([]byte(`event: start`+"\n"+`data: {"run_id":`), wire.AppendString(nil, runID)...)
		b = append(append(append(b, `,"invocation_id":`...), wire.AppendString(nil, runID)...), `,"agent_id":`...)
		b = append(append(b, wire.AppendString(nil, agentID)...), "}\n\n"...)
		sw.write(b)
	}
	return sw
}

func (s *Server) handleStreamSSE(w http.ResponseWriter, r *http.Request, a *Agent) {
	if !acceptsSSE(r.Header.Get("Accept")) {
		s.writeError(w, http.StatusNotAcceptable, &domain.Error{Code: domain.CodeValidation, Field: "Accept",
			Message: "POST run-stream answers text/event-stream; send Accept: text/event-stream (or stream over the WebSocket route with GET)"})
		return
	}
	start := time.Now()
	body, req, streaming, ok := s.readRunRequest(w, r, a)
	if !ok {
		return
	}
	tag := *req.EntrypointTag
	if !streaming {
		s.writeError(w, http.StatusBadRequest, &domain.Error{Code: domain.CodeValidation, Field: "entrypoint_tag", Message: fmt.Sprintf(
			"Entrypoint `%s` is not a streaming entrypoint. Use a streaming entrypoint (ending with '_stream'), or POST /run.", tag)})
		return
	}
	var fields struct {
		OnDisconnect *string `json:"on_disconnect"`
	}
	if json.Unmarshal(body, &fields) != nil || fields.OnDisconnect != nil && *fields.OnDisconnect != "cancel" && *fields.OnDisconnect != "continue" {
		s.writeError(w, http.StatusBadRequest, &domain.Error{Code: domain.CodeValidation, Field: "on_disconnect",
			Message: `expected "cancel" (the default: a client that goes away stops the stream) or "continue" (it runs on and can be re-joined)`})
		return
	}
	detach := fields.OnDisconnect != nil && *fields.OnDisconnect == "continue"
	if detach && (s.cfg.Events == nil || s.cfg.Runs == nil) {
		s.writeError(w, http.StatusBadRequest, &domain.Error{Code: domain.CodeValidation, Field: "on_disconnect",
			Message: `"continue" needs a server that keeps event logs (runagent server); runagent serve streams with "cancel"`})
		return
	}
	inv := domain.Invocation{
		ID: newInvocationID(), AgentID: a.ID, EntrypointTag: tag, SDKType: "sse_stream",
		InputArgs: req.InputArgs, InputKwargs: req.InputKwargs, Status: domain.StatusPending,
		RequestTime: start, ClientInfo: sseStreamInfo,
	}
	if detach {
		inv.ClientInfo = detachedInfo
		// Written before the client hears of it (a read flushes the
		// history), so that a re-join from another gateway finds the run.
		s.cfg.Recorder.Start(inv)
		if _, err := s.cfg.Recorder.Get(r.Context(), inv.ID); err != nil {
			s.storeFailure(w, err)
			return
		}
		s.startDetached(a, inv, req)
		s.tailEvents(w, r, inv.ID, a.ID, -1)
		return
	}
	s.cfg.Recorder.Start(inv)

	base, stop := context.WithCancelCause(r.Context())
	defer stop(nil)
	ctx, cancel := s.callContext(domain.WithInvocation(base, inv.ID), a, deref(req.TimeoutSeconds))
	defer cancel()
	sw := s.newSSEWriter(w, inv.ID, a.ID)
	if hb := s.cfg.Heartbeat; hb > 0 {
		done, exited := make(chan struct{}), make(chan struct{})
		defer func() { close(done); <-exited }() // nothing writes once the handler returns
		go func() {
			defer close(exited)
			t := time.NewTicker(max(hb/4, 10*time.Millisecond))
			defer t.Stop()
			for {
				select {
				case <-done:
					return
				case <-t.C:
					if sw.heartbeat(hb) != nil {
						stop(errClientGone)
						return
					}
				}
			}
		}()
	}

	var samples []json.RawMessage
	seq := 0
	n, err := s.cfg.Dispatcher.Stream(ctx, req.target(a), tag, req.InputArgs, req.InputKwargs, nil, func(c domain.Chunk) error {
		id := seq
		seq++
		if c.EncodeError {
			var ce struct{ Message string }
			json.Unmarshal(c.Body, &ce)
			msg, _ := json.Marshal(map[string]string{"message": "Chunk serialization failed: " + ce.Message})
			return sw.event(id, "chunk_error", msg)
		}
		v := payloadOf(c.Body)
		if len(samples) < sampleChunks {
			samples = append(samples, v)
		}
		if v == nil {
			v = c.Body
		}
		return sw.event(id, "chunk", v)
	})
	elapsed := time.Since(start)
	inv.ResponseTime = time.Now()
	inv.ExecutionMS = float64(elapsed.Microseconds()) / 1000

	if err == nil {
		inv.Status = domain.StatusCompleted
		inv.Output = streamOutput(n, elapsed, samples)
		s.finish(r.Context(), inv)
		b := strconv.AppendInt([]byte(`{"total_chunks":`), int64(n), 10)
		b = wire.AppendFloat(append(b, `,"execution_time":`...), elapsed.Seconds())
		b = append(append(append(b, `,"invocation_id":`...), wire.AppendString(nil, inv.ID)...), '}')
		sw.event(-1, "done", b)
		s.cfg.OnCall(a.Agent, tag, "", elapsed)
		return
	}
	inv.Status = domain.StatusFailed
	code := domain.CodeCancelled
	if errors.Is(err, errClientGone) || errors.Is(context.Cause(base), errClientGone) || r.Context().Err() != nil {
		inv.ErrorDetail = "SSE client disconnected"
		s.log.Info("stream client went away", "tag", tag, "invocation_id", inv.ID, "chunks", seq)
		s.cfg.Recorder.Finish(inv)
		s.cfg.OnCall(a.Agent, tag, code, elapsed)
		return
	}
	we, agentRaised := s.callFailure(err)
	code = we.Code
	inv.ErrorDetail = "Streaming error: " + we.Message
	if !agentRaised {
		inv.ErrorDetail = "Streaming error: " + string(we.Code) + ": " + we.Message
		s.log.Warn("stream failed", "tag", tag, "invocation_id", inv.ID, "code", we.Code, "error", we.Message)
	}
	s.finish(r.Context(), inv)
	sw.mu.Lock()
	started := sw.started
	sw.mu.Unlock()
	if !started {
		w.Header().Set("Content-Location", "/api/v1/runs/"+inv.ID)
		s.writeError(w, wire.HTTPStatus(we.Code), we)
	} else {
		msg, _ := json.Marshal(map[string]string{"code": string(we.Code), "message": "Streaming error: " + we.Message})
		sw.event(-1, "error", msg)
	}
	s.cfg.OnCall(a.Agent, tag, code, elapsed)
}
