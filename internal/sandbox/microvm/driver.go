// Package microvm is the strongest sandbox driver: every instance is a
// minimal virtual machine (QEMU's microvm machine, Firecracker's model) with
// its own kernel, booted from an image that `runagent microvm image build`
// makes from Debian packages.
//
// The agent's folder and virtualenv reach the guest as a second read-only
// disk; its environment and every call go over virtio serial ports backed
// by socketpairs this process holds. After the first instance of an agent
// has imported it, the VM's state is saved; later instances are restored
// from it instead of booting, and one restored VM per agent is kept warm.
package microvm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/runagent-go/runagent/internal/runproto"
	"github.com/runagent-go/runagent/internal/sandbox"
)

// Guest memory: an agent's memory limit plus room for the guest kernel,
// the supervisor and the page cache; without a limit, defaultMemoryMiB.
const (
	overheadMiB      = 160
	minMemoryMiB     = 256
	defaultMemoryMiB = 512
)

// Options configure the microvm driver beyond sandbox.Options.
type Options struct {
	// Image is the guest image folder ("" for the default, see
	// `runagent microvm image build`).
	Image string
	// Accel is "auto" (probe hardware acceleration by booting with a
	// deadline, else emulate), "kvm" or "tcg" ("" is "auto").
	Accel string
	// Warm is how many VMs restored from an agent's snapshot are kept ready
	// for its next instances (0: none; the CLI's default is 1).
	Warm int
	// WarmTTL: an agent's warm VMs are stopped when none of its instances
	// started for this long, and its snapshot and agent disk removed after
	// six times as long (0: 10 minutes).
	WarmTTL time.Duration
}

// Driver starts instances as microVMs.
type Driver struct {
	o     sandbox.Options
	mo    Options
	log   *slog.Logger
	qemu  string
	image *Image
	warmN int
	// kernelArgs tell guest kernels the host's TSC rate (tscKernelArgs).
	kernelArgs string

	accelOnce sync.Once
	accel     string

	disks   diskCache
	persist persistDisks
	seq     atomic.Int64

	mu        sync.Mutex
	snaps     map[string]*snapshot
	taking    map[string]bool  // snapshots being saved
	warm      map[string][]*vm // restored VMs ready to hand out, by snapshot key
	refilling map[string]bool  // a warm VM is being restored
	closed    bool
	stopSweep chan struct{} // closed by Close: ends sweepLoop
}

// snapshot is a VM saved right after its runner answered INIT.
type snapshot struct {
	key    string
	path   string
	cfg    vmConfig
	ready  []byte    // the READY body
	before []byte    // frames the runner sent before READY (its LOGs), replayed
	used   time.Time // the last start that found it (guarded by Driver.mu)
}

