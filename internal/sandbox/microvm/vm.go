package microvm

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/digitalocean/go-qemu/qmp"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/sandbox"
)

// vmConfig is everything a VM's QEMU command line depends on. Two VMs with
// the same config have the same device model, which a snapshot restore
// needs.
type vmConfig struct {
	image     *Image
	agentDisk string // "" for none
	// persistDisk is a user's persistent folders' disk, writable ("" for
	// none); such a VM is never snapshotted.
	persistDisk string
	memoryMiB   int
	cpus        int
	workMiB     int
	network     bool
	accel       string // "tcg" or "kvm"
	kernelArgs  string // more guest kernel arguments (tscKernelArgs)
}

// tbSizeMiB bounds TCG's translation cache: QEMU's default (1 GiB in
// system mode) lets it grow to several hundred MiB of RSS per VM.
const tbSizeMiB = 32

// incomingFD is where a restored VM's QEMU finds the saved state: after
// StartProc's own channel at 3, unused by QEMU.
const incomingFD = 4

// The VM's unix sockets, in its folder: QEMU listens, this process connects.
var portSockets = []struct{ name, id, file string }{
	{"ra.control", "ctl", "k"}, {"ra.channel", "chan", "c"}, {"ra.stdout", "out", "o"}, {"ra.stderr", "err", "e"},
}

func (c vmConfig) args(dir string, incoming bool) []string {
	accel := "tcg,tb-size=" + strconv.Itoa(tbSizeMiB)
	cpu := "max"
	if c.accel == "kvm" {
		accel, cpu = "kvm", "host"
	}
	cmdline := fmt.Sprintf("console=hvc0 quiet panic=-1 ra.work=%d", c.workMiB)
	if debugConsole {
		cmdline = strings.Replace(cmdline, " quiet", "", 1)
	}
	if c.network {
		cmdline += " ra.net=1"
	}
	if c.kernelArgs != "" {
		cmdline += " " + c.kernelArgs
	}
	a := []string{
		"-M", "microvm,x-option-roms=off,isa-serial=off",
		"-accel", accel, "-cpu", cpu,
		"-m", strconv.Itoa(c.memoryMiB) + "M", "-smp", strconv.Itoa(c.cpus),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", c.image.KernelPath(), "-initrd", c.image.InitrdPath(), "-append", cmdline,
		"-qmp", "unix:" + filepath.Join(dir, "q") + ",server=on,wait=off",
		"-drive", "if=none,id=root,format=raw,readonly=on,file=" + c.image.RootPath(),
		"-device", "virtio-blk-device,drive=root,serial=ra-root",
	}
	if c.agentDisk != "" {
		a = append(a, "-drive", "if=none,id=agent,format=raw,readonly=on,file="+c.agentDisk,
			"-device", "virtio-blk-device,drive=agent,serial=ra-agent")
	}
	if c.persistDisk != "" {
		a = append(a, "-drive", "if=none,id=persist,format=raw,file="+c.persistDisk,
			"-device", "virtio-blk-device,drive=persist,serial=ra-persist")
	}
	if c.network {
		a = append(a, "-netdev", "user,id=net0", "-device", "virtio-net-device,netdev=net0")
	}
	// The guest's console (kernel messages, the initramfs) goes to QEMU's
	// own stderr. The runner's channel, its output and the supervisor's
	// control port are unix sockets QEMU listens on and this process
	// connects to. Each port has a virtio-serial device of its own: with
	// several ports on one device, QEMU dropped the host's connection to
	// one of them (measured: the channel's, every time).
	a = append(a, "-device", "virtio-serial-device,id=vcon",
		"-chardev", "file,id=con,path=/dev/stderr", "-device", "virtconsole,chardev=con,bus=vcon.0")
	for _, p := range portSockets {
		a = append(a, "-device", "virtio-serial-device,id=v"+p.id,
			"-chardev", fmt.Sprintf("socket,id=%s,path=%s,server=on,wait=off", p.id, filepath.Join(dir, p.file)),
			"-device", fmt.Sprintf("virtserialport,chardev=%s,name=%s,bus=v%s.0", p.id, p.name, p.id))
	}
	if incoming {
		// Deferred: the ports are connected first, so that the restored
		// guest never sees them closed.
		a = append(a, "-incoming", "defer")
	}
	return a
}

