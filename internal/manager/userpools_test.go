package manager

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/sandbox"
)

func TestPersistentFolders(t *testing.T) {
	for _, tc := range []struct{ in, want []string }{
		{[]string{"memory"}, []string{"memory"}},
		{[]string{"./memory/", "memory"}, []string{"memory"}},
		{[]string{"data/cache", "data", "logs"}, []string{"data", "logs"}},
		{[]string{"data2", "data"}, []string{"data", "data2"}},
	} {
		if got := persistentFolders(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("persistentFolders(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestUserKey(t *testing.T) {
	a, b := userKey("alice"), userKey("bob")
	if a == b || a != userKey("alice") || len(a) != 32 {
		t.Fatalf("userKey: alice %q, bob %q", a, b)
	}
	if k := userKey("../../etc"); k == "" || slices.Contains([]byte(k), '/') {
		t.Fatalf("userKey of a path-like id: %q", k)
	}
}

// UserPools with fake instances: one instance per user, the user idle the
// longest gives way to a new one, a full house of busy users refuses the
// next, the quota stops a user over it, and Delete removes the folders.
func TestUserPools(t *testing.T) {
	dir, bundle := t.TempDir(), t.TempDir()
	os.MkdirAll(filepath.Join(bundle, "memory"), 0o755)
	os.WriteFile(filepath.Join(bundle, "memory", "seed.txt"), []byte("seed"), 0o644)
	s := &fakeStarts{}
	var mounts [][]sandbox.Mount
	var mu sync.Mutex
	u, err := NewUserPools(UserPoolsConfig{AgentID: "a", Version: 1, Dir: dir, Bundle: bundle, Folders: []string{"memory"},
		QuotaMB: 1, MaxUsers: 2, Start: func(spec InstanceSpec) StartFunc {
			mu.Lock()
			mounts = append(mounts, spec.Mounts)
			mu.Unlock()
			return s.start
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	call := func(user string) error {
		_, err := u.Invoker(user).Call(ctx5(t), "x", nil, nil)
		return err
	}
	for _, user := range []string{"alice", "bob", "alice"} {
		if err := call(user); err != nil {
			t.Fatalf("%s: %v", user, err)
		}
	}
	if s.count() != 2 || len(u.list()) != 2 {
		t.Fatalf("instances %d, users' pools %d; want one each for alice and bob", s.count(), len(u.list()))
	}
	alice := filepath.Join(dir, userKey("alice"), "folders", "memory")
	if b, err := os.ReadFile(filepath.Join(alice, "seed.txt")); err != nil || string(b) != "seed" {
		t.Fatalf("alice's folder was not seeded from the bundle: %q %v", b, err)
	}
	if len(mounts[0]) != 1 || mounts[0][0] != (sandbox.Mount{Source: alice, Target: "memory"}) {
		t.Fatalf("alice's instance mounts %+v", mounts[0])
	}
	// bob is idle the longest: carol takes his place.
	if err := call("carol"); err != nil || len(u.list()) != 2 {
		t.Fatalf("carol: %v, pools %d", err, len(u.list()))
	}
	// Both places busy: dave is refused, with a retry.
	block := make(chan struct{})
	s.mu.Lock()
	for _, r := range s.runners {
		r.block = block
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, user := range []string{"alice", "carol"} {
		wg.Go(func() { call(user) })
	}
	eventually(t, "both users busy", func() bool {
		u.mu.Lock()
		defer u.mu.Unlock()
		n := 0
		for _, up := range u.pools {
			n += up.inflight
		}
		return n == 2
	})
	if err := call("dave"); domain.CodeOf(err) != domain.CodeOverloaded || !strings.Contains(err.Error(), "max_instances") {
		t.Fatalf("dave with every place busy: %v", err)
	}
	close(block)
	wg.Wait()
	// Over the quota.
	os.WriteFile(filepath.Join(alice, "big"), make([]byte, 2<<20), 0o644)
	call("alice") // measured after this call
	if err := call("alice"); domain.CodeOf(err) != domain.CodeResourceLimit {
		t.Fatalf("alice over her quota: %v", err)
	}
	if err := u.Delete("alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, userKey("alice"))); !os.IsNotExist(err) {
		t.Fatalf("alice's folder after Delete: %v", err)
	}
	if err := call("alice"); err != nil {
		t.Fatalf("alice after Delete: %v", err)
	}
}
