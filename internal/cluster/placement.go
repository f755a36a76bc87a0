package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/runagent-go/runagent/internal/domain"
)

// Placement: which nodes run which agent version. The scheduler (one
// gateway at a time, elected on a JetStream KV key) writes one key per
// version, AGENT.VERSION, listing its nodes; every node watches the bucket
// and runs a version only where it is listed. A version with no key (or an
// empty list) runs nowhere: scaled to zero across the cluster.
const (
	PlacementBucket = "runagent-placement"
	LeaderBucket    = "runagent-leader"
	leaderKey       = "scheduler"
)

// LeaderTTL is how long the scheduler's lease outlives its last renewal: a
// gateway that dies is replaced within it and a second; one that stops
// hands over within a second.
const LeaderTTL = 6 * time.Second

// Placement is the value of one version's key.
type Placement struct {
	Nodes []string `json:"nodes"`
	By    string   `json:"by"` // the scheduler that wrote it
	At    string   `json:"at"`
}

// VersionKey names one agent version in the placement.
type VersionKey struct {
	Agent   string
	Version int
}

func (k VersionKey) kvKey() string { return k.Agent + "." + strconv.Itoa(k.Version) }

func parseKey(s string) (VersionKey, bool) {
	i := strings.LastIndexByte(s, '.')
	if i <= 0 {
		return VersionKey{}, false
	}
	n, err := strconv.Atoi(s[i+1:])
	return VersionKey{Agent: s[:i], Version: n}, err == nil && n > 0
}

func (c *Cluster) kvBucket(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	js, err := jetstream.New(c.nc)
	if err != nil {
		return nil, err
	}
	octx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	cfg.Replicas, cfg.Storage = c.replicas, jetstream.FileStorage
	kv, err := js.CreateOrUpdateKeyValue(octx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open the bucket %s on NATS: %w", cfg.Bucket, err)
	}
	return kv, nil
}

// PlacementTable is a live copy of the placement bucket.
type PlacementTable struct {
	kv jetstream.KeyValue

	mu      sync.RWMutex
	entries map[VersionKey]Placement
	onAgent []func(agent string)
	stop    func()
}

// Placements opens the placement bucket and watches it; it returns once
// the table holds every key there is.
func (c *Cluster) Placements(ctx context.Context) (*PlacementTable, error) {
	kv, err := c.kvBucket(ctx, jetstream.KeyValueConfig{Bucket: PlacementBucket, History: 1,
		Description: "RunAgent placement: the nodes each agent version runs on, written by the elected scheduler"})
	if err != nil {
		return nil, err
	}
	w, err := kv.WatchAll(context.Background())
	if err != nil {
		return nil, fmt.Errorf("watch the placement on NATS: %w", err)
	}
	t := &PlacementTable{kv: kv, entries: map[VersionKey]Placement{}, stop: func() { w.Stop() }}
	ready := make(chan struct{})
	go func() {
		initial := true
		for e := range w.Updates() {
			if e == nil { // every existing key has been delivered
				if initial {
					initial = false
					close(ready)
				}
				continue
			}
			k, ok := parseKey(e.Key())
			if !ok {
				continue
			}
			var p Placement
			del := e.Operation() != jetstream.KeyValuePut || json.Unmarshal(e.Value(), &p) != nil
			t.mu.Lock()
			if del {
				delete(t.entries, k)
			} else {
				t.entries[k] = p
			}
			fns := t.onAgent
			t.mu.Unlock()
			if !initial {
				for _, fn := range fns {
					fn(k.Agent)
				}
			}
		}
	}()
	select {
	case <-ready:
		return t, nil
	case <-ctx.Done():
		w.Stop()
		return nil, fmt.Errorf("read the placement from NATS: %w", ctx.Err())
	}
}

// OnChange calls fn (on the watcher's goroutine: keep it short) with the
// agent whose placement changed.
func (t *PlacementTable) OnChange(fn func(agent string)) {
	t.mu.Lock()
	t.onAgent = append(t.onAgent, fn)
	t.mu.Unlock()
}

// Has reports whether node is placed to run the version.
func (t *PlacementTable) Has(agent string, version int, node string) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return slices.Contains(t.entries[VersionKey{agent, version}].Nodes, node)
}

