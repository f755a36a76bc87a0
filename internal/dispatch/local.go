// Package dispatch holds the dispatchers (domain.Dispatcher): Local sends a
// call to the pool of its agent version in this process. The multi-node
// server adds one that sends it over NATS; both pass dispatchtest.
package dispatch

import (
	"context"
	"errors"
	"fmt"

	"github.com/runagent-go/runagent/internal/domain"
)

// Resolver finds the invoker of an agent version that runs in this process
// (the manager: the version's pool), or says NOT_FOUND.
type Resolver interface {
	Invoker(t domain.Target) (domain.Invoker, error)
}

// ResolverFunc is a Resolver of a function.
type ResolverFunc func(t domain.Target) (domain.Invoker, error)

// Invoker implements Resolver.
func (f ResolverFunc) Invoker(t domain.Target) (domain.Invoker, error) { return f(t) }

// Local dispatches to invokers in this process.
type Local struct{ r Resolver }

// NewLocal returns the in-process dispatcher over r.
func NewLocal(r Resolver) *Local { return &Local{r: r} }

// Single is the in-process dispatcher of one agent version (runagent
// serve). forUser, when set, gives the invoker of a user's calls (a call
// with persistent memory); without it they go to inv as any other.
func Single(t domain.Target, inv domain.Invoker, forUser func(user string) domain.Invoker) *Local {
	return NewLocal(ResolverFunc(func(got domain.Target) (domain.Invoker, error) {
		if got.AgentID != t.AgentID || got.Version != t.Version {
			return nil, NotRunning(got)
		}
		if got.User != "" && forUser != nil {
			return forUser(got.User), nil
		}
		return inv, nil
	}))
}

// ErrNotHere is in NotRunning's error: the version does not run in this
// process (a node may try the cluster).
var ErrNotHere = errors.New("the agent version does not run here")

// NotRunning is the error for a target that does not run.
func NotRunning(t domain.Target) *domain.Error {
	return &domain.Error{Code: domain.CodeNotFound, Err: ErrNotHere,
		Message: fmt.Sprintf("version %d of agent %s is not running", t.Version, t.AgentID)}
}

// Call implements domain.Dispatcher.
func (l *Local) Call(ctx context.Context, t domain.Target, tag string, args, kwargs []byte) ([]byte, error) {
	inv, err := l.r.Invoker(t)
	if err != nil {
		return nil, err
	}
	return inv.Call(ctx, tag, args, kwargs)
}

// Stream implements domain.Dispatcher.
func (l *Local) Stream(ctx context.Context, t domain.Target, tag string, args, kwargs []byte, started func(), fn domain.ChunkFunc) (int, error) {
	inv, err := l.r.Invoker(t)
	if err != nil {
		return 0, err
	}
	return inv.Stream(ctx, tag, args, kwargs, started, fn)
}
