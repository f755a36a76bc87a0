package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/wire"
)

// Streams that outlive their client: POST run-stream with "on_disconnect":
// "continue" runs the stream detached from its request, writing every
// chunk and its end to the run's event log (Config.Events); the client,
// and any client that re-joins later from any gateway with
// GET /api/v1/runs/{id}/stream and the last event id it has, reads the log:
// exactly the events after that id, then the live ones.

const (
	eventFlushEvery = 10 * time.Millisecond // how long a chunk may wait for its batch
	eventBatch      = 256                   // a batch written at once
	eventBacklog    = 8192                  // events waiting for the store before the stream waits
	tailPoll        = 100 * time.Millisecond
)

var detachedInfo, _ = json.Marshal(map[string]any{"connection_type": "sse", "stream_mode": true, "on_disconnect": "continue"})

// detachedRuns are the detached streams running in this server.
type detachedRuns struct {
	mu sync.Mutex
	m  map[string]*detached
}

// detached is one detached stream: its cancel, and the signal its
// readers here wait on for new events.
type detached struct {
	cancel context.CancelCauseFunc
	mu     sync.Mutex
	wrote  chan struct{} // closed (and replaced) when events were written
}

func (d *detached) changed() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.wrote
}

func (d *detached) signal() {
	d.mu.Lock()
	close(d.wrote)
	d.wrote = make(chan struct{})
	d.mu.Unlock()
}

func (dr *detachedRuns) get(id string) *detached {
	dr.mu.Lock()
	defer dr.mu.Unlock()
	return dr.m[id]
}

// CancelDetached cancels the detached stream id if it runs in this server.
func (s *Server) CancelDetached(id string, cause error) bool {
	if d := s.detached.get(id); d != nil {
		d.cancel(cause)
		return true
	}
	return false
}

// startDetached runs the stream of inv in the background and returns at
// once; its events go to the log.
func (s *Server) startDetached(a *Agent, inv domain.Invocation, req runRequest) {
	ctx, cancelCause := context.WithCancelCause(context.Background())
	d := &detached{cancel: cancelCause, wrote: make(chan struct{})}
	s.detached.mu.Lock()
	if s.detached.m == nil {
		s.detached.m = map[string]*detached{}
	}
	s.detached.m[inv.ID] = d
	s.detached.mu.Unlock()
	go func() {
		defer func() {
			s.detached.mu.Lock()
			delete(s.detached.m, inv.ID)
			s.detached.mu.Unlock()
			cancelCause(nil)
		}()
		s.runDetached(ctx, d, a, inv, req)
	}()
}

