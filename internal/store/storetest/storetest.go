// Package storetest is the conformance suite every store passes: the
// SQLite one (internal/store) now, the PostgreSQL one next. It checks,
// through domain.Store alone, what internal/domain/store.go promises
// (History, Agents, Keys, Logs, AsyncQueue), what survives a reopen and
// what holds under concurrent use; RunRegistry checks domain.Registry.
//
// Errors are checked with errors.Is against domain.ErrNotFound,
// domain.ErrOtherTenant and the context's error. Times go in with
// microsecond precision and must come back equal (time.Time.Equal); JSON
// values (inputs, outputs, client info, metadata) must come back byte for
// byte as they went in.
package storetest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

// Opener opens the store called where for test t. The first open of a
// where in a test gives an empty store, and opening the same where again
// after Close gives the same data; the suite uses a few short names
// ("store", "a", "b"). For SQLite where names a file under t.TempDir(); for
// PostgreSQL a database (derived from t.Name() and where, so that every
// test starts empty).
//
// The Opener closes what it opened when t ends (t.Cleanup). The suite
// closes some stores itself before that, so a second Close must be
// harmless.
type Opener func(t *testing.T, where string) domain.Store

// Run runs the suite against the stores open opens.
func Run(t *testing.T, open Opener) {
	t.Run("history", func(t *testing.T) { testHistory(t, open) })
	t.Run("agents", func(t *testing.T) { testAgents(t, open) })
	t.Run("keys", func(t *testing.T) { testKeys(t, open) })
	t.Run("logs", func(t *testing.T) { testLogs(t, open) })
	t.Run("async queue", func(t *testing.T) { testAsync(t, open) })
	t.Run("runs", func(t *testing.T) { testRuns(t, open) })
	t.Run("crons", func(t *testing.T) { testCrons(t, open) })
	t.Run("run events", func(t *testing.T) { testRunEvents(t, open) })
	t.Run("ended context", func(t *testing.T) { testEndedContext(t, open) })
	t.Run("across a reopen", func(t *testing.T) { testReopen(t, open) })
	t.Run("concurrency", func(t *testing.T) { testConcurrency(t, open) })
}

// t0 is a fixed request time with microseconds.
var t0 = time.Date(2025, 6, 25, 13, 42, 3, 123456000, time.UTC)

// now is the current time as the stores keep it (microseconds).
func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

func pending(id, agent string, at time.Time) domain.Invocation {
	return domain.Invocation{
		ID: id, AgentID: agent, EntrypointTag: "minimal", SDKType: "local_server",
		InputArgs: json.RawMessage(`["hi"]`), InputKwargs: json.RawMessage(`{"role":"user"}`),
		Status: domain.StatusPending, RequestTime: at, ClientInfo: json.RawMessage(`{"server_port":8450}`),
	}
}

func completed(inv domain.Invocation, ms float64, out string) domain.Invocation {
	inv.Status = domain.StatusCompleted
	inv.ResponseTime = inv.RequestTime.Add(time.Duration(ms * float64(time.Millisecond)))
	inv.ExecutionMS = ms
	inv.Output = json.RawMessage(out)
	return inv
}

func failed(inv domain.Invocation, ms float64, detail string) domain.Invocation {
	inv.Status = domain.StatusFailed
	inv.ResponseTime = inv.RequestTime.Add(time.Duration(ms * float64(time.Millisecond)))
	inv.ExecutionMS = ms
	inv.ErrorDetail = detail
	return inv
}

func mustGet(t testing.TB, s domain.History, id string) domain.Invocation {
	t.Helper()
	inv, err := s.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	return inv
}

func ids(invs []domain.Invocation) string {
	out := make([]string, len(invs))
	for i, inv := range invs {
		out[i] = inv.ID
	}
	return strings.Join(out, " ")
}

// assertInvocation checks every field of got against want: strings and
// numbers equal, JSON byte for byte (nil and empty alike: none), times
// Equal.
func assertInvocation(t testing.TB, got, want domain.Invocation) {
	t.Helper()
	var diffs []string
	field := func(name string, g, w any) {
		if g != w {
			diffs = append(diffs, fmt.Sprintf("%s: got %v, want %v", name, g, w))
		}
	}
	raw := func(name string, g, w json.RawMessage) {
		if !bytes.Equal(g, w) {
			diffs = append(diffs, fmt.Sprintf("%s: got %q, want %q", name, g, w))
		}
	}
	moment := func(name string, g, w time.Time) {
		if !g.Equal(w) {
			diffs = append(diffs, fmt.Sprintf("%s: got %v, want %v", name, g, w))
		}
	}
	field("ID", got.ID, want.ID)
	field("AgentID", got.AgentID, want.AgentID)
	field("EntrypointTag", got.EntrypointTag, want.EntrypointTag)
	field("SDKType", got.SDKType, want.SDKType)
	raw("InputArgs", got.InputArgs, want.InputArgs)
	raw("InputKwargs", got.InputKwargs, want.InputKwargs)
	raw("Output", got.Output, want.Output)
	field("ErrorDetail", got.ErrorDetail, want.ErrorDetail)
	field("Status", got.Status, want.Status)
	moment("RequestTime", got.RequestTime, want.RequestTime)
	moment("ResponseTime", got.ResponseTime, want.ResponseTime)
	field("ExecutionMS", got.ExecutionMS, want.ExecutionMS)
	raw("ClientInfo", got.ClientInfo, want.ClientInfo)
	if len(diffs) > 0 {
		t.Errorf("invocation %s:\n\t%s", want.ID, strings.Join(diffs, "\n\t"))
	}
}
