package manager

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/sandbox"
)

// UserPools runs one agent version's calls for users with persistent
// memory: each user's calls go to an instance of their own, started with
// the user's folders mounted at the agent's persistent_folders, so that no
// instance ever sees two users' data. At most Max users have an instance at
// once (the version's max_instances); a new user takes the place of the one
// idle the longest.
type UserPools struct {
	agentID string
	version int
	dir     string   // the agent's users' folders: dir/KEY/folders/TARGET
	bundle  string   // the agent folder, whose content of a persistent folder seeds a new user's
	folders []string // the persistent folders, slash-separated, none inside another
	spec    InstanceSpec
	pc      PoolConfig
	quota   int64
	max     int
	obs     Observer
	start   func(InstanceSpec) StartFunc

	store UserStore // a cluster's (nil: the folders stay on this machine)

	mu      sync.Mutex
	pools   map[string]*userPool
	opening map[string]chan struct{} // users whose pool is being made
	blocked map[string]bool          // users whose data is being deleted
	closed  bool
}

type userPool struct {
	pool     *Pool
	inflight int
	used     time.Time
	bytes    int64 // what the user's folders held after the last call

	// In a cluster: the user's lease, lost when another node takes it;
	// the digest of the folders as last saved.
	lost       <-chan struct{}
	saveMu     sync.Mutex
	saved      string
	retired    chan struct{} // closed once the pool is retired
	retireOnce sync.Once
}

// userKey names a user's folder: a hash, so that any user id is a safe
// file name and the same id always finds the same folder.
func userKey(user string) string {
	h := sha256.Sum256([]byte(user))
	return hex.EncodeToString(h[:16])
}

// persistentFolders cleans the config's folders and drops any inside
// another (the outer mount holds it).
func persistentFolders(list []string) []string {
	var out []string
	for _, f := range list {
		out = append(out, path.Clean(filepath.ToSlash(f)))
	}
	slices.Sort(out)
	out = slices.Compact(out)
	return slices.DeleteFunc(out, func(f string) bool {
		return slices.ContainsFunc(out, func(o string) bool { return strings.HasPrefix(f, o+"/") })
	})
}

// UserPoolsConfig says whose instances a UserPools runs.
type UserPoolsConfig struct {
	AgentID string
	Version int
	// Dir holds the agent's users' folders (Dir/KEY/folders/FOLDER); it
	// outlives versions, so that a user's data is there after a deploy.
	Dir string
	// Bundle is the agent folder: what it has in a persistent folder seeds
	// a new user's.
	Bundle  string
	Folders []string // the config's persistent_folders
	Spec    InstanceSpec
	Pool    PoolConfig // of the version's shared pool; each user's has one instance at most
	QuotaMB int        // 0: none
	// MaxUsers is how many users may have an instance at once.
	MaxUsers int
	Obs      Observer
	// Start, when set, replaces Spec.StartFunc (tests): it gets the user's
	// spec, with its mounts.
	Start func(InstanceSpec) StartFunc
	// Store, in a cluster, holds users' leases and saved folders.
	Store UserStore
}

// NewUserPools prepares the per-user instances of a version; none runs
// until a user calls.
func NewUserPools(c UserPoolsConfig) (*UserPools, error) {
	u := &UserPools{agentID: c.AgentID, version: c.Version, dir: c.Dir, bundle: c.Bundle, folders: persistentFolders(c.Folders),
		spec: c.Spec, pc: c.Pool, quota: int64(c.QuotaMB) << 20, max: max(1, c.MaxUsers), obs: c.Obs,
		pools: map[string]*userPool{}, opening: map[string]chan struct{}{}, blocked: map[string]bool{}, start: c.Start, store: c.Store}
	if u.start == nil {
		u.start = InstanceSpec.StartFunc
	}
	// A mount needs its mount point in the agent folder.
	for _, f := range u.folders {
		if err := os.MkdirAll(filepath.Join(c.Bundle, filepath.FromSlash(f)), 0o755); err != nil {
			return nil, fmt.Errorf("persistent_folders: %s: %w", f, err)
		}
	}
	u.pc.Scale.Min, u.pc.Scale.Max = 0, 1
	return u, nil
}

