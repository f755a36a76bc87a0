package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The attack suite: an attacker agent tries, one call per case, to get out
// of its sandbox (read and write the host, reach its loopback, bomb it,
// snoop on and signal other instances and the server), next to a victim
// agent that holds a secret. Every sandbox driver but "process" must block
// every case; the process driver is no isolation, so its unblocked cases are
// only logged, but the limits it does enforce (memory, CPU time, processes,
// by sampling /proc) are asserted. After every attack the server and the
// victim must still answer, and the attacker must be callable again.
//
// Fixtures: testdata/attacker (one entrypoint per case, each reporting
// {"attempted", "blocked", "detail"}) and testdata/victim.
//
// CI installs bubblewrap, runsc and QEMU and builds the microVM image (make
// microvm-image); without them the namespace, gvisor and microvm subtests
// fail, unless RUNAGENT_TEST_NO_BWRAP=1 / RUNAGENT_TEST_NO_GVISOR=1 /
// RUNAGENT_TEST_NO_MICROVM=1 makes them skip.
func TestSandboxAttacks(t *testing.T) {
	for _, driver := range []string{"process", "namespace", "gvisor", "microvm"} {
		t.Run(driver, func(t *testing.T) { runAttackSuite(t, driver) })
	}
}

// attackOutcome is what one attack came to.
type attackOutcome struct {
	name      string
	attempted string
	blocked   bool
	detail    string
	limit     string         // the RESOURCE_LIMIT message, when the call ended with one
	result    map[string]any // the attacker's report, when the call returned
	failure   string         // the call failed otherwise
}

func (o *attackOutcome) verdict() string {
	switch {
	case o.failure != "":
		return "ERROR"
	case o.blocked:
		return "blocked"
	}
	return "NOT BLOCKED"
}

// attackCase is one attack: the attacker's entrypoint and what it needs.
type attackCase struct {
	name   string
	tag    string
	kwargs map[string]any
	// limit: the call must end with RESOURCE_LIMIT naming this, under
	// every driver (the process driver samples /proc for it).
	limit string
	// processBlocks: the process driver must block it too.
	processBlocks bool
	// check runs after the attack, before the common checks.
	check func(t testing.TB, o *attackOutcome)
}

