package cluster_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/runagent-go/runagent/internal/cluster"
	"github.com/runagent-go/runagent/internal/domain"
)

// runNATS starts a NATS server in the test, with JetStream unless noJS.
func runNATS(t *testing.T, noJS bool) string {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: !noJS, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS not ready")
	}
	t.Cleanup(s.Shutdown)
	return s.ClientURL()
}

func connect(t *testing.T, url, name string) *cluster.Cluster {
	t.Helper()
	c, err := cluster.Connect(context.Background(), cluster.Options{URLs: []string{url}, Name: name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// What Connect refuses, it names.
func TestConnectErrors(t *testing.T) {
	noJS := runNATS(t, true)
	for _, tc := range []struct {
		name string
		urls []string
		want string
	}{
		{"no URL", nil, "--nats: give the URL of at least one NATS server"},
		{"nothing there", []string{"nats://127.0.0.1:1"}, "connect to NATS at nats://127.0.0.1:1"},
		{"no JetStream", []string{noJS}, "has no JetStream: run nats-server with -js"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := cluster.Connect(context.Background(), cluster.Options{URLs: tc.urls})
			if err == nil {
				c.Close()
				t.Fatal("connected")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want it to say %q", err, tc.want)
			}
		})
	}
}

// A bundle put by one server is fetched by another, byte for byte; one
// not stored is a clear error.
func TestBundles(t *testing.T) {
	url := runNATS(t, false)
	gw, node := connect(t, url, "gateway"), connect(t, url, "node")
	ctx := context.Background()
	zip := bytes.Repeat([]byte("PK\x03\x04 a bundle "), 100_000) // 1.7 MB: many chunks
	if err := gw.PutBundle(ctx, "abc123", bytes.NewReader(zip)); err != nil {
		t.Fatal(err)
	}
	if err := gw.PutBundle(ctx, "abc123", bytes.NewReader(zip)); err != nil { // already there: not sent again
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "b.zip")
	if err := node.FetchBundle(ctx, "abc123", path); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, zip) {
		t.Errorf("fetched %d bytes, want the %d put", len(got), len(zip))
	}
	if err := node.FetchBundle(ctx, "nope", path); err == nil || !strings.Contains(err.Error(), "not in the cluster's bundle store") {
		t.Errorf("fetch of a missing bundle: %v", err)
	}
}

// Change notices reach every other server; a prepare request goes to the
// node named, whose error comes back naming it; a node that is not there
// is said to have left.
func TestNoticesAndPrepare(t *testing.T) {
	url := runNATS(t, false)
	gw := connect(t, url, "gateway")
	ctx := context.Background()
	if err := gw.PrepareOn(ctx, "a", "agent", 1); domain.CodeOf(err) != domain.CodeOverloaded || !strings.Contains(err.Error(), "node a left the cluster") {
		t.Errorf("prepare with no node: %v", err)
	}
	got := make(chan string, 4)
	for _, name := range []string{"a", "b"} {
		n := connect(t, url, name)
		stop, err := n.OnChange(cluster.ChangeAgent, func(id string) { got <- name + ":" + id })
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		stopPrep, err := n.ServePrepare(name, func(ctx context.Context, agentID string, version int) error {
			if agentID == "bad" {
				return errors.New("pip failed")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		defer stopPrep()
	}
	gw.Conn().Flush()
	time.Sleep(100 * time.Millisecond) // the subscriptions reach the server
	gw.Changed(cluster.ChangeAgent, "x")
	seen := map[string]bool{}
	for range 2 {
		select {
		case s := <-got:
			seen[s] = true
		case <-time.After(5 * time.Second):
			t.Fatalf("notices seen: %v", seen)
		}
	}
	if !seen["a:x"] || !seen["b:x"] {
		t.Errorf("notices seen: %v", seen)
	}
	for _, name := range []string{"a", "b"} {
		if err := gw.PrepareOn(ctx, name, "good", 2); err != nil {
			t.Errorf("prepare on %s: %v", name, err)
		}
		if err := gw.PrepareOn(ctx, name, "bad", 2); err == nil || !strings.Contains(err.Error(), "pip failed") || !strings.Contains(err.Error(), "on node "+name) {
			t.Errorf("a failed prepare on %s: %v, want the node's error naming the node", name, err)
		}
	}
}

// The async queue: an invocation enqueued twice (a retried publish) is
// delivered once; a run longer than the lease keeps it (renewed from Go)
// and is not delivered again; one given back is delivered again. The
// stream holds an invocation until it is acknowledged (Holds).
func TestQueue(t *testing.T) {
	url := runNATS(t, false)
	gw, node := connect(t, url, "gateway"), connect(t, url, "node")
	ctx := context.Background()
	const lease = time.Second
	qg, err := gw.Queue(ctx, lease)
	if err != nil {
		t.Fatal(err)
	}
	qn, err := node.Queue(ctx, lease)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"once", "once", "long", "retry"} {
		if err := qg.Enqueue(ctx, id, "acme"); err != nil {
			t.Fatal(err)
		}
	}
	if err := qg.Enqueue(ctx, "a.b", "acme"); err == nil {
		t.Error("an id with a dot was queued; want an error (not a subject token)")
	}
	holds := func(id string) bool {
		t.Helper()
		h, err := qg.Holds(ctx, id)
		if err != nil {
			t.Fatalf("Holds(%s): %v", id, err)
		}
		return h
	}
	if !holds("once") || !holds("long") || holds("never") {
		t.Error("before any run: want once and long held, never not")
	}
	var heldWhileRunning atomic.Bool
	var mu sync.Mutex
	deliveries := map[string][]uint64{}
	var done atomic.Int32
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go qn.Consume(cctx, 4, func(d cluster.Delivery) {
		mu.Lock()
		deliveries[d.ID] = append(deliveries[d.ID], d.Delivered)
		n := len(deliveries[d.ID])
		mu.Unlock()
		if d.Tenant != "acme" {
			t.Errorf("delivery of %s: tenant %q", d.ID, d.Tenant)
		}
		switch {
		case d.ID == "long":
			time.Sleep(3 * lease) // past the lease: renewed meanwhile
			h, err := qg.Holds(ctx, "long")
			heldWhileRunning.Store(h && err == nil)
		case d.ID == "retry" && n == 1:
			d.Retry(100 * time.Millisecond)
			return
		}
		d.Ack()
		done.Add(1)
	})
	deadline := time.Now().Add(10 * time.Second)
	for done.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(2 * lease) // a redelivery of "long" would show by now
	mu.Lock()
	defer mu.Unlock()
	if len(deliveries["once"]) != 1 || len(deliveries["long"]) != 1 || len(deliveries["retry"]) != 2 {
		t.Errorf("deliveries: %v; want once and long delivered once, retry twice", deliveries)
	}
	if r := deliveries["retry"]; len(r) == 2 && r[1] != 2 {
		t.Errorf("the second delivery of retry counts %d deliveries, want 2", r[1])
	}
	if !heldWhileRunning.Load() || holds("once") || holds("long") || holds("retry") {
		t.Errorf("held while running: %v (want true); after their acks, held: once %v, long %v, retry %v (want none)",
			heldWhileRunning.Load(), holds("once"), holds("long"), holds("retry"))
	}
}

// Adverts: written, listed, withdrawn; control requests reach the node,
// its error comes back, and a node that is not up is ErrNoSuchNode.
func TestNodes(t *testing.T) {
	url := runNATS(t, false)
	gw, node := connect(t, url, "gateway"), connect(t, url, "node")
	ctx := context.Background()
	if err := node.Advertise(ctx, "n1", map[string]any{"id": "n1", "cpus": 2}); err != nil {
		t.Fatal(err)
	}
	ads, err := gw.Adverts(ctx)
	if err != nil || len(ads) != 1 || !strings.Contains(string(ads["n1"]), `"cpus":2`) {
		t.Fatalf("adverts: %s, %v", ads, err)
	}
	stop, err := node.ServeNodeControl("n1", func(action string) error {
		if action == "explode" {
			return errors.New("no such action")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	node.Conn().Flush()
	if err := gw.NodeControl(ctx, "n1", cluster.ActionDrain); err != nil {
		t.Errorf("drain: %v", err)
	}
	if err := gw.NodeControl(ctx, "n1", "explode"); err == nil || err.Error() != "no such action" {
		t.Errorf("a refused action: %v", err)
	}
	if err := gw.NodeControl(ctx, "n9", cluster.ActionDrain); !errors.Is(err, cluster.ErrNoSuchNode) {
		t.Errorf("a node that is not up: %v", err)
	}
	// Adverts are read from a watched copy: a new one, a rewrite and a
	// withdraw show within moments.
	until := func(what string, ok func(map[string]json.RawMessage) bool) {
		t.Helper()
		var ads map[string]json.RawMessage
		var err error
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if ads, err = gw.Adverts(ctx); err == nil && ok(ads) {
				return
			}
		}
		t.Errorf("%s: adverts %s, %v", what, ads, err)
	}
	node.Advertise(ctx, "n2", map[string]any{"id": "n2"})
	node.Advertise(ctx, "n1", map[string]any{"id": "n1", "cpus": 4})
	until("a new node and a rewrite", func(ads map[string]json.RawMessage) bool {
		return len(ads) == 2 && strings.Contains(string(ads["n1"]), `"cpus":4`)
	})
	if err := node.Withdraw(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	until("after a withdraw", func(ads map[string]json.RawMessage) bool { _, ok := ads["n1"]; return !ok && len(ads) == 1 })
}

// Of three candidates exactly one leads at a time; one stopped hands the
// lease over at once; one that dies (its connection gone, the lease no
// longer renewed) is replaced within LeaderTTL, and it stops leading
// before the next begins.
func TestCampaign(t *testing.T) {
	url := runNATS(t, false)
	var leading, most atomic.Int32
	events := make(chan string, 16)
	type candidate struct {
		c      *cluster.Cluster
		cancel context.CancelFunc
	}
	cands := map[string]candidate{}
	for _, id := range []string{"a", "b", "c"} {
		c := connect(t, url, id)
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		if err := c.Campaign(ctx, id, func(ctx context.Context) {
			n := leading.Add(1)
			for {
				m := most.Load()
				if n <= m || most.CompareAndSwap(m, n) {
					break
				}
			}
			events <- "lead " + id
			<-ctx.Done()
			leading.Add(-1)
			events <- "stop " + id
		}); err != nil {
			t.Fatal(err)
		}
		cands[id] = candidate{c, cancel}
	}
	next := func(within time.Duration) string {
		t.Helper()
		select {
		case e := <-events:
			return e
		case <-time.After(within):
			t.Fatalf("no leadership change within %s", within)
			return ""
		}
	}
	first := strings.TrimPrefix(next(5*time.Second), "lead ")
	if got, err := cands[first].c.Leader(context.Background()); err != nil || got != first {
		t.Errorf("Leader() = %q %v, want %q", got, err, first)
	}
	// Stopped: it hands over at once.
	began := time.Now()
	cands[first].cancel()
	if e := next(3 * time.Second); e != "stop "+first {
		t.Fatalf("after stopping the leader: %q", e)
	}
	second := strings.TrimPrefix(next(3*time.Second), "lead ")
	t.Logf("handover after a stop: %s", time.Since(began))
	if second == first || cands[second].c == nil {
		t.Fatalf("the next leader is %q", second)
	}
	// Dead: its connection closes, nothing renews; it stops leading, and
	// another takes over within the lease's TTL.
	began = time.Now()
	cands[second].c.Close()
	if e := next(cluster.LeaderTTL); e != "stop "+second {
		t.Fatalf("after the leader's connection closed: %q", e)
	}
	third := next(cluster.LeaderTTL + 4*time.Second) // TTL + 1 s, and room for a slow machine
	t.Logf("takeover after a death: %s", time.Since(began))
	if third == "lead "+first || third == "lead "+second {
		t.Fatalf("after the leader died: %q", third)
	}
	if m := most.Load(); m != 1 {
		t.Errorf("%d candidates led at once", m)
	}
}

// The placement table: what one writes, every watcher sees, with a notice
// naming the agent; deleted, it is gone.
func TestPlacementTable(t *testing.T) {
	url := runNATS(t, false)
	ctx := context.Background()
	w, err := connect(t, url, "scheduler").Placements(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	key := cluster.VersionKey{Agent: "0b9f3c2e-1d2a-4f5b-8c6d-7e8f9a0b1c2d", Version: 3}
	if err := w.Set(ctx, key, []string{"n1", "n2"}, "g1"); err != nil {
		t.Fatal(err)
	}
	r, err := connect(t, url, "node").Placements(ctx) // opened after: the table holds the key at once
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if !r.Has(key.Agent, 3, "n2") || r.Has(key.Agent, 3, "n3") || r.Has(key.Agent, 2, "n1") {
		t.Errorf("a table opened after a write: %v", r.Snapshot())
	}
	changed := make(chan string, 4)
	r.OnChange(func(agent string) { changed <- agent })
	if err := w.Set(ctx, key, []string{"n3"}, "g1"); err != nil {
		t.Fatal(err)
	}
	select {
	case a := <-changed:
		if a != key.Agent {
			t.Errorf("notice for %q", a)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no notice of a placement change")
	}
	if !r.Has(key.Agent, 3, "n3") || r.Has(key.Agent, 3, "n1") {
		t.Errorf("after the change: %v", r.Snapshot())
	}
	if err := w.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-time.After(5 * time.Second):
		t.Fatal("no notice of a placement removed")
	}
	if len(r.Snapshot()) != 0 {
		t.Errorf("after the delete: %v", r.Snapshot())
	}
}
