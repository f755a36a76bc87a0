// Package cluster is what the processes of a multi-node RunAgent share on
// NATS besides calls (those are internal/dispatch/natsdispatch): agent
// bundles in a JetStream object store by content hash, change notices that
// make gateways and nodes re-read an agent (or the API keys) from
// PostgreSQL at once rather than at their next resync, and the request that
// warms a new version on the nodes before a gateway lets it take traffic.
// PostgreSQL stays the source of truth: a lost notice only delays a change
// until the next resync.
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/runagent-go/runagent/internal/domain"
)

// Options configures a cluster connection.
type Options struct {
	// URLs are NATS servers of one cluster (nats://host:4222); the client
	// reconnects to any of them, forever.
	URLs []string
	// Name names this process to the NATS server (its monitoring pages).
	Name string
	// Prefix starts every subject (default "runagent", as natsdispatch).
	Prefix string
	// Replicas is how many NATS servers keep each bundle (JetStream
	// replicas: 3 in a three-server cluster; default 1).
	Replicas int
	Log      *slog.Logger
}

// BundleBucket is the JetStream object store of the bundles.
const BundleBucket = "runagent-bundles"

// Change kinds: what a notice says to re-read.
const (
	ChangeAgent = "agent" // an agent's versions or its existence; the id is the agent's
	ChangeKeys  = "keys"  // the API keys (id "")
	// ChangeCancel asks whoever runs the run (the id) to cancel it.
	ChangeCancel = "cancel"
)

// Cluster is one process's connection to the cluster.
type Cluster struct {
	nc       *nats.Conn
	bundles  jetstream.ObjectStore
	prefix   string
	replicas int
	log      *slog.Logger

	kvOnce sync.Once // the node bucket, opened on first use
	kv     jetstream.KeyValue
	kvErr  error

	leaderMu sync.Mutex // the scheduler's lease bucket, opened on first use
	leaderKV jetstream.KeyValue

	payOnce sync.Once // the payload store, opened on first use
	pay     *Payloads
	payErr  error
}

// Connect connects to NATS and opens (creating on first use) the bundle
// store. It fails with an error saying what to do when NATS cannot be
// reached or has no JetStream.
func Connect(ctx context.Context, o Options) (*Cluster, error) {
	if len(o.URLs) == 0 {
		return nil, errors.New("--nats: give the URL of at least one NATS server (nats://host:4222)")
	}
	if o.Prefix == "" {
		o.Prefix = "runagent"
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	log := o.Log
	nc, err := nats.Connect(strings.Join(o.URLs, ","), nats.Name(o.Name), nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond), nats.Timeout(5*time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn("lost the connection to NATS; reconnecting", "error", err)
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("reconnected to NATS", "server", c.ConnectedUrlRedacted()) }),
	)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w (is nats-server running there, with -js? check --nats)", strings.Join(o.URLs, ","), err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("NATS JetStream: %w", err)
	}
	octx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	obs, err := js.CreateOrUpdateObjectStore(octx, jetstream.ObjectStoreConfig{
		Bucket: BundleBucket, Description: "RunAgent agent bundles, by SHA-256 of the uploaded zip",
		Replicas: o.Replicas, Storage: jetstream.FileStorage,
	})
	if err != nil {
		nc.Close()
		if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, nats.ErrNoResponders) {
			return nil, fmt.Errorf("the NATS server at %s has no JetStream: run nats-server with -js (and a -sd store directory)", nc.ConnectedUrlRedacted())
		}
		return nil, fmt.Errorf("open the bundle store %s on NATS (replicas %d): %w", BundleBucket, o.Replicas, err)
	}
	return &Cluster{nc: nc, bundles: obs, prefix: o.Prefix, replicas: o.Replicas, log: log}, nil
}

// Conn is the NATS connection (for natsdispatch).
func (c *Cluster) Conn() *nats.Conn { return c.nc }

// Close drains the connection: what was published is sent.
func (c *Cluster) Close() { c.nc.Drain() }

