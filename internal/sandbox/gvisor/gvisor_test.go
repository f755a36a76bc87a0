package gvisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/pyrunner"
	"github.com/runagent-go/runagent/internal/runner"
	"github.com/runagent-go/runagent/internal/runproto"
	"github.com/runagent-go/runagent/internal/sandbox"
	"github.com/runagent-go/runagent/internal/sandbox/cgroup"
	"github.com/runagent-go/runagent/internal/sandbox/sandboxtest"
)

const agentPy = `
import os, socket, sys, time

def hello(name="world"):
    return "hello " + name

def count_stream(n):
    for i in range(n):
        yield i

def nap(s):
    time.sleep(s)
    return s

def probe(port, host_ip=""):
    out = {"uid": os.getuid(), "home": os.environ.get("HOME"), "tmpdir": os.environ.get("TMPDIR"),
           "hostname": socket.gethostname(), "cwd": os.getcwd(), "root": sorted(os.listdir("/"))}
    for p in ["/etc/shadow", "/root", "/etc/passwd", "/home", "/var"]:
        try:
            if os.path.isdir(p):
                out[p] = "listed " + " ".join(sorted(os.listdir(p)))
            else:
                open(p).read()
                out[p] = "readable"
        except (FileNotFoundError, PermissionError) as e:
            out[p] = type(e).__name__
    for d in [os.getcwd(), "/tmp", "/work", sys.base_prefix, "/usr"]:
        # A unique name, removed at once: a failing sandbox must not leave
        # files in the host's /usr.
        name = os.path.join(d, "runagent-gvisor-probe-%d.txt" % time.time_ns())
        try:
            with open(name, "w") as f:
                f.write("x")
            os.remove(name)
            out["write " + d] = "ok"
        except OSError as e:
            out["write " + d] = type(e).__name__ + ": " + str(e.strerror)
    targets = [("127.0.0.1", port)]
    if host_ip:
        targets.append((host_ip, port))
    for t in targets:
        try:
            socket.create_connection(t, timeout=2).close()
            out["connect " + t[0]] = "connected"
        except OSError as e:
            out["connect " + t[0]] = type(e).__name__
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    c = socket.create_connection(s.getsockname(), timeout=2)
    a, _ = s.accept()
    c.sendall(b"ping")
    out["loopback"] = a.recv(4).decode()
    for x in (a, c, s):
        x.close()
    out["ifaces"] = sorted(n for _, n in socket.if_nameindex())
    return out

def fork_bomb(n, hold=0):
    kids, refused = [], None
    for _ in range(n):
        try:
            pid = os.fork()
        except OSError as e:
            refused = type(e).__name__ + ": " + e.strerror
            break
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        kids.append(pid)
    time.sleep(hold)
    for pid in kids:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    return [len(kids), refused]

def thread_bomb(n):
    import threading
    ev, started, refused = threading.Event(), 0, None
    for _ in range(n):
        try:
            threading.Thread(target=ev.wait, daemon=True).start()
            started += 1
        except RuntimeError as e:
            refused = str(e)
            break
    ev.set()
    return [started, refused]

def hog():
    x = []
    while True:
        x.append(b"x" * (1 << 20))
`

var seq atomic.Int64