// New checks for QEMU and the guest image.
func New(o sandbox.Options, mo Options) (*Driver, error) {
	if err := sandbox.NeedsLinux("microvm"); err != nil {
		return nil, err
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return nil, errors.New("the microvm sandbox needs QEMU: install it with `apt-get install qemu-system-x86`")
	}
	dir := mo.Image
	if dir == "" {
		dir = DefaultImageDir()
	}
	im, err := LoadImage(dir)
	if err != nil {
		return nil, err
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	switch mo.Accel {
	case "", "auto", "kvm", "tcg":
	default:
		return nil, fmt.Errorf("microVM acceleration %q: want auto, kvm or tcg", mo.Accel)
	}
	// What a previous run left (VM folders, snapshots holding agents'
	// memory and environment) is not reused: snapshots are per run.
	for _, sub := range []string{"vm", "snapshots", "disks"} {
		if err := os.RemoveAll(filepath.Join(o.StateDir, sub)); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(filepath.Join(o.StateDir, sub), 0o700); err != nil {
			return nil, err
		}
	}
	d := &Driver{o: o, mo: mo, log: o.Log, qemu: qemu, image: im, warmN: max(mo.Warm, 0), kernelArgs: tscKernelArgs(),
		snaps: map[string]*snapshot{}, taking: map[string]bool{}, warm: map[string][]*vm{}, refilling: map[string]bool{},
		stopSweep: make(chan struct{})}
	d.disks.dir = filepath.Join(o.StateDir, "disks")
	d.disks.image = im
	go d.sweepLoop()
	return d, nil
}

func (d *Driver) Name() string { return "microvm" }

// Image is the guest image the driver boots.
func (d *Driver) Image() *Image { return d.image }

// Close stops the warm VMs. Instances handed out are their owners' to stop.
func (d *Driver) Close() error {
	d.mu.Lock()
	if !d.closed {
		close(d.stopSweep)
	}
	d.closed = true
	warm := d.warm
	d.warm = map[string][]*vm{}
	d.mu.Unlock()
	for _, vms := range warm {
		for _, v := range vms {
			v.kill()
			<-v.proc.Done()
			os.RemoveAll(v.dir)
		}
	}
	return nil
}

// Start boots or restores a VM for spec and returns it once its runner is
// ready (when spec.Init is set) or started.
func (d *Driver) Start(ctx context.Context, spec sandbox.Spec) (sandbox.Instance, error) {
	if err := sandbox.CheckSpec(spec); err != nil {
		return nil, err
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(2 * time.Minute)
	}
	disk, err := d.disks.get(spec.AgentDir, spec.Venv)
	if err != nil {
		return nil, err
	}
	cfg := vmConfig{
		image: d.image, agentDisk: disk, memoryMiB: memoryMiB(spec.Limits.MemoryBytes), cpus: vCPUs(spec.Limits.CPUs),
		workMiB: workMiB(spec.Limits.WorkDirBytes), network: spec.Network, accel: d.acceleration(),
		kernelArgs: d.kernelArgs,
	}
	start := d.startMessage(spec)
	init, err := guestInit(spec.Init)
	if err != nil {
		return nil, err
	}
	if len(spec.Mounts) > 0 {
		return d.startPersistent(ctx, cfg, start, init, spec, deadline)
	}
	key := snapshotKey(cfg, start, init)
	if init != nil {
		if snap := d.snapshot(key); snap != nil {
			inst, err := d.restore(snap, spec, deadline)
			if err == nil {
				return inst, nil
			}
			d.log.Warn("microVM restore failed; booting instead", "instance", spec.ID, "err", err)
		}
	}
	return d.boot(cfg, key, start, init, spec, deadline)
}

// startPersistent boots a VM with a user's persistent folders' disk (no
// snapshot: see persist.go), once the user's previous VM has let it go.
func (d *Driver) startPersistent(ctx context.Context, cfg vmConfig, start map[string]any, init []byte, spec sandbox.Spec, deadline time.Time) (sandbox.Instance, error) {
	if spec.MountsDisk == "" {
		return nil, fmt.Errorf("microvm sandbox: instance %s has persistent folders but no disk to keep them on", spec.ID)
	}
	release, err := d.persist.acquire(ctx, spec.MountsDisk)
	if err != nil {
		return nil, err
	}
	if err := ensureMountsDisk(spec); err != nil {
		release()
		return nil, err
	}
	cfg.persistDisk = spec.MountsDisk
	start["mounts"] = persistTargets(spec.Mounts)
	inst, err := d.boot(cfg, "", start, init, spec, deadline)
	if err != nil {
		release()
		return nil, err
	}
	go func() { <-inst.Done(); release() }()
	return inst, nil
}

// boot starts a fresh VM, starts the runner and, with init, initializes it
// and saves the snapshot later instances restore from.
func (d *Driver) boot(cfg vmConfig, key string, start map[string]any, init []byte, spec sandbox.Spec, deadline time.Time) (sandbox.Instance, error) {
	v, err := launch(d.qemu, d.vmDir(), cfg, nil, deadline)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (sandbox.Instance, error) {
		v.kill()
		<-v.proc.Done()
		os.RemoveAll(v.dir)
		return nil, err
	}
	if _, err := v.await("hello", deadline); err != nil {
		return fail(err)
	}
	if err := v.send(start); err != nil {
		return fail(err)
	}
	if _, err := v.await("started", deadline); err != nil {
		return fail(err)
	}
	inst := newInstance(v, spec.Limits)
	if init == nil {
		return inst, nil
	}
	before, ready, err := initialize(v, init, deadline)
	if err != nil {
		err = fmt.Errorf("%w%s%s", err, printed(v.stderr), v.console.describe())
		inst.Kill()
		<-inst.Done()
		if e := inst.Exit(); e.Status != "" && e.Code >= 0 {
			return nil, fmt.Errorf("%w (the runner ended: %s)", err, e.Status)
		}
		return nil, err
	}
	inst.ready, inst.before = ready, before
	if key != "" && d.claim(key) {
		t0 := time.Now()
		snap, err := d.save(v, cfg, key, ready, before)
		d.release(key, snap)
		if err != nil {
			d.log.Warn("microVM snapshot failed; instances of this agent will boot", "instance", spec.ID, "err", err)
		} else {
			d.log.Debug("microVM snapshot saved", "instance", spec.ID, "took", time.Since(t0))
			// The booted VM has touched more of its memory than a restored
			// one ever does (the boot, the import, pages free now but not
			// zero): measured 266 MiB of the host against 154 MiB for a
			// 256 MiB guest. A restored copy takes its place, so that every
			// instance costs the same; restore also refills the warm pool.
			r, err := d.restore(snap, spec, deadline)
			if err == nil {
				inst.Kill()
				<-inst.Done()
				return r, nil
			}
			d.log.Warn("microVM restore right after the snapshot failed; keeping the booted VM", "instance", spec.ID, "err", err)
			go d.refill(snap)
		}
	}
	return inst, nil
}

// restore hands out a VM restored from snap: a warm one if there is one.
func (d *Driver) restore(snap *snapshot, spec sandbox.Spec, deadline time.Time) (sandbox.Instance, error) {
	v := d.takeWarm(snap.key)
	go d.refill(snap)
	if v == nil {
		var err error
		if v, err = d.restoreVM(snap, deadline); err != nil {
			return nil, err
		}
	}
	// Every copy of a snapshot starts with the same memory: the guest
	// kernel's random generator gets fresh seed and the clock the time
	// before the runner may run anything, then the runner reseeds its own.
	seed := make([]byte, 64)
	rand.Read(seed)
	if err := v.send(map[string]any{"op": "resume", "seed": hex.EncodeToString(seed), "time_ns": time.Now().UnixNano()}); err != nil {
		v.kill()
		return nil, err
	}
	if _, err := v.await("resumed", deadline); err != nil {
		v.kill()
		return nil, err
	}
	if _, err := v.channel.Write(runproto.AppendFrame(nil, runproto.KindResume, 0, nil)); err != nil {
		v.kill()
		return nil, err
	}
	inst := newInstance(v, spec.Limits)
	inst.ready, inst.before = snap.ready, snap.before
	return inst, nil
}

// restoreVM starts a QEMU that loads snap's state and runs on from it.
func (d *Driver) restoreVM(snap *snapshot, deadline time.Time) (*vm, error) {
	f, err := os.Open(snap.path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	v, err := launch(d.qemu, d.vmDir(), snap.cfg, f, deadline)
	if err != nil {
		return nil, err
	}
	mon, err := v.monitor()
	if err == nil {
		err = qmpRun(mon, nil, "migrate-incoming", map[string]any{"uri": fmt.Sprintf("fd:%d", incomingFD)})
		mon.Disconnect()
	}
	if err != nil {
		v.kill()
		<-v.proc.Done()
		os.RemoveAll(v.dir)
		return nil, fmt.Errorf("restoring the VM: %w%s", err, v.console.describe())
	}
	return v, nil
}

func (d *Driver) vmDir() string {
	return filepath.Join(d.o.StateDir, "vm", fmt.Sprintf("%d", d.seq.Add(1)))
}

// startMessage is the supervisor's "start": the runner's command line,
// environment and limits, with host paths mapped to the guest's.
func (d *Driver) startMessage(spec sandbox.Spec) map[string]any {
	python := GuestPython
	if spec.Venv != "" {
		python = GuestVenv + "/bin/python3"
	}
	argv := []string{python}
	for _, a := range spec.Args {
		if a == spec.Script {
			a = GuestRunnerPath
		}
		argv = append(argv, a)
	}
	argv = append(argv, "--fd", "3")
	return map[string]any{
		"op": "start", "argv": argv, "env": guestEnv(spec), "cwd": GuestAgentDir, "uid": GuestUID,
		"memory": spec.Limits.MemoryBytes, "pids": spec.Limits.Pids, "cpus": spec.Limits.CPUs,
	}
}

// hostOnly are host variables that mean nothing, or the wrong thing, in
// the guest.
var hostOnly = map[string]bool{"PATH": true, "HOME": true, "PWD": true, "OLDPWD": true, "TMPDIR": true,
	"SHELL": true, "VIRTUAL_ENV": true, "PYTHONHOME": true, "PYTHONPATH": true, "PYTHONSTARTUP": true}

func guestEnv(spec sandbox.Spec) []string {
	path := "/usr/local/bin:/usr/bin:/bin"
	env := []string{"HOME=/work", "TMPDIR=/tmp", "LANG=C.UTF-8"}
	if spec.Venv != "" {
		path = GuestVenv + "/bin:" + path
		env = append(env, "VIRTUAL_ENV="+GuestVenv)
	}
	env = append(env, "PATH="+path)
	for _, kv := range spec.Env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || hostOnly[k] {
			continue
		}
		if spec.Venv != "" {
			v = strings.ReplaceAll(v, spec.Venv, GuestVenv)
		}
		env = append(env, k+"="+strings.ReplaceAll(v, spec.AgentDir, GuestAgentDir))
	}
	return env
}

// guestInit is INIT with the agent's folder where the guest sees it.
func guestInit(body []byte) ([]byte, error) {
	if body == nil {
		return nil, nil
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("runner INIT: %w", err)
	}
	m["agent_dir"] = GuestAgentDir
	return json.Marshal(m)
}

func memoryMiB(limit int64) int {
	if limit <= 0 {
		return defaultMemoryMiB
	}
	return max(minMemoryMiB, int(math.Ceil(float64(limit)/(1<<20)))+overheadMiB)
}

func workMiB(b int64) int {
	if b <= 0 {
		return 64
	}
	return max(1, int(math.Ceil(float64(b)/(1<<20))))
}

// snapshotKey names what a snapshot holds: the device model and boot
// options, the runner's start and its INIT. Instances that agree on all of
// them can share one.
func snapshotKey(c vmConfig, start map[string]any, init []byte) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s %s %d %d %d %t %s\n", c.image.ID(), c.agentDisk, c.memoryMiB, c.cpus, c.workMiB, c.network, c.accel)
	b, _ := json.Marshal(start)
	h.Write(b)
	h.Write([]byte{0})
	h.Write(init)
	return hex.EncodeToString(h.Sum(nil))[:24]
}

