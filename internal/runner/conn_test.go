package runner

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/runproto"
)

// fakeRunner is the runner end of a Conn, scripted by the test.
type fakeRunner struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func newPair(t *testing.T, lost func(error) error) (*Conn, *fakeRunner) {
	return newPairWith(t, ConnOptions{Lost: lost})
}

func newPairWith(t *testing.T, o ConnOptions) (*Conn, *fakeRunner) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	toConn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	host, peer := toConn(fds[0]), toConn(fds[1])
	conn := NewConn(host, o)
	t.Cleanup(func() { conn.Close(); peer.Close() })
	return conn, &fakeRunner{t: t, c: peer, br: bufio.NewReader(peer)}
}

func (r *fakeRunner) read() runproto.Frame {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := runproto.ReadFrame(r.br, runproto.MaxFrame)
	if err != nil {
		r.t.Fatalf("fake runner read: %v", err)
	}
	return f
}

// trySend sends a frame the host may already have cut the connection for
// (a protocol violation): a failed write is not the test's failure.
func (r *fakeRunner) trySend(kind runproto.Kind, call uint32, body string) {
	r.c.Write(append(runproto.AppendHeader(nil, kind, call, len(body)), body...))
}

func (r *fakeRunner) send(kind runproto.Kind, call uint32, body string) {
	r.t.Helper()
	b := append(runproto.AppendHeader(nil, kind, call, len(body)), body...)
	if _, err := r.c.Write(b); err != nil {
		r.t.Fatalf("fake runner write: %v", err)
	}
}

func TestConnCallAnswers(t *testing.T) {
	conn, r := newPair(t, nil)
	type answer struct {
		v   []byte
		err error
	}
	done := make(chan answer, 1)
	go func() {
		v, err := conn.Call(context.Background(), "echo", []byte(`[1]`), nil)
		done <- answer{v, err}
	}()
	f := r.read()
	var body struct {
		Tag    string
		Args   []int
		Kwargs map[string]any
	}
	if err := json.Unmarshal(f.Body, &body); err != nil || f.Kind != runproto.KindCall || body.Tag != "echo" || len(body.Args) != 1 || body.Kwargs == nil {
		t.Fatalf("CALL frame %s %s: %v", f.Kind, f.Body, err)
	}
	r.send(runproto.KindLog, f.Call, `{"stream":"stdout","text":"ignored without a LogFunc\n"}`)
	r.send(runproto.KindResult, f.Call, `{"type": "integer", "payload": "1"}`)
	if a := <-done; a.err != nil || string(a.v) != `{"type": "integer", "payload": "1"}` {
		t.Fatalf("Call = %s, %v", a.v, a.err)
	}

	go func() {
		_, err := conn.Call(context.Background(), "boom", nil, nil)
		done <- answer{nil, err}
	}()
	f = r.read()
	r.send(runproto.KindError, f.Call, `{"code":"INTERNAL_ERROR","type":"ValueError","message":"bad","traceback":"..."}`)
	var ce *domain.AgentError
	if a := <-done; !errors.As(a.err, &ce) || ce.Type != "ValueError" || ce.Message != "bad" || ce.Error() != "ValueError: bad" {
		t.Fatalf("Call error = %v", a.err)
	}
}

func TestConnCancelSendsCancel(t *testing.T) {
	conn, r := newPair(t, nil)
	ctx, cancel := context.WithCancelCause(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := conn.Call(ctx, "slow", nil, nil)
		done <- err
	}()
	f := r.read()
	why := errors.New("deadline for test")
	cancel(why)
	if err := <-done; err != why {
		t.Fatalf("cancelled Call = %v, want the context's cause", err)
	}
	c := r.read()
	if c.Kind != runproto.KindCancel || c.Call != f.Call {
		t.Fatalf("after cancel the runner got %s for call %d, want CANCEL for %d", c.Kind, c.Call, f.Call)
	}
	r.send(runproto.KindResult, f.Call, `late`) // ignored: nobody listens
	if conn.InFlight() != 0 {
		t.Fatalf("in flight = %d after cancel", conn.InFlight())
	}
}

