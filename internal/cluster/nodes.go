package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Nodes advertise themselves in a JetStream key-value bucket: one key per
// node, rewritten every heartbeat. The bucket's TTL removes a node that
// stopped writing (it died): what is in the bucket is the live nodes.
const NodesBucket = "runagent-nodes"

// NodeTTL is how long a node's advert outlives its last heartbeat.
const NodeTTL = 15 * time.Second

// Node actions a gateway sends to a node (NodeControl).
const (
	ActionDrain  = "drain"
	ActionResume = "resume"
)

// nodes opens (creating on first use) the bucket.
func (c *Cluster) nodes(ctx context.Context) (jetstream.KeyValue, error) {
	c.kvOnce.Do(func() {
		js, err := jetstream.New(c.nc)
		if err != nil {
			c.kvErr = err
			return
		}
		octx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		c.kv, c.kvErr = js.CreateOrUpdateKeyValue(octx, jetstream.KeyValueConfig{
			Bucket: NodesBucket, Description: "RunAgent nodes: each one's advert (capacity, instances, drivers), rewritten every heartbeat",
			TTL: NodeTTL, Replicas: c.replicas, Storage: jetstream.FileStorage, History: 1,
		})
		if c.kvErr != nil {
			c.kvErr = fmt.Errorf("open the node bucket %s on NATS: %w", NodesBucket, c.kvErr)
		}
	})
	return c.kv, c.kvErr
}

// Advertise writes node's advert (any JSON value).
func (c *Cluster) Advertise(ctx context.Context, node string, advert any) error {
	kv, err := c.nodes(ctx)
	if err != nil {
		return err
	}
	b, err := json.Marshal(advert)
	if err != nil {
		return err
	}
	_, err = kv.Put(ctx, node, b)
	return err
}

// Withdraw removes node's advert (it is leaving).
func (c *Cluster) Withdraw(ctx context.Context, node string) error {
	kv, err := c.nodes(ctx)
	if err != nil {
		return err
	}
	return kv.Delete(ctx, node)
}

// Adverts returns every live node's advert, by node, from a watched copy
// of the bucket (the scheduler reads them every second): an advert older
// than NodeTTL is left out, as the bucket's TTL removes it.
func (c *Cluster) Adverts(ctx context.Context) (map[string]json.RawMessage, error) {
	a, err := c.advertCache(ctx)
	if err != nil {
		return nil, err
	}
	return a.live(time.Now()), nil
}

// advertCache is a live copy of the node bucket.
type advertCache struct {
	mu      sync.RWMutex
	entries map[string]advertEntry
}

type advertEntry struct {
	value json.RawMessage
	at    time.Time // when it arrived here (this clock: NATS's may differ)
}

func (a *advertCache) live(now time.Time) map[string]json.RawMessage {
	a.mu.RLock()
	defer a.mu.RUnlock()
	out := make(map[string]json.RawMessage, len(a.entries))
	for node, e := range a.entries {
		if now.Sub(e.at) < NodeTTL {
			out[node] = e.value
		}
	}
	return out
}

// advertCache watches the node bucket, on first use; it returns once the
// copy holds every advert there is.
func (c *Cluster) advertCache(ctx context.Context) (*advertCache, error) {
	c.advMu.Lock()
	defer c.advMu.Unlock()
	if c.adverts != nil {
		return c.adverts, nil
	}
	kv, err := c.nodes(ctx)
	if err != nil {
		return nil, err
	}
	w, err := kv.WatchAll(context.Background())
	if err != nil {
		return nil, fmt.Errorf("watch the node bucket %s on NATS: %w", NodesBucket, err)
	}
	a := &advertCache{entries: map[string]advertEntry{}}
	ready := make(chan struct{})
	go func() {
		defer func() { // the watch ended (the connection closed): the next read makes a new one
			c.advMu.Lock()
			if c.adverts == a {
				c.adverts = nil
			}
			c.advMu.Unlock()
		}()
		initial := true
		for e := range w.Updates() {
			if e == nil { // every existing key has been delivered
				if initial {
					initial = false
					close(ready)
				}
				continue
			}
			a.mu.Lock()
			if e.Operation() == jetstream.KeyValuePut {
				a.entries[e.Key()] = advertEntry{value: json.RawMessage(e.Value()), at: time.Now()}
			} else {
				delete(a.entries, e.Key())
			}
			// Dead nodes' entries go too (the bucket's TTL sends no notice).
			for node, old := range a.entries {
				if time.Since(old.at) > 4*NodeTTL {
					delete(a.entries, node)
				}
			}
			a.mu.Unlock()
		}
	}()
	select {
	case <-ready:
		c.adverts = a
		return a, nil
	case <-ctx.Done():
		w.Stop()
		return nil, fmt.Errorf("read the node adverts from NATS: %w", ctx.Err())
	}
}

// ErrNoSuchNode is in NodeControl's error for a node that is not up.
var ErrNoSuchNode = errors.New("no such node")

func (c *Cluster) controlSubject(node string) string { return c.prefix + ".node." + node + ".ctl" }

// NodeControl asks node to do action; its error comes back as an error.
func (c *Cluster) NodeControl(ctx context.Context, node, action string) error {
	m, err := c.nc.RequestWithContext(ctx, c.controlSubject(node), []byte(action))
	if errors.Is(err, nats.ErrNoResponders) {
		return fmt.Errorf("node %s is not in the cluster (runagent nodes list shows the ones that are): %w", node, ErrNoSuchNode)
	}
	if err != nil {
		return fmt.Errorf("ask node %s to %s: %w", node, action, err)
	}
	if len(m.Data) > 0 {
		return errors.New(string(m.Data))
	}
	return nil
}

// ServeNodeControl answers node's control requests with fn (its error's
// text, or nothing for success).
func (c *Cluster) ServeNodeControl(node string, fn func(action string) error) (stop func(), err error) {
	sub, err := c.nc.Subscribe(c.controlSubject(node), func(m *nats.Msg) {
		go func() {
			var reply []byte
			if err := fn(string(m.Data)); err != nil {
				reply = []byte(err.Error())
			}
			m.Respond(reply)
		}()
	})
	if err != nil {
		return nil, err
	}
	return func() { sub.Unsubscribe() }, nil
}
