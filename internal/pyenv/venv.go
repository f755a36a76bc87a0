package pyenv

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// RequirementsFile is the name of an agent's dependency list.
const RequirementsFile = "requirements.txt"

const readyMarker = ".runagent-ready"

// Env is the interpreter an agent's runner uses.
type Env struct {
	Python  string // interpreter path
	Venv    string // the virtualenv directory, "" when the agent has no requirements
	Key     string // cache key of the virtualenv
	Reused  bool   // the virtualenv came from the cache
	Elapsed time.Duration
}

// Prepare returns the interpreter for the agent in agentDir: the base
// interpreter when there is no requirements.txt; otherwise a virtualenv under
// cacheDir/venvs with the requirements installed, reused while
// requirements.txt, any local package it names and the base interpreter are
// unchanged. pip's output is copied to progress as it runs.
func Prepare(ctx context.Context, base Python, agentDir, cacheDir string, progress io.Writer) (Env, error) {
	start := time.Now()
	if progress == nil {
		progress = io.Discard
	}
	reqPath := filepath.Join(agentDir, RequirementsFile)
	req, err := os.ReadFile(reqPath)
	if os.IsNotExist(err) {
		return Env{Python: base.Path}, nil
	}
	if err != nil {
		return Env{}, fmt.Errorf("read %s: %w", reqPath, err)
	}
	key, err := cacheKey(base, agentDir, req)
	if err != nil {
		return Env{}, err
	}
	root := filepath.Join(cacheDir, "venvs")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return Env{}, fmt.Errorf("create virtualenv cache: %w", err)
	}
	dir := filepath.Join(root, key)
	env := Env{Python: filepath.Join(dir, "bin", "python"), Venv: dir, Key: key}

	// One builder per key, across processes.
	unlock, err := lockFile(dir + ".lock")
	if err != nil {
		return Env{}, err
	}
	defer unlock()

	if _, err := os.Stat(filepath.Join(dir, readyMarker)); err == nil {
		fmt.Fprintf(progress, "Using cached virtualenv %s for %s\n", dir, RequirementsFile)
		env.Reused = true
		env.Elapsed = time.Since(start)
		return env, nil
	}
	os.RemoveAll(dir) // a build that was interrupted

	fmt.Fprintf(progress, "Creating virtualenv %s for %s\n", dir, RequirementsFile)
	out, err := exec.CommandContext(ctx, base.Path, "-m", "venv", dir).CombinedOutput()
	if err != nil {
		os.RemoveAll(dir)
		return Env{}, fmt.Errorf("create virtualenv with %s -m venv failed (%v):\n%s\nInstall the venv module for this Python (on Debian: apt-get install python3-venv) or choose another interpreter with --python",
			base.Path, err, lastLines(out, 15))
	}

	fmt.Fprintf(progress, "Installing %s (pip output follows)\n", RequirementsFile)
	cmd := exec.CommandContext(ctx, env.Python, "-m", "pip", "install",
		"--disable-pip-version-check", "--no-input", "--progress-bar", "off", "-r", reqPath)
	cmd.Dir = agentDir // local paths in requirements.txt are relative to the agent folder
	cmd.Env = append(os.Environ(), "PIP_NO_INPUT=1")
	var captured bytes.Buffer
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 0, 4096), 1<<20)
		for sc.Scan() {
			captured.Write(sc.Bytes())
			captured.WriteByte('\n')
			fmt.Fprintf(progress, "  pip | %s\n", sc.Text())
		}
		io.Copy(io.Discard, pr)
	}()
	err = cmd.Run()
	pw.Close()
	<-copied
	if err != nil {
		os.RemoveAll(dir)
		if ctx.Err() != nil {
			return Env{}, fmt.Errorf("installing %s was interrupted: %w", reqPath, ctx.Err())
		}
		return Env{}, fmt.Errorf("installing %s failed (pip: %v). The end of pip's output:\n%s\nFix the requirement pip names above, or check that the package index is reachable",
			reqPath, err, lastLines(captured.Bytes(), 25))
	}
	marker := fmt.Sprintf("requirements=%s\npython=%s %s\ncreated=%s\n", reqPath, base.Path, base.Version, time.Now().Format(time.RFC3339))
	if err := os.WriteFile(filepath.Join(dir, readyMarker), []byte(marker), 0o644); err != nil {
		return Env{}, fmt.Errorf("finish virtualenv %s: %w", dir, err)
	}
	env.Elapsed = time.Since(start)
	fmt.Fprintf(progress, "Virtualenv ready in %s\n", env.Elapsed.Round(100*time.Millisecond))
	return env, nil
}

// cacheKey hashes what the virtualenv depends on: the interpreter, the
// requirements and the files of any local package path they name.
func cacheKey(base Python, agentDir string, req []byte) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "runagent-venv-v1\n%s\n%s\n", base.Path, base.Version)
	h.Write(req)
	for _, p := range localPaths(req) {
		if !filepath.IsAbs(p) {
			p = filepath.Join(agentDir, p)
		}
		if err := fingerprintTree(h, p); err != nil {
			return "", fmt.Errorf("%s names local path %s: %w", RequirementsFile, p, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// localPaths returns the requirement lines that are local paths.
func localPaths(req []byte) []string {
	var paths []string
	for _, line := range strings.Split(string(req), "\n") {
		line = strings.TrimSpace(line)
		if i := strings.Index(line, " #"); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		for _, opt := range []string{"-e ", "--editable "} {
			line = strings.TrimSpace(strings.TrimPrefix(line, opt))
		}
		line = strings.TrimPrefix(line, "file://")
		if strings.HasPrefix(line, ".") || strings.HasPrefix(line, "/") {
			if i := strings.IndexAny(line, "[;"); i >= 0 { // extras, markers
				line = line[:i]
			}
			paths = append(paths, strings.TrimSpace(line))
		}
	}
	return paths
}

func fingerprintTree(w io.Writer, root string) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() && path != root && (name == ".git" || name == "__pycache__" || name == "build" || strings.HasSuffix(name, ".egg-info")) {
			return filepath.SkipDir
		}
		if d.IsDir() {
			return nil // directory mtimes change when pip builds in place
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		fmt.Fprintf(w, "%s %d %d\n", rel, info.Size(), info.ModTime().UnixNano())
		return nil
	})
}

func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock virtualenv cache: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock virtualenv cache: %w", err)
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
