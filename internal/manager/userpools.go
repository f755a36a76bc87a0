package manager

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
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

	mu      sync.Mutex
	pools   map[string]*userPool
	blocked map[string]bool // users whose data is being deleted
	closed  bool
}

type userPool struct {
	pool     *Pool
	inflight int
	used     time.Time
	bytes    int64 // what the user's folders held after the last call
}

// userKey names a user's folder: a hash, so that any user id is a safe
// file name and the same id always finds the same folder.
func userKey(user string) string {
	h := sha256.Sum256([]byte(user))
	return hex.EncodeToString(h[:16])
}

// UserDir is the folder of an agent's user under root.
func UserDir(root, agentID, user string) string {
	return filepath.Join(root, agentID, userKey(user))
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
}

// NewUserPools prepares the per-user instances of a version; none runs
// until a user calls.
func NewUserPools(c UserPoolsConfig) (*UserPools, error) {
	u := &UserPools{agentID: c.AgentID, version: c.Version, dir: c.Dir, bundle: c.Bundle, folders: persistentFolders(c.Folders),
		spec: c.Spec, pc: c.Pool, quota: int64(c.QuotaMB) << 20, max: max(1, c.MaxUsers), obs: c.Obs,
		pools: map[string]*userPool{}, blocked: map[string]bool{}, start: c.Start}
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
	up, key, err := i.u.acquire(i.user)
	if err != nil {
		return nil, err
	}
	defer i.u.release(key, up)
	return up.pool.Call(ctx, tag, args, kwargs)
}

func (i userInvoker) Stream(ctx context.Context, tag string, args, kwargs []byte, started func(), fn domain.ChunkFunc) (int, error) {
	up, key, err := i.u.acquire(i.user)
	if err != nil {
		return 0, err
	}
	defer i.u.release(key, up)
	return up.pool.Stream(ctx, tag, args, kwargs, started, fn)
}

// acquire finds or makes the user's pool and counts a call on it.
func (u *UserPools) acquire(user string) (*userPool, string, error) {
	key := userKey(user)
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil, "", errPoolClosed
	}
	if u.blocked[key] {
		return nil, "", &domain.Error{Code: domain.CodeOverloaded, RetryAfter: time.Second,
			Message: "this user's persistent data is being deleted; retry in a moment"}
	}
	up := u.pools[key]
	if up == nil {
		if len(u.pools) >= u.max && !u.evictLocked() {
			return nil, "", &domain.Error{Code: domain.CodeOverloaded, RetryAfter: time.Second, Message: fmt.Sprintf(
				"all %d instances of agent %s are busy with other users' calls (with persistent_memory every user has an instance of their own); retry, or raise deployment.max_instances",
				u.max, u.agentID)}
		}
		var err error
		if up, err = u.openLocked(user, key); err != nil {
			return nil, "", err
		}
		u.pools[key] = up
	}
	if u.quota > 0 && up.bytes > u.quota {
		return nil, "", &domain.Error{Code: domain.CodeResourceLimit, Limit: domain.LimitDisk, Message: fmt.Sprintf(
			"this user's persistent folders hold %s, over agent %s's quota of %s (deployment.persistent_quota_mb): delete some of it, or all of it with DELETE /api/v1/agents/%s/users/{user_id}",
			sandbox.MiB(up.bytes), u.agentID, sandbox.MiB(u.quota), u.agentID)}
	}
	up.inflight++
	up.used = time.Now()
	return up, key, nil
}

// release ends a call and measures the user's folders for the quota.
func (u *UserPools) release(key string, up *userPool) {
	n := dirBytes(filepath.Join(u.dir, key))
	u.mu.Lock()
	up.inflight--
	up.used = time.Now()
	up.bytes = n
	u.mu.Unlock()
}

// openLocked prepares the user's folders (the bundle's content seeds a new
// one) and a pool whose instances mount them.
func (u *UserPools) openLocked(user, key string) (*userPool, error) {
	root := filepath.Join(u.dir, key)
	var mounts []sandbox.Mount
	for _, f := range u.folders {
		dst := filepath.Join(root, "folders", filepath.FromSlash(f))
		if err := seedFolder(dst, filepath.Join(u.bundle, filepath.FromSlash(f))); err != nil {
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
		return nil, err
	}
	return &userPool{pool: pool, used: time.Now(), bytes: dirBytes(root)}, nil
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
	p := u.pools[oldest].pool
	delete(u.pools, oldest)
	go p.Close()
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
			go up.pool.Close()
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
		up.pool.Close()
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
	for _, up := range pools {
		wg.Go(up.pool.Close)
	}
	wg.Wait()
}

// mountsDiskName is the disk image a microvm instance keeps a user's
// folders in; its size is the quota, which the disk itself enforces.
const mountsDiskName = "microvm.ext4"

// dirBytes is what the files under dir hold (the microvm disk aside).
func dirBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && d.Name() != mountsDiskName {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}
