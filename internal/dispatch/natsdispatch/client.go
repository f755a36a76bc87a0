package natsdispatch

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/runagent-go/runagent/internal/dispatch"
	"github.com/runagent-go/runagent/internal/domain"
)

// ErrNoNode is in the error of a call that no node took: none serves its
// version (NATS's no-responders), or none said it started the call within
// the liveness timeout. The call did not run.
var ErrNoNode = errors.New("no node serves this agent version")

// ErrNodeLost is in the error of a call whose node stopped answering
// mid-call (it died, or was cut off): the call may or may not have run.
var ErrNodeLost = errors.New("the node running the call was lost")

// Client is the dispatcher of a gateway: it sends each call to the queue
// group of its agent version's subject. Its replies come to one wildcard
// subscription, routed to the call by the last token of the subject.
type Client struct {
	nc     *nats.Conn
	opts   Options
	prefix string // of reply subjects: an inbox of this client
	sub    *nats.Subscription

	mu    sync.Mutex
	calls map[string]*call

	holdersMu sync.Mutex
	holders   map[userOf]string // the node last seen holding a user's folders

	stop chan struct{}
	done chan struct{}
}

// call is one call in flight, as the client sees it.
type call struct {
	id    string
	msgs  chan *nats.Msg // start, chunk, result, end, error, the 503 of no responders
	heard atomic.Int64   // unix nanoseconds of the last message from the node
	dead  chan struct{}  // closed when the node has not been heard for the liveness timeout
	once  sync.Once

	mu      sync.Mutex
	control string // the node's control subject, once started
	node    string
	cancel  bool // cancelled before the start arrived: cancel on start
}

// NewClient returns the dispatcher over nc. Close it before nc.
func NewClient(nc *nats.Conn, o Options) (*Client, error) {
	o = o.withDefaults()
	c := &Client{nc: nc, opts: o, prefix: nc.NewRespInbox(), calls: map[string]*call{}, holders: map[userOf]string{}, stop: make(chan struct{}), done: make(chan struct{})}
	// NewRespInbox is "_INBOX.<conn>.<random>": the calls hang below it.
	sub, err := nc.Subscribe(c.prefix+".*", c.route)
	if err != nil {
		return nil, fmt.Errorf("subscribe to replies: %w", err)
	}
	// Each call holds at most a window of chunks unread, so the pending
	// limits only bound how many calls a gateway has in flight.
	sub.SetPendingLimits(-1, -1)
	c.sub = sub
	go c.watch()
	return c, nil
}

// Close stops the client; calls in flight end with CONNECTION_ERROR.
func (c *Client) Close() {
	select {
	case <-c.stop:
		return
	default:
	}
	close(c.stop)
	<-c.done
	c.sub.Unsubscribe()
	c.mu.Lock()
	for _, cl := range c.calls {
		cl.once.Do(func() { close(cl.dead) })
	}
	c.mu.Unlock()
}

// route hands a reply to its call (it runs on the subscription's goroutine
// and never blocks: a call's channel holds a window and the few messages
// around it).
func (c *Client) route(m *nats.Msg) {
	id := m.Subject[len(c.prefix)+1:]
	c.mu.Lock()
	cl := c.calls[id]
	c.mu.Unlock()
	if cl == nil {
		return // a call that has ended
	}
	cl.heard.Store(time.Now().UnixNano())
	if kindOf(m) == kindHB {
		return
	}
	select {
	case cl.msgs <- m:
	default:
		// The node sent more than the window allows: the call is broken.
		cl.once.Do(func() { close(cl.dead) })
	}
}

// watch sends the heartbeats of every call that has a control subject and
// gives up the calls whose node has gone quiet.
func (c *Client) watch() {
	defer close(c.done)
	t := time.NewTicker(c.opts.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case now := <-t.C:
			c.mu.Lock()
			for _, cl := range c.calls {
				if now.Sub(time.Unix(0, cl.heard.Load())) > c.opts.Liveness {
					cl.once.Do(func() { close(cl.dead) })
					continue
				}
				if control := cl.controlSubject(); control != "" {
					c.send(control, kindHB, "", "")
				}
			}
			c.mu.Unlock()
		}
	}
}

func (cl *call) controlSubject() string {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.control
}

func (c *Client) send(subject, kind, key, value string) {
	m := nats.NewMsg(subject)
	m.Header.Set(hKind, kind)
	if key != "" {
		m.Header.Set(key, value)
	}
	c.nc.PublishMsg(m) // a lost control message is covered by liveness
}

// cancel tells the node to stop the call: now if it has started, else as
// soon as its start arrives (the caller has gone; a goroutine waits for it).
func (c *Client) cancel(cl *call) {
	cl.mu.Lock()
	control := cl.control
	if control == "" {
		cl.cancel = true
	}
	cl.mu.Unlock()
	if control != "" {
		c.send(control, kindCancel, "", "")
		c.forget(cl)
		return
	}
	// Keep the call routed until its start (or the liveness timeout), so
	// that the cancel reaches the node.
	go func() {
		defer c.forget(cl)
		deadline := time.NewTimer(c.opts.Liveness)
		defer deadline.Stop()
		for {
			select {
			case m := <-cl.msgs:
				if kindOf(m) == kindStart {
					c.send(m.Header.Get(hControl), kindCancel, "", "")
					return
				}
				if k := kindOf(m); k == kindResult || k == kindEnd || k == kindError || m.Header.Get(hStatus) != "" {
					return
				}
			case <-c.stop: // not cl.dead: a call given up unstarted still cancels a late start
				return
			case <-deadline.C:
				return
			}
		}
	}()
}

