// Package sandbox starts instances of the Python runner in isolation. A
// Driver is one way of isolating them (a plain process, Linux namespaces
// with bubblewrap, gVisor, a microVM); every driver hands back the same
// thing: the runner's byte-stream channel, its output, its resource usage and
// a way to stop it. The runner protocol on top of the channel is the same for
// all of them (internal/runner).
package sandbox

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"

	"github.com/runagent-go/runagent/internal/domain"
)

// Spec is one instance of the runner to start.
type Spec struct {
	// ID is unique per instance; it names the instance's cgroup, work
	// directory and container. Letters, digits, '.', '_' and '-' only.
	ID string
	// Python is the interpreter: the agent's virtualenv python, or python3.
	Python string
	// Args follow the interpreter: the runner script and its options. The
	// driver appends "--fd N", the descriptor the channel is on.
	Args []string
	Env  []string
	// AgentDir is the agent's folder: the working directory, read-only
	// inside a sandbox.
	AgentDir string
	// Venv is the agent's virtualenv ("" for none); Script is the runner,
	// the folder the interpreter runs (pyrunner.WriteScript), alone in
	// filepath.Dir(Script), which the drivers mount. Both are readable
	// inside a sandbox, nothing else of the host's file system is but what
	// the interpreter needs.
	Venv   string
	Script string
	// Network lets the instance reach the network (the agent's config
	// allows it); without it a sandbox has no network interface but loopback.
	Network bool
	Limits  domain.Limits
	// Mounts are writable host folders the instance sees inside its agent
	// folder (a user's persistent folders), deepest last.
	Mounts []Mount
	// MountsDisk is where a driver that cannot show host folders to its
	// instance (microvm) keeps the Mounts' content instead: a disk image of
	// MountsDiskBytes, made from the sources the first time, from then on
	// the only copy. One instance at a time uses it.
	MountsDisk      string
	MountsDiskBytes int64
	// Init is the body of the runner's INIT frame. A driver that restores
	// instances from snapshots taken after READY (microvm) sends it itself
	// and hands back READY through Initialized; others leave it to the
	// caller.
	Init []byte
}

// Mount is a writable host folder seen at a path inside the agent folder.
type Mount struct {
	// Source is the host folder: absolute, existing.
	Source string
	// Target is the path inside the agent folder, slash-separated and
	// relative ("memory", "data/cache"). It exists in AgentDir (a mount
	// point needs one), as the manager makes sure.
	Target string
}

// Relocated is an Instance whose runner sees the agent folder at another
// path than Spec.AgentDir (the process driver's view with mounts): the
// caller sends that path in INIT.
type Relocated interface {
	AgentDir() string
}

// Initialized is an Instance whose driver sent INIT itself: Ready is the
// runner's READY body (nil if the driver did not), and the caller must not
// send INIT again.
type Initialized interface {
	Ready() []byte
}

// Exit is how an instance ended.
type Exit struct {
	Status string // "exit status 1", "killed by signal SIGKILL"
	Code   int    // the exit status, -1 if a signal ended it
	// Signal is the signal that ended the runner, if one did ("SIGKILL").
	Signal string
	// Limit describes the memory limit the kernel enforced when that is why
	// it ended: "memory 256 MiB". The caller turns it into RESOURCE_LIMIT.
	Limit string
}

// Options are what drivers get from the server.
type Options struct {
	// StateDir is the driver's own scratch space (work directories, OCI
	// bundles, runtime state); created if missing.
	StateDir string
	Log      *slog.Logger
}

// Driver starts instances one way.
type Driver interface {
	Name() string
	Start(ctx context.Context, spec Spec) (Instance, error)
}

// Instance is one running runner in its sandbox.
type Instance interface {
	// Channel is the runner's byte stream.
	Channel() net.Conn
	// Output is what the runner process and its children print, outside
	// the channel; both reach EOF when the sandbox is gone.
	Output() (stdout, stderr io.Reader)
	// PID is the host's process id of the sandbox's top process: for
	// display, and for /proc sampling when Usage has no accounting.
	PID() int
	// Usage reads the kernel's accounting of the whole sandbox; ok is false
	// when the driver has none (then the caller samples PID's process group).
	Usage() (u domain.Usage, ok bool)
	// Kill stops everything in the sandbox now. It does not wait.
	Kill()
	// Done is closed once everything in the sandbox has exited and the
	// sandbox is cleaned up; Exit then says how it ended.
	Done() <-chan struct{}
	Exit() Exit
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,100}$`)

// CheckSpec validates what every driver relies on.
func CheckSpec(s Spec) error {
	if !idPattern.MatchString(s.ID) || s.ID == "." || s.ID == ".." {
		return fmt.Errorf("sandbox: instance id %q: want 1 to 100 letters, digits, '.', '_' or '-'", s.ID)
	}
	if s.Python == "" || s.AgentDir == "" {
		return fmt.Errorf("sandbox: instance %s: no interpreter or agent folder", s.ID)
	}
	for _, m := range s.Mounts {
		if !filepath.IsAbs(m.Source) {
			return fmt.Errorf("sandbox: instance %s: mount source %q is not an absolute path", s.ID, m.Source)
		}
		if m.Target == "" || !filepath.IsLocal(filepath.FromSlash(m.Target)) {
			return fmt.Errorf("sandbox: instance %s: mount target %q is not a path inside the agent folder", s.ID, m.Target)
		}
	}
	return nil
}

// Strength orders drivers by isolation: an agent may ask for a stronger
// driver than the server's default, never a weaker one.
var Strength = map[string]int{"process": 0, "namespace": 1, "gvisor": 2, "microvm": 3}

// Names is every driver name, weakest first.
func Names() []string {
	names := make([]string, 0, len(Strength))
	for n := range Strength {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b string) int { return Strength[a] - Strength[b] })
	return names
}

// CheckName says whether name is a driver.
func CheckName(name string) error {
	if _, ok := Strength[name]; !ok {
		return fmt.Errorf("unknown sandbox %q: want one of %s", name, strings.Join(Names(), ", "))
	}
	return nil
}

// MiB formats a byte count the way limit messages name it.
func MiB(b int64) string {
	if b%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", b>>20)
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}

// NeedsLinux is the error of a driver that runs only on Linux (namespaces,
// cgroups, KVM), nil on Linux. Elsewhere the process driver is the one.
func NeedsLinux(driver string) error {
	if runtime.GOOS == "linux" {
		return nil
	}
	return fmt.Errorf("the %s sandbox needs Linux (this is %s): use --sandbox process here, or run the server on Linux", driver, runtime.GOOS)
}
