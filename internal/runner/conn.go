package runner

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/runproto"
	"github.com/runagent-go/runagent/internal/wire"
)

// ErrNotSent marks an error of a call that never reached the runner (its
// connection was already gone): the call did not run, and may be sent to
// another instance.
var ErrNotSent = errors.New("the call was not sent to the runner")

type notSent struct{ err error }

func (e notSent) Error() string   { return e.err.Error() }
func (e notSent) Unwrap() []error { return []error{e.err, ErrNotSent} }

// ErrClosed is returned for calls on a connection that was closed on purpose.
var ErrClosed = errors.New("runner connection closed")

// LogFunc receives what the agent printed: invocation is the label of the
// call that printed it (see domain.WithInvocation), "" outside calls; stream is
// "stdout" or "stderr".
type LogFunc func(invocation, stream, text string)

// ConnOptions configure a Conn.
type ConnOptions struct {
	// OnLog receives what the agent prints (nil: dropped).
	OnLog LogFunc
	// Lost turns the error that ended the stream (a read or write error, a
	// *runproto.ProtocolError) into the error handed to in-flight and later calls
	// (the Process adds the exit status).
	Lost func(error) error
	// Flow bounds what the runner sends (zero fields: the defaults); the
	// runner must have been told the same in INIT.
	Flow runproto.Flow
}

// Conn multiplexes calls over one runner byte stream.
type Conn struct {
	rw    io.ReadWriteCloser
	onLog LogFunc
	lost  func(error) error
	flow  runproto.Flow

	wmu  sync.Mutex // guards wbuf and writes to rw
	wbuf []byte

	mu    sync.Mutex // guards calls, next, err
	calls map[uint32]*pending
	next  uint32
	err   error

	done  chan struct{}
	ready chan runproto.Frame
}

type pending struct {
	ch    chan runproto.Frame
	gone  chan struct{} // closed when the caller stops listening
	label string        // the invocation, for LOG frames
	// stream: a stream call, under flow control; unacked is the bytes of
	// its chunks read and not yet credited back to the runner.
	stream                 bool
	unacked, unackedChunks atomic.Int64
}

// NewConn starts serving the runner protocol over rw.
func NewConn(rw io.ReadWriteCloser, o ConnOptions) *Conn {
	c := &Conn{
		rw:    rw,
		onLog: o.OnLog,
		lost:  o.Lost,
		flow:  o.Flow.WithDefaults(),
		calls: make(map[uint32]*pending),
		done:  make(chan struct{}),
		ready: make(chan runproto.Frame, 1),
	}
	go c.readLoop()
	return c
}

// Done is closed when the stream is gone.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err is why the stream is gone, nil while it is up.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// InFlight is the number of calls waiting for an answer.
func (c *Conn) InFlight() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.calls)
}

// Close closes the stream; in-flight calls fail with ErrClosed.
func (c *Conn) Close() error {
	c.shutdown(ErrClosed)
	return nil
}

// readLoop reads frames and hands them to their calls. It never waits for
// a caller: a call's frames fit its channel by the protocol (one final
// frame; a stream's window of chunks), so one slow consumer cannot stall
// the others or hide that the runner died.
func (c *Conn) readLoop() {
	br := bufio.NewReaderSize(c.rw, 64<<10)
	limit := c.flow.MaxFrame()
	for {
		f, err := runproto.ReadFrame(br, limit)
		if err == nil {
			err = c.deliver(f)
		}
		if err != nil {
			c.broken(err)
			return
		}
	}
}

// deliver hands one frame to whoever waits for it; an error is the runner
// breaking the protocol.
func (c *Conn) deliver(f runproto.Frame) error {
	switch f.Kind {
	case runproto.KindReady:
		select {
		case c.ready <- f:
		default:
		}
		return nil
	case runproto.KindLog:
		if c.onLog != nil {
			var l struct{ Stream, Text string }
			if json.Unmarshal(f.Body, &l) == nil {
				label := ""
				c.mu.Lock()
				if p := c.calls[f.Call]; p != nil {
					label = p.label
				}
				c.mu.Unlock()
				c.onLog(label, l.Stream, l.Text)
			}
		}
		return nil
	}
	switch {
	case f.Kind == runproto.KindResult && len(f.Body) > c.flow.MaxResult:
		return &runproto.ProtocolError{What: fmt.Sprintf("a result of %d bytes, more than the limit of %d it was given", len(f.Body), c.flow.MaxResult)}
	case f.Kind == runproto.KindChunk && len(f.Body) > c.flow.MaxChunk:
		return &runproto.ProtocolError{What: fmt.Sprintf("a chunk of %d bytes, more than the limit of %d it was given", len(f.Body), c.flow.MaxChunk)}
	}
	c.mu.Lock()
	p := c.calls[f.Call]
	if p != nil && f.Kind.Final() {
		delete(c.calls, f.Call)
	}
	c.mu.Unlock()
	if p == nil {
		return nil // a call the host gave up on
	}
	chunk := f.Kind == runproto.KindChunk || f.Kind == runproto.KindChunkError
	if p.stream != (chunk || f.Kind == runproto.KindEnd) && f.Kind != runproto.KindError {
		return &runproto.ProtocolError{What: fmt.Sprintf("a %s frame for call %d, which does not take one", f.Kind, f.Call)}
	}
	if chunk {
		if p.unackedChunks.Add(1) > int64(c.flow.WindowChunks) {
			return &runproto.ProtocolError{What: fmt.Sprintf("a stream sent more than its window of %d chunks", c.flow.WindowChunks)}
		}
		if p.unacked.Add(int64(len(f.Body))) > int64(c.flow.WindowBytes+c.flow.MaxChunk) {
			return &runproto.ProtocolError{What: fmt.Sprintf("a stream sent more than its window of %d bytes", c.flow.WindowBytes)}
		}
	}
	select {
	case p.ch <- f:
	case <-p.gone:
	default:
		return &runproto.ProtocolError{What: fmt.Sprintf("call %d was sent more frames than its window of %d chunks", f.Call, c.flow.WindowChunks)}
	}
	return nil
}

