package manager

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/sandbox"
)

// memUsers is a UserStore in memory, the nodes of a cluster sharing one:
// the leases and archives of cluster.Users (tested against NATS there).
type memUsers struct {
	mu     sync.Mutex
	holder map[string]string
	refs   map[string]int
	lost   map[string]chan struct{}
	saved  map[string][]byte
}

type memNode struct {
	*memUsers
	node string
}

func newMemUsers() *memUsers {
	return &memUsers{holder: map[string]string{}, refs: map[string]int{}, lost: map[string]chan struct{}{}, saved: map[string][]byte{}}
}

func (m memNode) Hold(_ context.Context, t domain.Target, key string) (<-chan struct{}, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := t.AgentID + "." + key
	if h := m.holder[k]; h != "" && h != m.node {
		return nil, &domain.UserElsewhere{Node: h}
	}
	if m.holder[k] == "" {
		m.lost[k] = make(chan struct{})
	}
	m.holder[k] = m.node
	m.refs[k]++
	return m.lost[k], nil
}

func (m memNode) Release(agentID, key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := agentID + "." + key
	if m.holder[k] == m.node {
		if m.refs[k]--; m.refs[k] == 0 {
			delete(m.holder, k)
		}
	}
}

// steal gives a user's lease to another node, as a takeover does.
func (m *memUsers) steal(k, node string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	close(m.lost[k])
	m.holder[k], m.refs[k], m.lost[k] = node, 1, make(chan struct{})
}

func (m memNode) Holder(_ context.Context, agentID, key string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.holder[agentID+"."+key], nil
}

func (m memNode) Load(_ context.Context, agentID, key string, w io.Writer) (bool, error) {
	m.mu.Lock()
	b, ok := m.saved[agentID+"/"+key]
	m.mu.Unlock()
	if ok {
		w.Write(b)
	}
	return ok, nil
}

func (m memNode) Save(_ context.Context, agentID, key string, r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.saved[agentID+"/"+key] = b
	m.mu.Unlock()
	return nil
}

func (m memNode) Remove(_ context.Context, agentID, key string) error {
	m.mu.Lock()
	delete(m.saved, agentID+"/"+key)
	m.mu.Unlock()
	return nil
}

func (m memNode) RemoveAgent(context.Context, string) error               { return nil }
func (m memNode) AskDelete(context.Context, string, string, string) error { return nil }