func (s *Server) runDetached(base context.Context, d *detached, a *Agent, inv domain.Invocation, req runRequest) {
	start := inv.RequestTime
	ctx, cancel := s.callContext(domain.WithInvocation(base, inv.ID), a, deref(req.TimeoutSeconds))
	defer cancel()

	var (
		mu      sync.Mutex
		pending []domain.RunEvent
		room    = make(chan struct{}, 1) // a flush made room
		seq     int
	)
	flush := func() {
		mu.Lock()
		batch := pending
		pending = nil
		mu.Unlock()
		for len(batch) > 0 {
			n := min(len(batch), eventBatch)
			for attempt := 0; ; attempt++ {
				err := s.cfg.Events.AppendRunEvents(context.Background(), batch[:n])
				if err == nil {
					break
				}
				if attempt == 50 {
					s.log.Error("the event log of a stream could not be written; its events are lost", "invocation_id", inv.ID, "events", len(batch), "error", err)
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
			batch = batch[n:]
			d.signal()
		}
		select {
		case room <- struct{}{}:
		default:
		}
	}
	add := func(kind string, data []byte) {
		mu.Lock()
		pending = append(pending, domain.RunEvent{RunID: inv.ID, Seq: seq, Kind: kind, Data: data, At: time.Now()})
		seq++
		full := len(pending) >= eventBacklog
		mu.Unlock()
		if full { // the store is slower than the agent: the agent waits
			flush()
		}
	}
	stopFlusher := make(chan struct{})
	flusherDone := make(chan struct{})
	go func() {
		defer close(flusherDone)
		t := time.NewTicker(eventFlushEvery)
		defer t.Stop()
		for {
			select {
			case <-stopFlusher:
				return
			case <-t.C:
				flush()
			}
		}
	}()

	var samples []json.RawMessage
	n, err := s.cfg.Dispatcher.Stream(ctx, req.target(a), inv.EntrypointTag, req.InputArgs, req.InputKwargs, nil, func(c domain.Chunk) error {
		if c.EncodeError {
			var ce struct{ Message string }
			json.Unmarshal(c.Body, &ce)
			msg, _ := json.Marshal(map[string]string{"message": "Chunk serialization failed: " + ce.Message})
			add("chunk_error", msg)
			return nil
		}
		if len(samples) < sampleChunks {
			samples = append(samples, payloadOf(c.Body))
		}
		// The structured chunk as the runner encoded it: a WebSocket reader
		// sends it as is, an SSE reader its payload (sseEvents).
		add("chunk", append([]byte(nil), c.Body...))
		return nil
	})
	elapsed := time.Since(start)
	inv.ResponseTime = time.Now()
	inv.ExecutionMS = float64(elapsed.Microseconds()) / 1000
	code := domain.Code("")
	if err == nil {
		inv.Status = domain.StatusCompleted
		inv.Output = streamOutput(n, elapsed, samples)
		b := strconv.AppendInt([]byte(`{"total_chunks":`), int64(n), 10)
		b = wire.AppendFloat(append(b, `,"execution_time":`...), elapsed.Seconds())
		b = append(append(append(b, `,"invocation_id":`...), wire.AppendString(nil, inv.ID)...), '}')
		add("done", b)
	} else {
		var we *domain.Error
		if errors.Is(context.Cause(base), ErrRunCancelled) {
			we = &domain.Error{Code: domain.CodeCancelled, Message: "the run was cancelled (POST /api/v1/runs/" + inv.ID + "/cancel)"}
		} else {
			we, _ = s.callFailure(err)
		}
		code = we.Code
		inv.Status = domain.StatusFailed
		inv.ErrorDetail = string(we.Code) + ": " + we.Message
		msg, _ := json.Marshal(map[string]string{"code": string(we.Code), "message": "Streaming error: " + we.Message})
		add("error", msg)
	}
	close(stopFlusher)
	<-flusherDone
	flush()
	s.finish(context.Background(), inv)
	s.cfg.OnCall(a.Agent, inv.EntrypointTag, code, elapsed)
}

// ErrRunCancelled is the cause a client's cancel gives CancelDetached.
var ErrRunCancelled = errors.New("the run was cancelled")

// eventSink is where a reader of a run's event log sends the events: an
// SSE answer (sseEvents) or a WebSocket (wsEvents).
type eventSink interface {
	event(seq int, kind string, data []byte) error
	// heartbeat keeps a quiet connection alive when nothing went out for
	// every.
	heartbeat(every time.Duration) error
}

// sseEvents sends a run's events as SSE: a chunk as its payload.
type sseEvents struct{ *sseWriter }

func (e sseEvents) event(seq int, kind string, data []byte) error {
	if kind == "chunk" {
		if v := payloadOf(data); v != nil {
			data = v
		}
	}
	return e.sseWriter.event(seq, kind, data)
}

// tailEvents answers the events of run id after seq after as SSE, live,
// until its end or the client goes away.
func (s *Server) tailEvents(w http.ResponseWriter, r *http.Request, id, agentID string, after int) {
	sw := s.newSSEWriter(w, id, agentID)
	sw.mu.Lock()
	sw.begin()
	sw.mu.Unlock()
	s.tail(r.Context(), sseEvents{sw}, id, after)
}

// tail sends the events of run id after seq after to sink, live, until
// its end or ctx ends.
func (s *Server) tail(ctx context.Context, sink eventSink, id string, after int) {
	lastCheck := time.Now()
	for {
		events, err := s.cfg.Events.RunEvents(ctx, id, after, 500)
		if err != nil {
			if ctx.Err() == nil {
				msg, _ := json.Marshal(map[string]string{"code": string(domain.CodeConnection), "message": "the event log could not be read; re-join with the last event id"})
				sink.event(-1, "error", msg)
			}
			return
		}
		for _, e := range events {
			if sink.event(e.Seq, e.Kind, e.Data) != nil {
				return
			}
			after = e.Seq
			if e.Kind == "done" || e.Kind == "error" {
				return
			}
		}
		if len(events) > 0 {
			continue
		}
		// Nothing new: wait for this server's writer, or poll (the run may
		// stream on another gateway); a run that ended without its end in
		// the log (its server died) ends the tail with its record.
		if time.Since(lastCheck) > time.Second {
			lastCheck = time.Now()
			if run, err := s.cfg.Runs.Run(ctx, id); err == nil && run.Ended() {
				if more, _ := s.cfg.Events.RunEvents(ctx, id, after, 1); len(more) == 0 {
					msg, _ := json.Marshal(map[string]string{"code": string(domain.CodeAgentCrashed), "message": fmt.Sprintf("the stream ended without its last events: %s", run.ErrorDetail)})
					sink.event(-1, "error", msg)
					return
				}
				continue
			}
		}
		var wake <-chan struct{}
		if d := s.detached.get(id); d != nil {
			wake = d.changed()
		}
		hb := s.cfg.Heartbeat
		if hb <= 0 {
			hb = time.Hour
		}
		select {
		case <-ctx.Done():
			return
		case <-wake:
		case <-time.After(tailPoll):
		}
		if sink.heartbeat(hb) != nil {
			return
		}
	}
}

// handleRunStream is GET /api/v1/runs/{run_id}/stream: re-join a stream
// that outlives its client, after the event id in Last-Event-ID (or
// ?last_event_id=; none: from the first); over a WebSocket, after
// resume_from (wsevents.go).
func (s *Server) handleRunStream(w http.ResponseWriter, r *http.Request) {
	if websocket.IsWebSocketUpgrade(r) {
		s.handleRunStreamWS(w, r)
		return
	}
	if !acceptsSSE(r.Header.Get("Accept")) {
		s.writeError(w, http.StatusNotAcceptable, &domain.Error{Code: domain.CodeValidation, Field: "Accept", Message: "the run's stream is text/event-stream"})
		return
	}
	last := r.Header.Get("Last-Event-ID")
	if v := r.URL.Query().Get("last_event_id"); v != "" {
		last = v
	}
	after := -1
	if last != "" {
		n, err := strconv.Atoi(last)
		if err != nil || n < -1 {
			s.WriteError(w, &domain.Error{Code: domain.CodeValidation, Field: "Last-Event-ID", Message: fmt.Sprintf("expected the id of an event of this run (a whole number), got %q", last)})
			return
		}
		after = n
	}
	run, ok := s.rejoinable(w, r)
	if !ok {
		return
	}
	s.tailEvents(w, r, run.ID, run.AgentID, after)
}

// rejoinable admits a re-join of the path's run: one with an event log.
func (s *Server) rejoinable(w http.ResponseWriter, r *http.Request) (domain.Run, bool) {
	run, ok := s.admitRun(w, r, ActReadInvocation)
	if !ok {
		return run, false
	}
	if first, err := s.cfg.Events.RunEvents(r.Context(), run.ID, -1, 1); err != nil {
		s.storeFailure(w, err)
		return run, false
	} else if len(first) == 0 && (run.Ended() || s.detached.get(run.ID) == nil && !isDetached(run.Invocation)) {
		s.WriteError(w, &domain.Error{Code: domain.CodeNotFound, Message: fmt.Sprintf(
			"run %s has no event log: only a stream started with \"on_disconnect\": \"continue\" can be re-joined, for as long as its log is kept", run.ID)})
		return run, false
	}
	return run, true
}

// isDetached says whether an invocation is a stream that outlives its client.
func isDetached(inv domain.Invocation) bool {
	var ci struct {
		OnDisconnect string `json:"on_disconnect"`
	}
	return (inv.SDKType == "sse_stream" || inv.SDKType == "websocket_stream") && json.Unmarshal(inv.ClientInfo, &ci) == nil && ci.OnDisconnect == "continue"
}

// IsDetached says whether an invocation is a stream that outlives its
// client (it is cancelled with CancelDetached where it runs).
func IsDetached(inv domain.Invocation) bool { return isDetached(inv) }
