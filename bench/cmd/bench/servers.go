package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/runagent-go/runagent/bench/internal/procs"
)

// kind is one of the benchmarked servers.
type kind struct {
	name  string // ours, original, fastapi
	label string // for the tables
	// setup installs what the server needs (once per harness run) and
	// returns a version string.
	setup func(b *bench) (version string, err error)
	// start launches the server on 127.0.0.1:port for the agent folder;
	// dir is this server's own scratch folder.
	start func(b *bench, agentDir, dir string, port int) (*procs.Proc, error)
	// prepare, if set, runs once the server is started and before it is
	// first called: the platform deploys the agent and makes a key here.
	prepare func(b *bench, r *result, p *procs.Proc, dir, agentDir, addr string) error
	// after, if set, measures what only this server has, after the load.
	after func(b *bench, r *result, p *procs.Proc, dir, addr string)
}

func kinds() map[string]kind {
	return map[string]kind{
		"ours": {
			name: "ours", label: "runagent (Go, this repo)",
			setup: setupOurs, start: startOurs,
		},
		"platform": {
			name: "platform", label: "runagent server (Go, this repo): the platform gateway",
			setup: setupOurs, start: startPlatform, prepare: preparePlatform, after: scaleFromZero,
		},
		"original": {
			name: "original", label: "RunAgent 0.1.49 (Python)",
			setup: setupOriginal, start: startOriginal,
		},
		"fastapi": {
			name: "fastapi", label: "bare FastAPI + uvicorn",
			setup: setupFastAPI, start: startFastAPI,
		},
	}
}

// cleanEnv is the harness's environment without anything that would make
// a server talk to RunAgent's cloud or read another cache folder.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "RUNAGENT_") || k == "DISABLE_TRY_CATCH" || k == "VIRTUAL_ENV" ||
			k == "PYTHONPATH" || k == "PYTHONHOME" || k == "HOME" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// ---- ours ----

func setupOurs(b *bench) (string, error) {
	if _, err := os.Stat(b.opts.bin); err != nil {
		b.logf("%s not found: building it (CGO_ENABLED=0 go build ./cmd/runagent)", b.opts.bin)
		cmd := exec.CommandContext(b.ctx, "go", "build", "-trimpath", "-o", b.opts.bin, "./cmd/runagent")
		cmd.Dir = b.opts.root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("go build: %v\n%s", err, out)
		}
	}
	out, err := exec.CommandContext(b.ctx, b.opts.bin, "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s --version: %v: %s", b.opts.bin, err, out)
	}
	v := strings.TrimSpace(string(out))
	if st, err := os.Stat(b.opts.bin); err == nil {
		v += fmt.Sprintf(" (binary built %s)", st.ModTime().UTC().Format("2006-01-02 15:04 UTC"))
	}
	return v, nil
}

func startOurs(b *bench, agentDir, dir string, port int) (*procs.Proc, error) {
	cache := filepath.Join(dir, "cache")
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, err
	}
	cmd := exec.Command(b.opts.bin, "serve", agentDir, "--host", "127.0.0.1", "--port", fmt.Sprint(port), "--python", b.python)
	cmd.Dir = dir
	cmd.Env = cleanEnv("RUNAGENT_CACHE_DIR="+cache, "HOME="+dir)
	return procs.Start("ours", cmd, filepath.Join(dir, "server.log"))
}

// ---- the original ----

func setupOriginal(b *bench) (string, error) {
	pkg := "runagent==" + b.opts.origVersion
	venv := filepath.Join(b.opts.cacheDir, "venv-original-"+b.opts.origVersion)
	if err := b.ensureVenv("original", venv, []string{pkg}); err != nil {
		return "", err
	}
	b.origVenv = venv
	return "runagent " + b.opts.origVersion + " (" + b.pkgVersions(venv, "fastapi", "uvicorn", "starlette", "pydantic", "sqlalchemy") + ")", nil
}

// startOriginal registers the agent in a fresh RUNAGENT_CACHE_DIR
// (`runagent config --register-agent`, which asks nothing when the agent is
// new) and runs `runagent serve --no-animation`. With no API key in the
// environment its middleware sync is disabled, so it never goes online.
func startOriginal(b *bench, agentDir, dir string, port int) (*procs.Proc, error) {
	cache := filepath.Join(dir, "cache")
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, err
	}
	env := cleanEnv("RUNAGENT_CACHE_DIR="+cache, "HOME="+dir, "COLUMNS=120")
	exe := filepath.Join(b.origVenv, "bin", "runagent")

	ctx, cancel := context.WithTimeout(b.ctx, b.opts.startTimeout)
	defer cancel()
	reg := exec.CommandContext(ctx, exe, "config", "--register-agent", agentDir)
	reg.Dir, reg.Env, reg.Stdin = dir, env, nil // stdin: /dev/null, so a prompt fails instead of waiting
	reg.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	reg.Cancel = func() error { return syscall.Kill(-reg.Process.Pid, syscall.SIGKILL) }
	out, err := reg.CombinedOutput()
	os.WriteFile(filepath.Join(dir, "register.log"), out, 0o644)
	if err != nil || !strings.Contains(string(out), "registered successfully") {
		return nil, fmt.Errorf("runagent config --register-agent failed (%v):\n%s", err, tailString(string(out), 15))
	}

	cmd := exec.Command(exe, "serve", agentDir, "--host", "127.0.0.1", "--port", fmt.Sprint(port), "--no-animation")
	cmd.Dir, cmd.Env = dir, env
	return procs.Start("original", cmd, filepath.Join(dir, "server.log"))
}