func (c *Client) forget(cl *call) {
	c.mu.Lock()
	delete(c.calls, cl.id)
	c.mu.Unlock()
}

// removeSpilled removes the spilled body of a request no node received,
// which would otherwise stay in the spill store until its TTL: a caller
// waiting for a node sends it again, spilled again, every few hundred ms.
func (c *Client) removeSpilled(req *nats.Msg) {
	name := req.Header.Get(hBodyObject)
	if name == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = c.opts.Spill.Remove(ctx, name) // on failure, the store's TTL removes it
}

// Call implements domain.Dispatcher.
func (c *Client) Call(ctx context.Context, t domain.Target, tag string, args, kwargs []byte) ([]byte, error) {
	out, _, err := c.sendCall(ctx, t, modeCall, tag, args, kwargs, nil, nil)
	return out, err
}

// Stream implements domain.Dispatcher.
func (c *Client) Stream(ctx context.Context, t domain.Target, tag string, args, kwargs []byte, started func(), fn domain.ChunkFunc) (int, error) {
	_, n, err := c.sendCall(ctx, t, modeStream, tag, args, kwargs, started, fn)
	return n, err
}

// userOf names a user of an agent, for the holders cache.
type userOf struct{ agent, user string }

// maxHolders bounds the holders cache; past it, it starts afresh (a miss
// costs one redirect).
const maxHolders = 100_000

// maxRedirects bounds how often a user's call follows the node holding
// the user's folders before it gives up.
const maxRedirects = 3

// sendCall sends a call: a user's to the node holding the user's folders (the
// last one seen, or the one a node redirects it to; the queue group when
// none is known or the one known is gone), any other to the queue group.
func (c *Client) sendCall(ctx context.Context, t domain.Target, mode, tag string, args, kwargs []byte, started func(), fn domain.ChunkFunc) ([]byte, int, error) {
	if t.User == "" {
		out, n, _, err := c.do(ctx, t, "", mode, tag, args, kwargs, started, fn)
		return out, n, err
	}
	u := userOf{t.AgentID, t.User}
	if started != nil { // a node that redirects the call has started it too
		var once sync.Once
		announce := started
		started = func() { once.Do(announce) }
	}
	for redirects := 0; ; redirects++ {
		c.holdersMu.Lock()
		to := c.holders[u]
		c.holdersMu.Unlock()
		out, n, node, err := c.do(ctx, t, to, mode, tag, args, kwargs, started, fn)
		ue := (*domain.UserElsewhere)(nil)
		switch {
		case errors.As(err, &ue) && redirects < maxRedirects:
			c.setHolder(u, ue.Node)
			continue
		case to != "" && errors.Is(err, ErrNoNode) && redirects < maxRedirects:
			c.setHolder(u, "") // gone, or no longer serving the version: a node of the group takes the user over
			continue
		case errors.As(err, &ue):
			return nil, n, &domain.Error{Code: domain.CodeOverloaded, RetryAfter: time.Second, Err: err,
				Message: "this user's persistent folders are moving between nodes; retry in a moment"}
		}
		if node != "" && err == nil {
			c.setHolder(u, node)
		}
		return out, n, err
	}
}

func (c *Client) setHolder(u userOf, node string) {
	c.holdersMu.Lock()
	defer c.holdersMu.Unlock()
	if node == "" {
		delete(c.holders, u)
		return
	}
	if len(c.holders) >= maxHolders {
		clear(c.holders)
	}
	c.holders[u] = node
}