func (d *Driver) snapshot(key string) *snapshot {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.snaps[key]
	if s != nil {
		s.used = time.Now()
	}
	return s
}

// claim reports whether the caller is the one to save key's snapshot.
func (d *Driver) claim(key string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.snaps[key] != nil || d.taking[key] {
		return false
	}
	d.taking[key] = true
	return true
}

func (d *Driver) release(key string, snap *snapshot) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.taking, key)
	if snap != nil {
		snap.used = time.Now()
		d.snaps[key] = snap
	}
}

// save writes v's state to the key's snapshot file over QMP and lets v run
// on. It runs before v is handed out: nothing of a call may be in it.
func (d *Driver) save(v *vm, cfg vmConfig, key string, ready, before []byte) (*snapshot, error) {
	if err := v.send(map[string]any{"op": "quiesce"}); err != nil {
		return nil, err
	}
	if _, err := v.await("quiesced", time.Now().Add(30*time.Second)); err != nil {
		return nil, err
	}
	mon, err := v.monitor()
	if err != nil {
		return nil, err
	}
	defer mon.Disconnect()
	path := filepath.Join(d.o.StateDir, "snapshots", key)
	tmp := path + ".tmp"
	if err := qmpRun(mon, nil, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(8) << 30}); err != nil {
		return nil, err
	}
	if err := qmpRun(mon, nil, "migrate", map[string]any{"uri": "exec:umask 077 && cat > " + shellQuote(tmp)}); err != nil {
		return nil, err
	}
	var st struct {
		Status string `json:"status"`
		Error  string `json:"error-desc"`
	}
	for end := time.Now().Add(2 * time.Minute); ; time.Sleep(10 * time.Millisecond) {
		if err := qmpRun(mon, &st, "query-migrate", nil); err != nil {
			return nil, err
		}
		if st.Status == "completed" {
			break
		}
		if st.Status == "failed" || st.Status == "cancelled" || time.Now().After(end) {
			qmpRun(mon, nil, "cont", nil)
			os.Remove(tmp)
			return nil, fmt.Errorf("saving the VM state: migration %s %s", st.Status, st.Error)
		}
	}
	// The source stops when its state is out; it is still the instance.
	if err := qmpRun(mon, nil, "cont", nil); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, err
	}
	return &snapshot{key: key, path: path, cfg: cfg, ready: ready, before: before}, nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// takeWarm hands out a warm VM of key, if one is alive.
