//go:build linux

package cgroup

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// requireCgroups fails the test when no cgroup hierarchy is usable, unless
// RUNAGENT_TEST_NO_CGROUP=1 asks to skip instead.
func requireCgroups(t *testing.T) string {
	t.Helper()
	v, err := Available()
	if err != nil {
		if os.Getenv("RUNAGENT_TEST_NO_CGROUP") == "1" {
			t.Skipf("cgroups unavailable (skipped because RUNAGENT_TEST_NO_CGROUP=1): %v", err)
		}
		t.Fatalf("cgroups unavailable (run as root on a writable cgroup fs, or set RUNAGENT_TEST_NO_CGROUP=1 to skip): %v", err)
	}
	return v
}

// newGroup makes a group unique to this test run and removes it afterwards.
func newGroup(t *testing.T, l Limits) *Group {
	t.Helper()
	name := fmt.Sprintf("test-%d-%s", os.Getpid(), strings.NewReplacer("/", "-", " ", "_").Replace(t.Name()))
	g, err := New(name, l)
	if err != nil {
		t.Fatal(err)
	}
	if want := "/runagent/" + name; g.Path() != want {
		t.Errorf("Path() = %q, want %q", g.Path(), want)
	}
	t.Cleanup(func() {
		if err := g.Kill(); err != nil {
			t.Errorf("cleanup Kill: %v", err)
		}
		if err := g.Remove(); err != nil {
			t.Errorf("cleanup Remove: %v", err)
		}
		// Whatever hierarchies exist, none may keep the group.
		mounts, err := cgroupMounts()
		if err != nil {
			t.Error(err)
		}
		for _, m := range mounts {
			if d := m.point + g.Path(); isDir(d) {
				t.Errorf("%s left behind", d)
			}
		}
	})
	return g
}

var python string

func realPython(t *testing.T) string {
	t.Helper()
	if python == "" {
		out, err := exec.Command("python3", "-c", "import sys,os;print(os.path.realpath(sys.executable))").Output()
		if err != nil {
			t.Fatalf("python3 not usable: %v", err)
		}
		python = strings.TrimSpace(string(out))
	}
	return python
}

type proc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

// start runs argv blocked on reading a line from stdin, and moves it into g
// before release lets it go on: everything it does next is charged to g.
func start(t *testing.T, g *Group, argv ...string) *proc {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
	})
	if err := g.Add(cmd.Process.Pid); err != nil {
		t.Fatalf("Add(%d): %v", cmd.Process.Pid, err)
	}
	return p
}

func (p *proc) release(t *testing.T) {
	t.Helper()
	if _, err := io.WriteString(p.stdin, "go\n"); err != nil {
		t.Fatal(err)
	}
}

func (p *proc) line(t *testing.T) string {
	t.Helper()
	s, err := p.out.ReadString('\n')
	if err != nil {
		t.Fatalf("reading from the process: %v (got %q)", err, s)
	}
	return strings.TrimSpace(s)
}

// wait returns the rest of the output and how the process ended.
func (p *proc) wait() (string, error) {
	_ = p.stdin.Close()
	out, _ := io.ReadAll(p.out)
	return string(out), p.cmd.Wait()
}

func signaled(err error, sig syscall.Signal) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == sig
}

func TestNameValidation(t *testing.T) {
	for _, name := range []string{"../x", "", ".", "..", "a/b", "a b", "x\n", "/abs", strings.Repeat("a", 201)} {
		if g, err := New(name, Limits{}); err == nil {
			_ = g.Remove()
			t.Errorf("New(%q) succeeded", name)
		} else if !strings.Contains(err.Error(), "invalid group name") {
			t.Errorf("New(%q): %v, want an invalid-name error", name, err)
		}
	}
	for _, rel := range []string{"", "/", "../x", "/runagent/../../etc", "runagent//x/"} {
		if _, err := Open(rel); err == nil || !strings.Contains(err.Error(), "invalid group path") {
			t.Errorf("Open(%q): %v, want an invalid-path error", rel, err)
		}
	}
	if _, err := New("ok", Limits{MemoryBytes: -1}); err == nil {
		t.Error("New with a negative limit succeeded")
	}
}

func TestParseMountinfo(t *testing.T) {
	in := `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/my\040memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
bad line
`
	want := []mount{
		{"/sys/fs/cgroup/cpu,cpuacct", "cgroup", "rw,cpu,cpuacct"},
		{"/sys/fs/cgroup/my memory", "cgroup", "rw,memory"},
		{"/sys/fs/cgroup/unified", "cgroup2", "rw"},
	}
	if got := parseMountinfo([]byte(in)); !slices.Equal(got, want) {
		t.Errorf("parseMountinfo:\n got %q\nwant %q", got, want)
	}
}