// Invoker is the invoker of one user's calls.
func (u *UserPools) Invoker(user string) domain.Invoker { return userInvoker{u, user} }

type userInvoker struct {
	u    *UserPools
	user string
}

func (i userInvoker) Call(ctx context.Context, tag string, args, kwargs []byte) ([]byte, error) {
	up, key, err := i.u.acquire(ctx, i.user)
	if err != nil {
		return nil, err
	}
	defer i.u.release(key, up)
	return up.pool.Call(ctx, tag, args, kwargs)
}

func (i userInvoker) Stream(ctx context.Context, tag string, args, kwargs []byte, started func(), fn domain.ChunkFunc) (int, error) {
	up, key, err := i.u.acquire(ctx, i.user)
	if err != nil {
		return 0, err
	}
	defer i.u.release(key, up)
	return up.pool.Stream(ctx, tag, args, kwargs, started, fn)
}

// acquire finds or makes the user's pool and counts a call on it. A pool
// is made outside the lock (in a cluster it takes the user's lease and
// loads the user's folders over the network), one per user at a time.
func (u *UserPools) acquire(ctx context.Context, user string) (*userPool, string, error) {
	key := userKey(user)
	for {
		u.mu.Lock()
		if u.closed {
			u.mu.Unlock()
			return nil, "", errPoolClosed
		}
		if u.blocked[key] {
			u.mu.Unlock()
			return nil, "", &domain.Error{Code: domain.CodeOverloaded, RetryAfter: time.Second,
				Message: "this user's persistent data is being deleted; retry in a moment"}
		}
		if up := u.pools[key]; up != nil {
			defer u.mu.Unlock()
			if u.quota > 0 && up.bytes > u.quota {
				return nil, "", &domain.Error{Code: domain.CodeResourceLimit, Limit: domain.LimitDisk, Message: fmt.Sprintf(
					"this user's persistent folders hold %s, over agent %s's quota of %s (deployment.persistent_quota_mb): delete some of it, or all of it with DELETE /api/v1/agents/%s/users/{user_id}",
					sandbox.MiB(up.bytes), u.agentID, sandbox.MiB(u.quota), u.agentID)}
			}
			up.inflight++
			up.used = time.Now()
			return up, key, nil
		}
		if wait := u.opening[key]; wait != nil {
			u.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, "", context.Cause(ctx)
			}
		}
		if len(u.pools)+len(u.opening) >= u.max && !u.evictLocked() {
			u.mu.Unlock()
			return nil, "", &domain.Error{Code: domain.CodeOverloaded, RetryAfter: time.Second, Message: fmt.Sprintf(
				"all %d instances of agent %s are busy with other users' calls (with persistent_memory every user has an instance of their own); retry, or raise deployment.max_instances",
				u.max, u.agentID)}
		}
		done := make(chan struct{})
		u.opening[key] = done
		u.mu.Unlock()
		up, err := u.open(ctx, key)
		u.mu.Lock()
		delete(u.opening, key)
		close(done)
		if err == nil && (u.closed || u.blocked[key]) {
			go u.retire(key, up)
			err = errPoolClosed
		}
		if err != nil {
			u.mu.Unlock()
			return nil, "", err
		}
		u.pools[key] = up
		u.mu.Unlock()
		if up.lost != nil {
			go u.watchLease(key, up)
		}
	}
}

// release ends a call and measures the user's folders for the quota; in a
// cluster, folders the call changed are saved before the call returns, so
// that the next node to hold the user has them even if this one dies.
func (u *UserPools) release(key string, up *userPool) {
	digest, n := folderDigest(filepath.Join(u.dir, key))
	if u.store != nil {
		u.save(key, up, digest)
	}
	u.mu.Lock()
	up.inflight--
	up.used = time.Now()
	up.bytes = n
	u.mu.Unlock()
}

// save saves the user's folders unless they are as last saved; a failure
// is logged and retried after the next call.
func (u *UserPools) save(key string, up *userPool, digest string) {
	up.saveMu.Lock()
	defer up.saveMu.Unlock()
	if digest == up.saved {
		return
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeArchive(pw, filepath.Join(u.dir, key, "folders"))) }()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := u.store.Save(ctx, u.agentID, key, pr)
	pr.CloseWithError(err) // the writer stops if the store did
	if err != nil {
		u.logger().Warn("could not save a user's persistent folders to the cluster; saving again after the user's next call", "agent_id", u.agentID, "user", key, "error", err)
		return
	}
	up.saved = digest
}