func runAttackSuite(t testing.TB, driver string) {
	attackPrecheck(t, driver)
	sandboxed := driver != "process"
	marker := attackRandHex(t, 6)
	secret := "victim-secret-" + attackRandHex(t, 8)
	forkName := "rafb-" + marker // the fork bomb's children name themselves so (comm, 15 bytes at most)
	attackerEnv := "ATTACKER_MARKER=attacker-" + marker
	stray := []string{"/etc/ra-attack-" + marker} // what a write that got through leaves on the host (the test removes it)

	data := filepath.Join(t.TempDir(), "data")
	// Under QEMU's emulation a guest counts CPU time for what its host, busy
	// with the other tests, spends elsewhere: the memory bomb reached the
	// CPU limit before the memory limit there. The spin still hits it.
	cpuSeconds := "3"
	if driver == "microvm" {
		cpuSeconds = "12"
	}
	s := startPlatform(t, data, 0, "--sandbox", driver, "--memory-mb", "128", "--max-pids", "64", "--cpu-seconds", cpuSeconds)
	serverPID := s.cmd.Process.Pid
	// Whatever happens to the signal attack, the server is not left stopped
	// (cleanups run last first: this one before startPlatform's Stop).
	t.Cleanup(func() { syscall.Kill(serverPID, syscall.SIGCONT) })
	t.Cleanup(func() {
		for _, p := range append(stray, filepath.Join(data, "ra-attack-"+marker)) {
			os.Remove(p)
		}
		if n := attackKillNamed(forkName); n > 0 {
			t.Logf("cleanup: killed %d leftover fork bomb processes", n)
		}
	})

	victimDir := attackFixture(t, "victim")
	editConfig(t, victimDir, func(cfg map[string]any) { cfg["env_vars"] = map[string]any{"VICTIM_SECRET": secret} })
	attackerDir := attackFixture(t, "attacker")
	editConfig(t, attackerDir, func(cfg map[string]any) {
		k, v, _ := strings.Cut(attackerEnv, "=")
		cfg["env_vars"] = map[string]any{k: v}
	})
	victim := s.deploy(t, victimDir, s.Admin)
	attacker := s.deploy(t, attackerDir, s.Admin)
	bundles, _ := filepath.Glob(filepath.Join(data, "agents", victim, "*", "main.py"))
	if len(bundles) != 1 {
		t.Fatalf("the victim's bundle folder under %s: found %v", filepath.Join(data, "agents", victim), bundles)
	}
	victimBundle := filepath.Dir(bundles[0])

	call := func(agent, tag string, kwargs map[string]any) reply {
		t.Helper()
		if kwargs == nil {
			kwargs = map[string]any{}
		}
		return s.do(t, "POST", "/api/v1/agents/"+agent+"/run", s.Admin, runBody(tag, kwargs))
	}
	victimOK := func() error {
		r := call(victim, "ok", nil)
		if r.Status != 200 || !r.Env.Success {
			return fmt.Errorf("%d %s", r.Status, r.Body)
		}
		if v, err := attackValue(r); err != nil || v != "ok" {
			return fmt.Errorf("answered %v (%v): %s", v, err, r.Body)
		}
		return nil
	}
	if err := victimOK(); err != nil {
		t.Fatalf("the victim before any attack: %v\nserver:\n%s", err, s.Logs())
	}
	if r := call(attacker, "hello", nil); r.Status != 200 {
		t.Fatalf("the attacker before any attack: %d %s\nserver:\n%s", r.Status, r.Body, s.Logs())
	}
	victimPID := attackReadyPID(t, s, victim)
	attackerBaseline := len(attackProcsWithEnv(attackerEnv))

	// The host's loopback listener the network attack aims at; it greets
	// whoever connects with the marker, so the attacker knows it got here.
	lnPort, accepted := greetingListener(t, "127.0.0.1:0", "host-listener-"+marker+"\n")

	// Under the process driver a signal reaches any process of the host's
	// user: point it at decoys rather than the real victim and server.
	sigVictim, sigServer := victimPID, serverPID
	var decoyVictimGone chan struct{}
	if !sandboxed {
		var decoys [2]*exec.Cmd
		for i := range decoys {
			decoys[i] = exec.Command("sleep", "300")
			if err := decoys[i].Start(); err != nil {
				t.Fatal(err)
			}
			c := decoys[i]
			gone := make(chan struct{})
			go func() { c.Wait(); close(gone) }()
			if i == 0 {
				decoyVictimGone = gone
			}
			t.Cleanup(func() { c.Process.Kill(); <-gone })
		}
		sigVictim, sigServer = decoys[0].Process.Pid, decoys[1].Process.Pid
	}

	const workDirMB = 32 // the attacker's deployment.work_dir_mb
	cases := []attackCase{
		{name: "read host files", tag: "read_host",
			kwargs: map[string]any{"data_dir": data, "victim_dir": victimBundle}},
		{name: "write outside work dir", tag: "write_outside",
			kwargs: map[string]any{"data_dir": data, "marker": marker, "driver": driver},
			check: func(t testing.TB, o *attackOutcome) {
				// The places an instance may write to must work, or "blocked"
				// means nothing.
				sanity, _ := o.result["sanity"].(map[string]any)
				want := []string{"/tmp", "/work"}
				if !sandboxed {
					want = []string{os.TempDir()}
				}
				for _, d := range want {
					if sanity[d] != true {
						t.Errorf("%s driver: write outside work dir: the sanity write to %s failed (%v): %s", driver, d, sanity, o.detail)
					}
				}
				// What got written: on the host (then it escaped), or in the
				// sandbox's own file system outside /tmp and /work (which the
				// attacker reports as not blocked).
				written, _ := o.result["written"].([]any)
				for _, w := range written {
					w, _ := w.(map[string]any)
					p, _ := w["path"].(string)
					if p == "" {
						continue
					}
					if _, err := os.Stat(p); err == nil {
						o.blocked = false
						o.detail += fmt.Sprintf("; %s IS ON THE HOST", p)
						if err := os.Remove(p); err != nil {
							t.Errorf("%s driver: remove the attacker's %s: %v", driver, p, err)
						}
					} else if w["on_scratch"] != true {
						o.detail += fmt.Sprintf("; %s is not on the host: it went to the sandbox's own root file system, outside /tmp and /work", p)
					}
				}
			}},
		{name: "tcp to host loopback", tag: "tcp_connect",
			kwargs: map[string]any{"port": lnPort, "marker": "host-listener-" + marker},
			check: func(t testing.TB, o *attackOutcome) {
				if n := accepted.Load(); n > 0 && o.blocked {
					o.blocked = false
					o.detail += fmt.Sprintf("; but the test's listener accepted %d connection(s)", n)
				}
			}},
		{name: "fork bomb", tag: "fork_bomb", processBlocks: true,
			kwargs: map[string]any{"marker": forkName, "count": 1000, "hold": 4},
			check: func(t testing.TB, o *attackOutcome) {
				if !sandboxed && o.limit == "" && o.failure == "" {
					t.Errorf("process driver: fork bomb: want the call to end with RESOURCE_LIMIT (the /proc sampling), got %s: %s", o.verdict(), o.detail)
				}
				// Nothing of it may outlive the call.
				var left []int
				var extra int
				ok := attackPoll(15*time.Second, func() bool {
					left = attackNamedProcs(forkName)
					extra = len(attackProcsWithEnv(attackerEnv)) - attackerBaseline
					return len(left) == 0 && extra <= 0
				})
				if !ok {
					t.Errorf("%s driver: fork bomb: %d processes named %s and %d more processes with the attacker's environment than before remain 15s after the call; killing them",
						driver, len(left), forkName, extra)
					attackKillNamed(forkName)
				}
			}},
		{name: "memory bomb", tag: "memory_hog", limit: "memory", kwargs: map[string]any{"max_mb": 2048, "chunk_mb": 16}},
		{name: "cpu spin", tag: "cpu_spin", limit: "cpu", kwargs: map[string]any{"seconds": 30}},
		{name: "/proc snooping", tag: "proc_snoop",
			kwargs: map[string]any{"secret": secret, "victim_pid": victimPID, "server_pid": serverPID,
				"server_marker": "RUNAGENT_CACHE_DIR=" + sharedCache}},
		{name: "signal victim/server", tag: "signal_attack",
			kwargs: map[string]any{"victim_pid": sigVictim, "server_pid": sigServer},
			check: func(t testing.TB, o *attackOutcome) {
				if sandboxed {
					return
				}
				// The decoy "victim" got the SIGKILL: not blocked, as reported.
				select {
				case <-decoyVictimGone:
					if o.blocked {
						o.blocked = false
						o.detail += "; but the decoy victim was killed"
					}
				case <-time.After(2 * time.Second):
				}
			}},
		{name: "fill work dir disk", tag: "disk_fill",
			kwargs: map[string]any{"work_dir_mb": workDirMB, "driver": driver}},
	}

	health := &http.Client{Timeout: 10 * time.Second}
	var outcomes []*attackOutcome
	for _, c := range cases {
		attackerPID := attackReadyPID(t, s, attacker)
		start := time.Now()
		r := call(attacker, c.tag, c.kwargs)
		o := attackJudge(c.name, r)
		took := time.Since(start).Round(100 * time.Millisecond)
		if c.check != nil {
			c.check(t, o)
		}
		outcomes = append(outcomes, o)

		// The case's own verdict.
		switch {
		case c.limit != "":
			if o.limit == "" || !strings.Contains(strings.ToLower(o.limit), c.limit) {
				t.Errorf("%s driver: %s: want the call to end with RESOURCE_LIMIT naming %s; tried %q; got %s: %s%s",
					driver, c.name, c.limit, o.attempted, o.verdict(), o.detail, o.failure)
			}
		case sandboxed || c.processBlocks:
			if !o.blocked {
				t.Errorf("%s driver: %s: %s: tried %q: %s%s", driver, c.name, o.verdict(), o.attempted, o.detail, o.failure)
			}
		case o.failure != "":
			t.Errorf("%s driver: %s: the attack call failed: %s", driver, c.name, o.failure)
		}
		t.Logf("%s driver: %s: %s (%s)", driver, c.name, o.verdict(), took)

		// The platform is unharmed: the server answers, the victim answers
		// from the same instance, and the attacker can be called again (on
		// a new instance when the attack's was stopped).
		if resp, err := health.Get("http://" + s.Addr + "/api/v1/health"); err != nil {
			t.Fatalf("%s driver: after %s the server does not answer /api/v1/health: %v\nserver:\n%s", driver, c.name, err, s.Logs())
		} else {
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Errorf("%s driver: after %s /api/v1/health answered %d", driver, c.name, resp.StatusCode)
			}
		}
		if err := victimOK(); err != nil {
			t.Errorf("%s driver: after %s the victim's call failed: %v", driver, c.name, err)
		}
		if pid := attackReadyPID(t, s, victim); pid != victimPID {
			t.Errorf("%s driver: after %s the victim's instance changed (pid %d, was %d)", driver, c.name, pid, victimPID)
			victimPID = pid
		}
		if r := call(attacker, "hello", nil); r.Status != 200 || !r.Env.Success {
			t.Errorf("%s driver: after %s the attacker's next call failed: %d %s", driver, c.name, r.Status, r.Body)
		} else if pid := attackReadyPID(t, s, attacker); o.limit != "" && pid == attackerPID {
			t.Errorf("%s driver: after %s ended with RESOURCE_LIMIT the attacker's instance (pid %d) was not replaced", driver, c.name, pid)
		}
	}

	// The matrix, for CI's output.
	var table strings.Builder
	fmt.Fprintf(&table, "sandbox attack matrix, %s driver:\n", driver)
	if !sandboxed {
		table.WriteString("(the process driver is no isolation: only its limits are asserted)\n")
	}
	for _, o := range outcomes {
		d := o.detail
		if o.failure != "" {
			d = o.failure
		}
		fmt.Fprintf(&table, "%s driver: %s: %s (%s)\n", driver, o.name, o.verdict(), d)
	}
	t.Log(table.String())
}

