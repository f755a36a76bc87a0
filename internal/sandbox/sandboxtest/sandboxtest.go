// Package sandboxtest is the conformance suite every sandbox driver passes:
// it starts the real Python runner through the driver and checks the
// contract the manager relies on (channel, output, environment, usage,
// limits, kill, exit, nothing left behind).
package sandboxtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/pyrunner"
	"github.com/runagent-go/runagent/internal/runner"
	"github.com/runagent-go/runagent/internal/runproto"
	"github.com/runagent-go/runagent/internal/sandbox"
)

const agentPy = `
import os, sys, tempfile, time
print("imported", flush=True)

def hello(name="world"):
    print("saying hello to", name)
    return "hello " + name

def env(name):
    return os.environ.get(name, "")

def count_stream(n):
    for i in range(n):
        yield i

def die(code):
    os._exit(code)

def nap(s):
    time.sleep(s)
    return s

def write_tmp():
    with tempfile.NamedTemporaryFile("w", delete=False) as f:
        f.write("x" * 1000)
    os.remove(f.name)
    return f.name

def spin():
    end = time.time() + 60
    n = 0
    while time.time() < end:
        n += 1
    return n

def busy(seconds):
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n
def cpu_count():
    return os.cpu_count()
def note(text):
    # A persistent folder, found both ways agents find their files.
    here = os.path.join(os.path.dirname(__file__), "memory", "notes", "note.txt")
    old = open("memory/notes/note.txt").read() if os.path.exists("memory/notes/note.txt") else ""
    with open(here, "a") as f:
        f.write(text)
    return old + "|" + open(here).read()
def hog():
    keep = []
    for _ in range(4096):
        b = bytearray(16 << 20)
        for i in range(0, len(b), 4096):
            b[i] = 1
        keep.append(b)
    return len(keep)
`

var tags = []string{"hello", "env", "count_stream", "die", "nap", "write_tmp", "spin", "busy", "cpu_count", "hog", "note"}

// Features says what a driver enforces with the kernel, so the suite knows
// which limits to expect to be enforced by the driver itself.
type Features struct {
	// MemoryLimit: the driver's instance dies with Exit.Limit "memory ..."
	// when it goes over Limits.MemoryBytes (a cgroup). The process driver
	// leaves memory to the manager's /proc sampling.
	MemoryLimit bool
	// CPUShare: Limits.CPUs caps the instance's CPU time per second (a
	// cgroup's CPU bandwidth). Drivers without a cgroup leave it alone.
	CPUShare bool
	// Processors: the instance has as many processors as Limits.CPUs,
	// rounded up (a VM's vCPUs).
	Processors bool
	// MountsOnDisk: the driver keeps Spec.Mounts on Spec.MountsDisk (made
	// from the sources once), not in the host folders (microvm).
	MountsOnDisk bool
}

