package pyrunner

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestFiles(t *testing.T) {
	f := Files()
	for _, name := range []string{"__main__.py", "_runagent_runner/__init__.py", "_runagent_runner/encoding.py",
		"_runagent_runner/jsonpath.py", "_runagent_runner/framing.py", "_runagent_runner/capture.py",
		"_runagent_runner/calls.py", "_runagent_runner/streams.py", "_runagent_runner/startup.py"} {
		if len(f[name]) == 0 {
			t.Errorf("%s is not embedded", name)
		}
	}
	for name := range f {
		if !strings.HasSuffix(name, ".py") || strings.Contains(name, "__pycache__") {
			t.Errorf("embedded %s", name)
		}
	}
	f["__main__.py"] = nil // the caller's copy
	if len(Files()["__main__.py"]) == 0 {
		t.Error("Files returned the package's own map")
	}
}

func TestWriteScript(t *testing.T) {
	cache := t.TempDir()
	script, err := WriteScript(cache)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(script) != Dir || filepath.Dir(filepath.Dir(script)) != filepath.Join(cache, "runner") {
		t.Fatalf("script at %s", script)
	}
	check := func() {
		t.Helper()
		for name, b := range Files() {
			got, err := os.ReadFile(filepath.Join(script, filepath.FromSlash(name)))
			if err != nil || string(got) != string(b) {
				t.Errorf("%s: %v, %d bytes of %d", name, err, len(got), len(b))
			}
		}
		// Only the runner is beside it (the drivers mount filepath.Dir(script)).
		if ents, _ := os.ReadDir(filepath.Dir(script)); len(ents) != 1 {
			t.Errorf("%s holds %d entries", filepath.Dir(script), len(ents))
		}
		// No temporary folder is left.
		if ents, _ := os.ReadDir(filepath.Join(cache, "runner")); len(ents) != 1 {
			t.Errorf("%s holds %d entries", filepath.Join(cache, "runner"), len(ents))
		}
		if fi, err := os.Stat(filepath.Join(script, "__main__.py")); err != nil || fi.Mode().Perm() != 0o644 {
			t.Errorf("__main__.py: %v %v", fi.Mode(), err)
		}
	}
	check()

	// Reused as it is, with what Python cached in it.
	cached := filepath.Join(script, "_runagent_runner", "__pycache__")
	if err := os.Mkdir(cached, 0o755); err != nil {
		t.Fatal(err)
	}
	if again, err := WriteScript(cache); err != nil || again != script {
		t.Fatalf("again: %s, %v", again, err)
	}
	if _, err := os.Stat(cached); err != nil {
		t.Errorf("the bytecode cache went: %v", err)
	}

	// A damaged runner is replaced.
	if err := os.WriteFile(filepath.Join(script, "_runagent_runner", "calls.py"), []byte("broken"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(script, "__main__.py")); err != nil {
		t.Fatal(err)
	}
	if again, err := WriteScript(cache); err != nil || again != script {
		t.Fatalf("repair: %s, %v", again, err)
	}
	check()

	// Concurrent writers of a new cache all get the whole runner.
	cache = t.TempDir()
	var wg sync.WaitGroup
	errs := make([]error, 8)
	paths := make([]string, len(errs))
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			paths[i], errs[i] = WriteScript(cache)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil || paths[i] != paths[0] {
			t.Errorf("%s, %v", paths[i], err)
		}
	}
	script = paths[0]
	check()
}
