package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The async invocations of a cluster wait in a JetStream work-queue stream:
// a gateway publishes one message per accepted invocation (its id; the
// invocation itself is in PostgreSQL, the source of truth), the nodes pull
// them from one durable consumer. A node holds a message's lease while it
// runs the invocation and renews it from Go; a node that dies lets the
// lease expire, and JetStream delivers the message to another node.
const (
	AsyncStream   = "RUNAGENT_ASYNC"
	AsyncConsumer = "runagent-async"
)

const hTenant = "Ra-Tenant"

// Queue is the cluster's queue of async invocations.
type Queue struct {
	c       *Cluster
	js      jetstream.JetStream
	stream  jetstream.Stream
	cons    jetstream.Consumer
	subject string
	lease   time.Duration
}

// Queue opens (creating on first use) the async stream and its consumer;
// lease is how long a node may go without renewing a message it runs
// before JetStream gives it to another node.
func (c *Cluster) Queue(ctx context.Context, lease time.Duration) (*Queue, error) {
	js, err := jetstream.New(c.nc)
	if err != nil {
		return nil, err
	}
	octx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	subject := c.prefix + ".async.jobs"
	// One subject per invocation (subject.ID), so that whether the stream
	// holds one is a lookup.
	stream, err := js.CreateOrUpdateStream(octx, jetstream.StreamConfig{
		Name: AsyncStream, Description: "RunAgent async invocations accepted by a gateway, until a node has run them",
		Subjects: []string{subject + ".>"}, Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage,
		Replicas: c.replicas, Duplicates: 2 * time.Minute,
	})
	if err != nil {
		return nil, fmt.Errorf("open the async stream %s on NATS (replicas %d): %w", AsyncStream, c.replicas, err)
	}
	cons, err := js.CreateOrUpdateConsumer(octx, AsyncStream, jetstream.ConsumerConfig{
		Durable: AsyncConsumer, AckPolicy: jetstream.AckExplicitPolicy, AckWait: lease, MaxAckPending: 4096,
		Description: "the nodes of the cluster, running async invocations",
	})
	if err != nil {
		return nil, fmt.Errorf("open the async consumer %s on NATS: %w", AsyncConsumer, err)
	}
	return &Queue{c: c, js: js, stream: stream, cons: cons, subject: subject, lease: lease}, nil
}

// Enqueue stores one accepted invocation in the stream; it returns once
// JetStream has it (on every replica). The invocation id is the message
// id: a retried publish is not queued twice.
func (q *Queue) Enqueue(ctx context.Context, id, tenant string) error {
	if !subjectToken(id) {
		return fmt.Errorf("queue the async invocation %q: its id cannot be a NATS subject token", id)
	}
	m := nats.NewMsg(q.subject + "." + id)
	m.Data = []byte(id)
	m.Header.Set(hTenant, tenant)
	if _, err := q.js.PublishMsg(ctx, m, jetstream.WithMsgID(id)); err != nil {
		return fmt.Errorf("queue the async invocation in NATS JetStream: %w", err)
	}
	return nil
}

// Holds says whether the stream still holds invocation id's message: not
// yet run to its end (a node may be running it).
func (q *Queue) Holds(ctx context.Context, id string) (bool, error) {
	if !subjectToken(id) {
		return false, fmt.Errorf("look up the async invocation %q: its id cannot be a NATS subject token", id)
	}
	_, err := q.stream.GetLastMsgForSubject(ctx, q.subject+"."+id)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return false, nil
	default:
		return false, fmt.Errorf("look up an async invocation in NATS JetStream: %w", err)
	}
}

// subjectToken says whether s can be one token of a NATS subject.
func subjectToken(s string) bool {
	return s != "" && !strings.ContainsAny(s, ".*> \t\r\n")
}

// Delivery is one invocation handed to this node.
type Delivery struct {
	ID, Tenant string
	// Delivered counts the deliveries of its message, this one included.
	Delivered uint64
	msg       jetstream.Msg
}

// Ack says the invocation is done with (its outcome recorded, or nothing
// left to do): it leaves the stream.
func (d Delivery) Ack() error { return d.msg.Ack() }

// Retry gives it back, to be delivered again after delay (to any node).
func (d Delivery) Retry(delay time.Duration) error { return d.msg.NakWithDelay(delay) }

// Consume hands deliveries to run, at most slots at a time, until ctx
// ends; it then waits for the runs in flight. Each run's lease is renewed
// every third of the lease while it runs.
func (q *Queue) Consume(ctx context.Context, slots int, run func(Delivery)) {
	var wg sync.WaitGroup
	defer wg.Wait()
	free := make(chan struct{}, slots)
	for range slots {
		free <- struct{}{}
	}
	for ctx.Err() == nil {
		select { // at least one slot, then every other one free now
		case <-free:
		case <-ctx.Done():
			return
		}
		n := 1
	more:
		for n < slots {
			select {
			case <-free:
				n++
			default:
				break more
			}
		}
		batch, err := q.cons.Fetch(n, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			for range n {
				free <- struct{}{}
			}
			if ctx.Err() == nil && !errors.Is(err, nats.ErrTimeout) {
				q.c.log.Warn("fetch async invocations from NATS; retrying", "error", err)
				sleep(ctx, time.Second)
			}
			continue
		}
		got := 0
		for m := range batch.Messages() {
			got++
			md, _ := m.Metadata()
			d := Delivery{ID: string(m.Data()), Tenant: m.Headers().Get(hTenant), msg: m}
			if md != nil {
				d.Delivered = md.NumDelivered
			}
			wg.Add(1)
			go func() {
				defer func() { free <- struct{}{}; wg.Done() }()
				stop := q.keepLeased(m)
				defer stop()
				run(d)
			}()
		}
		for range n - got {
			free <- struct{}{}
		}
		if err := batch.Error(); err != nil && ctx.Err() == nil && !errors.Is(err, nats.ErrTimeout) {
			q.c.log.Warn("fetch async invocations from NATS", "error", err)
		}
	}
}

// keepLeased renews m's lease until stop is called: from this process, not
// the agent's, so that an agent busy in its own code cannot lose it.
func (q *Queue) keepLeased(m jetstream.Msg) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(q.lease / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if err := m.InProgress(); err != nil {
					q.c.log.Warn("renew the lease of an async invocation", "invocation_id", string(m.Data()), "error", err)
				}
			}
		}
	}()
	return func() { close(done) }
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