func TestConnStream(t *testing.T) {
	conn, r := newPair(t, nil)
	type result struct {
		chunks []string
		n      int
		err    error
	}
	done := make(chan result, 1)
	go func() {
		var got []string
		n, err := conn.Stream(context.Background(), "s_stream", nil, nil, nil, func(c domain.Chunk) error {
			k := "CHUNK"
			if c.EncodeError {
				k = "CHUNK_ERROR"
			}
			got = append(got, k+":"+string(c.Body))
			return nil
		})
		done <- result{got, n, err}
	}()
	f := r.read()
	// More than the window, sent as a runner does: a window's worth, then
	// more as the host credits what it took.
	window := runproto.DefaultWindowChunks
	credited := 0
	for i := 0; i < 300; i++ {
		for i-credited >= window {
			c := r.read()
			var cr struct{ Chunks, Bytes int }
			if c.Kind != runproto.KindCredit || c.Call != f.Call || json.Unmarshal(c.Body, &cr) != nil || cr.Chunks < 1 || cr.Bytes != cr.Chunks {
				t.Fatalf("runner got %s %s while waiting for credit", c.Kind, c.Body)
			}
			credited += cr.Chunks
		}
		r.send(runproto.KindChunk, f.Call, "c")
	}
	r.send(runproto.KindChunkError, f.Call, `{"message":"x"}`)
	r.send(runproto.KindEnd, f.Call, `{"chunks": 301}`)
	res := <-done
	if res.err != nil || res.n != 301 || len(res.chunks) != 301 || res.chunks[300] != `CHUNK_ERROR:{"message":"x"}` {
		t.Fatalf("stream: n %d, %d chunks, err %v", res.n, len(res.chunks), res.err)
	}
	if credited == 0 {
		t.Fatal("the host never credited the stream")
	}

	// A consumer that stops cancels the generator.
	stop := errors.New("client gone")
	go func() {
		_, err := conn.Stream(context.Background(), "s_stream", nil, nil, nil, func(domain.Chunk) error { return stop })
		done <- result{err: err}
	}()
	for f = r.read(); f.Kind == runproto.KindCredit; f = r.read() { // the first stream's last credit
	}
	r.send(runproto.KindChunk, f.Call, "c")
	if res := <-done; res.err != stop {
		t.Fatalf("stopped stream = %v", res.err)
	}
	if c := r.read(); c.Kind != runproto.KindCancel || c.Call != f.Call {
		t.Fatalf("stopped stream sent %s, want CANCEL", c.Kind)
	}
}

