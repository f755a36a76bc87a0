package natsdispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/runagent-go/runagent/internal/domain"
)

// Node serves, over NATS, the agent versions it is told to: each call that
// arrives on a version's subject (in the queue group of the nodes) runs
// through local, the in-process dispatcher of this machine's pools.
type Node struct {
	nc      *nats.Conn
	opts    Options
	id      string
	local   domain.Dispatcher
	log     *slog.Logger
	control string // prefix of this node's control subjects
	ctlSub  *nats.Subscription

	mu     sync.Mutex
	served map[domain.Target]subscriptions
	wanted map[domain.Target]bool // what Serve was told (paused: not subscribed)
	paused bool
	calls  map[string]*serving

	ctx    context.Context // ends when the node closes: its calls are cancelled
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// subscriptions are a version's: its queue group's subject, and the
// node's direct one.
type subscriptions struct{ group, direct *nats.Subscription }

// serving is one call the node runs.
type serving struct {
	reply  string
	cancel context.CancelCauseFunc
	heard  atomic.Int64 // unix nanoseconds of the last message from the caller
	sent   atomic.Int64 // of the last message to the caller

	// Flow control of a stream: what was sent, what the caller has taken.
	mu                     sync.Mutex
	sentChunks, sentBytes  int64
	takenChunks, takenByte int64
	credit                 chan struct{} // a credit arrived
}

// NewNode returns a node named id (unique in the cluster) that runs calls
// through local. Serve tells it which versions to take calls for.
func NewNode(nc *nats.Conn, id string, local domain.Dispatcher, log *slog.Logger, o Options) (*Node, error) {
	o = o.withDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := &Node{nc: nc, opts: o, id: id, local: local, log: log, control: o.Prefix + ".ctl." + id,
		served: map[domain.Target]subscriptions{}, wanted: map[domain.Target]bool{}, calls: map[string]*serving{}}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	sub, err := nc.Subscribe(n.control+".*", n.onControl)
	if err != nil {
		return nil, fmt.Errorf("subscribe to %s.*: %w", n.control, err)
	}
	sub.SetPendingLimits(-1, -1)
	n.ctlSub = sub
	go n.watch()
	return n, nil
}

// ID is the node's name.
func (n *Node) ID() string { return n.id }

// Serve starts taking calls for t (once resumed, if paused).
func (n *Node) Serve(t domain.Target) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.wanted[t] = true
	if n.paused {
		return nil
	}
	if err := n.subscribeLocked(t); err != nil {
		return err
	}
	return n.flush()
}

// flush returns once the NATS server has the subscriptions made so far: a
// call sent after Serve or Resume returns finds this node.
func (n *Node) flush() error {
	if err := n.nc.FlushTimeout(5 * time.Second); err != nil {
		return fmt.Errorf("subscribe on NATS: %w", err)
	}
	return nil
}

func (n *Node) subscribeLocked(t domain.Target) error {
	if n.served[t].group != nil {
		return nil
	}
	group, err := n.nc.QueueSubscribe(CallSubject(n.opts.Prefix, t), QueueGroup, n.onCall)
	if err != nil {
		return fmt.Errorf("serve version %d of agent %s: %w", t.Version, t.AgentID, err)
	}
	direct, err := n.nc.Subscribe(DirectSubject(n.opts.Prefix, n.id, t), n.onCall)
	if err != nil {
		group.Unsubscribe()
		return fmt.Errorf("serve version %d of agent %s: %w", t.Version, t.AgentID, err)
	}
	group.SetPendingLimits(-1, -1)
	direct.SetPendingLimits(-1, -1)
	n.served[t] = subscriptions{group, direct}
	return nil
}

// Unserve stops taking new calls for t and returns once the NATS server
// routes none to this node; the calls that reached it before run (a
// drain, not an unsubscribe, so that none is dropped), and so do the calls
// in flight.
func (n *Node) Unserve(t domain.Target) {
	n.mu.Lock()
	delete(n.wanted, t)
	n.mu.Unlock()
	n.unsubscribe(t)
}

// Pause stops taking new calls for every version (a drain: the calls
// already here run) and returns once none is routed here; Serve still
// records what to take once resumed.
func (n *Node) Pause() {
	n.mu.Lock()
	n.paused = true
	var targets []domain.Target
	for t := range n.served {
		targets = append(targets, t)
	}
	n.mu.Unlock()
	for _, t := range targets {
		n.unsubscribe(t)
	}
}

// Resume takes calls again for every version Serve was told.
func (n *Node) Resume() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.paused = false
	for t := range n.wanted {
		if err := n.subscribeLocked(t); err != nil {
			return err
		}
	}
	return n.flush()
}

// Paused reports whether the node is paused.
func (n *Node) Paused() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.paused
}

// InFlight is how many calls the node runs now.
func (n *Node) InFlight() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.calls)
}

