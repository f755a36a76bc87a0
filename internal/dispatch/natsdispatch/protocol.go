// Package natsdispatch sends calls over NATS: Client is the dispatcher
// (domain.Dispatcher) a gateway uses, Node serves the agent versions that
// run on its machine, in a queue group, through the in-process dispatcher.
// Both pass dispatchtest. docs/multinode.md lists every subject and header.
//
// A call is one request on the subject of its agent version, answered by
// one node of the group on the caller's reply subject with a sequence of
// messages: start (naming the node's control subject for this call),
// chunks, then result, end or error. The caller sends credits, heartbeats
// and a cancel to the control subject. Both sides send a heartbeat when they
// have sent nothing for a while, and give the call up when they have heard
// nothing for the liveness timeout: a node that dies fails its calls with
// AGENT_CRASHED, a gateway that dies has its calls cancelled in the agent.
package natsdispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/runagent-go/runagent/internal/domain"
)

// The headers (docs/multinode.md).
const (
	hKind       = "Ra-Kind"       // what a message of a call is (kind*)
	hMode       = "Ra-Mode"       // request: call or stream
	hAgent      = "Ra-Agent"      // request: the agent id
	hVersion    = "Ra-Version"    // request: the version
	hUser       = "Ra-User"       // request: the user whose persistent folders the call sees
	hTag        = "Ra-Tag"        // request: the entrypoint
	hArgsLen    = "Ra-Args-Len"   // request: the body is args then kwargs; this many bytes are args
	hTimeout    = "Ra-Timeout-Ms" // request: what is left of the caller's deadline
	hInvocation = "Ra-Invocation" // request: the invocation id (logs)
	hRequestID  = "Ra-Request-Id" // request: the gateway's request id
	hTrace      = "traceparent"   // request: the W3C trace context, as the client sent it
	hWindow     = "Ra-Window"     // request (stream): chunks and bytes in flight, "256 1048576"
	hNode       = "Ra-Node"       // start: the node's id
	hControl    = "Ra-Control"    // start: where the caller sends credit, hb, cancel
	hSeq        = "Ra-Seq"        // chunk: its number, from 0
	hEncodeErr  = "Ra-Encode-Error"
	hCount      = "Ra-Count"       // end: the chunks the agent produced
	hCredit     = "Ra-Credit"      // credit: chunks and bytes taken since the last one, "64 12345"
	hStatus     = "Status"         // NATS's own: 503 when nobody serves the subject
	hBodyObject = "Ra-Body-Object" // any: the body, too large for one message, is this object of the Spill store
)

// Spill keeps the bodies too large for one NATS message (the servers'
// max_payload, 1 MiB by default) until the other side takes them: a call's
// input, a result, a chunk. The cluster's is a JetStream object store.
type Spill interface {
	Put(ctx context.Context, body []byte) (name string, err error)
	// Take reads a body and removes it.
	Take(ctx context.Context, name string) ([]byte, error)
	// Remove removes a body nobody will take (a call no node received).
	Remove(ctx context.Context, name string) error
}

// bodyLimit is the largest body sent in the message itself: the server's
// max_payload less room for the headers.
func bodyLimit(nc *nats.Conn) int {
	mp := nc.MaxPayload()
	return int(mp - min(64<<10, mp/4))
}

// spillIfLarge moves m's body to the spill store when it is too large for
// one message.
func (o Options) spillIfLarge(ctx context.Context, nc *nats.Conn, m *nats.Msg) error {
	if len(m.Data) <= bodyLimit(nc) {
		return nil
	}
	if o.Spill == nil {
		return &domain.Error{Code: domain.CodeValidation, Message: fmt.Sprintf(
			"%d bytes is more than one message of the cluster's bus may carry (NATS max_payload %d bytes): raise max_payload on the NATS servers",
			len(m.Data), nc.MaxPayload())}
	}
	name, err := o.Spill.Put(ctx, m.Data)
	if err != nil {
		return &domain.Error{Code: domain.CodeConnection, RetryAfter: time.Second, Err: err,
			Message: fmt.Sprintf("could not store a body of %d bytes in the cluster's payload store; retry shortly", len(m.Data))}
	}
	m.Header.Set(hBodyObject, name)
	m.Data = nil
	return nil
}

// bodyOf is m's body, taken from the spill store if it was moved there.
func (o Options) bodyOf(ctx context.Context, m *nats.Msg) ([]byte, error) {
	name := m.Header.Get(hBodyObject)
	if name == "" {
		return m.Data, nil
	}
	if o.Spill == nil {
		return nil, &domain.Error{Code: domain.CodeConnection, Message: "a body came through the payload store, which this server does not have"}
	}
	b, err := o.Spill.Take(ctx, name)
	if err != nil {
		return nil, &domain.Error{Code: domain.CodeConnection, RetryAfter: time.Second, Err: err,
			Message: "could not read a body from the cluster's payload store"}
	}
	return b, nil
}