func (d *Driver) takeWarm(key string) *vm {
	d.mu.Lock()
	defer d.mu.Unlock()
	for vms := d.warm[key]; len(vms) > 0; vms = d.warm[key] {
		v := vms[0]
		d.warm[key] = vms[1:]
		select {
		case <-v.proc.Done():
			os.RemoveAll(v.dir)
		default:
			return v
		}
	}
	return nil
}

// refill restores VMs from snap until warmN are waiting.
func (d *Driver) refill(snap *snapshot) {
	d.mu.Lock()
	if d.closed || d.refilling[snap.key] || len(d.warm[snap.key]) >= d.warmN {
		d.mu.Unlock()
		return
	}
	d.refilling[snap.key] = true
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.refilling, snap.key)
		d.mu.Unlock()
	}()
	for {
		v, err := d.restoreVM(snap, time.Now().Add(time.Minute))
		if err != nil {
			d.log.Warn("microVM: could not restore a warm VM", "err", err)
			return
		}
		d.mu.Lock()
		if d.closed {
			d.mu.Unlock()
			v.kill()
			return
		}
		d.warm[snap.key] = append(d.warm[snap.key], v)
		full := len(d.warm[snap.key]) >= d.warmN
		d.mu.Unlock()
		go func() { <-v.proc.Done(); os.RemoveAll(v.dir) }()
		if full {
			return
		}
	}
}