func (n *Node) unsubscribe(t domain.Target) {
	n.mu.Lock()
	subs, ok := n.served[t]
	delete(n.served, t)
	n.mu.Unlock()
	if !ok {
		return
	}
	for _, sub := range []*nats.Subscription{subs.group, subs.direct} {
		if err := sub.Drain(); err != nil {
			sub.Unsubscribe()
		}
	}
	// The drain ends once the server has confirmed the unsubscribe and
	// the messages it delivered before it are handed over.
	deadline := time.Now().Add(n.opts.Liveness)
	for (subs.group.IsValid() || subs.direct.IsValid()) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}

// Alive says whether node serves t on its direct subject (the node
// holding a user's folders is asked before another takes them over). A
// node that does not answer within a second counts as alive: only one
// that NATS knows is gone (no responders) is not.
func (n *Node) Alive(ctx context.Context, node string, t domain.Target) bool {
	if node == n.id {
		return true
	}
	m := nats.NewMsg(DirectSubject(n.opts.Prefix, node, t))
	m.Header.Set(hMode, modePing)
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err := n.nc.RequestMsgWithContext(ctx, m)
	return !errors.Is(err, nats.ErrNoResponders)
}

// Leave stops taking calls, lets the ones in flight finish for up to
// grace, then closes the node: a node shutting down fails no call that
// ends within grace.
func (n *Node) Leave(grace time.Duration) {
	n.unserveAll()
	done := make(chan struct{})
	go func() { n.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		n.log.Warn("calls still running when the node left were cancelled", "grace", grace)
	}
	n.Close()
}

func (n *Node) unserveAll() { n.Pause() }

// Close stops taking calls, cancels the ones in flight and waits for them
// to end (their callers get the error).
func (n *Node) Close() {
	n.unserveAll()
	n.cancel()
	n.wg.Wait()
	n.ctlSub.Unsubscribe()
}

func (n *Node) onCall(m *nats.Msg) {
	if m.Reply == "" {
		return
	}
	if m.Header.Get(hMode) == modePing {
		m.Respond(nil)
		return
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.run(m)
	}()
}

// run runs one call and answers it.
func (n *Node) run(m *nats.Msg) {
	h := m.Header
	version, _ := strconv.Atoi(h.Get(hVersion))
	t := domain.Target{AgentID: h.Get(hAgent), Version: version, User: h.Get(hUser)}
	ctx, cancel := context.WithCancelCause(n.ctx)
	defer cancel(nil)
	if ms, err := strconv.ParseInt(h.Get(hTimeout), 10, 64); err == nil && ms > 0 {
		// The caller's deadline rules (it cancels the call when it passes);
		// this one, a liveness timeout later, is for a caller whose cancel
		// was lost.
		limit := time.Duration(ms) * time.Millisecond
		var stop context.CancelFunc
		ctx, stop = context.WithTimeoutCause(ctx, limit+n.opts.Liveness,
			&domain.Error{Code: domain.CodeTimeout, Message: fmt.Sprintf("the call did not finish within its %s", limit)})
		defer stop()
	}
	if inv := h.Get(hInvocation); inv != "" {
		ctx = domain.WithInvocation(ctx, inv)
	}
	if r := (domain.Request{ID: h.Get(hRequestID), TraceParent: h.Get(hTrace)}); r != (domain.Request{}) {
		ctx = domain.WithRequest(ctx, r)
	}
	id := nuid.Next()
	s := &serving{reply: m.Reply, cancel: cancel, credit: make(chan struct{}, 1)}
	now := time.Now().UnixNano()
	s.heard.Store(now)
	s.sent.Store(now)
	n.mu.Lock()
	n.calls[id] = s
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.calls, id)
		n.mu.Unlock()
	}()

	start := nats.NewMsg(m.Reply)
	start.Header.Set(hKind, kindStart)
	start.Header.Set(hNode, n.id)
	start.Header.Set(hControl, n.control+"."+id)
	n.publish(s, start)

	// The body is read once the caller knows the call started (and hears
	// the heartbeats): a large one comes from the spill store.
	body, err := n.opts.bodyOf(ctx, m)
	if err != nil {
		n.answerErrorOf(s, ctx, err)
		return
	}
	argsLen, err := strconv.Atoi(h.Get(hArgsLen))
	if err != nil || argsLen < 0 || argsLen > len(body) {
		n.answerErrorOf(s, ctx, &domain.Error{Code: domain.CodeValidation, Message: "a malformed call request (" + hArgsLen + ")"})
		return
	}
	args, kwargs := nilIfEmpty(body[:argsLen]), nilIfEmpty(body[argsLen:])

	switch h.Get(hMode) {
	case modeCall:
		out, err := n.local.Call(ctx, t, h.Get(hTag), args, kwargs)
		if err != nil {
			n.answerErrorOf(s, ctx, err)
			return
		}
		res := nats.NewMsg(m.Reply)
		res.Header.Set(hKind, kindResult)
		res.Data = out
		if err := n.opts.spillIfLarge(ctx, n.nc, res); err != nil {
			n.answerErrorOf(s, ctx, err)
			return
		}
		n.publish(s, res)
	case modeStream:
		windowChunks, windowBytes, ok := parsePair(h.Get(hWindow))
		if !ok || windowChunks <= 0 || windowBytes <= 0 {
			windowChunks, windowBytes = int64(n.opts.WindowChunks), n.opts.WindowBytes
		}
		var seq int64
		count, err := n.local.Stream(ctx, t, h.Get(hTag), args, kwargs, nil, func(c domain.Chunk) error {
			if err := s.waitForRoom(ctx, windowChunks, windowBytes); err != nil {
				return err
			}
			msg := nats.NewMsg(m.Reply)
			msg.Header.Set(hKind, kindChunk)
			msg.Header.Set(hSeq, strconv.FormatInt(seq, 10))
			if c.EncodeError {
				msg.Header.Set(hEncodeErr, "1")
			}
			msg.Data = c.Body
			if err := n.opts.spillIfLarge(ctx, n.nc, msg); err != nil {
				return err
			}
			seq++
			s.mu.Lock()
			s.sentChunks++
			s.sentBytes += int64(len(c.Body))
			s.mu.Unlock()
			return n.publish(s, msg)
		})
		if err != nil {
			n.answerErrorOf(s, ctx, err)
			return
		}
		end := nats.NewMsg(m.Reply)
		end.Header.Set(hKind, kindEnd)
		end.Header.Set(hCount, strconv.Itoa(count))
		n.publish(s, end)
	default:
		n.answerErrorOf(s, ctx, &domain.Error{Code: domain.CodeValidation, Message: "a call request of unknown mode " + strconv.Quote(h.Get(hMode))})
	}
}