func (u *UserPools) logger() *slog.Logger {
	if u.spec.Log != nil {
		return u.spec.Log
	}
	return slog.Default()
}

// open prepares the user's folders (the bundle's content seeds a new one;
// in a cluster, the user's lease is taken and the saved folders loaded
// first) and a pool whose instances mount them.
func (u *UserPools) open(ctx context.Context, key string) (*userPool, error) {
	root := filepath.Join(u.dir, key)
	up := &userPool{used: time.Now(), retired: make(chan struct{})}
	if u.store != nil {
		if u.spec.Driver != nil && u.spec.Driver.Name() == "microvm" {
			return nil, &domain.Error{Code: domain.CodeValidation, Field: "persistent_memory", Message: fmt.Sprintf(
				"agent %s runs in the microvm sandbox, which keeps a user's folders on a disk of the node's: a cluster cannot move them between nodes yet; use the namespace or gvisor sandbox, or a single server", u.agentID)}
		}
		lost, err := u.store.Hold(ctx, domain.Target{AgentID: u.agentID, Version: u.version}, key)
		if err != nil {
			return nil, err
		}
		up.lost = lost
		if err := u.load(ctx, key); err != nil {
			u.store.Release(u.agentID, key)
			return nil, err
		}
		up.saved, _ = folderDigest(root)
	}
	var mounts []sandbox.Mount
	for _, f := range u.folders {
		dst := filepath.Join(root, "folders", filepath.FromSlash(f))
		if err := seedFolder(dst, filepath.Join(u.bundle, filepath.FromSlash(f))); err != nil {
			u.releaseLease(key, up)
			return nil, &domain.Error{Code: domain.CodeInternal, Message: "could not prepare this user's persistent folders", Err: err}
		}
		mounts = append(mounts, sandbox.Mount{Source: dst, Target: f})
	}
	spec := u.spec
	spec.Mounts = mounts
	spec.MountsDisk, spec.MountsDiskBytes = filepath.Join(root, mountsDiskName), u.quota
	if spec.MountsDiskBytes <= 0 {
		spec.MountsDiskBytes = 1 << 30
	}
	spec.NamePrefix += "u" + key[:8] + "-"
	pool, err := NewPool(u.agentID, u.version, u.pc, u.start(spec), u.obs, u.spec.Log)
	if err != nil {
		u.releaseLease(key, up)
		return nil, err
	}
	up.pool = pool
	_, up.bytes = folderDigest(root)
	return up, nil
}

// load replaces this node's copy of the user's folders with the cluster's
// (none saved: the copy goes, and the bundle seeds the folders again).
func (u *UserPools) load(ctx context.Context, key string) error {
	root := filepath.Join(u.dir, key)
	if err := os.MkdirAll(root, 0o700); err != nil {
		return &domain.Error{Code: domain.CodeInternal, Message: "could not prepare this user's persistent folders", Err: err}
	}
	tmp, err := os.MkdirTemp(root, ".load-")
	if err != nil {
		return &domain.Error{Code: domain.CodeInternal, Message: "could not prepare this user's persistent folders", Err: err}
	}
	defer os.RemoveAll(tmp)
	archive := filepath.Join(tmp, "archive")
	f, err := os.Create(archive)
	if err != nil {
		return &domain.Error{Code: domain.CodeInternal, Message: "could not prepare this user's persistent folders", Err: err}
	}
	found, err := u.store.Load(ctx, u.agentID, key, f)
	f.Close()
	if err != nil {
		return err
	}
	folders := filepath.Join(root, "folders")
	if !found {
		return os.RemoveAll(folders)
	}
	f, err = os.Open(archive)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := readArchive(f, filepath.Join(tmp, "folders")); err != nil {
		return &domain.Error{Code: domain.CodeInternal, Message: "could not unpack this user's persistent folders", Err: err}
	}
	if err := os.RemoveAll(folders); err != nil {
		return err
	}
	return os.Rename(filepath.Join(tmp, "folders"), folders)
}