// setup is the driver, the real interpreter and a runner spec for a fresh
// agent folder, or a failed test when runsc is missing.
func setup(t testing.TB) (*Driver, runner.Spec) {
	t.Helper()
	if _, err := exec.LookPath("runsc"); err != nil {
		if os.Getenv("RUNAGENT_TEST_NO_GVISOR") == "1" {
			t.Skip("runsc is not installed (RUNAGENT_TEST_NO_GVISOR=1)")
		}
		t.Fatal("the gvisor driver's tests need runsc: install it with apt-get install runsc (or set RUNAGENT_TEST_NO_GVISOR=1 to skip them)")
	}
	d, err := New(sandbox.Options{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	python3, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 is needed:", err)
	}
	// A pyenv shim is a shell script that would not run in the sandbox:
	// use the interpreter it runs.
	out, err := exec.Command(python3, "-c", "import os, sys; print(os.path.realpath(sys.executable))").Output()
	if err != nil {
		t.Fatal(err)
	}
	python := strings.TrimSpace(string(out))
	agent := t.TempDir()
	if err := os.WriteFile(filepath.Join(agent, "main.py"), []byte(agentPy), 0o644); err != nil {
		t.Fatal(err)
	}
	script, err := pyrunner.WriteScript(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var eps []runproto.InitEntrypoint
	for _, tag := range []string{"hello", "count_stream", "nap", "probe", "hog", "fork_bomb", "thread_bomb"} {
		eps = append(eps, runproto.InitEntrypoint{Tag: tag, File: "main.py", Module: tag})
	}
	return d, runner.Spec{
		Python: python, Script: script, Driver: d,
		Env:          runner.Environ([]string{"PATH=/usr/bin:/bin", "LANG=C.UTF-8", "SECRET_OF_THE_HOST=1"}, "", map[string]string{"AGENT_VAR": "v"}),
		InstanceID:   fmt.Sprintf("gvtest-%d-%d", os.Getpid(), seq.Add(1)),
		Limits:       domain.Limits{MemoryBytes: 512 << 20, Pids: 256, OpenFiles: 256, WorkDirBytes: 16 << 20},
		Init:         runproto.Init{AgentDir: agent, Entrypoints: eps, Threads: 4},
		ReadyTimeout: 30 * time.Second,
	}
}

func start(t *testing.T, spec runner.Spec) *runner.Process {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := runner.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Ready.Errors) > 0 {
		p.Close()
		t.Fatalf("READY errors: %v", p.Ready.Errors)
	}
	return p
}

// call runs tag and decodes its result.
func call(t *testing.T, p *runner.Process, tag string, kwargs any) (any, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kw, _ := json.Marshal(kwargs)
	v, err := p.Call(ctx, tag, nil, kw)
	if err != nil {
		return nil, err
	}
	var r struct{ Payload string }
	if err := json.Unmarshal(v, &r); err != nil {
		t.Fatalf("%s: result %s: %v", tag, v, err)
	}
	var out any
	if err := json.Unmarshal([]byte(r.Payload), &out); err != nil {
		t.Fatalf("%s: payload %q: %v", tag, r.Payload, err)
	}
	return out, nil
}

// leftovers lists what is left of instance id: processes whose command
// line names its container or its bundle, its cgroup, its bundle directory,
// runsc's state of it.
func leftovers(d *Driver, id string) []string {
	var left []string
	cid, bundle := containerID(id), filepath.Join(d.bundles, id)
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := fmt.Sscan(e.Name(), new(int)); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		for _, arg := range strings.Split(string(b), "\x00") {
			if arg == cid || arg == bundle || strings.HasSuffix(arg, "="+bundle) || strings.HasPrefix(arg, bundle+"/") {
				left = append(left, "process "+e.Name()+": "+strings.ReplaceAll(string(b), "\x00", " "))
				break
			}
		}
	}
	if _, err := cgroup.Open("/runagent/" + id); err == nil {
		left = append(left, "cgroup /runagent/"+id)
	}
	if _, err := os.Lstat(bundle); err == nil {
		left = append(left, "bundle "+bundle)
	}
	if st, err := os.ReadDir(d.state); err == nil {
		for _, e := range st {
			if strings.Contains(e.Name(), cid) {
				left = append(left, "runsc state "+e.Name())
			}
		}
	}
	return left
}

func checkGone(t *testing.T, d *Driver, id string) {
	t.Helper()
	if left := leftovers(d, id); len(left) > 0 {
		t.Fatalf("left behind by %s:\n%s", id, strings.Join(left, "\n"))
	}
}

// footprint sums the resident memory (RSS, and PSS, which splits shared
// pages among their sharers) and the threads of the sandbox's host
// processes: everything in its cgroup (the runsc CLI, the gofer, the Sentry
// and its stubs).
func footprint(t *testing.T, id string) (rssKiB, pssKiB, threads int64, detail string) {
	g, err := cgroup.Open("/runagent/" + id)
	if err != nil {
		t.Fatal(err)
	}
	pids, err := g.Pids()
	if err != nil {
		t.Fatal(err)
	}
	var parts []string
	for _, pid := range pids {
		field := func(file, key string) int64 {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, file))
			for _, line := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(line, key+":"); ok {
					var n int64
					fmt.Sscan(strings.TrimSpace(v), &n)
					return n
				}
			}
			return 0
		}
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		rss, pss, n := field("status", "VmRSS"), field("smaps_rollup", "Pss"), field("status", "Threads")
		rssKiB += rss
		pssKiB += pss
		threads += n
		parts = append(parts, fmt.Sprintf("%s: rss %d KiB, pss %d KiB, %d threads", strings.TrimSpace(string(comm)), rss, pss, n))
	}
	return rssKiB, pssKiB, threads, strings.Join(parts, "; ")
}