// broken ends the stream after a read or write error or a protocol
// violation and returns the error calls get.
func (c *Conn) broken(err error) error {
	if c.lost != nil {
		err = c.lost(err)
	}
	c.shutdown(err)
	return c.Err()
}

func (c *Conn) shutdown(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	c.calls = map[uint32]*pending{}
	c.mu.Unlock()
	close(c.done)
	c.rw.Close()
}

func (c *Conn) register(ctx context.Context, buffer int, stream bool) (uint32, *pending, error) {
	p := &pending{ch: make(chan runproto.Frame, buffer), gone: make(chan struct{}), stream: stream}
	p.label = domain.InvocationOf(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, nil, notSent{c.err}
	}
	c.next++
	if c.next == 0 {
		c.next = 1
	}
	c.calls[c.next] = p
	return c.next, p, nil
}

// abandon forgets a call the caller no longer listens to and tells the runner.
func (c *Conn) abandon(id uint32, p *pending) {
	close(p.gone)
	c.mu.Lock()
	_, live := c.calls[id]
	delete(c.calls, id)
	c.mu.Unlock()
	if live {
		c.send(runproto.KindCancel, id, nil)
	}
}

// send writes one frame. A failed write means the stream is broken: the
// error is the one every call gets.
func (c *Conn) send(kind runproto.Kind, call uint32, body []byte) error {
	c.wmu.Lock()
	c.wbuf = runproto.AppendHeader(c.wbuf[:0], kind, call, len(body))
	c.wbuf = append(c.wbuf, body...)
	_, err := c.rw.Write(c.wbuf)
	c.wmu.Unlock()
	if err != nil {
		return c.broken(err)
	}
	return nil
}

// credit tells the runner that the host took chunks of a stream.
func (c *Conn) credit(call uint32, chunks, bytes int) {
	var b [48]byte
	c.send(runproto.KindCredit, call, runproto.AppendCredit(b[:0], chunks, bytes))
}

func (c *Conn) sendCall(id uint32, tag string, args, kwargs []byte) error {
	if len(args) == 0 {
		args = []byte("[]")
	}
	if len(kwargs) == 0 {
		kwargs = []byte("{}")
	}
	c.wmu.Lock()
	b := append(c.wbuf[:0], 0, 0, 0, 0, byte(runproto.KindCall), 0, 0, 0, 0)
	binary.BigEndian.PutUint32(b[5:9], id)
	b = append(b, `{"tag":`...)
	b = wire.AppendString(b, tag)
	b = append(b, `,"args":`...)
	b = append(b, args...)
	b = append(b, `,"kwargs":`...)
	b = append(b, kwargs...)
	b = append(b, '}')
	binary.BigEndian.PutUint32(b[0:4], uint32(len(b)-4))
	_, err := c.rw.Write(b)
	if cap(b) <= 64<<10 {
		c.wbuf = b // a big request's buffer is not kept
	}
	c.wmu.Unlock()
	if err != nil {
		// The runner is gone (a write to a broken stream): the call never ran.
		return notSent{c.broken(err)}
	}
	return nil
}

