// Package namespace is the "namespace" sandbox driver: each instance runs
// under bubblewrap in new user, PID, mount, IPC, UTS and network namespaces,
// sees read-only only what its interpreter, virtualenv and agent folder
// need, writes only to a private /tmp and a work directory of bounded size,
// has no network unless its config allows it, runs under a seccomp filter,
// and sits in a cgroup of its own for memory and process limits (when this
// machine has one; else the manager samples /proc).
package namespace

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/sandbox"
	"github.com/runagent-go/runagent/internal/sandbox/cgroup"
	"github.com/runagent-go/runagent/internal/sandbox/seccomp"
)

// Driver starts instances under bwrap.
type Driver struct {
	bwrap   string
	filter  []byte // the compiled seccomp program
	cgroups bool   // whether instances get a cgroup
	log     *slog.Logger

	mu       sync.Mutex
	prefixes sandbox.Prefixes
}

// New finds bwrap and prepares what every instance shares.
func New(o sandbox.Options) (*Driver, error) {
	if err := sandbox.NeedsLinux("namespace"); err != nil {
		return nil, err
	}
	path, err := exec.LookPath("bwrap")
	if err != nil {
		return nil, errors.New("the namespace sandbox needs bubblewrap: install it with apt-get install bubblewrap (bwrap is not on PATH)")
	}
	filter, err := seccomp.Program()
	if err != nil {
		return nil, fmt.Errorf("namespace sandbox: seccomp filter: %w", err)
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Driver{bwrap: path, filter: filter, log: log}
	if v, err := cgroup.Available(); err == nil {
		d.cgroups = true
		log.Info("namespace sandbox: instances get a cgroup", "cgroup", v)
	} else {
		log.Warn("namespace sandbox: no usable cgroup; memory and process limits are sampled from /proc instead of enforced by the kernel", "why", err)
	}
	return d, nil
}

func (d *Driver) Name() string { return "namespace" }

// Start runs the runner under bwrap. Its cgroup is set up before the
// sandboxed process runs anything: bwrap reports the child's pid on its info
// fd and waits on its block fd until the child is in the cgroup.
func (d *Driver) Start(ctx context.Context, s sandbox.Spec) (sandbox.Instance, error) {
	if err := sandbox.CheckSpec(s); err != nil {
		return nil, err
	}
	prefix, err := d.prefix(ctx, s.Python)
	if err != nil {
		return nil, err
	}
	var group *cgroup.Group
	if d.cgroups {
		if group, err = cgroup.New(s.ID, cgroup.Limits{MemoryBytes: s.Limits.MemoryBytes, Pids: s.Limits.Pids, CPUs: s.Limits.CPUs}); err != nil {
			return nil, fmt.Errorf("namespace sandbox: cgroup for %s: %w", s.ID, err)
		}
	}
	files, err := newPipes(d.filter, group != nil)
	if err != nil {
		removeGroup(group)
		return nil, err
	}
	// fd 3 is the channel (StartProc), then 4: seccomp, 5: info, 6: block.
	args := Args(s, prefix, 4)
	if group != nil {
		args = append(args[:len(args):len(args)], "--info-fd", "5", "--block-fd", "6")
	}
	args = append(args, "--", s.Python)
	args = append(args, s.Args...)
	args = append(args, "--fd", "3")
	cmd := exec.Command(d.bwrap, args...)
	cmd.Env = append(slices.Clone(s.Env), "HOME=/work", "TMPDIR=/tmp")
	cmd.Dir = "/"

	o := sandbox.ProcOptions{ExtraFiles: files.child()}
	if group != nil {
		o.AfterStart = func(pid int) error {
			files.closeChild()
			return files.placeInGroup(pid, group)
		}
		o.Usage = func() (domain.Usage, bool) {
			u, err := group.Usage()
			if err != nil {
				return domain.Usage{}, false
			}
			return domain.Usage{MemoryBytes: u.MemoryBytes, CPUSeconds: u.CPUSeconds, Tasks: u.Pids, LimitHit: domain.Limit(group.LimitHit())}, true
		}
		o.Kill = func() { group.Kill() }
	} else {
		o.AfterStart = func(int) error { files.closeChild(); return nil }
	}
	o.Cleanup = func(e *sandbox.Exit) {
		files.closeAll()
		// bwrap exits with 128+N when a signal ended the sandboxed process.
		if e.Signal == "" && e.Code > 128 && e.Code < 128+65 {
			e.Signal = unix.SignalName(syscall.Signal(e.Code - 128))
			e.Status = "killed by signal " + e.Signal
		}
		if group == nil {
			return
		}
		if group.LimitHit() == "memory" && s.Limits.MemoryBytes > 0 {
			e.Limit = "memory " + sandbox.MiB(s.Limits.MemoryBytes)
		}
		group.Kill()
		if err := group.Remove(); err != nil {
			d.log.Warn("namespace sandbox: cgroup left behind", "instance", s.ID, "error", err)
		}
	}
	p, err := sandbox.StartProc(cmd, o)
	if err != nil {
		files.closeAll()
		removeGroup(group)
		return nil, fmt.Errorf("namespace sandbox: %w", err)
	}
	return p, nil
}

// Args are bwrap's options for s (without the command), with the seccomp
// program on fd seccompFD. Exported for tests and for the docs.
func Args(s sandbox.Spec, pyPrefix string, seccompFD int) []string {
	a := []string{
		"--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
		"--die-with-parent", "--new-session", "--cap-drop", "ALL", "--hostname", "runagent",
	}
	if !s.Network {
		a = append(a, "--unshare-net")
	}
	// The system's own libraries and binaries, read-only; on merged-/usr
	// systems /lib, /bin... are symlinks into /usr.
	a = append(a, "--ro-bind", "/usr", "/usr")
	for _, dir := range []string{"/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin"} {
		if target, err := os.Readlink(dir); err == nil {
			a = append(a, "--symlink", target, dir)
		} else if st, err := os.Stat(dir); err == nil && st.IsDir() {
			a = append(a, "--ro-bind", dir, dir)
		}
	}
	etc := []string{"/etc/ld.so.cache", "/etc/localtime", "/etc/passwd", "/etc/group"}
	if s.Network {
		etc = append(etc, "/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf", "/etc/ssl", "/etc/ca-certificates")
	}
	for _, f := range etc {
		a = append(a, "--ro-bind-try", f, f)
	}
	a = append(a, "--proc", "/proc", "--dev", "/dev")
	size := s.Limits.WorkDirBytes
	for _, dir := range []string{"/tmp", "/work"} {
		if size > 0 {
			a = append(a, "--size", strconv.FormatInt(size, 10))
		}
		a = append(a, "--tmpfs", dir)
	}
	// Read-only views, shallowest first, after the tmpfs mounts so that a
	// folder under /tmp (a test's agent) is bound on top of the new /tmp.
	var ro []string
	for _, p := range []string{pyPrefix, s.Venv, filepath.Dir(s.Script), s.AgentDir} {
		if p != "" && p != "/" && !strings.HasPrefix(p+"/", "/usr/") && !slices.Contains(ro, p) {
			ro = append(ro, p)
		}
	}
	slices.SortStableFunc(ro, func(x, y string) int { return strings.Count(x, "/") - strings.Count(y, "/") })
	for _, p := range ro {
		a = append(a, "--ro-bind", p, p)
	}
	// A user's persistent folders, writable, on top of the agent folder.
	for _, m := range s.Mounts {
		a = append(a, "--bind", m.Source, filepath.Join(s.AgentDir, filepath.FromSlash(m.Target)))
	}
	// bwrap builds the root on a tmpfs; made read-only, only /tmp and /work
	// (mounts of their own, sized) and the persistent folders stay writable.
	a = append(a, "--remount-ro", "/", "--chdir", s.AgentDir, "--seccomp", strconv.Itoa(seccompFD))
	return a
}

// prefix is the installation prefix of python, which the sandbox must see.
func (d *Driver) prefix(ctx context.Context, python string) (string, error) {
	p, err := d.prefixes.Get(ctx, python)
	if err != nil {
		return "", fmt.Errorf("namespace sandbox: %w", err)
	}
	return p, nil
}

// pipes are bwrap's extra descriptors: the seccomp program, and the info
// and block pipes that hold the child until it is in its cgroup.
type pipes struct {
	seccompR, seccompW *os.File
	infoR, infoW       *os.File
	blockR, blockW     *os.File
	once               sync.Once
}

func newPipes(filter []byte, withGroup bool) (*pipes, error) {
	p := &pipes{}
	var err error
	if p.seccompR, p.seccompW, err = os.Pipe(); err != nil {
		return nil, err
	}
	// bwrap reads the whole program before it starts the child; it is a few
	// hundred bytes, well under a pipe's buffer, so this write never blocks.
	if _, err := p.seccompW.Write(filter); err != nil {
		p.closeAll()
		return nil, err
	}
	p.seccompW.Close()
	p.seccompW = nil
	if withGroup {
		if p.infoR, p.infoW, err = os.Pipe(); err != nil {
			p.closeAll()
			return nil, err
		}
		if p.blockR, p.blockW, err = os.Pipe(); err != nil {
			p.closeAll()
			return nil, err
		}
	}
	return p, nil
}

// child is what bwrap gets, from fd 4 on.
func (p *pipes) child() []*os.File {
	if p.infoW == nil {
		return []*os.File{p.seccompR}
	}
	return []*os.File{p.seccompR, p.infoW, p.blockR}
}

// closeChild drops our copies of bwrap's ends once it has them.
func (p *pipes) closeChild() {
	for _, f := range []**os.File{&p.seccompR, &p.infoW, &p.blockR} {
		if *f != nil {
			(*f).Close()
			*f = nil
		}
	}
}

func (p *pipes) closeAll() {
	p.once.Do(func() {
		p.closeChild()
		for _, f := range []*os.File{p.seccompW, p.infoR, p.blockW} {
			if f != nil {
				f.Close()
			}
		}
	})
}

// placeInGroup reads the child's pid from bwrap's info fd, moves bwrap and
// the child into the group, and lets the child go on.
func (p *pipes) placeInGroup(bwrapPID int, g *cgroup.Group) error {
	p.infoR.SetReadDeadline(time.Now().Add(10 * time.Second))
	dec := json.NewDecoder(io.LimitReader(p.infoR, 64<<10))
	var info struct {
		ChildPID int `json:"child-pid"`
	}
	if err := dec.Decode(&info); err != nil || info.ChildPID <= 0 {
		return fmt.Errorf("namespace sandbox: bwrap did not report its child (%v); is bubblewrap working here? try: bwrap --ro-bind / / true", err)
	}
	for _, pid := range []int{bwrapPID, info.ChildPID} {
		if err := g.Add(pid); err != nil {
			return fmt.Errorf("namespace sandbox: put pid %d in its cgroup: %w", pid, err)
		}
	}
	if _, err := p.blockW.Write([]byte{'g'}); err != nil {
		return fmt.Errorf("namespace sandbox: release the child: %w", err)
	}
	return nil
}

func removeGroup(g *cgroup.Group) {
	if g != nil {
		g.Kill()
		g.Remove()
	}
}