// watchLease stops the user's pool here when another node takes the user
// over (this node was cut off, or stopped serving the version).
func (u *UserPools) watchLease(key string, up *userPool) {
	select {
	case <-up.lost:
	case <-up.retired:
		return
	}
	u.mu.Lock()
	if u.pools[key] == up {
		delete(u.pools, key)
	}
	u.mu.Unlock()
	up.pool.Close()
}

// retire stops a user's pool and gives its lease back.
func (u *UserPools) retire(key string, up *userPool) {
	up.pool.Close()
	u.releaseLease(key, up)
}

func (u *UserPools) releaseLease(key string, up *userPool) {
	up.retireOnce.Do(func() {
		close(up.retired)
		if u.store == nil || up.lost == nil {
			return
		}
		select {
		case <-up.lost: // gone already: another node holds it
		default:
			u.store.Release(u.agentID, key)
		}
	})
}

// seedFolder makes dst, the first time with a copy of what the bundle has
// at src; a copy cut short is never taken for a complete one.
func seedFolder(dst, src string) error {
	if _, err := os.Stat(dst); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dst), ".seed-")
	if err != nil {
		return err
	}
	if st, err := os.Stat(src); err == nil && st.IsDir() {
		if err := os.CopyFS(tmp, os.DirFS(src)); err != nil {
			os.RemoveAll(tmp)
			return err
		}
	}
	os.Chmod(tmp, 0o755)
	if err := os.Rename(tmp, dst); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	return nil
}

// evictLocked closes the pool of the user idle the longest, if one is.
func (u *UserPools) evictLocked() bool {
	var oldest string
	for k, up := range u.pools {
		if up.inflight == 0 && (oldest == "" || up.used.Before(u.pools[oldest].used)) {
			oldest = k
		}
	}
	if oldest == "" {
		return false
	}
	up := u.pools[oldest]
	delete(u.pools, oldest)
	go u.retire(oldest, up)
	return true
}

// pools is every user's pool, for the manager's ticks and status.
func (u *UserPools) list() []*Pool {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := make([]*Pool, 0, len(u.pools))
	for _, up := range u.pools {
		out = append(out, up.pool)
	}
	return out
}

// reap drops the pools of users idle past their pool's scale-to-zero grace
// whose instances are gone.
func (u *UserPools) reap(now time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for k, up := range u.pools {
		if up.inflight == 0 && now.Sub(up.used) > up.pool.Config().Scale.ScaleToZeroGrace && len(up.pool.Status().Instances) == 0 {
			delete(u.pools, k)
			go u.retire(k, up)
		}
	}
}

// Run drives the users' pools (sampling, scaling, limits, health) and
// drops idle ones until ctx ends: runagent serve's, which has no manager.
func (u *UserPools) Run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			tickPools(now, u.list())
			u.reap(now)
		}
	}
}

// Delete removes a user's folders once the user's instances have stopped.
func (u *UserPools) Delete(user string) error {
	key := userKey(user)
	u.drop(key)
	defer u.unblock(key)
	return os.RemoveAll(filepath.Join(u.dir, key))
}

// drop stops the user's instances, blocking new calls of the user until
// unblock: the user's data is about to go.
func (u *UserPools) drop(key string) {
	u.mu.Lock()
	u.blocked[key] = true
	up := u.pools[key]
	delete(u.pools, key)
	u.mu.Unlock()
	if up != nil {
		u.retire(key, up)
	}
}

func (u *UserPools) unblock(key string) {
	u.mu.Lock()
	delete(u.blocked, key)
	u.mu.Unlock()
}

// Close stops every user's instances.
func (u *UserPools) Close() {
	u.mu.Lock()
	u.closed = true
	pools := u.pools
	u.pools = map[string]*userPool{}
	u.mu.Unlock()
	var wg sync.WaitGroup
	for k, up := range pools {
		wg.Go(func() { u.retire(k, up) })
	}
	wg.Wait()
}

// mountsDiskName is the disk image a microvm instance keeps a user's
// folders in; its size is the quota, which the disk itself enforces.
const mountsDiskName = "microvm.ext4"