// attackJudge turns the attack call's answer into an outcome: the
// attacker's own report, or RESOURCE_LIMIT (which blocks), or a failure.
func attackJudge(name string, r reply) *attackOutcome {
	o := &attackOutcome{name: name}
	switch {
	case r.Status == 200 && r.Env.Success:
		v, err := attackValue(r)
		m, ok := v.(map[string]any)
		if err != nil || !ok {
			o.failure = fmt.Sprintf("the attacker answered %v (%v): %s", v, err, r.Body)
			return o
		}
		o.result = m
		o.attempted, _ = m["attempted"].(string)
		o.detail, _ = m["detail"].(string)
		o.blocked = m["blocked"] == true
	case r.code() == "RESOURCE_LIMIT":
		o.blocked = true
		o.limit = r.Env.Error.Message
		o.attempted = name
		o.detail = fmt.Sprintf("%d RESOURCE_LIMIT: %s", r.Status, r.Env.Error.Message)
	default:
		o.failure = fmt.Sprintf("the call failed: %d %s", r.Status, r.Body)
	}
	return o
}

// attackValue decodes a run's result: data is a structured string, its
// payload the value as JSON.
func attackValue(r reply) (any, error) {
	var data string
	if err := json.Unmarshal(r.Env.Data, &data); err != nil {
		return nil, fmt.Errorf("data is not a string: %s", r.Env.Data)
	}
	var outer struct {
		Payload string `json:"payload"`
	}
	if err := json.Unmarshal([]byte(data), &outer); err != nil {
		return nil, fmt.Errorf("not a structured string: %q", data)
	}
	var v any
	if err := json.Unmarshal([]byte(outer.Payload), &v); err != nil {
		return nil, fmt.Errorf("payload is not JSON: %q", outer.Payload)
	}
	return v, nil
}