// ---- the FastAPI baseline ----

func setupFastAPI(b *bench) (string, error) {
	pkgs := strings.Fields(b.opts.fastapiPkgs)
	venv := filepath.Join(b.opts.cacheDir, "venv-fastapi")
	if err := b.ensureVenv("fastapi", venv, pkgs); err != nil {
		return "", err
	}
	b.fastapiVenv = venv
	return b.pkgVersions(venv, "fastapi", "uvicorn", "starlette", "pydantic", "websockets"), nil
}

func startFastAPI(b *bench, agentDir, dir string, port int) (*procs.Proc, error) {
	cmd := exec.Command(filepath.Join(b.fastapiVenv, "bin", "python"),
		filepath.Join(b.opts.root, "bench", "fastapi_app.py"), agentDir, "--host", "127.0.0.1", "--port", fmt.Sprint(port))
	cmd.Dir, cmd.Env = dir, cleanEnv("HOME="+dir)
	return procs.Start("fastapi", cmd, filepath.Join(dir, "server.log"))
}

// ---- virtualenvs ----

const venvMarker = ".bench-installed"

// ensureVenv makes a virtualenv at dir with pkgs installed from PyPI, unless
// one made for the same packages is already there.
func (b *bench) ensureVenv(name, dir string, pkgs []string) error {
	want := strings.Join(pkgs, " ") + "\n"
	if !b.opts.reinstall {
		if have, err := os.ReadFile(filepath.Join(dir, venvMarker)); err == nil && string(have) == want {
			if _, err := os.Stat(filepath.Join(dir, "bin", "python")); err == nil {
				b.logf("%s: reusing virtualenv %s", name, b.rel(dir))
				return nil
			}
		}
	}
	b.logf("%s: creating virtualenv %s and installing %s from PyPI (first run only; takes a minute)...", name, b.rel(dir), strings.Join(pkgs, " "))
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(b.ctx, 15*time.Minute)
	defer cancel()
	if err := b.runLogged(ctx, name, b.python, "-m", "venv", dir); err != nil {
		return fmt.Errorf("python -m venv: %w", err)
	}
	args := append([]string{"-m", "pip", "install", "--progress-bar", "off", "--disable-pip-version-check"}, pkgs...)
	if err := b.runLogged(ctx, name, filepath.Join(dir, "bin", "python"), args...); err != nil {
		os.RemoveAll(dir)
		return fmt.Errorf("pip install %s: %w", strings.Join(pkgs, " "), err)
	}
	return os.WriteFile(filepath.Join(dir, venvMarker), []byte(want), 0o644)
}

// runLogged runs a setup command in its own process group, showing its
// output prefixed by name; the error carries the output's last lines.
func (b *bench) runLogged(ctx context.Context, name, exe string, args ...string) error {
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Env = cleanEnv("HOME=" + b.tmp)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	var last []string
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintf(os.Stderr, "  [%s] %s\n", name, line)
			last = append(last, line)
			if len(last) > 15 {
				last = last[1:]
			}
		}
		io.Copy(io.Discard, pr)
	}()
	err := cmd.Run()
	pw.Close()
	wg.Wait()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, ctx.Err())
		}
		return fmt.Errorf("%v\n%s", err, strings.Join(last, "\n"))
	}
	return nil
}

// pkgVersions is "fastapi 0.115.12, uvicorn 0.34.1, ..." as installed in venv.
func (b *bench) pkgVersions(venv string, pkgs ...string) string {
	script := `import sys
from importlib.metadata import version, PackageNotFoundError
out = []
for p in sys.argv[1:]:
    try:
        out.append(p + " " + version(p))
    except PackageNotFoundError:
        pass
print(", ".join(out))`
	args := append([]string{"-c", script}, pkgs...)
	out, err := exec.CommandContext(b.ctx, filepath.Join(venv, "bin", "python"), args...).Output()
	if err != nil {
		return "versions unknown"
	}
	return strings.TrimSpace(string(out))
}

func tailString(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
