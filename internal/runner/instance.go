package runner

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"
)

// StartFunc starts one runner process.
type StartFunc func(ctx context.Context) (*Process, error)

// ErrInstanceClosed is returned by Get after Close.
var ErrInstanceClosed = errors.New("agent instance is shut down")

// Instance keeps one runner process alive for an agent: a runner that dies is
// replaced at once in the background (with back-off when it keeps dying), and
// callers that arrive meanwhile wait for the replacement.
type Instance struct {
	start StartFunc
	log   *slog.Logger

	mu       sync.Mutex // guards the fields below
	cur      *Process
	starting *attempt
	closed   bool
	crashes  int // consecutive crashes soon after start
}

type attempt struct {
	done chan struct{}
	p    *Process
	err  error
}

// NewInstance returns an Instance that starts runners with start.
func NewInstance(start StartFunc, log *slog.Logger) *Instance {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Instance{start: start, log: log}
}

// Get returns the live runner, starting one if there is none.
func (in *Instance) Get(ctx context.Context) (*Process, error) {
	in.mu.Lock()
	if in.closed {
		in.mu.Unlock()
		return nil, ErrInstanceClosed
	}
	if p := in.cur; p != nil && p.Err() == nil {
		in.mu.Unlock()
		return p, nil
	}
	a := in.starting
	if a == nil {
		a = in.launch(0)
	}
	in.mu.Unlock()
	select {
	case <-a.done:
		return a.p, a.err
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// Current returns the live runner without starting one.
func (in *Instance) Current() *Process {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.cur != nil && in.cur.Err() == nil {
		return in.cur
	}
	return nil
}

// launch starts a runner in the background after delay; in.mu is held.
func (in *Instance) launch(delay time.Duration) *attempt {
	a := &attempt{done: make(chan struct{})}
	in.starting = a
	go func() {
		if delay > 0 {
			time.Sleep(delay)
		}
		p, err := in.start(context.Background())
		in.mu.Lock()
		in.starting = nil
		if in.closed && p != nil {
			in.mu.Unlock()
			p.Close()
			a.err = ErrInstanceClosed
			close(a.done)
			return
		}
		if err == nil {
			in.cur = p
			go in.watch(p)
		}
		in.mu.Unlock()
		a.p, a.err = p, err
		close(a.done)
	}()
	return a
}

// watch replaces p when it dies without being closed.
func (in *Instance) watch(p *Process) {
	<-p.Done()
	if !errors.Is(p.Err(), ErrClosed) {
		in.log.Warn("agent runner crashed; starting a new one", "pid", p.PID(), "error", p.Err())
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.cur == p {
		in.cur = nil
	}
	if in.closed || errors.Is(p.Err(), ErrClosed) || in.starting != nil {
		return
	}
	if time.Since(p.Started) < 10*time.Second {
		in.crashes++
	} else {
		in.crashes = 0
	}
	delay := time.Duration(0)
	if in.crashes > 1 {
		delay = min(100*time.Millisecond<<min(in.crashes, 8), 10*time.Second)
	}
	in.launch(delay)
}

// Close stops the runner and refuses further Gets.
func (in *Instance) Close() error {
	in.mu.Lock()
	in.closed = true
	p := in.cur
	in.cur = nil
	in.mu.Unlock()
	if p != nil {
		return p.Close()
	}
	return nil
}

// Call runs a non-streaming entrypoint on the live runner. A call that did
// not reach a runner that just died (ErrNotSent) goes to its replacement.
func (in *Instance) Call(ctx context.Context, tag string, args, kwargs []byte) ([]byte, error) {
	for attempt := 1; ; attempt++ {
		p, err := in.Get(ctx)
		if err != nil {
			return nil, err
		}
		out, err := p.Call(ctx, tag, args, kwargs)
		if attempt == 1 && errors.Is(err, ErrNotSent) {
			continue
		}
		return out, err
	}
}

// Stream runs a streaming entrypoint on the live runner (see Call).
func (in *Instance) Stream(ctx context.Context, tag string, args, kwargs []byte, started func(), fn ChunkFunc) (int, error) {
	for attempt := 1; ; attempt++ {
		p, err := in.Get(ctx)
		if err != nil {
			return 0, err
		}
		n, err := p.Stream(ctx, tag, args, kwargs, started, fn)
		if attempt == 1 && errors.Is(err, ErrNotSent) {
			continue
		}
		return n, err
	}
}