// The kinds of message of a call.
const (
	kindStart  = "start"
	kindChunk  = "chunk"
	kindResult = "result"
	kindEnd    = "end"
	kindError  = "error"
	kindHB     = "hb"
	kindCredit = "credit"
	kindCancel = "cancel"
	// redirect: the call is a user's whose persistent folders another node
	// holds (hNode); it did not run, the caller sends it there.
	kindRedirect = "redirect"
)

const (
	modeCall   = "call"
	modeStream = "stream"
	// ping asks whether a node serves a version on its direct subject.
	modePing = "ping"
)

// QueueGroup is the queue group of the nodes on a version's subject: one
// node of the group gets each call.
const QueueGroup = "runagent-nodes"

// Options are shared by Client and Node.
type Options struct {
	// Prefix starts every subject (default "runagent").
	Prefix string
	// Heartbeat is how often a side that has sent nothing sends a
	// heartbeat (default 1 s); Liveness is how long a side waits without
	// hearing from the other before it gives the call up (default 5 s).
	Heartbeat, Liveness time.Duration
	// WindowChunks and WindowBytes bound a stream's chunks in flight
	// between node and gateway (default 256 and 1 MiB).
	WindowChunks int
	WindowBytes  int64
	// Spill carries the bodies too large for one message (nil: such a
	// body is an error naming the NATS max_payload).
	Spill Spill
}

func (o Options) withDefaults() Options {
	if o.Prefix == "" {
		o.Prefix = "runagent"
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = time.Second
	}
	if o.Liveness <= 0 {
		o.Liveness = 5 * time.Second
	}
	if o.Liveness < 2*o.Heartbeat {
		o.Liveness = 2 * o.Heartbeat
	}
	if o.WindowChunks <= 0 {
		o.WindowChunks = 256
	}
	if o.WindowBytes <= 0 {
		o.WindowBytes = 1 << 20
	}
	return o
}

// CallSubject is the subject of an agent version's calls.
func CallSubject(prefix string, t domain.Target) string {
	return prefix + ".call." + t.AgentID + "." + strconv.Itoa(t.Version)
}

// DirectSubject is a node's own subject for a version's calls: the calls
// of a user whose persistent folders the node holds go there, not to the
// queue group.
func DirectSubject(prefix, node string, t domain.Target) string {
	return prefix + ".ucall." + node + "." + t.AgentID + "." + strconv.Itoa(t.Version)
}

// wireError is an error as it crosses NATS.
type wireError struct {
	Code         domain.Code  `json:"code,omitempty"`
	Message      string       `json:"message"`
	Field        string       `json:"field,omitempty"`
	RetryAfterMS int64        `json:"retry_after_ms,omitempty"`
	Limit        domain.Limit `json:"limit,omitempty"`
	Agent        *agentError  `json:"agent,omitempty"`
}

type agentError struct {
	Type      string `json:"type"`
	Message   string `json:"message"`
	Traceback string `json:"traceback,omitempty"`
}

// encodeError is how a node tells the caller err: the agent's exception,
// or a typed error (an untyped one is INTERNAL_ERROR with its text, which
// the gateway logs and does not show).
func encodeError(err error) []byte {
	var w wireError
	var ae *domain.AgentError
	var de *domain.Error
	switch {
	case errors.As(err, &ae):
		w.Agent = &agentError{Type: ae.Type, Message: ae.Message, Traceback: ae.Traceback}
	case errors.As(err, &de):
		w = wireError{Code: de.Code, Message: de.Message, Field: de.Field, RetryAfterMS: de.RetryAfter.Milliseconds(), Limit: de.Limit}
	default:
		w = wireError{Code: domain.CodeInternal, Message: err.Error()}
	}
	b, _ := json.Marshal(w)
	return b
}

func decodeError(node string, b []byte) error {
	var w wireError
	if err := json.Unmarshal(b, &w); err != nil {
		return &domain.Error{Code: domain.CodeInternal, Message: "the node's answer could not be read", Err: fmt.Errorf("node %s: error body %q: %w", node, b, err)}
	}
	if w.Agent != nil {
		return &domain.AgentError{Type: w.Agent.Type, Message: w.Agent.Message, Traceback: w.Agent.Traceback}
	}
	e := &domain.Error{Code: w.Code, Message: w.Message, Field: w.Field, RetryAfter: time.Duration(w.RetryAfterMS) * time.Millisecond, Limit: w.Limit}
	if e.Code == "" {
		e.Code = domain.CodeInternal
	}
	return e
}

func kindOf(m *nats.Msg) string {
	if m.Header == nil {
		return ""
	}
	return m.Header.Get(hKind)
}

// parsePair reads "A B" (two integers).
func parsePair(s string) (int64, int64, bool) {
	var a, b int64
	if _, err := fmt.Sscan(s, &a, &b); err != nil {
		return 0, 0, false
	}
	return a, b, true
}