func TestAvailable(t *testing.T) {
	v := requireCgroups(t)
	if v != "v1" && v != "v2" {
		t.Fatalf("Available() = %q", v)
	}
	t.Logf("cgroup %s", v)
}

func TestMemoryLimit(t *testing.T) {
	requireCgroups(t)
	g := newGroup(t, Limits{MemoryBytes: 64 << 20, Pids: 20})
	p := start(t, g, realPython(t), "-c", `
import sys
sys.stdin.readline()
chunks = []
for i in range(200):
    b = bytearray(1 << 20)
    b[::4096] = b"\x01" * (len(b) // 4096)  # touch every page
    chunks.append(b)
print("survived 200 MB", flush=True)
`)
	if hit := g.LimitHit(); hit != "" {
		t.Errorf("LimitHit() before allocating = %q", hit)
	}
	p.release(t)
	out, err := p.wait()
	if !signaled(err, syscall.SIGKILL) {
		t.Fatalf("process ended with %v (output %q), want killed by SIGKILL", err, out)
	}
	if hit := g.LimitHit(); hit != "memory" {
		t.Errorf("LimitHit() = %q, want memory", hit)
	}
}

func TestPidsLimit(t *testing.T) {
	requireCgroups(t)
	g := newGroup(t, Limits{Pids: 5})
	p := start(t, g, realPython(t), "-c", `
import sys, threading
sys.stdin.readline()
stop = threading.Event()
started = 0
try:
    for i in range(20):
        threading.Thread(target=stop.wait).start()
        started += 1
except RuntimeError as e:
    print("error:", e, flush=True)
print("started", started, flush=True)
stop.set()
`)
	p.release(t)
	out, err := p.wait()
	if err != nil {
		t.Fatalf("process: %v (output %q)", err, out)
	}
	if !strings.Contains(out, "can't start new thread") {
		t.Errorf("output %q, want a \"can't start new thread\" error", out)
	}
	if !strings.Contains(out, "started 4\n") {
		t.Errorf("output %q, want 4 threads started (5 tasks with the main one)", out)
	}
	if hit := g.LimitHit(); hit != "pids" {
		t.Errorf("LimitHit() = %q, want pids", hit)
	}
}

func TestUsageAndOpen(t *testing.T) {
	requireCgroups(t)
	g := newGroup(t, Limits{MemoryBytes: 256 << 20})
	p := start(t, g, realPython(t), "-c", `
import sys, time
sys.stdin.readline()
b = bytearray(32 << 20)
b[::4096] = b"\x01" * (len(b) // 4096)
t = time.process_time()
while time.process_time() - t < 0.3:
    pass
print("ready", flush=True)
sys.stdin.readline()
`)
	p.release(t)
	if l := p.line(t); l != "ready" {
		t.Fatalf("got %q, want ready", l)
	}
	u, err := g.Usage()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("usage %+v", u)
	if u.CPUSeconds < 0.2 {
		t.Errorf("CPUSeconds = %v after a 0.3 s busy loop", u.CPUSeconds)
	}
	if u.MemoryBytes < 32<<20 {
		t.Errorf("MemoryBytes = %d with 32 MiB touched", u.MemoryBytes)
	}
	if u.Pids != 1 {
		t.Errorf("Pids = %d, want 1", u.Pids)
	}
	pids, err := g.Pids()
	if err != nil || !slices.Equal(pids, []int{p.cmd.Process.Pid}) {
		t.Errorf("Pids() = %v, %v; want [%d]", pids, err, p.cmd.Process.Pid)
	}

	// Open sees the same group (as it would one that runsc made).
	o, err := Open(strings.TrimPrefix(g.Path(), "/"))
	if err != nil {
		t.Fatal(err)
	}
	if o.Path() != g.Path() {
		t.Errorf("Open(...).Path() = %q, want %q", o.Path(), g.Path())
	}
	if ou, err := o.Usage(); err != nil || ou.Pids != 1 || ou.CPUSeconds < u.CPUSeconds {
		t.Errorf("opened group's Usage() = %+v, %v", ou, err)
	}
	if _, err := Open("/runagent/no-such-group"); err == nil {
		t.Error("Open of a missing group succeeded")
	}

	p.release(t)
	if out, err := p.wait(); err != nil {
		t.Fatalf("process: %v (output %q)", err, out)
	}
	if hit := g.LimitHit(); hit != "" {
		t.Errorf("LimitHit() = %q with no limit reached", hit)
	}
}

