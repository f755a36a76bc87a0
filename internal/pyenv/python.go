// Package pyenv finds the Python interpreter and prepares an agent's
// virtualenv from its requirements.txt, cached by content hash.
package pyenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// MinVersion is the oldest Python the runner supports.
var MinVersion = [2]int{3, 9}

// EnvPython names the environment variable that picks the interpreter.
const EnvPython = "RUNAGENT_PYTHON"

// Python is a usable interpreter.
type Python struct {
	Path    string // as resolved on PATH
	Version string // e.g. "3.11.7"
}

// Find picks the interpreter: flag, then $RUNAGENT_PYTHON, then python3 on
// PATH. It runs it once to check that it works and is recent enough.
func Find(ctx context.Context, flag string) (Python, error) {
	name, from := flag, "--python"
	if name == "" {
		name, from = os.Getenv(EnvPython), "$"+EnvPython
	}
	if name == "" {
		name, from = "python3", "PATH"
	}
	path, err := exec.LookPath(name)
	if err != nil {
		return Python{}, fmt.Errorf("python interpreter %q (from %s) not found: install Python %d.%d or newer, or point --python / $%s at one",
			name, from, MinVersion[0], MinVersion[1], EnvPython)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	// sys.executable sees through launchers such as pyenv's shims, which
	// would otherwise add a shell to every runner start.
	out, err := exec.CommandContext(ctx, path, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3]); print(sys.executable)").Output()
	if err != nil {
		var ee *exec.ExitError
		detail := err.Error()
		if errors.As(err, &ee) && len(ee.Stderr) > 0 {
			detail = strings.TrimSpace(string(ee.Stderr))
		}
		return Python{}, fmt.Errorf("python interpreter %s (from %s) does not run: %s", path, from, detail)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	v := strings.TrimSpace(lines[0])
	if len(lines) > 1 {
		if exe := strings.TrimSpace(lines[1]); exe != "" {
			path = exe
		}
	}
	if !AtLeast(v, MinVersion) {
		return Python{}, fmt.Errorf("python interpreter %s (from %s) is Python %s; RunAgent needs %d.%d or newer: install a newer Python and point --python / $%s at it",
			path, from, v, MinVersion[0], MinVersion[1], EnvPython)
	}
	return Python{Path: path, Version: v}, nil
}

// AtLeast reports whether version "X.Y[.Z]" is at least min.
func AtLeast(version string, min [2]int) bool {
	parts := strings.SplitN(version, ".", 3)
	if len(parts) < 2 {
		return false
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil {
		return false
	}
	return major > min[0] || (major == min[0] && minor >= min[1])
}

// lastLines returns the last n lines of b, for error messages.
func lastLines(b []byte, n int) string {
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