// Two nodes' UserPools on one store: a user runs on one node at a time,
// the other is told where; the folders a call changed are saved, and the
// node that takes the user over starts from them; a node whose lease is
// taken stops its instance of the user.
func TestUserPoolsAcrossNodes(t *testing.T) {
	bundle := t.TempDir()
	os.MkdirAll(filepath.Join(bundle, "memory"), 0o755)
	os.WriteFile(filepath.Join(bundle, "memory", "seed.txt"), []byte("seed"), 0o644)
	store := newMemUsers()
	node := func(name string) (*UserPools, string) {
		dir := t.TempDir()
		s := &fakeStarts{}
		u, err := NewUserPools(UserPoolsConfig{AgentID: "a", Version: 1, Dir: dir, Bundle: bundle, Folders: []string{"memory"},
			MaxUsers: 2, Store: memNode{store, name}, Start: func(InstanceSpec) StartFunc { return s.start }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(u.Close)
		return u, filepath.Join(dir, userKey("alice"), "folders", "memory")
	}
	a, aliceOnA := node("A")
	b, aliceOnB := node("B")
	call := func(u *UserPools) error {
		_, err := u.Invoker("alice").Call(ctx5(t), "x", nil, nil)
		return err
	}
	if err := call(a); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(aliceOnA, "notes.txt"), []byte("written on A"), 0o644) // as the agent would, in a call
	if err := call(a); err != nil {
		t.Fatal(err)
	}
	var ue *domain.UserElsewhere
	if err := call(b); !errors.As(err, &ue) || ue.Node != "A" {
		t.Fatalf("B while A holds alice: %v; want UserElsewhere A", err)
	}
	// B knows nothing of alice's data yet: a stale copy there is replaced.
	os.MkdirAll(aliceOnB, 0o755)
	os.WriteFile(filepath.Join(aliceOnB, "stale.txt"), []byte("old"), 0o644)

	a.Close() // A gives alice up
	if err := call(b); err != nil {
		t.Fatalf("B after A let alice go: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(aliceOnB, "notes.txt")); string(got) != "written on A" {
		t.Fatalf("alice's notes on B: %q %v", got, err)
	}
	if got, _ := os.ReadFile(filepath.Join(aliceOnB, "seed.txt")); string(got) != "seed" {
		t.Fatalf("alice's seed on B: %q", got)
	}
	if _, err := os.Stat(filepath.Join(aliceOnB, "stale.txt")); !os.IsNotExist(err) {
		t.Fatalf("B's stale copy survived the load: %v", err)
	}
	// Another node takes alice from B: B's instance of her stops.
	store.steal("a."+userKey("alice"), "C")
	eventually(t, "B drops alice's pool", func() bool { return len(b.list()) == 0 })
	if err := call(b); !errors.As(err, &ue) || ue.Node != "C" {
		t.Fatalf("B after C took alice: %v; want UserElsewhere C", err)
	}
}

// An archive round-trips directories and files; one naming a path
// outside the folder is refused.
func TestUserArchive(t *testing.T) {
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "a", "empty"), 0o755)
	os.WriteFile(filepath.Join(src, "a", "f.txt"), []byte("hello"), 0o640)
	os.Symlink("/etc/passwd", filepath.Join(src, "link"))
	var buf bytes.Buffer
	if err := writeArchive(&buf, src); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "out")
	if err := readArchive(bytes.NewReader(buf.Bytes()), dst); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dst, "a", "f.txt")); string(got) != "hello" {
		t.Fatalf("f.txt: %q", got)
	}
	if st, err := os.Stat(filepath.Join(dst, "a", "empty")); err != nil || !st.IsDir() {
		t.Fatalf("empty dir: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dst, "link")); !os.IsNotExist(err) {
		t.Fatalf("a symlink was archived: %v", err)
	}
	if d1, _ := folderDigest(src); d1 == "" {
		t.Fatal("no digest")
	}

	var evil bytes.Buffer
	zw := gzip.NewWriter(&evil)
	tw := tar.NewWriter(zw)
	tw.WriteHeader(&tar.Header{Name: "../escape.txt", Mode: 0o644, Size: 1, Typeflag: tar.TypeReg})
	tw.Write([]byte("x"))
	tw.Close()
	zw.Close()
	err := readArchive(&evil, filepath.Join(t.TempDir(), "out"))
	if err == nil || !strings.Contains(err.Error(), "outside the folder") {
		t.Fatalf("an archive escaping its folder: %v", err)
	}
}

type namedDriver string

func (d namedDriver) Name() string { return string(d) }
func (d namedDriver) Start(context.Context, sandbox.Spec) (sandbox.Instance, error) {
	return nil, errors.New("not started in this test")
}

// A cluster cannot move microvm's disks between nodes: the call says so.
func TestUserPoolsClusterRefusesMicrovm(t *testing.T) {
	s := &fakeStarts{}
	u, err := NewUserPools(UserPoolsConfig{AgentID: "a", Version: 1, Dir: t.TempDir(), Bundle: t.TempDir(), Folders: []string{"memory"},
		MaxUsers: 2, Store: memNode{newMemUsers(), "A"}, Spec: InstanceSpec{Driver: namedDriver("microvm")},
		Start: func(InstanceSpec) StartFunc { return s.start }})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	_, err = u.Invoker("alice").Call(ctx5(t), "x", nil, nil)
	var de *domain.Error
	if !errors.As(err, &de) || de.Code != domain.CodeValidation || de.Field != "persistent_memory" || !strings.Contains(de.Message, "namespace or gvisor") {
		t.Fatalf("microvm on a cluster: %v", err)
	}
}
