package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/runagent-go/runagent/internal/domain"
)

// The buckets of users' persistent folders (docs/multinode.md).
const (
	// UserLeaseBucket holds, per agent and user, the node that holds the
	// user's folders now: the one node whose instance of the user runs.
	UserLeaseBucket = "runagent-user-leases"
	// UserDataBucket holds each user's folders (an archive) as they were
	// after the last call that changed them.
	UserDataBucket = "runagent-user-data"
)

// UserLeaseTTL is how long a lease outlives its holder's last renewal: a
// node cut off from NATS for longer loses its users. A holder that died
// is taken over at once (NATS knows it gone), not after the TTL.
const UserLeaseTTL = 30 * time.Second

// Users keeps users' persistent folders for the nodes of a cluster: a
// user's folders are held by one node at a time (a lease in a KV bucket,
// renewed by revision while held), and their archive is in an object
// store, so that the node that takes a user over starts where the last one
// stopped.
type Users struct {
	nc     *nats.Conn
	prefix string
	node   string
	kv     jetstream.KeyValue
	obs    jetstream.ObjectStore
	alive  func(ctx context.Context, node string, t domain.Target) bool
	log    interface{ Warn(string, ...any) }

	mu   sync.Mutex
	held map[string]*userLease // by lease key

	stop chan struct{}
	done chan struct{}
}

type userLease struct {
	refs int
	rev  uint64
	lost chan struct{} // closed when another node took the lease
}

// Users opens (creating on first use) the users' buckets for node. alive
// says whether another node still serves a version (it is asked before the
// lease of a user it holds is taken over).
func (c *Cluster) Users(ctx context.Context, node string, alive func(ctx context.Context, node string, t domain.Target) bool) (*Users, error) {
	js, err := jetstream.New(c.nc)
	if err != nil {
		return nil, err
	}
	octx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	kv, err := js.CreateOrUpdateKeyValue(octx, jetstream.KeyValueConfig{Bucket: UserLeaseBucket,
		Description: "RunAgent: the node holding each user's persistent folders", TTL: UserLeaseTTL,
		Replicas: c.replicas, Storage: jetstream.FileStorage, History: 1})
	if err != nil {
		return nil, fmt.Errorf("open the user lease bucket %s on NATS: %w", UserLeaseBucket, err)
	}
	obs, err := js.CreateOrUpdateObjectStore(octx, jetstream.ObjectStoreConfig{Bucket: UserDataBucket,
		Description: "RunAgent users' persistent folders, one archive per agent and user",
		Replicas:    c.replicas, Storage: jetstream.FileStorage})
	if err != nil {
		return nil, fmt.Errorf("open the user data store %s on NATS: %w", UserDataBucket, err)
	}
	u := &Users{nc: c.nc, prefix: c.prefix, node: node, kv: kv, obs: obs, alive: alive, log: c.log,
		held: map[string]*userLease{}, stop: make(chan struct{}), done: make(chan struct{})}
	go u.renew()
	return u, nil
}

func leaseKey(agentID, key string) string   { return agentID + "." + key }
func objectName(agentID, key string) string { return agentID + "/" + key }

// Hold takes the lease of a user (key) of t's agent for this node, or
// counts one more holder when this node has it. lost is closed if another
// node takes it (this node was cut off past the TTL, or stopped serving
// t's version). When a live node holds it, the error is a
// *domain.UserElsewhere naming that node.
func (u *Users) Hold(ctx context.Context, t domain.Target, key string) (lost <-chan struct{}, err error) {
	k := leaseKey(t.AgentID, key)
	u.mu.Lock()
	if l := u.held[k]; l != nil {
		l.refs++
		u.mu.Unlock()
		return l.lost, nil
	}
	u.mu.Unlock()
	for range 5 {
		rev, err := u.kv.Create(ctx, k, []byte(u.node))
		if err == nil {
			return u.register(k, rev), nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return nil, unavailable("take this user's persistent folders", err)
		}
		e, err := u.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // released meanwhile
		}
		if err != nil {
			return nil, unavailable("read who holds this user's persistent folders", err)
		}
		if holder := string(e.Value()); holder != u.node && u.alive(ctx, holder, t) {
			return nil, &domain.UserElsewhere{Node: holder}
		}
		// Its holder is gone (or is this node before a restart): take it
		// over, unless someone else did first.
		if rev, err := u.kv.Update(ctx, k, []byte(u.node), e.Revision()); err == nil {
			return u.register(k, rev), nil
		}
	}
	return nil, &domain.Error{Code: domain.CodeOverloaded, RetryAfter: time.Second,
		Message: "this user's persistent folders are moving between nodes; retry in a moment"}
}

func (u *Users) register(k string, rev uint64) <-chan struct{} {
	u.mu.Lock()
	defer u.mu.Unlock()
	if l := u.held[k]; l != nil { // another holder here took it at the same moment
		l.refs++
		l.rev = max(l.rev, rev)
		return l.lost
	}
	l := &userLease{refs: 1, rev: rev, lost: make(chan struct{})}
	u.held[k] = l
	return l.lost
}

// Release drops one holder of a user's lease; the last one gives the lease
// up, for any node to take.
func (u *Users) Release(agentID, key string) {
	k := leaseKey(agentID, key)
	u.mu.Lock()
	l := u.held[k]
	if l == nil {
		u.mu.Unlock()
		return
	}
	if l.refs--; l.refs > 0 {
		u.mu.Unlock()
		return
	}
	delete(u.held, k)
	rev := l.rev
	u.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := u.kv.Delete(ctx, k, jetstream.LastRevision(rev)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		u.log.Warn("could not give up a user's lease; it expires by itself", "key", k, "error", err)
	}
}

