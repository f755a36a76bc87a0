package storetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

func registryAgent(port int) domain.RegistryAgent {
	return domain.RegistryAgent{
		AgentID: "91e70681-def8-4600-8a30-d037c1b51870", AgentPath: "/home/me/agents/demo",
		Host: "127.0.0.1", Port: port, Framework: "default", AgentName: "demo", Description: "a demo",
		Template: "default", Version: "1.0.0", Fingerprint: "fp1", ConfigFingerprint: "cfp1",
	}
}

// RunRegistry runs the suite of domain.Registry against the registries
// open gives; each is a fresh, empty one. The run counters are not
// readable through domain.Registry: an implementation checks them itself.
func RunRegistry(t *testing.T, open func(t *testing.T) domain.Registry) {
	ctx := context.Background()

	t.Run("empty registry", func(t *testing.T) {
		r := open(t)
		if _, err := r.LookupAgent(ctx, "x"); !errors.Is(err, domain.ErrNotFound) {
			t.Errorf("LookupAgent in an empty registry = %v, want ErrNotFound", err)
		}
		if err := r.RecordRuns(ctx, "x", 1, 0, time.Now()); !errors.Is(err, domain.ErrNotFound) {
			t.Errorf("RecordRuns in an empty registry = %v, want ErrNotFound", err)
		}
		// Neither made the agent.
		if _, err := r.LookupAgent(ctx, "x"); !errors.Is(err, domain.ErrNotFound) {
			t.Errorf("LookupAgent after RecordRuns = %v, want ErrNotFound", err)
		}
	})

	t.Run("upsert fresh, then lookup", func(t *testing.T) {
		r := open(t)
		a := registryAgent(8451)
		if err := r.UpsertAgent(ctx, a); err != nil {
			t.Fatal(err)
		}
		got, err := r.LookupAgent(ctx, a.AgentID)
		if err != nil {
			t.Fatal(err)
		}
		if got != a {
			t.Errorf("LookupAgent:\ngot  %+v\nwant %+v", got, a)
		}
	})

	// A second upsert updates path, host and port; a descriptive field
	// given "" keeps what the row has, one given a value takes it. Runs
	// recorded before it are kept (and recording goes on).
	t.Run("upsert twice", func(t *testing.T) {
		r := open(t)
		a := registryAgent(8451)
		if err := r.UpsertAgent(ctx, a); err != nil {
			t.Fatal(err)
		}
		at := t0
		if err := r.RecordRuns(ctx, a.AgentID, 2, 1, at); err != nil {
			t.Fatal(err)
		}
		b := domain.RegistryAgent{AgentID: a.AgentID, AgentPath: "/elsewhere", Host: "0.0.0.0", Port: 9000,
			Framework: "langgraph", Version: "1.1.0", Fingerprint: "fp2"}
		if err := r.UpsertAgent(ctx, b); err != nil {
			t.Fatal(err)
		}
		want := a
		want.AgentPath, want.Host, want.Port = "/elsewhere", "0.0.0.0", 9000
		want.Framework, want.Version, want.Fingerprint = "langgraph", "1.1.0", "fp2"
		got, err := r.LookupAgent(ctx, a.AgentID)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("LookupAgent after a second upsert:\ngot  %+v\nwant %+v", got, want)
		}
		if err := r.RecordRuns(ctx, a.AgentID, 1, 0, at.Add(time.Second)); err != nil {
			t.Errorf("RecordRuns after a second upsert: %v", err)
		}
	})

	t.Run("record runs", func(t *testing.T) {
		r := open(t)
		a := registryAgent(8450)
		if err := r.UpsertAgent(ctx, a); err != nil {
			t.Fatal(err)
		}
		for _, runs := range [][2]int64{{1, 0}, {0, 1}, {5, 3}, {0, 0}} {
			if err := r.RecordRuns(ctx, a.AgentID, runs[0], runs[1], time.Now()); err != nil {
				t.Errorf("RecordRuns(%d ok, %d failed): %v", runs[0], runs[1], err)
			}
		}
		if err := r.RecordRuns(ctx, "someone-else", 1, 0, time.Now()); !errors.Is(err, domain.ErrNotFound) {
			t.Errorf("RecordRuns of an unregistered agent = %v, want ErrNotFound", err)
		}
		if _, err := r.LookupAgent(ctx, "someone-else"); !errors.Is(err, domain.ErrNotFound) {
			t.Errorf("LookupAgent of an unregistered agent = %v, want ErrNotFound", err)
		}
		// Recording runs changes nothing LookupAgent reads.
		if got, err := r.LookupAgent(ctx, a.AgentID); err != nil || got != a {
			t.Errorf("LookupAgent after RecordRuns: %+v, %v; want %+v", got, err, a)
		}
	})

	t.Run("agents apart", func(t *testing.T) {
		r := open(t)
		a, b := registryAgent(8450), registryAgent(8451)
		b.AgentID, b.AgentPath, b.AgentName = "other-agent", "/home/me/agents/other", "other"
		for _, x := range []domain.RegistryAgent{a, b} {
			if err := r.UpsertAgent(ctx, x); err != nil {
				t.Fatal(err)
			}
		}
		for _, want := range []domain.RegistryAgent{a, b} {
			if got, err := r.LookupAgent(ctx, want.AgentID); err != nil || got != want {
				t.Errorf("LookupAgent(%s) = %+v, %v; want %+v", want.AgentID, got, err, want)
			}
		}
	})
}
