package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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

// Adverts returns every live node's advert, by node.
func (c *Cluster) Adverts(ctx context.Context) (map[string]json.RawMessage, error) {
	kv, err := c.nodes(ctx)
	if err != nil {
		return nil, err
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]json.RawMessage{}
	for k := range keys.Keys() {
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // gone meanwhile
		}
		if err != nil {
			return nil, err
		}
		out[k] = json.RawMessage(e.Value())
	}
	return out, nil
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