// The contract every driver keeps.
func TestGVisorDriverConformance(t *testing.T) {
	d, _ := setup(t)
	sandboxtest.Run(t, d, sandboxtest.Features{MemoryLimit: d.cgroups, CPUShare: d.cgroups})
}

func TestRunnerInGVisor(t *testing.T) {
	d, spec := setup(t)
	// A host listener the sandbox must not reach, on loopback and on all
	// interfaces.
	ln, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var reached atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			reached.Add(1)
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	hostIP := ""
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if ip, ok := a.(*net.IPNet); ok && ip.IP.To4() != nil && !ip.IP.IsLoopback() {
				hostIP = ip.IP.String()
				break
			}
		}
	}

	began := time.Now()
	p := start(t, spec)
	ready := time.Since(began)
	defer p.Close()
	t.Logf("start to READY: %v", ready)

	v, err := call(t, p, "hello", map[string]string{"name": "gvisor"})
	if err != nil || v != "hello gvisor" {
		t.Fatalf("hello = %v, %v", v, err)
	}
	n, err := p.Stream(context.Background(), "count_stream", []byte(`[3]`), nil, nil, func(domain.Chunk) error { return nil })
	if err != nil || n != 3 {
		t.Fatalf("count_stream = %d, %v", n, err)
	}

	v, err = call(t, p, "probe", map[string]any{"port": port, "host_ip": hostIP})
	if err != nil {
		t.Fatal(err)
	}
	got := v.(map[string]any)
	t.Logf("probe: %v", got)
	prefix, _ := d.prefix(context.Background(), spec.Python)
	agent := spec.Init.AgentDir
	want := map[string]any{
		"uid": 0.0, "home": "/work", "tmpdir": "/tmp", "hostname": "runagent", "cwd": agent,
		"/etc/shadow": "FileNotFoundError", "/root": "FileNotFoundError", "/etc/passwd": "FileNotFoundError",
		"/home": "FileNotFoundError", "/var": "FileNotFoundError",
		"write /tmp": "ok", "write /work": "ok",
		"write " + agent:    "OSError: Read-only file system",
		"write " + prefix:   "OSError: Read-only file system",
		"write /usr":        "OSError: Read-only file system",
		"connect 127.0.0.1": "ConnectionRefusedError",
		"loopback":          "ping",
	}
	if rest, ok := strings.CutPrefix(prefix, "/root/"); ok {
		// The interpreter's installation is visible, nothing else of /root.
		want["/root"] = "listed " + strings.Split(rest, "/")[0]
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: %v, want %v", k, got[k], w)
		}
	}
	if hostIP != "" && got["connect "+hostIP] == "connected" {
		t.Errorf("the sandbox reached the host at %s:%d", hostIP, port)
	}
	if ifs := fmt.Sprint(got["ifaces"]); ifs != "[lo]" {
		t.Errorf("network interfaces: %s, want [lo]", ifs)
	}
	if reached.Load() != 0 {
		t.Errorf("the host listener was reached %d times", reached.Load())
	}

	u, ok := p.Usage()
	if !ok || u.MemoryBytes <= 0 || u.Tasks <= 0 || u.CPUSeconds <= 0 || u.LimitHit != "" {
		t.Errorf("Usage = %+v, %v", u, ok)
	}
	time.Sleep(300 * time.Millisecond)
	rss, pss, threads, detail := footprint(t, spec.InstanceID)
	u, _ = p.Usage()
	t.Logf("idle instance: RSS %d MiB, PSS %d MiB, %d host tasks (%s); cgroup: memory %d MiB, %.2f s CPU; Usage().Tasks %d",
		rss>>10, pss>>10, threads, detail, u.MemoryBytes>>20, u.CPUSeconds, u.Tasks)

	p.Close()
	checkGone(t, d, spec.InstanceID)
}

