package cluster

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// PayloadBucket is the JetStream object store of the bodies too large for
// one NATS message (natsdispatch.Spill): a call's input, a result, a chunk.
// Each is taken (read and removed) by the other side; the bucket's TTL
// removes what a side that died never took.
const PayloadBucket = "runagent-payloads"

// PayloadTTL outlasts any call's body in flight.
const PayloadTTL = time.Hour

// Payloads is the cluster's spill store for large bodies.
type Payloads struct {
	obs jetstream.ObjectStore
}

// Payloads opens (creating on first use) the store of large bodies.
func (c *Cluster) Payloads(ctx context.Context) (*Payloads, error) {
	c.payOnce.Do(func() {
		js, err := jetstream.New(c.nc)
		if err != nil {
			c.payErr = err
			return
		}
		octx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		obs, err := js.CreateOrUpdateObjectStore(octx, jetstream.ObjectStoreConfig{
			Bucket: PayloadBucket, Description: "RunAgent call bodies too large for one NATS message, until the other side takes them",
			TTL: PayloadTTL, Replicas: c.replicas, Storage: jetstream.FileStorage,
		})
		if err != nil {
			c.payErr = fmt.Errorf("open the payload store %s on NATS: %w", PayloadBucket, err)
			return
		}
		c.pay = &Payloads{obs: obs}
	})
	return c.pay, c.payErr
}

// Put stores body under a new name.
func (p *Payloads) Put(ctx context.Context, body []byte) (string, error) {
	name := nuid.Next()
	if _, err := p.obs.PutBytes(ctx, name, body); err != nil {
		return "", err
	}
	return name, nil
}

// Take reads the body stored under name and removes it.
func (p *Payloads) Take(ctx context.Context, name string) ([]byte, error) {
	b, err := p.obs.GetBytes(ctx, name)
	if err != nil {
		return nil, err
	}
	go p.obs.Delete(context.Background(), name) // off the call's path; the TTL is the backstop
	return b, nil
}

// Remove removes the body stored under name.
func (p *Payloads) Remove(ctx context.Context, name string) error {
	return p.obs.Delete(ctx, name)
}