// vm is one running QEMU and the host's ends of its ports.
type vm struct {
	proc    *sandbox.Proc
	dir     string // the VM's own folder: its sockets
	qmpPath string
	ctl     net.Conn
	channel net.Conn
	stdout  net.Conn
	stderr  net.Conn
	console *tail // QEMU's own stderr: the guest console and QEMU's errors

	replies  chan map[string]any // control messages other than exit and usage
	ctlDone  chan struct{}       // the control reader has ended
	mu       sync.Mutex
	usage    domain.Usage
	usageAt  time.Time
	usageReq chan struct{} // closed by the next usage reply
	exit     map[string]any
	guestPID int
}

// launch starts QEMU for c and connects to its ports. snapshot, when set,
// is a saved VM state to restore instead of booting.
func launch(qemu, dir string, c vmConfig, snapshot *os.File, deadline time.Time) (*vm, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	v := &vm{dir: dir, qmpPath: filepath.Join(dir, "q"), console: &tail{max: 40},
		replies: make(chan map[string]any, 8), ctlDone: make(chan struct{})}
	if len(v.qmpPath) > 100 {
		return nil, fmt.Errorf("the microVM state folder %s is too deep for a unix socket path; use a shorter --data-dir", dir)
	}
	cmd := qemuCommand(qemu, c.args(dir, snapshot != nil))
	cmd.Dir = dir
	cmd.Env = append(cmd.Env, "PATH=/usr/bin:/bin", "RUNAGENT_MICROVM="+dir)
	var o sandbox.ProcOptions
	if snapshot != nil {
		// StartProc's own channel is at fd 3 and unused; the state follows.
		o.ExtraFiles = []*os.File{snapshot}
	}
	proc, err := sandbox.StartProc(cmd, o)
	if err != nil {
		return nil, err
	}
	proc.Channel().Close()
	v.proc = proc
	qout, qerr := proc.Output()
	go v.console.collect(qout)
	go v.console.collect(qerr)
	conns := make([]net.Conn, len(portSockets))
	for i, p := range portSockets {
		if conns[i], err = v.dial(filepath.Join(dir, p.file), deadline); err != nil {
			for _, c := range conns[:i] {
				c.Close()
			}
			v.kill()
			<-proc.Done()
			return nil, err
		}
	}
	v.ctl, v.channel, v.stdout, v.stderr = conns[0], conns[1], conns[2], conns[3]
	go v.readControl()
	return v, nil
}

// dial connects to one of QEMU's sockets, waiting for QEMU to make it.
func (v *vm) dial(path string, deadline time.Time) (net.Conn, error) {
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			return c, nil
		}
		select {
		case <-v.proc.Done():
			return nil, fmt.Errorf("QEMU exited (%s)%s", v.proc.Exit().Status, v.console.describe())
		case <-time.After(2 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("QEMU did not open %s: %w", path, err)
		}
	}
}

// readControl reads the supervisor's messages until QEMU is gone.
func (v *vm) readControl() {
	defer close(v.ctlDone)
	sc := bufio.NewScanner(v.ctl)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			v.console.add("bad control message: " + sc.Text())
			continue
		}
		switch m["op"] {
		case "usage":
			v.mu.Lock()
			v.usage = domain.Usage{
				MemoryBytes: int64(num(m["memory"])),
				CPUSeconds:  num(m["cpu_usec"]) / 1e6,
				Tasks:       int(num(m["tasks"])),
				LimitHit:    domain.Limit(str(m["limit"])),
			}
			v.usageAt = time.Now()
			if v.usageReq != nil {
				close(v.usageReq)
				v.usageReq = nil
			}
			v.mu.Unlock()
		case "exit":
			v.mu.Lock()
			v.exit = m
			v.mu.Unlock()
		default:
			select {
			case v.replies <- m:
			default:
				v.console.add("unexpected control message: " + sc.Text())
			}
		}
	}
}

// send writes one control message.
func (v *vm) send(m map[string]any) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	_, err = v.ctl.Write(append(b, '\n'))
	return err
}