func TestKillAndRemove(t *testing.T) {
	requireCgroups(t)
	// sh's children are orphaned when it dies; as their subreaper we can reap
	// them and see how they ended (pid 1 here may leave them as zombies).
	setSubreaper(t)
	tests := []struct {
		name   string
		mutate func(*Group)
	}{
		{"as created", func(*Group) {}},
		// What an opened group without a freezer cgroup gets on v1 (no-op on v2).
		{"v1 without freezer", func(g *Group) { g.freezer = "" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := newGroup(t, Limits{Pids: 20})
			// Only the killing handle is altered: g still removes every directory.
			k := *g
			tc.mutate(&k)
			testKillAndRemove(t, g, &k)
		})
	}
}

func testKillAndRemove(t *testing.T, g, killer *Group) {
	p := start(t, g, "sh", "-c", "read x; sleep 100 & sleep 100")
	p.release(t)
	var pids []int
	for deadline := time.Now().Add(5 * time.Second); len(pids) < 3; time.Sleep(10 * time.Millisecond) {
		var err error
		if pids, err = g.Pids(); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the process tree never reached 3 processes in the group: %v", pids)
		}
	}

	t0 := time.Now()
	if err := killer.Kill(); err != nil {
		t.Fatal(err)
	}
	t.Logf("Kill took %v", time.Since(t0))
	if left, err := g.Pids(); err != nil || len(left) != 0 {
		t.Fatalf("after Kill: Pids() = %v, %v", left, err)
	}
	if _, err := p.wait(); !signaled(err, syscall.SIGKILL) {
		t.Errorf("sh ended with %v, want killed by SIGKILL", err)
	}
	for _, pid := range pids {
		if pid == p.cmd.Process.Pid {
			continue
		}
		ws, err := reap(pid)
		if errors.Is(err, errGone) {
			// Dead, but not ours to reap (seen once on a loaded machine):
			// the group is empty, which is what Kill promises; only its
			// exit status is unknown.
			t.Logf("process %d: %v", pid, err)
			continue
		}
		if err != nil {
			t.Errorf("process %d: %v", pid, err)
		} else if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Errorf("process %d ended with status %#x, want killed by SIGKILL", pid, ws)
		}
	}

	if err := g.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(g.Path()); err == nil {
		t.Error("the group can still be opened after Remove")
	}
	if err := g.Remove(); err != nil {
		t.Errorf("second Remove: %v", err)
	}
	if err := g.Kill(); err != nil {
		t.Errorf("Kill after Remove: %v", err)
	}
}

// TestNewReplacesLeftover: a leftover empty group of the same name (after a
// crash) is replaced with fresh counters, a busy one is refused.
func TestNewReplacesLeftover(t *testing.T) {
	requireCgroups(t)
	g := newGroup(t, Limits{Pids: 5})
	p := start(t, g, "sh", "-c", "read x")
	name := strings.TrimPrefix(g.Path(), "/runagent/")
	if _, err := New(name, Limits{}); err == nil || !strings.Contains(err.Error(), "cannot be replaced") {
		t.Fatalf("New over a busy group: %v, want a cannot-be-replaced error", err)
	}
	if pids, err := g.Pids(); err != nil || len(pids) != 1 {
		t.Fatalf("the busy group lost its process: %v, %v", pids, err)
	}
	p.release(t)
	if _, err := p.wait(); err != nil {
		t.Fatal(err)
	}
	g2, err := New(name, Limits{Pids: 7})
	if err != nil {
		t.Fatalf("New over an empty leftover: %v", err)
	}
	if g2.Path() != g.Path() {
		t.Errorf("Path() = %q, want %q", g2.Path(), g.Path())
	}
}

func setSubreaper(t *testing.T) {
	t.Helper()
	const prSetChildSubreaper = 36
	if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); e != 0 {
		t.Fatalf("PR_SET_CHILD_SUBREAPER: %v", e)
	}
	t.Cleanup(func() { syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 0, 0) })
}

// errGone: the process no longer exists and was not ours to reap.
var errGone = errors.New("gone, reaped by another process")

// reap waits for an orphan that becomes our child once its parent is reaped.
func reap(pid int) (syscall.WaitStatus, error) {
	var ws syscall.WaitStatus
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		if got == pid {
			return ws, nil
		}
		if err != nil && err != syscall.ECHILD {
			return ws, err
		}
		if err == syscall.ECHILD && syscall.Kill(pid, 0) == syscall.ESRCH {
			return ws, errGone
		}
		if time.Now().After(deadline) {
			return ws, fmt.Errorf("not reaped within 2s (wait4: %v)", err)
		}
	}
}
