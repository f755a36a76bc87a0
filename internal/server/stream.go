package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
	"unsafe"

	"github.com/gorilla/websocket"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/wire"
)

// newUpgrader accepts WebSockets from the pages the CORS policy allows
// (browsers apply no CORS to WebSockets: the server must check Origin).
func newUpgrader(cors CORSPolicy) *websocket.Upgrader {
	allowed := cors.allowed()
	return &websocket.Upgrader{
		ReadBufferSize:  4 << 10,
		WriteBufferSize: 32 << 10,
		CheckOrigin: func(r *http.Request) bool {
			origin := r.Header.Get("Origin")
			return origin == "" || len(allowed) == 0 || allowed[origin]
		},
	}
}

const (
	firstMessageWait = time.Minute // for the request frame
	sampleChunks     = 10          // chunks kept in the invocation record
)

var (
	errClientGone   = errors.New("the client closed the WebSocket")
	wsStreamInfo, _ = json.Marshal(map[string]any{"connection_type": "websocket", "stream_mode": true})
)

// parseStreamRequest checks the first WebSocket message: all three keys are
// required there, and the tag must be a streaming one.
func (s *Server) parseStreamRequest(a *Agent, msg []byte) (runRequest, *domain.Error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(msg, &fields); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return runRequest{}, &domain.Error{Code: domain.CodeValidation, Message: "Invalid JSON format: the request must be a JSON object, got " + articled(te.Value)}
		}
		return runRequest{}, &domain.Error{Code: domain.CodeValidation, Message: "Invalid JSON format: " + err.Error()}
	}
	for _, f := range [...]string{"entrypoint_tag", "input_args", "input_kwargs"} {
		if _, ok := fields[f]; !ok {
			return runRequest{}, &domain.Error{Code: domain.CodeValidation, Field: f, Message: "Missing required field: " + f}
		}
	}
	req, e := decodeRunRequest(msg)
	if e != nil {
		e.Message = e.Field + ": " + e.Message
		return req, e
	}
	tag := *req.EntrypointTag
	streaming, ok := a.tags[tag]
	if !ok {
		return req, &domain.Error{Code: domain.CodeNotFound, Message: fmt.Sprintf("Entrypoint %s not found", tag)}
	}
	if !streaming {
		return req, &domain.Error{Code: domain.CodeValidation, Message: fmt.Sprintf(
			"Entrypoint `%s` is not a streaming entrypoint. Use a streaming entrypoint (ending with '_stream').", tag)}
	}
	return req, nil
}