// do sends a call to the queue group of its version, or to node's direct
// subject; node is the node that answered.
func (c *Client) do(ctx context.Context, t domain.Target, to, mode, tag string, args, kwargs []byte, started func(), fn domain.ChunkFunc) (_ []byte, produced int, node string, _ error) {
	if err := context.Cause(ctx); err != nil {
		return nil, 0, "", err
	}
	id := nuid.Next()
	cl := &call{id: id, msgs: make(chan *nats.Msg, c.opts.WindowChunks+8), dead: make(chan struct{})}
	cl.heard.Store(time.Now().UnixNano())
	c.mu.Lock()
	c.calls[id] = cl
	c.mu.Unlock()
	handedOver := false // cancel forgets the call itself
	defer func() {
		if !handedOver {
			c.forget(cl)
		}
	}()

	subject := CallSubject(c.opts.Prefix, t)
	if to != "" {
		subject = DirectSubject(c.opts.Prefix, to, t)
	}
	req := nats.NewMsg(subject)
	req.Reply = c.prefix + "." + id
	h := req.Header
	h.Set(hMode, mode)
	h.Set(hAgent, t.AgentID)
	if t.User != "" {
		h.Set(hUser, t.User)
	}
	h.Set(hVersion, strconv.Itoa(t.Version))
	h.Set(hTag, tag)
	h.Set(hArgsLen, strconv.Itoa(len(args)))
	if inv := domain.InvocationOf(ctx); inv != "" {
		h.Set(hInvocation, inv)
	}
	if r := domain.RequestOf(ctx); r.ID != "" || r.TraceParent != "" {
		if r.ID != "" {
			h.Set(hRequestID, r.ID)
		}
		if r.TraceParent != "" {
			h.Set(hTrace, r.TraceParent)
		}
	}
	if dl, ok := ctx.Deadline(); ok {
		h.Set(hTimeout, strconv.FormatInt(max(1, time.Until(dl).Milliseconds()), 10))
	}
	if mode == modeStream {
		h.Set(hWindow, strconv.Itoa(c.opts.WindowChunks)+" "+strconv.FormatInt(c.opts.WindowBytes, 10))
	}
	req.Data = append(append(make([]byte, 0, len(args)+len(kwargs)), args...), kwargs...)
	if err := c.opts.spillIfLarge(ctx, c.nc, req); err != nil {
		return nil, 0, "", err
	}
	if err := c.nc.PublishMsg(req); err != nil {
		return nil, 0, "", &domain.Error{Code: domain.CodeConnection, Message: "the cluster's message bus is not reachable; retry shortly", Err: err, RetryAfter: time.Second}
	}

	var (
		seq           int64
		takenChunks   int64 // since the last credit
		takenBytes    int64
		creditChunks  = max(1, int64(c.opts.WindowChunks)/4)
		creditBytes   = max(1, c.opts.WindowBytes/4)
		stopWithError = func(err error) ([]byte, int, string, error) {
			handedOver = true
			c.cancel(cl)
			return nil, int(seq), node, err
		}
	)
	for {
		select {
		case <-ctx.Done():
			return stopWithError(context.Cause(ctx))
		case <-cl.dead:
			select {
			case <-c.stop:
				return stopWithError(&domain.Error{Code: domain.CodeConnection, Message: "the gateway is shutting down"})
			default:
			}
			if node == "" {
				// No node said it started the call: a node sends its start
				// before it reads the body, so the call never began and
				// may be sent again (a start that comes late is cancelled).
				e := dispatch.NotRunning(t)
				e.Err = ErrNoNode
				e.Message = fmt.Sprintf("no node started the call within %s", c.opts.Liveness)
				return stopWithError(e)
			}
			who := "node " + node
			return stopWithError(&domain.Error{Code: domain.CodeAgentCrashed, Err: ErrNodeLost,
				Message: fmt.Sprintf("%s stopped answering (nothing for %s); the call may or may not have run", who, c.opts.Liveness)})
		case m := <-cl.msgs:
			if m.Header.Get(hStatus) == "503" {
				c.removeSpilled(req)
				e := dispatch.NotRunning(t)
				e.Err = ErrNoNode
				return nil, 0, "", e
			}
			switch kindOf(m) {
			case kindStart:
				cl.mu.Lock()
				cl.control, cl.node = m.Header.Get(hControl), m.Header.Get(hNode)
				node = cl.node
				cl.mu.Unlock()
				if started != nil {
					started()
				}
			case kindChunk:
				if got := m.Header.Get(hSeq); got != strconv.FormatInt(seq, 10) {
					return stopWithError(&domain.Error{Code: domain.CodeConnection,
						Message: fmt.Sprintf("chunk %s arrived where %d was due: the stream lost chunks on the way", got, seq)})
				}
				seq++
				body, err := c.opts.bodyOf(ctx, m)
				if err != nil {
					return stopWithError(err)
				}
				if fn != nil {
					if err := fn(domain.Chunk{Body: body, EncodeError: m.Header.Get(hEncodeErr) != ""}); err != nil {
						return stopWithError(err)
					}
				}
				takenChunks++
				takenBytes += int64(len(body))
				if takenChunks >= creditChunks || takenBytes >= creditBytes {
					c.send(cl.controlSubject(), kindCredit, hCredit, strconv.FormatInt(takenChunks, 10)+" "+strconv.FormatInt(takenBytes, 10))
					takenChunks, takenBytes = 0, 0
				}
			case kindResult:
				body, err := c.opts.bodyOf(ctx, m)
				if err != nil {
					return stopWithError(err)
				}
				return body, 0, node, nil
			case kindEnd:
				n, _ := strconv.Atoi(m.Header.Get(hCount))
				return nil, n, node, nil
			case kindRedirect:
				return nil, 0, node, &domain.UserElsewhere{Node: m.Header.Get(hNode)}
			case kindError:
				if err := context.Cause(ctx); err != nil {
					return nil, int(seq), node, err // the caller's own reason first
				}
				return nil, int(seq), node, decodeError(node, m.Data)
			}
		}
	}
}

var _ domain.Dispatcher = (*Client)(nil)
