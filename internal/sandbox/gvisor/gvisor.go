// Package gvisor is the "gvisor" sandbox driver: each instance of the runner
// runs in a gVisor sandbox (runsc, ptrace platform), whose own kernel (the
// Sentry) serves its system calls; the host kernel sees only runsc's
// processes. The container's root is an empty read-only directory with
// read-only bind mounts of exactly what the runner needs (the system's /usr,
// the interpreter's installation, the virtualenv, the runner script and the
// agent folder, all at the same paths as outside), a private /tmp and /work
// of bounded size, and no network but loopback unless the agent's config
// allows it. The runner's channel is the container's stdin.
//
// Limits and usage come from a cgroup of ours, runagent/<id>, that holds
// runsc and everything it starts; runsc itself is told to leave cgroups
// alone (--ignore-cgroups). See Start for why.
package gvisor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/sandbox"
	"github.com/runagent-go/runagent/internal/sandbox/cgroup"
	"github.com/runagent-go/runagent/internal/sandbox/mountinfo"
)

// Driver starts instances under runsc.
type Driver struct {
	runsc   string
	sh      string
	state   string // runsc --root
	bundles string // one OCI bundle per instance
	cgroups bool
	log     *slog.Logger

	mu       sync.Mutex
	prefixes sandbox.Prefixes
}

// New finds runsc and prepares the driver's state directories under
// o.StateDir/gvisor.
func New(o sandbox.Options) (*Driver, error) {
	if err := sandbox.NeedsLinux("gvisor"); err != nil {
		return nil, err
	}
	runsc, err := exec.LookPath("runsc")
	if err != nil {
		return nil, errors.New("the gvisor sandbox needs runsc: install it with apt-get install runsc")
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		return nil, fmt.Errorf("the gvisor sandbox needs a shell to start runsc: %w", err)
	}
	if o.StateDir == "" {
		return nil, errors.New("gvisor sandbox: no state directory")
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	base, err := filepath.Abs(filepath.Join(o.StateDir, "gvisor"))
	if err != nil {
		return nil, err
	}
	d := &Driver{
		runsc: runsc, sh: sh, log: log,
		state: filepath.Join(base, "state"), bundles: filepath.Join(base, "bundles"),
	}
	for _, dir := range []string{d.state, d.bundles} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("gvisor sandbox: %w", err)
		}
	}
	if v, err := cgroup.Available(); err == nil {
		d.cgroups = true
		log.Info("gvisor sandbox: instances get a cgroup", "cgroup", v)
	} else {
		log.Warn("gvisor sandbox: no usable cgroup; memory and process limits are not enforced and usage is not measured", "why", err)
	}
	d.sweep()
	return d, nil
}

// sweep removes what instances of a server that died left in the state
// directory: bundles no live process uses, their containers' state and
// their (empty) cgroups. The instances themselves died with their server
// (runsc runs attached, with a parent-death signal).
func (d *Driver) sweep() {
	entries, err := os.ReadDir(d.bundles)
	if err != nil {
		return
	}
	for _, e := range entries {
		id, bundle := e.Name(), filepath.Join(d.bundles, e.Name())
		if len(processesNaming(bundle)) > 0 {
			continue // another server's, alive
		}
		if cid := containerID(id); d.hasState(cid) {
			d.deleteContainer(cid)
		}
		if g, err := cgroup.Open("/runagent/" + id); err == nil {
			g.Remove() // fails, and stays, if anything is in it
		}
		if err := removeBundle(bundle); err != nil {
			d.log.Warn("gvisor sandbox: leftover bundle", "bundle", bundle, "error", err)
		} else {
			d.log.Info("gvisor sandbox: removed a leftover instance", "instance", id)
		}
	}
}

func (d *Driver) Name() string { return "gvisor" }

// blockScript holds the shell until the driver writes a line on fd 3, then
// becomes runsc: the driver first moves the shell into the instance's
// cgroup, so runsc and every process it starts are in it from their first
// instruction. EOF instead of the line (the driver gave up) is an exit.
const blockScript = `IFS= read -r _ <&3 || exit 125; exec 3<&-; exec "$@"`