// Run runs the suite against d.
func Run(t *testing.T, d sandbox.Driver, f Features) {
	python := Python(t)
	script, err := pyrunner.WriteScript(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	agentDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(agentDir, "main.py"), []byte(agentPy), 0o644); err != nil {
		t.Fatal(err)
	}
	// The mount point of the persistent folder case; the bundle's own
	// content there is hidden by a mount.
	if err := os.MkdirAll(filepath.Join(agentDir, "memory", "notes"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(agentDir, "memory", "notes", "note.txt"), []byte("bundle"), 0o644); err != nil {
		t.Fatal(err)
	}
	var seq int
	begin := func(t *testing.T, limits domain.Limits, mounts []sandbox.Mount, disk string) (*runner.Process, *output, string, error) {
		t.Helper()
		seq++
		id := fmt.Sprintf("conf-%s-%d-%d", d.Name(), os.Getpid(), seq)
		out := &output{}
		eps := make([]runproto.InitEntrypoint, 0, len(tags))
		for _, tag := range tags {
			eps = append(eps, runproto.InitEntrypoint{Tag: tag, File: "main.py", Module: tag})
		}
		if limits.WorkDirBytes == 0 {
			limits.WorkDirBytes = 16 << 20
		}
		env := []string{"PATH=/usr/bin:/bin", "SANDBOX_TEST_SECRET=" + id, "RUNAGENT_CONFORMANCE=" + id}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		p, err := runner.Start(ctx, runner.Spec{
			Python: python, Script: script, Env: env, Driver: d, InstanceID: id, Limits: limits,
			Init:     runproto.Init{AgentDir: agentDir, Entrypoints: eps, Threads: 4},
			OnLog:    out.log,
			OnOutput: func(stream, line string) { out.log("", stream, line) },
			Mounts:   mounts, MountsDisk: disk, MountsDiskBytes: 16 << 20,
		})
		if err != nil {
			return nil, nil, id, err
		}
		t.Cleanup(func() { p.Kill(); assertNothingLeft(t, id) })
		return p, out, id, nil
	}
	start := func(t *testing.T, limits domain.Limits) (*runner.Process, *output, string) {
		t.Helper()
		p, out, id, err := begin(t, limits, nil, "")
		if err != nil {
			t.Fatalf("%s: start: %v", d.Name(), err)
		}
		return p, out, id
	}
	ctx := context.Background()

	t.Run("calls, streams, output, environment", func(t *testing.T) {
		p, out, id := start(t, domain.Limits{})
		if len(p.Ready.Errors) > 0 {
			t.Fatalf("READY errors: %v", p.Ready.Errors)
		}
		v, err := p.Call(domain.WithInvocation(ctx, "inv-1"), "hello", []byte(`["sandbox"]`), nil)
		if err != nil || !strings.Contains(string(v), `hello sandbox`) {
			t.Fatalf("hello = %s, %v", v, err)
		}
		n, err := p.Stream(ctx, "count_stream", []byte(`[50]`), nil, nil, func(domain.Chunk) error { return nil })
		if err != nil || n != 50 {
			t.Fatalf("count_stream(50) = %d chunks, %v", n, err)
		}
		v, err = p.Call(ctx, "env", []byte(`["SANDBOX_TEST_SECRET"]`), nil)
		if err != nil || !strings.Contains(string(v), id) {
			t.Fatalf("the instance's own environment: env = %s, %v", v, err)
		}
		if _, err := p.Call(ctx, "write_tmp", nil, nil); err != nil {
			t.Fatalf("writing a temporary file: %v", err)
		}
		waitFor(t, func() bool { return out.has("imported") && out.has("inv-1/stdout:saying hello to sandbox") },
			func() string { return "the agent's prints were not captured: " + out.String() })
	})

	t.Run("persistent folders", func(t *testing.T) {
		// Two users' folders: what one instance writes, the next instance
		// with the same folder reads; an instance with the other user's
		// folder sees none of it, and the bundle's own file is untouched.
		alice, bob := t.TempDir(), t.TempDir()
		for _, dir := range []string{alice, bob} {
			if err := os.Mkdir(filepath.Join(dir, "notes"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		os.WriteFile(filepath.Join(alice, "notes", "note.txt"), []byte("seed-"), 0o644)
		mount := func(dir string) []sandbox.Mount { return []sandbox.Mount{{Source: dir, Target: "memory"}} }
		disks := t.TempDir()
		note := func(dir, text string) string {
			t.Helper()
			p, _, _, err := begin(t, domain.Limits{}, mount(dir), filepath.Join(disks, filepath.Base(dir)+".ext4"))
			if err != nil {
				t.Fatalf("%s: start with a persistent folder: %v", d.Name(), err)
			}
			v, err := p.Call(ctx, "note", []byte(`["`+text+`"]`), nil)
			if err != nil {
				t.Fatalf("note(%s): %v", text, err)
			}
			p.Kill()
			<-p.Exited()
			return string(v)
		}
		if got := note(alice, "a1"); !strings.Contains(got, `\"seed-|seed-a1\"`) {
			t.Fatalf("alice's first note = %s; want her folder's seed, then a1", got)
		}
		if got := note(alice, "a2"); !strings.Contains(got, `\"seed-a1|seed-a1a2\"`) {
			t.Fatalf("alice's second instance = %s; want a1 kept", got)
		}
		if got := note(bob, "b1"); !strings.Contains(got, `\"|b1\"`) {
			t.Fatalf("bob's instance = %s; want none of alice's notes", got)
		}
		want := "seed-a1a2"
		if f.MountsOnDisk {
			want = "seed-" // the disk holds the notes
		}
		if b, err := os.ReadFile(filepath.Join(alice, "notes", "note.txt")); err != nil || string(b) != want {
			t.Fatalf("alice's folder on the host holds %q, %v; want %q", b, err, want)
		}
		if b, _ := os.ReadFile(filepath.Join(agentDir, "memory", "notes", "note.txt")); string(b) != "bundle" {
			t.Fatalf("the agent folder's own file became %q", b)
		}
	})

	t.Run("usage", func(t *testing.T) {
		p, _, _ := start(t, domain.Limits{})
		if _, err := p.Call(ctx, "hello", nil, nil); err != nil {
			t.Fatal(err)
		}
		if u, ok := p.Usage(); ok {
			if u.MemoryBytes <= 0 || u.Tasks < 1 {
				t.Fatalf("usage = %+v: a running runner uses memory and at least one task", u)
			}
		} else if p.PID() <= 0 {
			t.Fatalf("no usage and no pid to sample")
		}
	})

	t.Run("crash ends calls and the instance", func(t *testing.T) {
		p, _, _ := start(t, domain.Limits{})
		_, err := p.Call(ctx, "die", []byte(`[7]`), nil)
		var we *domain.Error
		if !errors.As(err, &we) || we.Code != domain.CodeAgentCrashed || !strings.Contains(we.Message, "exit status 7") {
			t.Fatalf("die(7) = %v; want AGENT_CRASHED naming exit status 7", err)
		}
		waitExited(t, p)
	})

	t.Run("kill stops everything", func(t *testing.T) {
		p, _, id := start(t, domain.Limits{})
		done := make(chan error, 1)
		go func() { _, err := p.Call(ctx, "nap", []byte(`[30]`), nil); done <- err }()
		time.Sleep(200 * time.Millisecond)
		p.KillWith(&domain.Error{Code: domain.CodeAgentCrashed, Message: "killed by the test"})
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "killed by the test") {
				t.Fatalf("the call in flight ended with %v; want the kill's error", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the call in flight did not end after a kill")
		}
		waitExited(t, p)
		assertNothingLeft(t, id)
	})

	t.Run("cpu time limit", func(t *testing.T) {
		p, _, _ := start(t, domain.Limits{CPUSeconds: 1})
		_, err := p.Call(ctx, "spin", nil, nil)
		var we *domain.Error
		if !errors.As(err, &we) || we.Code != domain.CodeResourceLimit || !strings.Contains(we.Message, "cpu time 1 s") {
			t.Fatalf("spin with a 1 s CPU limit = %v; want RESOURCE_LIMIT naming cpu time 1 s", err)
		}
		waitExited(t, p)
	})

	if f.CPUShare {
		t.Run("cpu share", func(t *testing.T) {
			// Busy for 2 s of wall time with a quarter of a core: about 0.5 s
			// of CPU (a busy machine only gives less). Without the cap it
			// would be 2 s.
			p, _, _ := start(t, domain.Limits{CPUs: 0.25})
			// The kernel's accounting, read by the driver (inside gVisor a
			// thread's own CPU clock runs while the host throttles it).
			cpu := func() float64 {
				time.Sleep(300 * time.Millisecond) // past any usage cache
				u, ok := p.Usage()
				if !ok {
					t.Fatal("no usage: a driver with a CPU share accounts CPU")
				}
				return u.CPUSeconds
			}
			before := cpu()
			if _, err := p.Call(ctx, "busy", []byte(`[2]`), nil); err != nil {
				t.Fatal(err)
			}
			used := cpu() - before
			if used > 1.0 {
				t.Fatalf("with a quarter of a core, 2 s of busy loop used %.2f s of CPU; want about 0.5", used)
			}
			t.Logf("2 s of busy loop at 0.25 cores: %.2f s of CPU", used)
		})
	}

	if f.Processors {
		t.Run("processors", func(t *testing.T) {
			p, _, _ := start(t, domain.Limits{CPUs: 1.5})
			if v, err := p.Call(ctx, "cpu_count", nil, nil); err != nil || !strings.Contains(string(v), `"payload": "2"`) {
				t.Fatalf("with a limit of 1.5 cores os.cpu_count() = %s, %v; want 2", v, err)
			}
		})
	}

	if f.MemoryLimit {
		t.Run("memory limit", func(t *testing.T) {
			p, _, _ := start(t, domain.Limits{MemoryBytes: 96 << 20})
			_, err := p.Call(ctx, "hog", nil, nil)
			var we *domain.Error
			if !errors.As(err, &we) || we.Code != domain.CodeResourceLimit || !strings.Contains(we.Message, "memory 96 MiB") {
				t.Fatalf("hog with a 96 MiB limit = %v; want RESOURCE_LIMIT naming memory 96 MiB", err)
			}
			waitExited(t, p)
		})
	}
}

// Python is the interpreter itself, not a launcher (pyenv's shims are
// shell scripts a sandbox cannot run).
func Python(t *testing.T) string {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 is needed:", err)
	}
	out, err := exec.Command(py, "-c", "import sys; print(sys.executable)").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

func waitExited(t *testing.T, p *runner.Process) {
	t.Helper()
	select {
	case <-p.Exited():
	case <-time.After(15 * time.Second):
		t.Fatal("the instance has not exited")
	}
}

func waitFor(t *testing.T, ok func() bool, msg func() string) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if ok() {
			return
		}
	}
	t.Fatal(msg())
}

// assertNothingLeft fails if a process of instance id is still on the host:
// every process the suite starts carries RUNAGENT_CONFORMANCE=id.
func assertNothingLeft(t *testing.T, id string) {
	t.Helper()
	if left := WaitNoProcsWithEnv("RUNAGENT_CONFORMANCE="+id+"\x00", 10*time.Second); len(left) > 0 {
		t.Errorf("processes of instance %s are still running: %v", id, left)
	}
}

// WaitNoProcsWithEnv waits up to wait for every live (not zombie) process
// whose environment contains entry to be gone, and returns those left.
func WaitNoProcsWithEnv(entry string, wait time.Duration) []int {
	var left []int
	for end := time.Now().Add(wait); ; time.Sleep(50 * time.Millisecond) {
		left = left[:0]
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
			if err == nil && strings.Contains(string(env), entry) && !zombie(pid) {
				left = append(left, pid)
			}
		}
		if len(left) == 0 || time.Now().After(end) {
			return left
		}
	}
}

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z'
}

type output struct {
	mu    sync.Mutex
	lines []string
}

func (o *output) log(invocation, stream, text string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.lines = append(o.lines, invocation+"/"+stream+":"+strings.TrimRight(text, "\n"))
}

func (o *output) has(s string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, l := range o.lines {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return strings.Join(o.lines, "\n")
}