// When the stream dies every caller gets the error lost() builds, at once.
func TestConnLostFailsEveryCall(t *testing.T) {
	crashed := &domain.Error{Code: domain.CodeAgentCrashed, Message: "gone"}
	conn, r := newPair(t, func(error) error { return crashed })
	errs := make(chan error, 3)
	for i := 0; i < 3; i++ {
		go func() {
			_, err := conn.Call(context.Background(), "x", nil, nil)
			errs <- err
		}()
		r.read()
	}
	go func() { errs <- conn.Ping(context.Background()) }()
	r.read()
	r.c.Close()
	for i := 0; i < 4; i++ {
		select {
		case err := <-errs:
			if !errors.Is(err, crashed) {
				t.Fatalf("call %d: %v, want the crash error", i, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a call hangs after the runner died")
		}
	}
	if _, err := conn.Call(context.Background(), "x", nil, nil); !errors.Is(err, crashed) {
		t.Fatalf("call after death = %v", err)
	}
	<-conn.Done()
}

func TestConnInitAndPing(t *testing.T) {
	conn, r := newPair(t, nil)
	done := make(chan *runproto.Ready, 1)
	go func() {
		rd, err := conn.Init(context.Background(), runproto.Init{AgentDir: "/a"})
		if err != nil {
			t.Error(err)
		}
		done <- rd
	}()
	if f := r.read(); f.Kind != runproto.KindInit || !strings.Contains(string(f.Body), `"agent_dir":"/a"`) {
		t.Fatalf("INIT frame %s %s", f.Kind, f.Body)
	}
	r.send(runproto.KindReady, 0, `{"protocol":1,"entrypoints":{"a":"sync_function"},"errors":{"b":"ImportError: no"}}`)
	if rd := <-done; rd == nil || rd.Errors["b"] != "ImportError: no" || rd.Entrypoints["a"] != "sync_function" {
		t.Fatalf("runproto.Ready = %+v", rd)
	}
	go func() { done <- nil; _ = conn.Ping(context.Background()) }()
	<-done
	f := r.read()
	if f.Kind != runproto.KindPing {
		t.Fatalf("got %s, want PING", f.Kind)
	}
	r.send(runproto.KindPong, f.Call, "")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go func() {
		f := r.read()
		r.send(runproto.KindPong, f.Call, "")
	}()
	if err := conn.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	var _ io.Closer = conn
}

// A consumer that does not take its chunks holds only its own call: the
// runner's answers to other calls still arrive at once.
func TestConnStalledStreamHoldsNoOtherCall(t *testing.T) {
	conn, r := newPairWith(t, ConnOptions{Flow: runproto.Flow{WindowChunks: 4}})
	release := make(chan struct{})
	streamDone := make(chan error, 1)
	go func() {
		_, err := conn.Stream(context.Background(), "s_stream", nil, nil, nil, func(domain.Chunk) error {
			<-release // a client that stopped reading
			return nil
		})
		streamDone <- err
	}()
	s := r.read()
	for range 4 { // the window: the consumer holds one, three wait in the channel
		r.send(runproto.KindChunk, s.Call, "c")
	}
	callDone := make(chan error, 1)
	go func() {
		_, err := conn.Call(context.Background(), "x", nil, nil)
		callDone <- err
	}()
	c := r.read()
	r.send(runproto.KindResult, c.Call, `{"type": "null", "payload": "null"}`)
	select {
	case err := <-callDone:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a call waited behind a stalled stream")
	}
	close(release)
	if f := r.read(); f.Kind != runproto.KindCredit || f.Call != s.Call {
		t.Fatalf("after the consumer took 2 chunks the runner got %s, want CREDIT", f.Kind)
	}
	r.send(runproto.KindEnd, s.Call, `{"chunks": 4}`)
	if err := <-streamDone; err != nil {
		t.Fatal(err)
	}
}

// A runner that does not keep to the flow it was given has its connection
// cut with a runproto.ProtocolError: more chunks than the window, more bytes, a
// result or chunk over its limit, a frame over the Conn's bound.
func TestConnProtocolViolations(t *testing.T) {
	flow := runproto.Flow{MaxResult: 100, MaxChunk: 10, WindowChunks: 2, WindowBytes: 15}
	tests := []struct {
		name   string
		stream bool
		send   func(r *fakeRunner, call uint32)
	}{
		{"chunks past the window", true, func(r *fakeRunner, call uint32) {
			for range 4 {
				r.trySend(runproto.KindChunk, call, "c")
			}
		}},
		{"bytes past the window", true, func(r *fakeRunner, call uint32) {
			r.trySend(runproto.KindChunk, call, "0123456789")
			r.trySend(runproto.KindChunk, call, "0123456789")
			r.trySend(runproto.KindChunk, call, "0123456789")
		}},
		{"a chunk over its limit", true, func(r *fakeRunner, call uint32) { r.trySend(runproto.KindChunk, call, strings.Repeat("x", 11)) }},
		{"a result over its limit", false, func(r *fakeRunner, call uint32) { r.trySend(runproto.KindResult, call, strings.Repeat("x", 101)) }},
		{"a frame over the bound", false, func(r *fakeRunner, call uint32) {
			r.c.Write(runproto.AppendHeader(nil, runproto.KindLog, call, runproto.MaxControlFrame+1)) // the body never comes
		}},
		{"chunks for a plain call", false, func(r *fakeRunner, call uint32) {
			r.trySend(runproto.KindChunk, call, "c")
			r.trySend(runproto.KindChunk, call, "c")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lostWith := make(chan error, 1)
			conn, r := newPairWith(t, ConnOptions{Flow: flow, Lost: func(err error) error { lostWith <- err; return err }})
			done := make(chan error, 1)
			go func() {
				var err error
				if tt.stream {
					block := make(chan struct{})
					_, err = conn.Stream(context.Background(), "s_stream", nil, nil, nil, func(domain.Chunk) error { <-block; return nil })
				} else {
					_, err = conn.Call(context.Background(), "x", nil, nil)
				}
				done <- err
			}()
			tt.send(r, r.read().Call)
			var pe *runproto.ProtocolError
			select {
			case err := <-lostWith:
				if !errors.As(err, &pe) {
					t.Fatalf("the connection ended with %v, want a runproto.ProtocolError", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the violation was not noticed")
			}
			if tt.stream {
				return // its consumer is blocked on purpose
			}
			if err := <-done; !errors.As(err, &pe) {
				t.Fatalf("the call got %v, want the runproto.ProtocolError", err)
			}
		})
	}
}

// A call on a connection that is already gone says it was not sent, so a
// pool may try another instance.
func TestConnCallNotSent(t *testing.T) {
	crashed := &domain.Error{Code: domain.CodeAgentCrashed, Message: "gone"}
	conn, r := newPair(t, func(error) error { return crashed })
	r.c.Close()
	<-conn.Done()
	_, err := conn.Call(context.Background(), "x", nil, nil)
	var we *domain.Error
	if !errors.Is(err, ErrNotSent) || !errors.As(err, &we) || we != crashed {
		t.Fatalf("call on a dead connection = %v, want ErrNotSent wrapping the crash", err)
	}
}