// Start writes the instance's OCI bundle and runs `runsc run` in the
// foreground; stdin is the runner's channel, stdout and stderr its output.
//
// Cgroups: runsc (this version, on cgroup v1) does create linux.cgroupsPath
// and set its limits, but it removes the group as soon as the container
// exits, and on v1 the OOM-kill counter is not propagated to a parent
// group: by the time we could ask whether the memory limit killed the
// instance, the evidence is gone. So the group is ours: cgroup.New creates
// runagent/<id> with the limits, runsc is started inside it (held by
// blockScript until it is there, so no fork escapes), runsc is told
// --ignore-cgroups, and the group outlives runsc until Cleanup has read it.
// It also holds runsc's own processes (the runsc CLI, the gofer, the Sentry
// and its ptrace stubs): they count against the memory limit, which is what
// the host pays for the instance. The agent's process limit is enforced
// inside the sandbox instead (RLIMIT_NPROC; see hostPids).
func (d *Driver) Start(ctx context.Context, s sandbox.Spec) (sandbox.Instance, error) {
	if err := sandbox.CheckSpec(s); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for _, p := range []string{s.Python, s.AgentDir, s.Venv, s.Script} {
		if p != "" && !filepath.IsAbs(p) {
			return nil, fmt.Errorf("gvisor sandbox: instance %s: %q is not an absolute path", s.ID, p)
		}
	}
	prefix, err := d.prefix(ctx, s.Python)
	if err != nil {
		return nil, err
	}
	bundle := filepath.Join(d.bundles, s.ID)
	if _, err := os.Lstat(bundle); err == nil || d.hasState(containerID(s.ID)) {
		// A leftover of a crashed server: its container (if any) goes first.
		d.deleteContainer(containerID(s.ID))
		d.killStrays(bundle)
		if err := removeBundle(bundle); err != nil {
			return nil, fmt.Errorf("gvisor sandbox: leftover bundle of %s: %w", s.ID, err)
		}
	}
	if err := writeBundle(bundle, bundleConfig(s, prefix)); err != nil {
		removeBundle(bundle)
		return nil, fmt.Errorf("gvisor sandbox: %w", err)
	}
	var group *cgroup.Group
	if d.cgroups {
		if group, err = cgroup.New(s.ID, cgroup.Limits{MemoryBytes: s.Limits.MemoryBytes, Pids: hostPids(s.Limits.Pids), CPUs: s.Limits.CPUs}); err != nil {
			removeBundle(bundle)
			return nil, fmt.Errorf("gvisor sandbox: cgroup for %s: %w", s.ID, err)
		}
	}
	blockR, blockW, err := os.Pipe()
	if err != nil {
		d.undo(s.ID, bundle, group)
		return nil, err
	}
	args := append([]string{"-c", blockScript, "runsc", d.runsc}, d.globalFlags(s)...)
	args = append(args, "run", "--bundle", bundle, containerID(s.ID))
	cmd := exec.Command(d.sh, args...)
	cmd.Dir = bundle
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

	inst := &instance{d: d, id: s.ID, bundle: bundle, group: group, limits: s.Limits, blockW: blockW}
	o := sandbox.ProcOptions{
		ChannelOnStdin: true,
		ExtraFiles:     []*os.File{blockR},
		AfterStart: func(pid int) error {
			blockR.Close()
			return inst.release(pid)
		},
		Kill:    inst.kill,
		Cleanup: inst.cleanup,
	}
	if group != nil {
		o.Usage = inst.usage
	}
	p, err := sandbox.StartProc(cmd, o)
	if err != nil {
		blockR.Close()
		// A failed AfterStart has run Cleanup already; undoing twice is harmless.
		inst.closeBlock()
		d.undo(s.ID, bundle, group)
		return nil, fmt.Errorf("gvisor sandbox: %w", err)
	}
	return p, nil
}