// Init sends INIT and waits for READY.
func (c *Conn) Init(ctx context.Context, init any) (*runproto.Ready, error) {
	body, err := json.Marshal(init)
	if err != nil {
		return nil, err
	}
	if err := c.send(runproto.KindInit, 0, body); err != nil {
		return nil, err
	}
	select {
	case f := <-c.ready:
		var r runproto.Ready
		if err := json.Unmarshal(f.Body, &r); err != nil {
			return nil, fmt.Errorf("runner protocol: bad READY frame: %w", err)
		}
		return &r, nil
	case <-c.done:
		return nil, c.Err()
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// Call runs a non-streaming entrypoint and returns its structured string.
// A ctx that ends first cancels the call in the runner and returns
// context.Cause(ctx).
func (c *Conn) Call(ctx context.Context, tag string, args, kwargs []byte) ([]byte, error) {
	id, p, err := c.register(ctx, 1, false)
	if err != nil {
		return nil, err
	}
	if err := c.sendCall(id, tag, args, kwargs); err != nil {
		c.abandon(id, p)
		return nil, err
	}
	select {
	case f := <-p.ch:
		return finalResult(f)
	case <-ctx.Done():
		c.abandon(id, p)
		return nil, context.Cause(ctx)
	case <-c.done:
		select {
		case f := <-p.ch:
			return finalResult(f)
		default:
			return nil, c.Err()
		}
	}
}

func finalResult(f runproto.Frame) ([]byte, error) {
	switch f.Kind {
	case runproto.KindResult:
		return f.Body, nil
	case runproto.KindError:
		return nil, callError(f.Body)
	}
	return nil, fmt.Errorf("runner protocol: unexpected %s frame for a call", f.Kind)
}

// callError turns an ERROR frame into the call's error: the agent's own
// exception (INTERNAL_ERROR) is a *domain.AgentError, anything else a
// *domain.Error with the runner's code.
func callError(body []byte) error {
	var e runproto.CallError
	if err := json.Unmarshal(body, &e); err != nil || e.Code == "" {
		return &domain.AgentError{Message: string(body)}
	}
	if domain.Code(e.Code) == domain.CodeInternal {
		return &domain.AgentError{Type: e.Type, Message: e.Message, Traceback: e.Traceback}
	}
	we := &domain.Error{Code: domain.Code(e.Code), Message: e.Message}
	if e.Type == "DataLimitError" {
		we.Limit = domain.LimitResult
		if strings.HasPrefix(e.Message, "chunk ") {
			we.Limit = domain.LimitChunk
		}
	}
	return we
}

// Stream runs a streaming entrypoint, handing each chunk to fn in order, and
// returns the number of chunks the runner reported at the end. started, when
// not nil, is called once the call is on its way to the runner: the caller
// announces the stream then, so the runner is not kept waiting for it.
func (c *Conn) Stream(ctx context.Context, tag string, args, kwargs []byte, started func(), fn domain.ChunkFunc) (int, error) {
	// The window's chunks plus the final frame.
	id, p, err := c.register(ctx, c.flow.WindowChunks+1, true)
	if err != nil {
		return 0, err
	}
	if err := c.sendCall(id, tag, args, kwargs); err != nil {
		c.abandon(id, p)
		return 0, err
	}
	if started != nil {
		started()
	}
	// What the consumer took is credited back in halves of the window, so
	// the runner rarely waits while the consumer keeps up.
	halfChunks, halfBytes := max(1, c.flow.WindowChunks/2), max(1, c.flow.WindowBytes/2)
	took, tookBytes := 0, 0
	handle := func(f runproto.Frame) (done bool, n int, err error) {
		switch f.Kind {
		case runproto.KindChunk, runproto.KindChunkError:
			if err := fn(domain.Chunk{Body: f.Body, EncodeError: f.Kind == runproto.KindChunkError}); err != nil {
				c.abandon(id, p)
				return true, 0, err
			}
			took++
			tookBytes += len(f.Body)
			if took >= halfChunks || tookBytes >= halfBytes {
				p.unacked.Add(-int64(tookBytes))
				p.unackedChunks.Add(-int64(took))
				c.credit(id, took, tookBytes)
				took, tookBytes = 0, 0
			}
			return false, 0, nil
		case runproto.KindEnd:
			var end struct{ Chunks int }
			json.Unmarshal(f.Body, &end)
			return true, end.Chunks, nil
		case runproto.KindError:
			return true, 0, callError(f.Body)
		}
		return true, 0, fmt.Errorf("runner protocol: unexpected %s frame in a stream", f.Kind)
	}
	for {
		select {
		case f := <-p.ch:
			if done, n, err := handle(f); done {
				return n, err
			}
		case <-ctx.Done():
			c.abandon(id, p)
			return 0, context.Cause(ctx)
		case <-c.done:
			// Drain what arrived before the stream went away.
			for {
				select {
				case f := <-p.ch:
					if done, n, err := handle(f); done {
						return n, err
					}
				default:
					return 0, c.Err()
				}
			}
		}
	}
}

// Ping round-trips a PING frame: a cheap liveness check of the runner's loop.
func (c *Conn) Ping(ctx context.Context) error {
	id, p, err := c.register(ctx, 1, false)
	if err != nil {
		return err
	}
	if err := c.send(runproto.KindPing, id, nil); err != nil {
		c.abandon(id, p)
		return err
	}
	select {
	case <-p.ch:
		return nil
	case <-ctx.Done():
		c.abandon(id, p)
		return context.Cause(ctx)
	case <-c.done:
		return c.Err()
	}
}