// await waits for the control reply op, or the VM's end, or the deadline.
func (v *vm) await(op string, deadline time.Time) (map[string]any, error) {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	for {
		select {
		case m := <-v.replies:
			switch m["op"] {
			case op:
				return m, nil
			case "error":
				return nil, fmt.Errorf("microVM guest: %s", str(m["message"]))
			}
			v.console.add(fmt.Sprintf("unexpected control message %v while waiting for %s", m["op"], op))
		case <-v.proc.Done():
			return nil, fmt.Errorf("the microVM exited (%s) while waiting for %q%s", v.proc.Exit().Status, op, v.console.describe())
		case <-t.C:
			return nil, fmt.Errorf("the microVM did not answer %q in time%s", op, v.console.describe())
		}
	}
}

// readUsage asks the guest for its accounting, waiting at most wait.
func (v *vm) readUsage(maxAge, wait time.Duration) (domain.Usage, bool) {
	v.mu.Lock()
	if !v.usageAt.IsZero() && time.Since(v.usageAt) < maxAge {
		u := v.usage
		v.mu.Unlock()
		return u, true
	}
	req := v.usageReq
	if req == nil {
		req = make(chan struct{})
		v.usageReq = req
		v.mu.Unlock()
		if v.send(map[string]any{"op": "usage"}) != nil {
			return domain.Usage{}, false
		}
	} else {
		v.mu.Unlock()
	}
	select {
	case <-req:
	case <-time.After(wait):
	case <-v.proc.Done():
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.usage, !v.usageAt.IsZero()
}

// guestExit is the supervisor's report of how the runner ended, if it sent
// one before QEMU went away.
func (v *vm) guestExit() map[string]any {
	select {
	case <-v.ctlDone:
	case <-time.After(2 * time.Second):
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.exit
}

func (v *vm) kill() { v.proc.Kill() }

// monitor connects to the VM's QMP socket.
func (v *vm) monitor() (*qmp.SocketMonitor, error) {
	var last error
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		mon, err := qmp.NewSocketMonitor("unix", v.qmpPath, time.Second)
		if err != nil {
			last = err
			continue
		}
		if err := mon.Connect(); err != nil {
			mon.Disconnect()
			return nil, fmt.Errorf("QMP handshake: %w", err)
		}
		return mon, nil
	}
	return nil, fmt.Errorf("QMP socket %s: %w", v.qmpPath, last)
}

// qmpRun runs one QMP command and decodes its "return" into out (if not nil).
func qmpRun(mon *qmp.SocketMonitor, out any, command string, args map[string]any) error {
	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	raw, err := mon.Run(b)
	if err != nil {
		return fmt.Errorf("QMP %s: %w", command, err)
	}
	if out == nil {
		return nil
	}
	var resp struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(raw, &resp); err != nil {
		return fmt.Errorf("QMP %s: %w", command, err)
	}
	return json.Unmarshal(resp.Return, out)
}

func num(v any) float64 {
	f, _ := v.(float64)
	return f
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

// tail keeps the last lines QEMU and the guest console printed.
type tail struct {
	mu    sync.Mutex
	lines []string
	max   int
}

func (t *tail) add(line string) {
	if debugConsole {
		fmt.Fprintln(os.Stderr, "microvm console:", line)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lines = append(t.lines, line)
	if len(t.lines) > t.max {
		t.lines = t.lines[len(t.lines)-t.max:]
	}
}

func (t *tail) collect(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if line := bytes.TrimSpace(sc.Bytes()); len(line) > 0 {
			t.add(string(line))
		}
	}
}

func (t *tail) describe() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == 0 {
		return ""
	}
	var b bytes.Buffer
	b.WriteString("; the VM printed:")
	for _, l := range t.lines {
		b.WriteString("\n  ")
		b.WriteString(l)
	}
	return b.String()
}

// debugConsole (RUNAGENT_MICROVM_DEBUG=1) copies every VM's console to
// stderr as it comes, and boots the kernel without "quiet".
var debugConsole = os.Getenv("RUNAGENT_MICROVM_DEBUG") == "1"
