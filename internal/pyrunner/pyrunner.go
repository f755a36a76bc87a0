// Package pyrunner embeds the Python runner (runagent_runner.py, standard
// library only): the other end of the runner protocol (internal/runproto),
// started in every agent instance.
package pyrunner

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
)

//go:embed runagent_runner.py
var script []byte

// Script is the embedded runner program.
func Script() []byte { return script }

// WriteScript writes the embedded runner under cacheDir, named by its content
// hash so that binaries of different versions never share a file, and
// returns its path. An existing identical file is reused.
func WriteScript(cacheDir string) (string, error) {
	sum := sha256.Sum256(script)
	dir := filepath.Join(cacheDir, "runner", hex.EncodeToString(sum[:6]))
	path := filepath.Join(dir, "runagent_runner.py")
	if b, err := os.ReadFile(path); err == nil && string(b) == string(script) {
		return path, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("write runner script: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".runner-*.py")
	if err != nil {
		return "", fmt.Errorf("write runner script: %w", err)
	}
	if _, err := tmp.Write(script); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return "", fmt.Errorf("write runner script: %w", err)
	}
	tmp.Close()
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return "", fmt.Errorf("write runner script: %w", err)
	}
	return path, nil
}
