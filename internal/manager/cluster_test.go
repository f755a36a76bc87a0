package manager

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/agentfolder"
)

// memBundles is a cluster's bundle store in memory, counting fetches.
type memBundles struct {
	blobs   map[string][]byte
	fetches int
}

func (m *memBundles) PutBundle(ctx context.Context, sha string, r io.Reader) error {
	b, err := io.ReadAll(r)
	m.blobs[sha] = b
	return err
}

func (m *memBundles) FetchBundle(ctx context.Context, sha, path string) error {
	m.fetches++
	b, ok := m.blobs[sha]
	if !ok {
		return errors.New("bundle " + sha + " is not in the cluster's bundle store")
	}
	return os.WriteFile(path, b, 0o644)
}

func testZip(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for name, body := range files {
		w, err := zw.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(body))
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func shaOf(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// A cluster server unpacks a version's bundle from the cluster's store
// once, checked against its hash; a damaged copy, a missing one or a name
// that is no hash is an error saying what to do, and leaves nothing behind.
func TestEnsureBundle(t *testing.T) {
	good := testZip(t, map[string]string{"main.py": "def f():\n    return 1\n"})
	other := testZip(t, map[string]string{"main.py": "def f():\n    return 2\n"})
	for _, tc := range []struct {
		name    string
		stored  map[string][]byte
		sha     string
		wantErr string
	}{
		{"fetched and unpacked", map[string][]byte{shaOf(good): good}, shaOf(good), ""},
		{"a damaged copy", map[string][]byte{shaOf(good): other}, shaOf(good), "is damaged; upload the agent again"},
		{"not in the store", map[string][]byte{}, shaOf(good), "not in the cluster's bundle store"},
		{"not a hash", map[string][]byte{}, "../../etc", "not a SHA-256"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := &memBundles{blobs: tc.stored}
			m := New(Config{DataDir: t.TempDir(), Cluster: &ClusterHooks{Bundles: store}})
			dir, err := m.ensureBundle(context.Background(), tc.sha)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ensureBundle = %q, %v; want an error saying %q", dir, err, tc.wantErr)
				}
				if left, _ := os.ReadDir(filepath.Join(m.cfg.DataDir, "bundles", ".incoming")); len(left) != 0 {
					t.Errorf("left behind in .incoming: %v", left)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b, err := os.ReadFile(filepath.Join(dir, "main.py")); err != nil || !strings.Contains(string(b), "return 1") {
				t.Fatalf("unpacked main.py: %q, %v", b, err)
			}
			if again, err := m.ensureBundle(context.Background(), tc.sha); err != nil || again != dir || store.fetches != 1 {
				t.Errorf("a second ensureBundle: %q, %v after %d fetches; want the same folder, no new fetch", again, err, store.fetches)
			}
		})
	}
}

// Unpacked bundles that no version here uses are removed once unused for
// bundleKeep; one in use, or asked for recently, stays.
func TestPruneBundles(t *testing.T) {
	zips := map[string][]byte{}
	var shas []string
	for i := range 3 {
		z := testZip(t, map[string]string{"main.py": fmt.Sprintf("def f():\n    return %d\n", i)})
		zips[shaOf(z)] = z
		shas = append(shas, shaOf(z))
	}
	store := &memBundles{blobs: zips}
	// The data directory through a symlink: the folders in use are
	// resolved, the listing is not.
	real := t.TempDir()
	link := filepath.Join(t.TempDir(), "data")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	m := New(Config{DataDir: link, Cluster: &ClusterHooks{Bundles: store}})
	var dirs []string
	for _, sha := range shas {
		dir, err := m.ensureBundle(context.Background(), sha)
		if err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, dir)
	}
	// shas[0] is in use; shas[1] and [2] are not, and [2] was asked for
	// just now.
	st := &agentState{id: "a", staged: map[int]*version{}}
	resolved, err := filepath.EvalSymlinks(dirs[0])
	if err != nil {
		t.Fatal(err)
	}
	st.active.Store(&version{n: 1, folder: &agentfolder.Folder{Dir: resolved}})
	m.agents["a"] = st
	old := time.Now().Add(-2 * bundleKeep)
	for _, d := range dirs[:2] {
		os.Chtimes(d, old, old)
	}
	if n := m.pruneBundles(time.Now()); n != 1 {
		t.Fatalf("pruned %d, want 1", n)
	}
	for i, want := range []bool{true, false, true} {
		if dirExists(dirs[i]) != want {
			t.Errorf("bundle %d still there: %v, want %v", i, !want, want)
		}
	}
	if _, err := os.Stat(filepath.Join(m.cfg.DataDir, "bundles", ".incoming")); err != nil {
		t.Errorf(".incoming: %v", err)
	}
	// Asked for again: fetched again.
	if _, err := m.ensureBundle(context.Background(), shas[1]); err != nil || store.fetches != 4 {
		t.Errorf("a pruned bundle asked for again: %v after %d fetches, want 4", err, store.fetches)
	}
}