// attackPrecheck fails (or, when the environment says the tool is missing
// on purpose, skips) a driver this machine or this build cannot run.
func attackPrecheck(t testing.TB, driver string) {
	t.Helper()
	var tool, env string
	switch driver {
	case "namespace":
		tool, env = "bwrap", "RUNAGENT_TEST_NO_BWRAP"
	case "gvisor":
		tool, env = "runsc", "RUNAGENT_TEST_NO_GVISOR"
	case "microvm":
		tool, env = "qemu-system-x86_64", "RUNAGENT_TEST_NO_MICROVM"
	default:
		return
	}
	unavailable := func(reason string) {
		t.Helper()
		if os.Getenv(env) == "1" {
			t.Skipf("%s (%s=1)", reason, env)
		}
		t.Fatalf("%s (CI runs every driver; set %s=1 to skip this one)", reason, env)
	}
	if _, err := exec.LookPath(tool); err != nil {
		unavailable(fmt.Sprintf("the %s sandbox needs %s, which is not installed: %v", driver, tool, err))
	}
	if err := attackSandboxServes(t, driver); err != nil {
		unavailable(fmt.Sprintf("the %s sandbox is not available: %v", driver, err))
	}
}

// attackSandboxServes starts `runagent server --sandbox driver` and says
// why it did not come up, if it did not (it checks its driver at start).
func attackSandboxServes(t testing.TB, driver string) error {
	port := freePort(t)
	cmd := exec.Command(binary, "server", "--sandbox", driver, "--port", strconv.Itoa(port), "--data-dir", filepath.Join(t.TempDir(), "probe"))
	cmd.Env = append(os.Environ(), "RUNAGENT_CACHE_DIR="+sharedCache)
	var out attackBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop := func() {
		syscall.Kill(cmd.Process.Pid, syscall.SIGINT)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("runagent server --sandbox %s exited: %s", driver, strings.TrimSpace(out.String()))
		default:
		}
		if resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/api/v1/health", port)); err == nil {
			resp.Body.Close()
			stop()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	return fmt.Errorf("runagent server --sandbox %s did not answer within 60s: %s", driver, out.String())
}

type attackBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *attackBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *attackBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// attackFixture copies testdata/<name> to a fresh folder (deploy and the
// test edit the copy, never the fixture).
func attackFixture(t testing.TB, name string) string {
	t.Helper()
	src := filepath.Join("testdata", name)
	dst := filepath.Join(t.TempDir(), name)
	err := filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if info.IsDir() {
			if info.Name() == "__pycache__" {
				return filepath.SkipDir
			}
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// attackReadyPID is the pid of the agent's one ready instance, waiting for
// it to be ready.
func attackReadyPID(t testing.TB, s *platformServer, agent string) int {
	t.Helper()
	var pids []int
	if !attackPoll(30*time.Second, func() bool {
		_, pids, _ = s.agentDetail(t, agent)
		return len(pids) > 0
	}) {
		t.Fatalf("agent %s has no ready instance\nserver:\n%s", agent, s.Logs())
	}
	sort.Ints(pids)
	return pids[0]
}

func attackRandHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)[:n]
}

// attackProcs calls fn with every live (not zombie) host process's pid.
func attackProcs(fn func(pid int)) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if st := attackProcState(pid); st == "" || st == "Z" || st == "X" {
			continue
		}
		fn(pid)
	}
}

// attackNamedProcs are the live processes whose name (comm) is name.
func attackNamedProcs(name string) []int {
	var pids []int
	attackProcs(func(pid int) {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil && strings.TrimSpace(string(b)) == name {
			pids = append(pids, pid)
		}
	})
	return pids
}

// attackProcsWithEnv are the live processes whose environment has kv.
func attackProcsWithEnv(kv string) []int {
	var pids []int
	attackProcs(func(pid int) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			return
		}
		for _, e := range bytes.Split(b, []byte{0}) {
			if string(e) == kv {
				pids = append(pids, pid)
				return
			}
		}
	})
	return pids
}

// attackKillNamed SIGKILLs the live processes named name and says how many.
func attackKillNamed(name string) int {
	pids := attackNamedProcs(name)
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			continue
		}
	}
	return len(pids)
}

// attackPoll polls cond every 100ms until it holds or timeout passes.
func attackPoll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// attackProcState is the state letter of /proc/PID/stat ("R", "S", "Z"...),
// "" when there is no such process.
func attackProcState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return ""
	}
	f := bytes.Fields(b[i+1:])
	if len(f) == 0 {
		return ""
	}
	return string(f[0])
}

// greetingListener listens on addr, writes greeting to whoever connects and
// counts them, until the test ends; it returns its port and the count.
func greetingListener(t testing.TB, addr, greeting string) (int, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := new(atomic.Int64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Write([]byte(greeting))
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port, accepted
}