func (s *Server) handleStream(w http.ResponseWriter, r *http.Request, a *Agent) {
	conn, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader answered the HTTP request
	}
	defer conn.Close()
	conn.SetReadLimit(s.cfg.MaxBodyBytes)
	conn.SetReadDeadline(time.Now().Add(firstMessageWait))
	_, msg, err := conn.ReadMessage()
	if err != nil {
		return // closed, too large (gorilla sent 1009) or silent
	}
	conn.SetReadDeadline(time.Time{})
	req, e := s.parseStreamRequest(a, msg)
	if e != nil {
		wsRefuse(conn, e)
		return
	}
	var fields struct {
		OnDisconnect *string `json:"on_disconnect"`
	}
	err = json.Unmarshal(msg, &fields) // parseStreamRequest checked it is an object
	if od := fields.OnDisconnect; err != nil || od != nil && *od != "cancel" {
		if err != nil || *od != "continue" {
			wsRefuse(conn, &domain.Error{Code: domain.CodeValidation, Field: "on_disconnect",
				Message: `on_disconnect: expected "cancel" (the default: a client that goes away stops the stream) or "continue" (it runs on and can be re-joined)`})
			return
		}
		s.streamDetachedWS(r.Context(), conn, a, req)
		return
	}
	tag := *req.EntrypointTag
	start := time.Now()
	inv := domain.Invocation{
		ID: newInvocationID(), AgentID: a.ID, EntrypointTag: tag, SDKType: "websocket_stream",
		InputArgs: req.InputArgs, InputKwargs: req.InputKwargs, Status: domain.StatusPending,
		RequestTime: start, ClientInfo: wsStreamInfo,
	}
	s.cfg.Recorder.Start(inv)

	base, stop := context.WithCancelCause(r.Context())
	defer stop(nil)
	ctx, cancel := s.callContext(domain.WithInvocation(base, inv.ID), a, deref(req.TimeoutSeconds))
	defer cancel()
	// Reading is how a client's close (or a dropped connection) is noticed;
	// it stops the generator in the runner.
	go func() {
		for {
			if _, _, err := conn.NextReader(); err != nil {
				stop(errClientGone)
				return
			}
		}
	}()

	if hb := s.cfg.Heartbeat; hb > 0 {
		// Pings keep proxies from cutting a quiet stream; the client's
		// WebSocket answers them unseen (the wire frames are unchanged).
		done, exited := make(chan struct{}), make(chan struct{})
		defer func() { close(done); <-exited }()
		go func() {
			defer close(exited)
			t := time.NewTicker(hb)
			defer t.Stop()
			for {
				select {
				case <-done:
					return
				case <-t.C:
					if conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(s.cfg.StallTimeout)) != nil {
						stop(errClientGone)
						return
					}
				}
			}
		}()
	}

	frame := make([]byte, 0, 1024)
	// stream_started goes out once the call is on its way to the runner, so
	// the client's wake-up overlaps the agent's work instead of preceding it.
	announce := func() {
		frame = append(frame[:0], `{"type":"status","status":"stream_started","invocation_id":`...)
		frame = append(wire.AppendString(frame, inv.ID), '}')
		if err := s.writeFrame(conn, frame); err != nil {
			stop(errClientGone)
		}
	}

	var samples []json.RawMessage
	seen := 0
	n, err := s.cfg.Dispatcher.Stream(ctx, req.target(a), tag, req.InputArgs, req.InputKwargs, announce, func(c domain.Chunk) error {
		seen++
		body := c.Body
		if c.EncodeError {
			var ce struct{ Message string }
			json.Unmarshal(body, &ce)
			frame = append(frame[:0], `{"type":"error","error":`...)
			frame = append(wire.AppendString(frame, "Chunk serialization failed: "+ce.Message), '}')
		} else {
			if len(samples) < sampleChunks {
				samples = append(samples, payloadOf(body))
			}
			frame = append(frame[:0], `{"type":"data","content":`...)
			frame = append(wire.AppendString(frame, unsafe.String(unsafe.SliceData(body), len(body))), '}')
		}
		return s.writeFrame(conn, frame)
	})
	elapsed := time.Since(start)
	inv.ResponseTime = time.Now()
	inv.ExecutionMS = float64(elapsed.Microseconds()) / 1000

	if err == nil {
		inv.Status = domain.StatusCompleted
		inv.Output = streamOutput(n, elapsed, samples)
		s.finish(r.Context(), inv)
		frame = append(frame[:0], `{"type":"status","status":"stream_completed","total_chunks":`...)
		frame = strconv.AppendInt(frame, int64(n), 10)
		frame = append(frame, `,"execution_time":`...)
		frame = wire.AppendFloat(frame, elapsed.Seconds())
		frame = append(frame, `,"invocation_id":`...)
		frame = append(wire.AppendString(frame, inv.ID), '}')
		s.writeFrame(conn, frame)
		closeWith(conn, websocket.CloseNormalClosure, "")
		s.cfg.OnCall(a.Agent, tag, "", elapsed)
		return
	}

	inv.Status = domain.StatusFailed
	code := domain.CodeCancelled
	if errors.Is(err, errClientGone) || errors.Is(context.Cause(base), errClientGone) {
		inv.ErrorDetail = "WebSocket disconnected"
		s.log.Info("stream client went away", "tag", tag, "invocation_id", inv.ID, "chunks", seen)
		s.cfg.Recorder.Finish(inv) // nobody is answered
	} else {
		we, agentRaised := s.callFailure(err)
		code = we.Code
		inv.ErrorDetail = "Streaming error: " + we.Message
		if !agentRaised {
			inv.ErrorDetail = "Streaming error: " + string(we.Code) + ": " + we.Message
			s.log.Warn("stream failed", "tag", tag, "invocation_id", inv.ID, "code", we.Code, "error", we.Message)
		}
		s.finish(r.Context(), inv)
		frame = append(frame[:0], `{"type":"error","error":`...)
		frame = wire.AppendString(frame, "Streaming error: "+we.Message)
		frame = append(frame, `,"code":`...)
		frame = append(wire.AppendString(frame, string(we.Code)), '}')
		s.writeFrame(conn, frame)
		closeWith(conn, websocket.CloseNormalClosure, "")
	}
	s.cfg.OnCall(a.Agent, tag, code, elapsed)
}

func (s *Server) writeFrame(conn *websocket.Conn, frame []byte) error {
	conn.SetWriteDeadline(time.Now().Add(s.cfg.StallTimeout))
	if err := conn.WriteMessage(websocket.TextMessage, frame); err != nil {
		return errClientGone
	}
	return nil
}

func closeWith(conn *websocket.Conn, code int, text string) {
	conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), time.Now().Add(time.Second))
}

// streamOutput is the output_data recorded for a finished stream, shaped like
// the original's.
func streamOutput(n int, elapsed time.Duration, samples []json.RawMessage) json.RawMessage {
	for i, s := range samples {
		if s == nil {
			samples[i] = json.RawMessage("null")
		}
	}
	if samples == nil {
		samples = []json.RawMessage{}
	}
	b, _ := json.Marshal(map[string]any{
		"stream_completed":       true,
		"total_chunks":           n,
		"execution_type":         "streaming",
		"sample_chunks":          samples,
		"execution_time_seconds": elapsed.Seconds(),
		"chunk_summary": map[string]any{
			"total_chunks": n, "stored_samples": len(samples), "stream_type": "websocket",
		},
	})
	return b
}