// With the network allowed, the sandbox reaches the host's loopback; the
// agent's virtualenv is visible, and its packages importable.
func TestNetworkAndVenv(t *testing.T) {
	d, spec := setup(t)
	venv := filepath.Join(t.TempDir(), "venv")
	if out, err := exec.Command(spec.Python, "-m", "venv", "--without-pip", venv).CombinedOutput(); err != nil {
		t.Fatalf("python -m venv: %v\n%s", err, out)
	}
	site, err := filepath.Glob(filepath.Join(venv, "lib", "python3*", "site-packages"))
	if err != nil || len(site) != 1 {
		t.Fatalf("site-packages of %s: %v %v", venv, site, err)
	}
	if err := os.WriteFile(filepath.Join(site[0], "venvmod.py"), []byte("X = 'from the venv'\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(spec.Init.AgentDir, "main.py"), []byte(agentPy+`
def from_venv():
    import venvmod, sys
    return [venvmod.X, sys.prefix]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	spec.Init.Entrypoints = append(spec.Init.Entrypoints, runproto.InitEntrypoint{Tag: "from_venv", File: "main.py", Module: "from_venv"})
	spec.Python, spec.Venv, spec.Network = filepath.Join(venv, "bin", "python"), venv, true
	spec.Env = runner.Environ([]string{"PATH=/usr/bin:/bin"}, venv, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	p := start(t, spec)
	defer p.Close()
	v, err := call(t, p, "from_venv", nil)
	if err != nil || fmt.Sprint(v) != "[from the venv "+venv+"]" {
		t.Fatalf("from_venv = %v, %v", v, err)
	}
	v, err = call(t, p, "probe", map[string]any{"port": ln.Addr().(*net.TCPAddr).Port})
	if err != nil {
		t.Fatal(err)
	}
	got := v.(map[string]any)
	if got["connect 127.0.0.1"] != "connected" || fmt.Sprint(got["ifaces"]) == "[lo]" || got["/etc/shadow"] != "FileNotFoundError" {
		t.Errorf("probe with the network: %v", got)
	}
	p.Close()
	checkGone(t, d, spec.InstanceID)
}

func TestMemoryLimit(t *testing.T) {
	d, spec := setup(t)
	spec.Limits.MemoryBytes = 128 << 20
	p := start(t, spec)
	defer p.Close()
	_, err := call(t, p, "hog", nil)
	var we *domain.Error
	if !errors.As(err, &we) || we.Code != domain.CodeResourceLimit || !strings.Contains(we.Message, "memory 128 MiB") {
		t.Fatalf("hog = %v (%#v)", err, we)
	}
	t.Logf("hog: %v", err)
	select {
	case <-p.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("the instance did not exit")
	}
	checkGone(t, d, spec.InstanceID)
}

// The agent's processes and threads are limited inside the sandbox (a fork
// past the limit fails, the instance lives on); Usage counts the agent's
// processes, not runsc's threads.
func TestPidsLimit(t *testing.T) {
	d, spec := setup(t)
	spec.Limits.Pids = 32
	p := start(t, spec)
	defer p.Close()
	u, _ := p.Usage()
	if u.Tasks != 1 {
		t.Errorf("an idle runner: Usage().Tasks = %d, want 1 (its one process)", u.Tasks)
	}
	maxTasks := make(chan int, 1)
	stop := make(chan struct{})
	go func() {
		m := 0
		for {
			select {
			case <-stop:
				maxTasks <- m
				return
			case <-time.After(20 * time.Millisecond):
			}
			if u, ok := p.Usage(); ok {
				m = max(m, u.Tasks)
			}
		}
	}()
	v, err := call(t, p, "fork_bomb", map[string]any{"n": 100, "hold": 1})
	close(stop)
	if err != nil {
		t.Fatal(err)
	}
	r := v.([]any)
	kids, refused := int(r[0].(float64)), fmt.Sprint(r[1])
	if kids >= 32 || kids < 10 || !strings.Contains(refused, "Resource temporarily unavailable") {
		t.Errorf("fork bomb under a limit of 32: forked %d, then %s", kids, refused)
	}
	m := <-maxTasks
	if m < kids || m > kids+2 {
		t.Errorf("Usage().Tasks with %d children held: at most %d", kids, m)
	}
	t.Logf("fork bomb: %d children, then %s; Usage().Tasks up to %d", kids, refused, m)
	v, err = call(t, p, "thread_bomb", map[string]any{"n": 100})
	t.Logf("thread bomb: %v", v)
	if r, _ := v.([]any); err != nil || len(r) != 2 || r[0].(float64) >= 32 || r[1] == nil {
		t.Errorf("thread bomb under a limit of 32: %v, %v", v, err)
	}
	if v, err := call(t, p, "hello", nil); err != nil || v != "hello world" {
		t.Fatalf("hello after the bombs = %v, %v", v, err)
	}
	if u, _ := p.Usage(); u.LimitHit != "" {
		t.Errorf("the host's limit was hit: %+v", u)
	}
	p.Close()
	checkGone(t, d, spec.InstanceID)
}

// Killing the instance, or its runsc, leaves nothing behind; a call in
// flight fails as a crash.
func TestKillLeavesNothing(t *testing.T) {
	d, spec := setup(t)
	// A neighbour whose id the first instance's is a prefix of: runsc finds
	// containers by unique prefix, and cleaning up after the first must not
	// touch it.
	nspec := spec
	nspec.InstanceID += "0"
	neighbour := start(t, nspec)
	defer neighbour.Close()
	p := start(t, spec)
	errc := make(chan error, 1)
	go func() { _, err := call(t, p, "nap", map[string]any{"s": 30}); errc <- err }()
	for p.InFlight() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	killed := time.Now()
	syscall.Kill(p.PID(), syscall.SIGKILL) // runsc itself, as if it crashed
	if err := <-errc; domain.CodeOf(err) != domain.CodeAgentCrashed {
		t.Fatalf("call in flight when runsc died = %v", err)
	}
	t.Logf("the call failed %v after runsc was killed", time.Since(killed))
	p.Close()
	checkGone(t, d, spec.InstanceID)
	t.Logf("cleaned up %v after runsc was killed", time.Since(killed))

	spec.InstanceID += "-b"
	p = start(t, spec)
	killed = time.Now()
	p.Kill()
	checkGone(t, d, spec.InstanceID)
	t.Logf("Kill took %v", time.Since(killed))

	if v, err := call(t, neighbour, "hello", nil); err != nil || v != "hello world" {
		t.Fatalf("the neighbour after the kills: %v, %v", v, err)
	}
	neighbour.Close()
	checkGone(t, d, nspec.InstanceID)
}

func TestStartFailureLeavesNothing(t *testing.T) {
	d, spec := setup(t)
	script := spec.Script
	spec.Script = filepath.Join(t.TempDir(), "nope.py")
	_, err := runner.Start(context.Background(), spec)
	if err == nil || !strings.Contains(err.Error(), "exited during start-up") || !strings.Contains(err.Error(), "nope.py") {
		t.Fatalf("start with a missing script = %v", err)
	}
	checkGone(t, d, spec.InstanceID)

	// runsc itself fails: an interpreter the host runs through a path the
	// sandbox does not have.
	link := filepath.Join(t.TempDir(), "python3")
	if err := os.Symlink(spec.Python, link); err != nil {
		t.Fatal(err)
	}
	spec.Python, spec.Script = link, script
	spec.InstanceID += "-b"
	_, err = runner.Start(context.Background(), spec)
	if err == nil || !strings.Contains(err.Error(), "exited during start-up") {
		t.Fatalf("start with an interpreter outside the sandbox = %v", err)
	}
	t.Logf("runsc failing: %v", err)
	checkGone(t, d, spec.InstanceID)
}

// New removes what instances of a server that died left behind.
func TestNewSweepsLeftovers(t *testing.T) {
	d, _ := setup(t)
	id := fmt.Sprintf("gvtest-%d-%d", os.Getpid(), seq.Add(1))
	bundle := filepath.Join(d.bundles, id)
	if err := writeBundle(bundle, bundleConfig(sandbox.Spec{ID: id, Python: "/usr/bin/python3", AgentDir: "/srv/a"}, "/usr")); err != nil {
		t.Fatal(err)
	}
	// The gofer's mount points.
	if err := os.MkdirAll(filepath.Join(bundle, "rootfs", "srv", "a"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "rootfs", "etc-file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	g, err := cgroup.New(id, cgroup.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Remove()
	if _, err := New(sandbox.Options{StateDir: filepath.Dir(filepath.Dir(d.state))}); err != nil {
		t.Fatal(err)
	}
	checkGone(t, d, id)
}

func TestNewWithoutRunsc(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := New(sandbox.Options{StateDir: t.TempDir()})
	if err == nil || err.Error() != "the gvisor sandbox needs runsc: install it with apt-get install runsc" {
		t.Fatalf("New without runsc = %v", err)
	}
}

func TestConfig(t *testing.T) {
	s := sandbox.Spec{
		ID: "x1", Python: "/opt/py/bin/python3", Args: []string{"-u", "/srv/cache/runner/ab/runagent_runner"},
		Env: []string{"PATH=/usr/bin", "HOME=/root", "A=1"}, AgentDir: "/srv/agents/a/v1", Venv: "/srv/venvs/a",
		Script: "/srv/cache/runner/ab/runagent_runner",
		Limits: domain.Limits{MemoryBytes: 64 << 20, Pids: 100, OpenFiles: 50, WorkDirBytes: 8 << 20},
	}
	c := bundleConfig(s, "/opt/py")
	if got := strings.Join(c.Process.Args, " "); got != "/opt/py/bin/python3 -u /srv/cache/runner/ab/runagent_runner --fd 0" {
		t.Errorf("args: %s", got)
	}
	if got := strings.Join(c.Process.Env, " "); got != "PATH=/usr/bin HOME=/work A=1 TMPDIR=/tmp" {
		t.Errorf("env: %s", got)
	}
	if !c.Root.Readonly || c.Process.Cwd != s.AgentDir || !c.Process.NoNewPrivileges || c.Hostname != "runagent" ||
		c.Linux.CgroupsPath != "/runagent/x1" || c.Linux.Resources.Memory.Limit != 64<<20 || c.Linux.Resources.Pids.Limit != 100 {
		t.Errorf("config: %+v", c)
	}
	if b, _ := json.Marshal(c.Process.Rlimits); string(b) != `[{"type":"RLIMIT_CORE","hard":0,"soft":0},{"type":"RLIMIT_NOFILE","hard":50,"soft":50},{"type":"RLIMIT_NPROC","hard":100,"soft":100}]` {
		t.Errorf("rlimits: %s", b)
	}
	if hostPids(100) <= 100 || hostPids(0) != 0 {
		t.Errorf("hostPids(100) = %d, hostPids(0) = %d", hostPids(100), hostPids(0))
	}
	b, _ := json.Marshal(c.Process.Capabilities)
	if string(b) != `{"bounding":[],"effective":[],"inheritable":[],"permitted":[],"ambient":[]}` {
		t.Errorf("capabilities: %s", b)
	}
	var binds, tmpfs []string
	for _, m := range c.Mounts {
		switch m.Type {
		case "bind":
			if m.Source != m.Destination || strings.Join(m.Options, ",") != "rbind,ro" {
				t.Errorf("bind %+v", m)
			}
			binds = append(binds, m.Destination)
		case "tmpfs":
			tmpfs = append(tmpfs, m.Destination+" "+strings.Join(m.Options, ","))
		}
	}
	for _, want := range []string{"/usr", "/opt/py", "/srv/venvs/a", "/srv/cache/runner/ab", "/srv/agents/a/v1"} {
		if !slices.Contains(binds, want) {
			t.Errorf("no bind of %s in %v", want, binds)
		}
	}
	for _, p := range binds {
		if p == "/root" || p == "/etc" || p == "/home" || strings.HasPrefix(p, "/etc/ssl/private") || p == "/etc/resolv.conf" {
			t.Errorf("bind of %s", p)
		}
	}
	if !slices.Contains(tmpfs, "/tmp nosuid,nodev,mode=1777,size=8388608") || !slices.Contains(tmpfs, "/work nosuid,nodev,mode=755,size=8388608") {
		t.Errorf("tmpfs: %v", tmpfs)
	}
	if fmt.Sprint(c.Linux.Namespaces) != "[{pid} {ipc} {uts} {mount} {network}]" {
		t.Errorf("namespaces: %v", c.Linux.Namespaces)
	}
	s.Network = true
	c = bundleConfig(s, "/opt/py")
	found := false
	for _, m := range c.Mounts {
		found = found || m.Destination == "/etc/resolv.conf"
	}
	if _, err := os.Stat("/etc/resolv.conf"); err == nil && !found {
		t.Error("no /etc/resolv.conf with the network")
	}
	if fmt.Sprint(c.Linux.Namespaces) != "[{pid} {ipc} {uts} {mount}]" {
		t.Errorf("namespaces with the network: %v", c.Linux.Namespaces)
	}
}

// BenchmarkStartToReady is the time from runner.Start to READY, and back to
// nothing after Close.
func BenchmarkStartToReady(b *testing.B) {
	d, spec := setup(b)
	if _, err := d.prefix(context.Background(), spec.Python); err != nil {
		b.Fatal(err)
	}
	var ready, closing time.Duration
	for i := 0; i < b.N; i++ {
		spec.InstanceID = fmt.Sprintf("gvbench-%d-%d", os.Getpid(), seq.Add(1))
		t0 := time.Now()
		p, err := runner.Start(context.Background(), spec)
		if err != nil {
			b.Fatal(err)
		}
		ready += time.Since(t0)
		t1 := time.Now()
		p.Close()
		closing += time.Since(t1)
	}
	b.ReportMetric(float64(ready.Milliseconds())/float64(b.N), "ms-to-ready")
	b.ReportMetric(float64(closing.Milliseconds())/float64(b.N), "ms-to-close")
}