// Nodes is the version's nodes (ok false: it has no key).
func (t *PlacementTable) Nodes(k VersionKey) (nodes []string, ok bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	p, ok := t.entries[k]
	return slices.Clone(p.Nodes), ok
}

// Snapshot is every version's nodes.
func (t *PlacementTable) Snapshot() map[VersionKey][]string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make(map[VersionKey][]string, len(t.entries))
	for k, p := range t.entries {
		out[k] = slices.Clone(p.Nodes)
	}
	return out
}

// Set writes a version's nodes (by: the scheduler writing).
func (t *PlacementTable) Set(ctx context.Context, k VersionKey, nodes []string, by string) error {
	b, _ := json.Marshal(Placement{Nodes: nodes, By: by, At: time.Now().UTC().Format(time.RFC3339Nano)})
	if _, err := t.kv.Put(ctx, k.kvKey(), b); err != nil {
		return fmt.Errorf("write the placement of version %d of agent %s: %w", k.Version, k.Agent, err)
	}
	t.mu.Lock() // at once: the writer's next decision sees it, whatever the watcher's delay
	t.entries[k] = Placement{Nodes: nodes, By: by}
	t.mu.Unlock()
	return nil
}

// Delete removes a version's key (the version is gone or replaced).
func (t *PlacementTable) Delete(ctx context.Context, k VersionKey) error {
	if err := t.kv.Delete(ctx, k.kvKey()); err != nil {
		return err
	}
	t.mu.Lock()
	delete(t.entries, k)
	t.mu.Unlock()
	return nil
}

// Close stops watching.
func (t *PlacementTable) Close() { t.stop() }

// Campaign runs until ctx ends, competing for the scheduler's lease with
// the other candidates; while this one holds it, lead runs with a context
// that ends when the lease is lost (or ctx ends). The lease is a key in a
// bucket whose TTL is LeaderTTL, created only if absent and renewed by
// revision every LeaderTTL/3: two candidates never both hold it, and a
// holder that stops renewing loses it within LeaderTTL.
func (c *Cluster) Campaign(ctx context.Context, id string, lead func(ctx context.Context)) error {
	kv, err := c.leaderBucket(ctx)
	if err != nil {
		return err
	}
	go func() {
		tick := time.NewTicker(time.Second) // a takeover within LeaderTTL + 1 s
		defer tick.Stop()
		for ctx.Err() == nil {
			cctx, cancel := context.WithTimeout(ctx, LeaderTTL/3)
			rev, err := kv.Create(cctx, leaderKey, []byte(id))
			cancel()
			if err == nil {
				c.log.Info("this gateway now schedules the cluster", "id", id)
				c.hold(ctx, kv, id, rev, lead)
			} else if !errors.Is(err, jetstream.ErrKeyExists) && ctx.Err() == nil {
				c.log.Warn("compete for the scheduler's lease; retrying", "error", err)
			}
			select {
			case <-ctx.Done():
			case <-tick.C:
			}
		}
	}()
	return nil
}

// OpenLease opens (creating on first use) the scheduler lease's bucket.
// A candidate opens it as it starts: JetStream creates a replicated stream
// slowly when several servers ask at once.
func (c *Cluster) OpenLease(ctx context.Context) error {
	_, err := c.leaderBucket(ctx)
	return err
}

// leaderBucket opens the lease's bucket once.
func (c *Cluster) leaderBucket(ctx context.Context) (jetstream.KeyValue, error) {
	c.leaderMu.Lock()
	defer c.leaderMu.Unlock()
	if c.leaderKV != nil {
		return c.leaderKV, nil
	}
	kv, err := c.kvBucket(ctx, jetstream.KeyValueConfig{Bucket: LeaderBucket, History: 1, TTL: LeaderTTL,
		Description: "RunAgent's scheduler lease: the gateway that places agent versions on nodes"})
	if err == nil {
		c.leaderKV = kv
	}
	return kv, err
}

