// Package pyrunner embeds the Python runner (standard library only): the
// other end of the runner protocol (internal/runproto), started in every
// agent instance.
//
// The runner is a folder the interpreter runs (python3 <folder>): a
// __main__.py and the _runagent_runner package beside it, a name no agent
// uses, so that the runner's modules never shadow the agent's.
package pyrunner

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
)

// Dir is the name of the folder the interpreter runs.
const Dir = "runagent_runner"

//go:embed runagent_runner/__main__.py runagent_runner/_runagent_runner/*.py
var tree embed.FS

// files are the runner's files by their slash-separated path under Dir.
var files = sync.OnceValue(func() map[string][]byte {
	m := map[string][]byte{}
	err := fs.WalkDir(tree, Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := tree.ReadFile(p)
		if err != nil {
			return err
		}
		m[p[len(Dir)+1:]] = b
		return nil
	})
	if err != nil {
		panic("pyrunner: reading the embedded runner: " + err.Error())
	}
	return m
})

// Files are the runner's files by their slash-separated path in the folder
// the interpreter runs ("__main__.py", "_runagent_runner/calls.py", ...).
// The map is the caller's.
func Files() map[string][]byte {
	m := make(map[string][]byte, len(files()))
	for name, b := range files() {
		m[name] = b
	}
	return m
}

// names are the runner's file names, sorted.
func names() []string {
	var out []string
	for name := range files() {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

// Hash identifies the runner's files (their names and contents).
var Hash = sync.OnceValue(func() string {
	h := sha256.New()
	for _, name := range names() {
		b := files()[name]
		fmt.Fprintf(h, "%s %d\n", name, len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))
})

// WriteScript writes the embedded runner under cacheDir, in a folder named
// by its content hash so that binaries of different versions never share
// one, and returns the path to give the interpreter (python3 <path>). The
// whole runner is under filepath.Dir of that path, and nothing else is. An
// existing identical runner is reused (with the bytecode Python cached in
// it); a new one is written to a temporary folder and renamed into place,
// so that a runner is never seen half written.
func WriteScript(cacheDir string) (string, error) {
	parent := filepath.Join(cacheDir, "runner")
	dir := filepath.Join(parent, Hash()[:12])
	script := filepath.Join(dir, Dir)
	if same(script) {
		return script, nil
	}
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return "", fmt.Errorf("write runner script: %w", err)
	}
	tmp, err := os.MkdirTemp(parent, ".runner-*")
	if err != nil {
		return "", fmt.Errorf("write runner script: %w", err)
	}
	defer os.RemoveAll(tmp) // gone once renamed
	if err := writeTree(tmp); err != nil {
		return "", fmt.Errorf("write runner script: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		if same(script) {
			return script, nil // another process wrote it meanwhile
		}
		// An incomplete or altered runner is there: move it aside first.
		stale := tmp + ".stale"
		if err := os.Rename(dir, stale); err != nil {
			if same(script) {
				return script, nil // another process repaired it meanwhile
			}
			return "", fmt.Errorf("write runner script: %w", err)
		}
		defer os.RemoveAll(stale)
		if err := os.Rename(tmp, dir); err != nil {
			return "", fmt.Errorf("write runner script: %w", err)
		}
	}
	return script, nil
}

// writeTree writes the runner into root (as root/Dir/...), world-readable.
func writeTree(root string) error {
	if err := os.Chmod(root, 0o755); err != nil {
		return err
	}
	for _, name := range names() {
		p := filepath.Join(root, Dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, files()[name], 0o644); err != nil {
			return err
		}
	}
	return nil
}

// same reports whether the runner folder script holds every file of the
// embedded runner, unchanged (it may hold more: Python's __pycache__).
func same(script string) bool {
	for _, name := range names() {
		b, err := os.ReadFile(filepath.Join(script, filepath.FromSlash(name)))
		if err != nil || !bytes.Equal(b, files()[name]) {
			return false
		}
	}
	return true
}