// The host tasks of a sandbox are runsc's own (the CLI, the gofer, the
// Sentry's threads, the stub master: about 55 when idle, more under I/O)
// and, per task of the agent, at most a few (one stub process of 3 to 5
// threads per address space, a stub thread and a Sentry thread per running
// thread). The agent's own limit is RLIMIT_NPROC inside; the host's pids.max
// only bounds what a sandbox can cost the host, e.g. if the Sentry itself
// went astray.
const (
	runtimeTasks     = 128
	hostTasksPerTask = 8
)

// hostPids is the host cgroup's pids.max for an agent limited to pids tasks.
func hostPids(pids int) int {
	if pids <= 0 {
		return 0
	}
	return runtimeTasks + hostTasksPerTask*pids
}

// containerID is runsc's name for instance id. runsc looks containers up
// by unique prefix when no name matches exactly, so `runsc delete --force a-1`
// after a-1 is gone would destroy a-10: the '+', which instance ids never
// have, makes no container's name a prefix of another's.
func containerID(id string) string { return id + "+" }

// globalFlags are runsc's flags before the command.
func (d *Driver) globalFlags(s sandbox.Spec) []string {
	network := "none"
	if s.Network {
		network = "host"
	}
	return []string{
		"--root", d.state,
		"--platform=ptrace",
		"--network=" + network,
		"--ignore-cgroups",
		// The bind mounts keep the default --file-access-mounts=shared: the
		// Sentry revalidates what it cached, so an instance sees the agent
		// folder as it is on the host. (exclusive measured no faster here.)
	}
}

// undo removes what Start made before the instance ran.
func (d *Driver) undo(id, bundle string, group *cgroup.Group) {
	if cid := containerID(id); d.hasState(cid) {
		d.deleteContainer(cid)
	}
	d.killStrays(bundle)
	if group != nil {
		group.Kill()
		group.Remove()
	}
	removeBundle(bundle)
}

// instance is one sandbox's bookkeeping for the StartProc hooks.
type instance struct {
	d      *Driver
	id     string
	bundle string
	group  *cgroup.Group
	limits domain.Limits

	blockMu sync.Mutex
	blockW  *os.File
	pid     atomic.Int64 // the runsc CLI, once started
}

// release puts the (blocked) shell in the cgroup, then lets it exec runsc.
func (in *instance) release(pid int) error {
	if in.group != nil {
		if err := in.group.Add(pid); err != nil {
			return fmt.Errorf("gvisor sandbox: put runsc in its cgroup: %w", err)
		}
	}
	in.pid.Store(int64(pid))
	in.blockMu.Lock()
	defer in.blockMu.Unlock()
	if in.blockW == nil {
		return errors.New("gvisor sandbox: released twice")
	}
	_, err := in.blockW.Write([]byte("\n"))
	in.blockW.Close()
	in.blockW = nil
	if err != nil {
		return fmt.Errorf("gvisor sandbox: start runsc: %w", err)
	}
	return nil
}

func (in *instance) closeBlock() {
	in.blockMu.Lock()
	defer in.blockMu.Unlock()
	if in.blockW != nil {
		in.blockW.Close()
		in.blockW = nil
	}
}

// usage is the cgroup's memory and CPU time, which include runsc's own
// (about 35 MiB and a few tenths of a second at start), and as tasks the
// agent's processes (see agentProcesses).
func (in *instance) usage() (domain.Usage, bool) {
	u, err := in.group.Usage()
	if err != nil {
		return domain.Usage{}, false
	}
	return domain.Usage{MemoryBytes: u.MemoryBytes, CPUSeconds: u.CPUSeconds, Tasks: in.agentProcesses(),
		LimitHit: domain.Limit(in.group.LimitHit())}, true
}

