package pyenv_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/runagent-go/runagent/internal/pyenv"
)

func TestAtLeast(t *testing.T) {
	tests := []struct {
		v    string
		want bool
	}{
		{"3.9.0", true}, {"3.11.7", true}, {"3.8.18", false}, {"2.7.18", false}, {"4.0", true}, {"3", false}, {"x.y", false},
	}
	for _, tt := range tests {
		if got := pyenv.AtLeast(tt.v, [2]int{3, 9}); got != tt.want {
			t.Errorf("AtLeast(%q) = %v, want %v", tt.v, got, tt.want)
		}
	}
}

func fakePython(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "python")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFind(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name, flag, env, wantErr string
	}{
		{"missing", "/nonexistent/python3", "", "not found"},
		{"too old", fakePython(t, "echo 3.8.10"), "", "is Python 3.8.10; RunAgent needs 3.9 or newer"},
		{"broken", fakePython(t, "echo boom >&2; exit 3"), "", "does not run: boom"},
		{"from env", "", fakePython(t, "echo 3.12.1"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(pyenv.EnvPython, tt.env)
			py, err := pyenv.Find(ctx, tt.flag)
			if tt.wantErr == "" {
				if err != nil || py.Version != "3.12.1" {
					t.Fatalf("Find = %+v, %v", py, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Find error = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
	t.Run("default python3", func(t *testing.T) {
		t.Setenv(pyenv.EnvPython, "")
		py, err := pyenv.Find(ctx, "")
		if err != nil || !pyenv.AtLeast(py.Version, pyenv.MinVersion) {
			t.Fatalf("Find() = %+v, %v", py, err)
		}
	})
}

func basePython(t *testing.T) pyenv.Python {
	t.Helper()
	py, err := pyenv.Find(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	return py
}

func TestPrepareWithoutRequirementsUsesBase(t *testing.T) {
	py := basePython(t)
	env, err := pyenv.Prepare(context.Background(), py, t.TempDir(), t.TempDir(), nil)
	if err != nil || env.Python != py.Path || env.Venv != "" {
		t.Fatalf("Prepare = %+v, %v", env, err)
	}
}

func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// A local package path in requirements.txt is installed, the virtualenv is
// reused while nothing changed, and rebuilt when the package's files change.
func TestPrepareLocalPackage(t *testing.T) {
	if testing.Short() {
		t.Skip("creates virtualenvs: skipped with -short")
	}
	py := basePython(t)
	agent, cache := t.TempDir(), t.TempDir()
	writeFiles(t, agent, map[string]string{
		"requirements.txt":                   "# a local package\n./vendor/greeter\n",
		"vendor/greeter/setup.py":            "from setuptools import setup\nsetup(name='greeter', version='0.1', packages=['greeter'])\n",
		"vendor/greeter/greeter/__init__.py": "def hello():\n    return 'hello from greeter'\n",
	})
	var progress bytes.Buffer
	env, err := pyenv.Prepare(context.Background(), py, agent, cache, &progress)
	if err != nil {
		t.Fatalf("Prepare: %v\n%s", err, progress.String())
	}
	if env.Reused || !strings.Contains(progress.String(), "pip |") {
		t.Fatalf("first Prepare should install with pip output shown; reused=%v progress:\n%s", env.Reused, progress.String())
	}
	out, err := exec.Command(env.Python, "-c", "import greeter; print(greeter.hello())").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "hello from greeter" {
		t.Fatalf("venv python cannot import the local package: %v %s", err, out)
	}

	again, err := pyenv.Prepare(context.Background(), py, agent, cache, nil)
	if err != nil || !again.Reused || again.Venv != env.Venv {
		t.Fatalf("second Prepare = %+v, %v; want the cached virtualenv %s", again, err, env.Venv)
	}

	writeFiles(t, agent, map[string]string{"vendor/greeter/greeter/__init__.py": "def hello():\n    return 'hello again'\n"})
	changed, err := pyenv.Prepare(context.Background(), py, agent, cache, nil)
	if err != nil || changed.Reused || changed.Key == env.Key {
		t.Fatalf("Prepare after the package changed = %+v, %v; want a new virtualenv", changed, err)
	}
}

func TestPrepareFailureShowsPip(t *testing.T) {
	if testing.Short() {
		t.Skip("creates virtualenvs: skipped with -short")
	}
	py := basePython(t)
	agent, cache := t.TempDir(), t.TempDir()
	writeFiles(t, agent, map[string]string{"requirements.txt": "runagent-no-such-package-for-tests==0.0.1\n"})
	_, err := pyenv.Prepare(context.Background(), py, agent, cache, nil)
	if err == nil {
		t.Fatal("Prepare succeeded for a package that does not exist")
	}
	msg := err.Error()
	for _, want := range []string{"requirements.txt failed", "runagent-no-such-package-for-tests", "No matching distribution"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not contain %q:\n%s", want, msg)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(cache, "venvs"))
	for _, e := range entries {
		if e.IsDir() {
			t.Errorf("failed install left %s behind", e.Name())
		}
	}
}
