package cluster_test

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/cluster"
	"github.com/runagent-go/runagent/internal/domain"
)

func openUsers(t *testing.T, url, node string, alive *atomic.Bool) *cluster.Users {
	t.Helper()
	u, err := connect(t, url, node).Users(context.Background(), node, func(context.Context, string, domain.Target) bool { return alive.Load() })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(u.Close)
	return u
}

// One node at a time holds a user: another is sent to it while it is
// alive, takes the user over once it is not (and the first loses it), and
// the saved folders go with the user.
func TestUsersLease(t *testing.T) {
	url := runNATS(t, false)
	var aliveA, aliveB atomic.Bool
	aliveA.Store(true)
	a, b := openUsers(t, url, "a", &aliveB), openUsers(t, url, "b", &aliveA)
	ctx := context.Background()
	tgt := domain.Target{AgentID: "agent1", Version: 1}

	lostA, err := a.Hold(ctx, tgt, "k1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Hold(ctx, tgt, "k1"); err != nil { // counted, for a second version
		t.Fatal(err)
	}
	var ue *domain.UserElsewhere
	if _, err := b.Hold(ctx, tgt, "k1"); !errors.As(err, &ue) || ue.Node != "a" {
		t.Fatalf("b.Hold while a holds: %v; want UserElsewhere a", err)
	}
	if h, err := b.Holder(ctx, "agent1", "k1"); h != "a" || err != nil {
		t.Fatalf("Holder: %q %v", h, err)
	}
	// One Release of two keeps it; the second gives it up.
	a.Release("agent1", "k1")
	if h, _ := b.Holder(ctx, "agent1", "k1"); h != "a" {
		t.Fatalf("after one release of two: holder %q", h)
	}
	a.Release("agent1", "k1")
	if h, _ := b.Holder(ctx, "agent1", "k1"); h != "" {
		t.Fatalf("after the last release: holder %q", h)
	}
	select {
	case <-lostA:
		t.Fatal("a released lease counts as lost")
	default:
	}

	// a holds again and dies (alive false): b takes it over, a loses it.
	lostA, err = a.Hold(ctx, tgt, "k1")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Save(ctx, "agent1", "k1", bytes.NewReader([]byte("folders v1"))); err != nil {
		t.Fatal(err)
	}
	aliveA.Store(false)
	if _, err := b.Hold(ctx, tgt, "k1"); err != nil {
		t.Fatalf("b takes over from a dead a: %v", err)
	}
	select {
	case <-lostA:
	case <-time.After(cluster.UserLeaseTTL/6 + 5*time.Second):
		t.Fatal("a did not notice that b took its user over")
	}
	if h, _ := a.Holder(ctx, "agent1", "k1"); h != "b" {
		t.Fatalf("holder after the takeover: %q", h)
	}
	var got bytes.Buffer
	if found, err := b.Load(ctx, "agent1", "k1", &got); !found || err != nil || got.String() != "folders v1" {
		t.Fatalf("b loads %q %v %v; want what a saved", got.String(), found, err)
	}
	a.Release("agent1", "k1") // a's stale release does not free b's lease
	if h, _ := a.Holder(ctx, "agent1", "k1"); h != "b" {
		t.Fatalf("a's release of a lost lease freed it: holder %q", h)
	}

	// Remove, RemoveAgent.
	b.Save(ctx, "agent1", "k2", bytes.NewReader([]byte("k2")))
	b.Save(ctx, "agent2", "k1", bytes.NewReader([]byte("other agent")))
	if err := b.Remove(ctx, "agent1", "k1"); err != nil {
		t.Fatal(err)
	}
	if found, _ := b.Load(ctx, "agent1", "k1", &got); found {
		t.Fatal("removed, still found")
	}
	if err := b.RemoveAgent(ctx, "agent1"); err != nil {
		t.Fatal(err)
	}
	if found, _ := b.Load(ctx, "agent1", "k2", &got); found {
		t.Fatal("the agent's users removed, k2 still found")
	}
	if found, _ := b.Load(ctx, "agent2", "k1", &got); !found {
		t.Fatal("another agent's user went with it")
	}
	if err := b.Remove(ctx, "agent1", "nobody"); err != nil {
		t.Fatalf("removing nothing: %v", err)
	}
}

// AskDelete reaches the holder; a holder that is gone holds nothing.
func TestUsersAskDelete(t *testing.T) {
	url := runNATS(t, false)
	var alive atomic.Bool
	a, b := openUsers(t, url, "a", &alive), openUsers(t, url, "b", &alive)
	asked := make(chan string, 1)
	stop, err := a.ServeDelete(func(_ context.Context, agentID, key string) error {
		asked <- agentID + " " + key
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.AskDelete(context.Background(), "a", "agent1", "k1"); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-asked:
		if got != "agent1 k1" {
			t.Fatalf("asked %q", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the holder was not asked")
	}
	stop()
	if err := b.AskDelete(context.Background(), "a", "agent1", "k1"); err != nil {
		t.Fatalf("asking a node that is gone: %v", err)
	}
}
