package sandbox

import (
	"os"
	"path/filepath"
	"testing"
)

// The process driver's view of an agent folder: each mount target is a
// symlink to its source, everything else a symlink to the agent's file,
// nested targets inside real folders that hold the rest of their parent.
func TestBuildView(t *testing.T) {
	agent := t.TempDir()
	for path, body := range map[string]string{
		"main.py": "x", "memory/seed.txt": "seed", "data/other.txt": "o", "data/cache/old.txt": "old",
	} {
		os.MkdirAll(filepath.Dir(filepath.Join(agent, path)), 0o755)
		os.WriteFile(filepath.Join(agent, path), []byte(body), 0o644)
	}
	mem, cache, fresh := t.TempDir(), t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(mem, "note.txt"), []byte("mine"), 0o644)
	view := t.TempDir()
	err := buildView(view, agent, []Mount{{Source: mem, Target: "memory"}, {Source: cache, Target: "data/cache"}, {Source: fresh, Target: "new/deep/dir"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path, want string // want: the file's content, or the link's target
		link       bool
	}{
		{"main.py", filepath.Join(agent, "main.py"), true},
		{"memory", mem, true},
		{"memory/note.txt", "mine", false},
		{"data/other.txt", filepath.Join(agent, "data", "other.txt"), true},
		{"data/cache", cache, true},
		{"new/deep/dir", fresh, true},
	} {
		p := filepath.Join(view, filepath.FromSlash(tc.path))
		if tc.link {
			if got, err := os.Readlink(p); err != nil || got != tc.want {
				t.Errorf("%s links to %q, %v; want %q", tc.path, got, err, tc.want)
			}
			continue
		}
		if b, err := os.ReadFile(p); err != nil || string(b) != tc.want {
			t.Errorf("%s holds %q, %v; want %q", tc.path, b, err, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(view, "memory", "seed.txt")); !os.IsNotExist(err) {
		t.Errorf("the bundle's memory/seed.txt shows through the mount: %v", err)
	}
	if st, err := os.Lstat(filepath.Join(view, "data")); err != nil || !st.IsDir() {
		t.Errorf("data, which holds a mount, is not a folder of the view: %v", err)
	}
}
