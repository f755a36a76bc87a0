package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/gorilla/websocket"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/wire"
)

// A stream over the WebSocket route that outlives its client: the first
// message names "on_disconnect": "continue"; the run is then detached as
// over SSE (detached.go) and the socket reads its event log. Its frames are
// the wire's, each chunk's with the event's "id"; a client that lost the
// socket re-joins with a WebSocket to GET /api/v1/runs/{id}/stream and
// ?resume_from=ID (or a first message {"resume_from": ID}), and gets the
// frames after that id, then the live ones. A plain stream's frames are
// untouched: the official SDKs see the wire as it is.

var wsDetachedInfo, _ = json.Marshal(map[string]any{"connection_type": "websocket", "stream_mode": true, "on_disconnect": "continue"})

// wsEvents sends a run's events as wire WebSocket frames.
type wsEvents struct {
	s     *Server
	conn  *websocket.Conn
	frame []byte
	last  time.Time // the last write
}

func (e *wsEvents) write(frame []byte) error {
	e.last = time.Now()
	return e.s.writeFrame(e.conn, frame)
}

// begin is the stream_started frame, with the run to re-join.
func (e *wsEvents) begin(runID string, resumed bool) error {
	f := append(e.frame[:0], `{"type":"status","status":"stream_started","invocation_id":`...)
	f = append(wire.AppendString(f, runID), `,"run_id":`...)
	f = wire.AppendString(f, runID)
	if resumed {
		f = append(f, `,"resumed":true`...)
	}
	e.frame = append(f, '}')
	return e.write(e.frame)
}

func (e *wsEvents) event(seq int, kind string, data []byte) error {
	f := e.frame[:0]
	switch kind {
	case "chunk":
		f = append(f, `{"type":"data","content":`...)
		f = append(wire.AppendString(f, string(data)), `,"id":`...)
		f = append(strconv.AppendInt(f, int64(seq), 10), '}')
	case "chunk_error":
		var m struct{ Message string }
		json.Unmarshal(data, &m)
		f = append(f, `{"type":"error","error":`...)
		f = append(wire.AppendString(f, m.Message), `,"id":`...)
		f = append(strconv.AppendInt(f, int64(seq), 10), '}')
	case "done":
		// {"total_chunks":N,"execution_time":T,"invocation_id":ID}
		f = append(f, `{"type":"status","status":"stream_completed",`...)
		f = append(f, data[1:]...)
	case "error":
		var m struct{ Code, Message string }
		json.Unmarshal(data, &m)
		f = append(f, `{"type":"error","error":`...)
		f = append(wire.AppendString(f, m.Message), `,"code":`...)
		f = append(wire.AppendString(f, m.Code), '}')
	default:
		return nil
	}
	e.frame = f
	if err := e.write(f); err != nil {
		return err
	}
	if kind == "done" || kind == "error" {
		closeWith(e.conn, websocket.CloseNormalClosure, "")
	}
	return nil
}

func (e *wsEvents) heartbeat(every time.Duration) error {
	if time.Since(e.last) < every {
		return nil
	}
	e.last = time.Now()
	return e.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(e.s.cfg.StallTimeout))
}

// tailWS sends run id's events after seq after to conn until the end or
// the client goes away (which leaves the run running).
func (s *Server) tailWS(ctx context.Context, conn *websocket.Conn, id string, after int) {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		for {
			if _, _, err := conn.NextReader(); err != nil {
				stop()
				return
			}
		}
	}()
	e := &wsEvents{s: s, conn: conn, frame: make([]byte, 0, 1024)}
	if e.begin(id, after >= 0) != nil {
		return
	}
	s.tail(ctx, e, id, after)
}

// streamDetachedWS starts the detached run of a WebSocket stream whose
// first message asked for "on_disconnect": "continue", and tails it.
func (s *Server) streamDetachedWS(ctx context.Context, conn *websocket.Conn, a *Agent, req runRequest) {
	if s.cfg.Events == nil || s.cfg.Runs == nil {
		wsRefuse(conn, &domain.Error{Code: domain.CodeValidation, Field: "on_disconnect",
			Message: `on_disconnect: "continue" needs a server that keeps event logs (runagent server); runagent serve streams with "cancel"`})
		return
	}
	inv := domain.Invocation{
		ID: newInvocationID(), AgentID: a.ID, EntrypointTag: *req.EntrypointTag, SDKType: "websocket_stream",
		InputArgs: req.InputArgs, InputKwargs: req.InputKwargs, Status: domain.StatusPending,
		RequestTime: time.Now(), ClientInfo: wsDetachedInfo,
	}
	// Written before the client hears of it, so that a re-join from
	// another gateway finds the run.
	s.cfg.Recorder.Start(inv)
	if _, err := s.cfg.Recorder.Get(ctx, inv.ID); err != nil {
		wsRefuse(conn, &domain.Error{Code: domain.CodeConnection, Message: "the run could not be recorded; retry"})
		return
	}
	s.startDetached(a, inv, req)
	s.tailWS(ctx, conn, inv.ID, -1)
}

// wsRefuse answers a WebSocket request with the wire's error frame.
func wsRefuse(conn *websocket.Conn, e *domain.Error) {
	b := append([]byte(`{"type":"error","detail":`), wire.AppendString(nil, e.Message)...)
	b = append(append(append(b, `,"code":`...), wire.AppendString(nil, string(e.Code))...), '}')
	conn.WriteMessage(websocket.TextMessage, b)
	closeWith(conn, websocket.CloseUnsupportedData, "")
}

// handleRunStreamWS is the WebSocket re-join of GET /api/v1/runs/{id}/stream.
func (s *Server) handleRunStreamWS(w http.ResponseWriter, r *http.Request) {
	after, e := resumeFrom(r.URL.Query().Get("resume_from"))
	if e != nil {
		s.WriteError(w, e)
		return
	}
	query := r.URL.Query().Has("resume_from")
	run, ok := s.rejoinable(w, r)
	if !ok {
		return
	}
	conn, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer conn.Close()
	if !query {
		// The id in a first message: {"resume_from": ID} ({} or null: from the first).
		conn.SetReadLimit(4096)
		conn.SetReadDeadline(time.Now().Add(firstMessageWait))
		_, msg, err := conn.ReadMessage()
		if err != nil {
			return
		}
		conn.SetReadDeadline(time.Time{})
		var first struct {
			ResumeFrom json.RawMessage `json:"resume_from"`
		}
		if err := json.Unmarshal(msg, &first); err != nil {
			wsRefuse(conn, &domain.Error{Code: domain.CodeValidation, Field: "resume_from", Message: `expected a JSON object like {"resume_from": 41}`})
			return
		}
		v := string(first.ResumeFrom)
		if uq, err := strconv.Unquote(v); err == nil {
			v = uq
		}
		if v == "null" {
			v = ""
		}
		if after, e = resumeFrom(v); e != nil {
			wsRefuse(conn, e)
			return
		}
	}
	s.tailWS(r.Context(), conn, run.ID, after)
}

// resumeFrom reads a resume_from value ("": from the first event).
func resumeFrom(v string) (int, *domain.Error) {
	if v == "" {
		return -1, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < -1 {
		return 0, &domain.Error{Code: domain.CodeValidation, Field: "resume_from", Message: fmt.Sprintf("expected the id of an event of this run (a whole number), got %q", v)}
	}
	return n, nil
}