// initialize sends INIT over v's channel and reads until READY: the frames
// before it (the runner's LOGs while importing) and READY's body.
func initialize(v *vm, init []byte, deadline time.Time) (before, ready []byte, err error) {
	ch := v.channel
	ch.SetDeadline(deadline)
	defer ch.SetDeadline(time.Time{})
	if _, err := ch.Write(runproto.AppendFrame(nil, runproto.KindInit, 0, init)); err != nil {
		return nil, nil, err
	}
	for {
		f, err := runproto.ReadFrame(ch, runproto.MaxControlFrame)
		if err != nil {
			return nil, nil, readErr(err)
		}
		if f.Kind == runproto.KindReady {
			return before, f.Body, nil
		}
		before = runproto.AppendFrame(before, f.Kind, f.Call, f.Body)
	}
}

// printed is what the runner printed on stderr so far, for start-up errors
// (nobody reads its output before the instance is handed out).
func printed(r net.Conn) string {
	r.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	defer r.SetReadDeadline(time.Time{})
	b := make([]byte, 4096)
	n, _ := io.ReadAtLeast(r, b, len(b))
	if n == 0 {
		return ""
	}
	return "; the runner printed: " + strings.TrimSpace(string(b[:n]))
}

func readErr(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return errors.New("the agent did not finish importing in time")
	}
	if errors.Is(err, io.EOF) {
		return errors.New("the Python runner exited during start-up")
	}
	return err
}

// vCPUs is the VM's processor count for a CPU limit: whole vCPUs, rounded
// up (the guest's cgroup caps a fraction), 1 without a limit.
func vCPUs(cpus float64) int {
	return max(1, int(math.Ceil(cpus)))
}