// hold runs lead while renewing the lease; it returns once lead has
// returned, the lease lost or given up.
func (c *Cluster) hold(ctx context.Context, kv jetstream.KeyValue, id string, rev uint64, lead func(context.Context)) {
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		lead(lctx)
	}()
	tick := time.NewTicker(LeaderTTL / 3)
	defer tick.Stop()
	renewed := time.Now()
	for {
		select {
		case <-ctx.Done():
			cancel()
			<-done
			dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Second)
			kv.Delete(dctx, leaderKey, jetstream.LastRevision(rev)) // hand over at once
			dcancel()
			return
		case <-tick.C:
		}
		uctx, ucancel := context.WithTimeout(ctx, LeaderTTL/3)
		r, err := kv.Update(uctx, leaderKey, []byte(id), rev)
		ucancel()
		if err == nil {
			rev, renewed = r, time.Now()
			continue
		}
		// Unsure whether the lease still holds: stop deciding well before
		// another candidate may take it.
		if errors.Is(err, jetstream.ErrKeyExists) || time.Since(renewed) > LeaderTTL/2 {
			c.log.Warn("this gateway lost the scheduler's lease", "error", err)
			cancel()
			<-done
			return
		}
	}
}

// Leader is the id of the candidate holding the scheduler's lease ("" if
// none does now).
func (c *Cluster) Leader(ctx context.Context) (string, error) {
	kv, err := c.leaderBucket(ctx)
	if err != nil {
		return "", err
	}
	e, err := kv.Get(ctx, leaderKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return string(e.Value()), nil
}

// Scheduler requests, answered by the leader.
const (
	SchedStart    = "start"    // place a new version and return once a node has it warm
	SchedActivate = "activate" // a call found no node: place the version now
)

// SchedRequest asks the scheduler to place a version. A start carries
// what placement needs of the new version (the scheduler may not have
// read it yet).
type SchedRequest struct {
	Op          string `json:"op"`
	Agent       string `json:"agent"`
	Version     int    `json:"version"`
	MinNodes    int    `json:"min_nodes,omitempty"`
	Driver      string `json:"driver,omitempty"`
	MemoryBytes int64  `json:"memory_bytes,omitempty"`
}

// schedReply is the scheduler's answer: empty for success.
type schedReply struct {
	Code         string `json:"code,omitempty"`
	Error        string `json:"error"`
	RetryAfterMS int64  `json:"retry_after_ms,omitempty"`
}

// ErrNoScheduler is in AskScheduler's error while no gateway leads.
var ErrNoScheduler = errors.New("no scheduler")

func (c *Cluster) schedSubject() string { return c.prefix + ".sched" }

// AskScheduler sends r to the leader and returns its answer.
func (c *Cluster) AskScheduler(ctx context.Context, r SchedRequest) error {
	b, _ := json.Marshal(r)
	m, err := c.nc.RequestWithContext(ctx, c.schedSubject(), b)
	if errors.Is(err, nats.ErrNoResponders) {
		return fmt.Errorf("no gateway schedules the cluster right now (one is elected within %s): %w", LeaderTTL, ErrNoScheduler)
	}
	if err != nil {
		return fmt.Errorf("ask the scheduler to %s version %d of agent %s: %w", r.Op, r.Version, r.Agent, err)
	}
	if len(m.Data) == 0 {
		return nil
	}
	var rep schedReply
	if err := json.Unmarshal(m.Data, &rep); err != nil {
		return fmt.Errorf("the scheduler answered %q: %w", m.Data, err)
	}
	if rep.Code != "" {
		return &domain.Error{Code: domain.Code(rep.Code), Message: rep.Error, RetryAfter: time.Duration(rep.RetryAfterMS) * time.Millisecond}
	}
	return errors.New(rep.Error)
}

// ServeScheduler answers scheduler requests with fn until stop.
func (c *Cluster) ServeScheduler(fn func(ctx context.Context, r SchedRequest) error) (stop func(), err error) {
	sub, err := c.nc.Subscribe(c.schedSubject(), func(m *nats.Msg) {
		go func() {
			var r SchedRequest
			var reply []byte
			err := json.Unmarshal(m.Data, &r)
			if err != nil {
				err = fmt.Errorf("a malformed scheduler request: %w", err)
			} else {
				err = fn(context.Background(), r)
			}
			if err != nil {
				rep := schedReply{Error: err.Error()}
				var de *domain.Error
				if errors.As(err, &de) {
					rep.Code, rep.RetryAfterMS = string(de.Code), de.RetryAfter.Milliseconds()
				}
				reply, _ = json.Marshal(rep)
			}
			m.Respond(reply)
		}()
	})
	if err != nil {
		return nil, err
	}
	if err := c.nc.Flush(); err != nil {
		sub.Unsubscribe()
		return nil, err
	}
	return func() { sub.Unsubscribe() }, nil
}