// PutBundle stores a bundle under its SHA-256 (hex); one already stored
// is not sent again.
func (c *Cluster) PutBundle(ctx context.Context, sha string, r io.Reader) error {
	if _, err := c.bundles.GetInfo(ctx, sha); err == nil {
		return nil
	}
	if _, err := c.bundles.Put(ctx, jetstream.ObjectMeta{Name: sha}, r); err != nil {
		return fmt.Errorf("store the bundle in NATS: %w", err)
	}
	return nil
}

// FetchBundle writes the bundle with that SHA-256 to the file path.
func (c *Cluster) FetchBundle(ctx context.Context, sha, path string) error {
	if err := c.bundles.GetFile(ctx, sha, path); err != nil {
		if errors.Is(err, jetstream.ErrObjectNotFound) {
			return fmt.Errorf("bundle %s is not in the cluster's bundle store (%s): upload the agent again", sha, BundleBucket)
		}
		return fmt.Errorf("fetch bundle %s from NATS: %w", sha, err)
	}
	return nil
}

func (c *Cluster) changeSubject(kind string) string { return c.prefix + ".evt." + kind }

// Changed tells every gateway and node that kind (id) changed in the store.
func (c *Cluster) Changed(kind, id string) {
	if err := c.nc.Publish(c.changeSubject(kind), []byte(id)); err != nil {
		c.log.Warn("could not announce a change; the others see it at their next resync", "kind", kind, "id", id, "error", err)
	}
}

// OnChange calls fn (one call at a time) for each notice of kind.
func (c *Cluster) OnChange(kind string, fn func(id string)) (stop func(), err error) {
	sub, err := c.nc.Subscribe(c.changeSubject(kind), func(m *nats.Msg) { fn(string(m.Data)) })
	if err != nil {
		return nil, err
	}
	sub.SetPendingLimits(-1, -1) // a notice must not be dropped for a slow reader
	return func() { sub.Unsubscribe() }, nil
}

func (c *Cluster) prepareSubject(node, agentID string, version int) string {
	return c.prefix + ".node." + node + ".prepare." + agentID + "." + strconv.Itoa(version)
}

// prepareReply is a node's answer to a prepare request.
type prepareReply struct {
	Node  string `json:"node"`
	Error string `json:"error,omitempty"`
}

// PrepareOn asks node to bring a version up (its bundle fetched, its
// dependencies installed, an instance warm) and returns once it is ready
// there, or with the node's error naming the node.
func (c *Cluster) PrepareOn(ctx context.Context, node, agentID string, version int) error {
	m, err := c.nc.RequestWithContext(ctx, c.prepareSubject(node, agentID, version), nil)
	if errors.Is(err, nats.ErrNoResponders) {
		return &domain.Error{Code: domain.CodeOverloaded, RetryAfter: 5 * time.Second,
			Message: fmt.Sprintf("node %s left the cluster (or is draining) before it started version %d; start the agent again", node, version)}
	}
	if err != nil {
		return fmt.Errorf("ask node %s to start version %d: %w", node, version, err)
	}
	var r prepareReply
	if err := json.Unmarshal(m.Data, &r); err != nil {
		return fmt.Errorf("node %s answered a start with %q: %w", node, m.Data, err)
	}
	if r.Error != "" {
		return fmt.Errorf("on node %s: %s", r.Node, r.Error)
	}
	return nil
}

// ServePrepare answers the prepare requests sent to node with fn.
func (c *Cluster) ServePrepare(node string, fn func(ctx context.Context, agentID string, version int) error) (stop func(), err error) {
	sub, err := c.nc.Subscribe(c.prefix+".node."+node+".prepare.*.*", func(m *nats.Msg) {
		parts := strings.Split(m.Subject, ".")
		agentID := parts[len(parts)-2]
		version, _ := strconv.Atoi(parts[len(parts)-1])
		go func() {
			r := prepareReply{Node: node}
			if err := fn(context.Background(), agentID, version); err != nil {
				r.Error = err.Error()
			}
			b, _ := json.Marshal(r)
			m.Respond(b)
		}()
	})
	if err != nil {
		return nil, err
	}
	return func() { sub.Unsubscribe() }, nil
}