// agentProcesses counts the agent's processes as the host sees them: the
// ptrace platform runs each address space of the sandbox in a stub process
// of its own, forked by the stub master the Sentry starts, three levels
// below the runsc CLI (CLI -> Sentry -> stub master -> stubs). The host
// cannot see the agent's threads (the stubs' threads are the platform's,
// and sleeping threads have none), so this is a lower bound of its
// processes plus threads: counting the host's tasks instead would charge
// runsc's fifty-odd threads, and 3 to 5 stub threads per process, to the
// agent. RLIMIT_NPROC, which the Sentry enforces, is the exact limit.
func (in *instance) agentProcesses() int {
	cli := int(in.pid.Load())
	pids, err := in.group.Pids()
	if err != nil || cli == 0 {
		return 1
	}
	parent := map[int]int{}
	for _, pid := range pids {
		parent[pid] = ppid(pid)
	}
	n := 0
	for _, pid := range pids {
		depth := 0
		for p := pid; p != cli && depth < 4; depth++ {
			next, ok := parent[p]
			if !ok {
				depth = -1 // not below the CLI
				break
			}
			p = next
		}
		if depth >= 3 {
			n++
		}
	}
	return max(n, 1)
}

// ppid is the parent of process pid (0 if it is gone).
func ppid(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

// kill stops the sandbox. With a cgroup: SIGKILL to the Sentry, its stubs
// and the gofer (in sessions of their own, out of reach of StartProc's
// process-group kill), then a moment for the runsc CLI to notice, reap them
// and remove the container's state, as it does when the container dies any
// other way. Killed along with them, the CLI would leave its children to be
// reaped by init and its state to `runsc delete`, which polls until init
// has reaped them: a second or more where init is slow to reap. Without a
// cgroup, `runsc kill` has the Sentry kill the container.
func (in *instance) kill() {
	if in.group == nil {
		in.d.runscCmd(2*time.Second, "kill", containerID(in.id), "KILL")
		return
	}
	cli := in.pid.Load()
	if cli == 0 {
		return // still held by blockScript: StartProc's kill will do
	}
	deadline := time.Now().Add(killGrace)
	for {
		pids, err := in.group.Pids()
		if err != nil {
			return
		}
		others := 0
		for _, pid := range pids {
			if pid != int(cli) {
				syscall.Kill(pid, syscall.SIGKILL)
				others++
			}
		}
		if (others == 0 && exited(int(cli))) || time.Now().After(deadline) {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// killGrace bounds how long kill waits for the runsc CLI to exit on its own.
const killGrace = 500 * time.Millisecond

// exited says whether process pid has exited (it is a zombie, or gone).
func exited(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z' || s[i+2] == 'X'
}

// killGroup SIGKILLs every process in the cgroup, again and again for up to
// wait, until it is empty; it says whether it is.
func (in *instance) killGroup(wait time.Duration) bool {
	deadline := time.Now().Add(wait)
	for {
		pids, err := in.group.Pids()
		if err != nil {
			return false
		}
		if len(pids) == 0 {
			return true
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// cleanup runs once the runsc CLI has exited: nothing of the container may
// survive it, and nothing of it is left on disk.
func (in *instance) cleanup(e *sandbox.Exit) {
	in.closeBlock()
	// runsc exits with 128+n when the container was killed by signal n.
	if e.Signal == "" {
		if code, ok := strings.CutPrefix(e.Status, "exit status "); ok {
			if n, err := strconv.Atoi(code); err == nil && n > 128 && n < 128+65 {
				if name := unix.SignalName(syscall.Signal(n - 128)); name != "" {
					e.Signal = name
					e.Status = "killed by signal " + name
				}
			}
		}
	}
	if in.group != nil {
		hit := in.group.LimitHit()
		if hit == "memory" && in.limits.MemoryBytes > 0 {
			e.Limit = "memory " + sandbox.MiB(in.limits.MemoryBytes)
		}
		// The cgroup's own Kill freezes the group first, and ptraced
		// processes (the Sentry's stubs) take the freezer's full timeout to
		// freeze: SIGKILL everything until the group is empty, and only
		// fall back on it if that does not do.
		if !in.killGroup(2 * time.Second) {
			if err := in.group.Kill(); err != nil {
				in.d.log.Warn("gvisor sandbox: processes survive", "instance", in.id, "error", err)
			}
		}
	}
	in.d.killStrays(in.bundle)
	// runsc run removes the container's state when it exits normally, not
	// when it was killed.
	if cid := containerID(in.id); in.d.hasState(cid) {
		in.d.deleteContainer(cid)
	}
	if in.group != nil {
		if err := in.group.Remove(); err != nil {
			in.d.log.Warn("gvisor sandbox: cgroup left behind", "instance", in.id, "error", err)
		}
	}
	if err := removeBundle(in.bundle); err != nil {
		in.d.log.Warn("gvisor sandbox: bundle left behind", "instance", in.id, "error", err)
	}
}

// deleteContainer removes runsc's state of container cid, killing what is
// left of it; runsc run does it itself when it exits normally.
func (d *Driver) deleteContainer(cid string) {
	d.runscCmd(10*time.Second, "delete", "--force", cid)
}

// hasState says whether runsc may keep state of container cid (its state
// and lock files are named after it); a false yes costs a futile delete.
func (d *Driver) hasState(cid string) bool {
	entries, err := os.ReadDir(d.state)
	if err != nil {
		return true
	}
	for _, e := range entries {
		if strings.Contains(e.Name(), cid) {
			return true
		}
	}
	return false
}

func (d *Driver) runscCmd(timeout time.Duration, args ...string) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.runsc, append([]string{"--root", d.state}, args...)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.Run() // errors: the container is already gone
}

// killStrays SIGKILLs any process whose command line names the bundle (the
// gofer and the Sentry do): the last resort when there is no cgroup, or a
// process escaped it.
func (d *Driver) killStrays(bundle string) {
	for range 50 {
		pids := processesNaming(bundle)
		if len(pids) == 0 {
			return
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.log.Warn("gvisor sandbox: processes survive SIGKILL", "bundle", bundle)
}

// processesNaming lists the processes whose command line has an argument
// that is bundle or ends with "="+bundle.
func processesNaming(bundle string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || len(b) == 0 {
			continue
		}
		for _, arg := range bytes.Split(b, []byte{0}) {
			a := string(arg)
			if a == bundle || strings.HasSuffix(a, "="+bundle) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// prefix is the installation prefix of python, which the sandbox must see.
func (d *Driver) prefix(ctx context.Context, python string) (string, error) {
	p, err := d.prefixes.Get(ctx, python)
	if err != nil {
		return "", fmt.Errorf("gvisor sandbox: %w", err)
	}
	return p, nil
}

// writeBundle makes the bundle directory: config.json and the root, an
// empty directory but for the symlinks of a merged-/usr system (/bin ->
// usr/bin ...). The root is per instance because the gofer creates the
// mount points of the bind mounts in it.
func writeBundle(bundle string, c *config) error {
	rootfs := filepath.Join(bundle, "rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return err
	}
	for _, dir := range systemDirs {
		if target, err := os.Readlink(dir); err == nil {
			if err := os.Symlink(target, filepath.Join(rootfs, dir)); err != nil {
				return err
			}
		}
	}
	c.Root.Path = rootfs
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o600)
}

// removeBundle deletes a bundle without ever deleting anything but what the
// driver and the gofer put there: config.json, symlinks, empty mount-point
// files and directories. A bind mount still in place (which would only be
// in the gofer's mount namespace, never ours) makes it refuse.
func removeBundle(bundle string) error {
	if _, err := os.Lstat(bundle); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if m := mountinfo.UnderNow(bundle); len(m) > 0 {
		return fmt.Errorf("%s has mounts (%s); not removing it", bundle, strings.Join(m, ", "))
	}
	os.Remove(filepath.Join(bundle, "config.json"))
	return removeEmpty(bundle)
}

// removeEmpty removes dir's tree of directories, symlinks and empty files.
func removeEmpty(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		st, err := os.Lstat(p)
		if err != nil {
			continue
		}
		switch {
		case st.IsDir():
			errs = append(errs, removeEmpty(p))
		case st.Mode()&fs.ModeSymlink != 0, st.Mode().IsRegular() && st.Size() == 0:
			errs = append(errs, os.Remove(p))
		default:
			errs = append(errs, fmt.Errorf("unexpected %s", p))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return syscall.Rmdir(dir)
}