// waitForRoom blocks a stream's producer while the caller has a window's
// worth of chunks or bytes not yet taken; at least one chunk is always
// allowed when nothing is in flight, however large.
func (s *serving) waitForRoom(ctx context.Context, windowChunks, windowBytes int64) error {
	for {
		s.mu.Lock()
		inChunks, inBytes := s.sentChunks-s.takenChunks, s.sentBytes-s.takenByte
		s.mu.Unlock()
		if inChunks == 0 || (inChunks < windowChunks && inBytes < windowBytes) {
			return nil
		}
		select {
		case <-s.credit:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

func (n *Node) publish(s *serving, m *nats.Msg) error {
	s.sent.Store(time.Now().UnixNano())
	if err := n.nc.PublishMsg(m); err != nil {
		return &domain.Error{Code: domain.CodeConnection, Message: "the node lost the message bus", Err: err}
	}
	return nil
}

// answerErrorOf sends err, or why ctx ended when it did (the caller went
// away, the node is closing, the deadline passed).
func (n *Node) answerErrorOf(s *serving, ctx context.Context, err error) {
	if ue := (*domain.UserElsewhere)(nil); errors.As(err, &ue) && ctx.Err() == nil {
		msg := nats.NewMsg(s.reply)
		msg.Header.Set(hKind, kindRedirect)
		msg.Header.Set(hNode, ue.Node)
		n.publish(s, msg)
		return
	}
	if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil {
		err = cause
		if cause == context.Canceled {
			err = &domain.Error{Code: domain.CodeConnection, Message: "the node running this call is shutting down; retry"}
		}
	}
	msg := nats.NewMsg(s.reply)
	msg.Header.Set(hKind, kindError)
	msg.Data = encodeError(err)
	n.publish(s, msg)
}

func (n *Node) answerError(reply string, err error) {
	msg := nats.NewMsg(reply)
	msg.Header.Set(hKind, kindError)
	msg.Data = encodeError(err)
	n.nc.PublishMsg(msg)
}

// onControl takes a caller's credit, heartbeat or cancel.
func (n *Node) onControl(m *nats.Msg) {
	id := m.Subject[len(n.control)+1:]
	n.mu.Lock()
	s := n.calls[id]
	n.mu.Unlock()
	if s == nil {
		return
	}
	s.heard.Store(time.Now().UnixNano())
	switch kindOf(m) {
	case kindCredit:
		chunks, bytes, ok := parsePair(m.Header.Get(hCredit))
		if !ok {
			return
		}
		s.mu.Lock()
		s.takenChunks += chunks
		s.takenByte += bytes
		s.mu.Unlock()
		select {
		case s.credit <- struct{}{}:
		default:
		}
	case kindCancel:
		s.cancel(&domain.Error{Code: domain.CodeCancelled, Message: "the caller went away"})
	}
}

// watch sends heartbeats for calls that have sent nothing for a while and
// cancels the calls whose caller has gone quiet.
func (n *Node) watch() {
	t := time.NewTicker(n.opts.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case now := <-t.C:
			n.mu.Lock()
			for _, s := range n.calls {
				if now.Sub(time.Unix(0, s.heard.Load())) > n.opts.Liveness {
					s.cancel(&domain.Error{Code: domain.CodeCancelled, Message: "the gateway of this call stopped answering"})
					continue
				}
				if now.Sub(time.Unix(0, s.sent.Load())) >= n.opts.Heartbeat/2 {
					hb := nats.NewMsg(s.reply)
					hb.Header.Set(hKind, kindHB)
					n.publish(s, hb)
				}
			}
			n.mu.Unlock()
		}
	}
}

func nilIfEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}