// Holder is the node that holds a user's folders ("" when none does).
func (u *Users) Holder(ctx context.Context, agentID, key string) (string, error) {
	e, err := u.kv.Get(ctx, leaseKey(agentID, key))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", nil
	}
	if err != nil {
		return "", unavailable("read who holds this user's persistent folders", err)
	}
	return string(e.Value()), nil
}

// renew renews every lease this node holds, by revision, a few times per
// TTL; a lease another node took (or that expired) is lost.
func (u *Users) renew() {
	defer close(u.done)
	t := time.NewTicker(UserLeaseTTL / 6)
	defer t.Stop()
	for {
		select {
		case <-u.stop:
			return
		case <-t.C:
		}
		u.mu.Lock()
		keys := make(map[string]uint64, len(u.held))
		for k, l := range u.held {
			keys[k] = l.rev
		}
		u.mu.Unlock()
		for k, rev := range keys {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			next, err := u.kv.Update(ctx, k, []byte(u.node), rev)
			cancel()
			u.mu.Lock()
			l := u.held[k]
			switch {
			case l == nil || l.rev != rev: // released, or taken again, meanwhile
			case err == nil:
				l.rev = next
			case errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyRevisionMismatch):
				delete(u.held, k)
				close(l.lost)
				u.log.Warn("another node took over a user's persistent folders; this node's instance of the user stops", "key", k)
			default: // NATS away: try again; past the TTL the lease is gone
			}
			u.mu.Unlock()
		}
	}
}

// Load writes the archive of a user's folders to w; found is false when
// none was saved (a new user, or one whose data was deleted).
func (u *Users) Load(ctx context.Context, agentID, key string, w io.Writer) (found bool, err error) {
	r, err := u.obs.Get(ctx, objectName(agentID, key))
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return false, nil
	}
	if err != nil {
		return false, unavailable("read this user's persistent folders", err)
	}
	defer r.Close()
	if _, err := io.Copy(w, r); err != nil {
		return false, unavailable("read this user's persistent folders", err)
	}
	return true, nil
}

// Save stores the archive of a user's folders, replacing the last one.
func (u *Users) Save(ctx context.Context, agentID, key string, r io.Reader) error {
	if _, err := u.obs.Put(ctx, jetstream.ObjectMeta{Name: objectName(agentID, key)}, r); err != nil {
		return unavailable("save this user's persistent folders", err)
	}
	return nil
}

// Remove deletes a user's saved folders; none is not an error.
func (u *Users) Remove(ctx context.Context, agentID, key string) error {
	if err := u.obs.Delete(ctx, objectName(agentID, key)); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return unavailable("delete this user's persistent folders", err)
	}
	return nil
}

// RemoveAgent deletes every user's saved folders of an agent.
func (u *Users) RemoveAgent(ctx context.Context, agentID string) error {
	list, err := u.obs.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return nil
	}
	if err != nil {
		return unavailable("list the agent's users' persistent folders", err)
	}
	for _, o := range list {
		if strings.HasPrefix(o.Name, agentID+"/") {
			if err := u.obs.Delete(ctx, o.Name); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
				return unavailable("delete the agent's users' persistent folders", err)
			}
		}
	}
	return nil
}

func (u *Users) deleteSubject(node string) string {
	return u.prefix + ".node." + node + ".users.delete"
}

// AskDelete asks node, which holds a user's folders, to stop the user's
// instances and delete the folders; a node that is gone holds nothing.
func (u *Users) AskDelete(ctx context.Context, node, agentID, key string) error {
	ctx, cancel := context.WithTimeout(ctx, askDeleteTimeout)
	defer cancel()
	m, err := u.nc.RequestWithContext(ctx, u.deleteSubject(node), []byte(leaseKey(agentID, key)))
	if errors.Is(err, nats.ErrNoResponders) {
		return nil
	}
	if err != nil {
		return unavailable("ask node "+node+" to delete this user's persistent folders", err)
	}
	if len(m.Data) > 0 {
		return &domain.Error{Code: domain.CodeInternal, Message: "node " + node + " could not delete this user's persistent folders: " + string(m.Data)}
	}
	return nil
}

// ServeDelete answers the delete requests of AskDelete with fn.
func (u *Users) ServeDelete(fn func(ctx context.Context, agentID, key string) error) (stop func(), err error) {
	sub, err := u.nc.Subscribe(u.deleteSubject(u.node), func(m *nats.Msg) {
		agentID, key, ok := strings.Cut(string(m.Data), ".")
		go func() {
			var answer []byte
			if !ok {
				answer = []byte("malformed request")
			} else if err := fn(context.Background(), agentID, key); err != nil {
				answer = []byte(err.Error())
			}
			m.Respond(answer)
		}()
	})
	if err != nil {
		return nil, err
	}
	if err := u.nc.Flush(); err != nil { // requests made after this returns find it
		sub.Unsubscribe()
		return nil, err
	}
	return func() {
		sub.Unsubscribe()
		u.nc.Flush() // the server has it: a request after stop finds no responder
	}, nil
}

// askDeleteTimeout bounds a delete request: the node stops the user's
// instances (a few seconds) and deletes the folders.
const askDeleteTimeout = time.Minute

// Close stops renewing; the leases still held expire (a node closes its
// users' instances, which release them, before it closes this).
func (u *Users) Close() {
	select {
	case <-u.stop:
	default:
		close(u.stop)
		<-u.done
	}
}

func unavailable(what string, err error) error {
	return &domain.Error{Code: domain.CodeConnection, RetryAfter: time.Second, Err: err,
		Message: "could not " + what + " in the cluster's store (NATS); retry shortly"}
}
