package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// editConfig rewrites the agent's runagent.config.json through fn.
func editConfig(t testing.TB, dir string, fn func(cfg map[string]any)) {
	t.Helper()
	path := filepath.Join(dir, "runagent.config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	fn(cfg)
	b, _ = json.MarshalIndent(cfg, "", "  ")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// addPyEntrypoint writes file (Python code) into the agent and adds an
// entrypoint tag that calls the function fn in it.
func addPyEntrypoint(t testing.TB, dir, file, code, fn, tag string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, file), []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	editConfig(t, dir, func(cfg map[string]any) {
		arch := cfg["agent_architecture"].(map[string]any)
		arch["entrypoints"] = append(arch["entrypoints"].([]any), map[string]any{"file": file, "module": fn, "tag": tag})
	})
}

// procState is the state letter of /proc/PID/stat ("R", "S", "T", "Z"...),
// "" once the process is gone (reaped).
func procState(pid int) string {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return ""
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	i := bytes.LastIndexByte(b, ')')
	f := bytes.Fields(b[i+1:])
	if i < 0 || len(f) == 0 {
		return ""
	}
	return string(f[0])
}

// namesLimit reports whether a limit error's message holds every word
// (compared in lower case, spaces ignored: "CPU time 1s" and "cpu time 1 s"
// both hold "cputime1s").
func namesLimit(msg string, words ...string) bool {
	m := strings.ReplaceAll(strings.ToLower(msg), " ", "")
	for _, w := range words {
		if !strings.Contains(m, w) {
			return false
		}
	}
	return true
}

// pollUntil polls cond every 100ms until it holds or timeout passes.
func pollUntil(timeout time.Duration, cond func() bool) bool {
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

// waitReaped waits until pid no longer exists at all: kill(pid, 0) says
// ESRCH (killed and reaped by its parent).
func waitReaped(pid int, timeout time.Duration) bool {
	return pollUntil(timeout, func() bool { return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) })
}

// An instance that stops answering (its process is SIGSTOPped by its own
// entrypoint) misses two health pings and is killed and replaced: the call
// it held fails with AGENT_CRASHED naming the health checks, the process is
// gone, the failure is counted, and the next call runs on a new instance.
func TestPlatformHungInstanceReplaced(t *testing.T) {
	s := startPlatform(t, "", 0)
	dir, _ := newAgent(t, "default")
	// The stop reaches the other threads a moment after kill returns: the
	// calling thread waits (a minute at most) so that it cannot answer first.
	addPyEntrypoint(t, dir, "hang.py", `import os
import signal
import time


def hang():
    os.kill(os.getpid(), signal.SIGSTOP)
    end = time.time() + 60
    while time.time() < end:
        time.sleep(0.05)
    return "woke up"
`, "hang", "hang")
	setDeployment(t, dir, map[string]any{"max_instances": 1})
	id := s.deploy(t, dir, s.Admin)
	hungMetric := `runagent_instance_failures_total{agent="` + id + `",why="hung"}`
	hungBefore := metricValue(t, s, hungMetric)
	allMetric := `runagent_instance_failures_total{agent="` + id + `"`
	allBefore := metricValue(t, s, allMetric)

	start := time.Now()
	done := make(chan reply, 1)
	go func() { done <- s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, runBody("hang", nil)) }()

	// The instance serving the call is stopped (state T), yet still listed.
	var hungPID int
	if !pollUntil(30*time.Second, func() bool {
		_, pids, _ := s.agentDetail(t, id)
		for _, pid := range pids {
			if procState(pid) == "T" {
				hungPID = pid
				return true
			}
		}
		return false
	}) {
		t.Fatalf("no stopped instance appeared for the hang call\nserver:\n%s", s.Logs())
	}

	var r reply
	select {
	case r = <-done:
	case <-time.After(90 * time.Second):
		t.Fatalf("the call on the hung instance still runs after 90s (the instance was not replaced)\nserver:\n%s", s.Logs())
	}
	took := time.Since(start)
	if r.Status != 502 || r.code() != "AGENT_CRASHED" || !strings.Contains(r.Env.Error.Message, "health check") {
		t.Errorf("call on the hung instance: %d %s, want 502 AGENT_CRASHED about health checks\nserver:\n%s", r.Status, r.Body, s.Logs())
	}
	// Two missed pings, at least a health interval apart.
	if took < 2*time.Second {
		t.Errorf("the hung call failed after %s: too soon to be the health checks", took)
	}
	if !waitReaped(hungPID, 10*time.Second) {
		t.Errorf("the hung instance (pid %d) still exists 10s after its call failed: state %q", hungPID, procState(hungPID))
	}
	if got := metricValue(t, s, hungMetric) - hungBefore; got != 1 {
		t.Errorf("%s moved by %v, want 1", hungMetric, got)
	}
	// One instance failed: the sum over the reasons moves by one too (not
	// "hung" and then "died" for the same instance).
	if got := metricValue(t, s, allMetric) - allBefore; got != 1 {
		t.Errorf("runagent_instance_failures_total of the agent, all reasons, moved by %v for one hung instance, want 1", got)
	}

	if r := s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, runBody("minimal", map[string]any{"message": "after"})); r.Status != 200 || !r.Env.Success {
		t.Fatalf("call after the hung instance was replaced: %d %s", r.Status, r.Body)
	}
	_, pids, _ := s.agentDetail(t, id)
	for _, pid := range pids {
		if pid == hungPID {
			t.Errorf("the hung instance's pid %d is still listed as ready: %v", hungPID, pids)
		}
	}
	if len(pids) == 0 {
		t.Errorf("no ready instance listed right after a successful call")
	}
}

// CPU time and process/thread limits: an instance over either is killed, its
// call ends with 502 RESOURCE_LIMIT naming the limit, the kill is counted,
// and the next call runs on a fresh instance. The CPU limit comes from the
// server's flag, the pids limit from the agent's deployment section.
func TestPlatformCPUAndPidsLimits(t *testing.T) {
	s := startPlatform(t, "", 0, "--cpu-seconds", "1")

	// CPU: a busy loop (bounded in wall time, so a missing limit shows as
	// a success rather than a hang).
	cpuDir, _ := newAgent(t, "default")
	addPyEntrypoint(t, cpuDir, "spin.py",
		"import time\n\n\ndef spin(seconds):\n    end = time.time() + float(seconds)\n    n = 0\n    while time.time() < end:\n        n += 1\n    return n\n",
		"spin", "spin")
	cpuID := s.deploy(t, cpuDir, s.Admin)
	start := time.Now()
	r := s.do(t, "POST", "/api/v1/agents/"+cpuID+"/run", s.Admin, runBody("spin", map[string]any{"seconds": 40}))
	if r.Status != 502 || r.code() != "RESOURCE_LIMIT" || !namesLimit(r.Env.Error.Message, "cputime1s", "exceeded") {
		t.Errorf("over the CPU limit (after %s): %d %s, want 502 RESOURCE_LIMIT naming the CPU time limit of 1s", time.Since(start), r.Status, r.Body)
	}
	// The kill is counted once the instance is gone, which can be just after
	// the call's answer.
	cpuKills := `runagent_resource_limit_kills_total{agent="` + cpuID + `",limit="cpu"}`
	pollUntil(10*time.Second, func() bool { return metricValue(t, s, cpuKills) >= 1 })
	if got := metricValue(t, s, cpuKills); got != 1 {
		t.Errorf("the instance was stopped for its CPU limit, but runagent_resource_limit_kills_total{limit=\"cpu\"} = %v, want 1", got)
	}
	if r := s.do(t, "POST", "/api/v1/agents/"+cpuID+"/run", s.Admin, runBody("minimal", map[string]any{"message": "after"})); r.Status != 200 || !r.Env.Success {
		t.Errorf("call after the CPU kill: %d %s", r.Status, r.Body)
	}

	// Pids: many threads, then many child processes.
	pidsDir, _ := newAgent(t, "default")
	addPyEntrypoint(t, pidsDir, "crowd.py", `import subprocess
import threading
import time


def crowd(kind, n, seconds, pidfile=""):
    n, seconds = int(n), float(seconds)
    if kind == "threads":
        ts = [threading.Thread(target=time.sleep, args=(seconds,), daemon=True) for _ in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    else:
        # Each child is recorded as it starts: the limit may stop the
        # instance (or refuse a fork) before the last one.
        ps = []
        with open(pidfile, "w") as f:
            for _ in range(n):
                ps.append(subprocess.Popen(["sleep", str(seconds)]))
                f.write("%d " % ps[-1].pid)
                f.flush()
        for p in ps:
            p.wait()
    return n
`, "crowd", "crowd")
	setDeployment(t, pidsDir, map[string]any{"max_pids": 20, "max_concurrency": 2})
	pidsID := s.deploy(t, pidsDir, s.Admin)
	r = s.do(t, "POST", "/api/v1/agents/"+pidsID+"/run", s.Admin, runBody("crowd", map[string]any{"kind": "threads", "n": 60, "seconds": 30}))
	if r.Status != 502 || r.code() != "RESOURCE_LIMIT" || !namesLimit(r.Env.Error.Message, "process", "20", "exceeded") {
		t.Errorf("threads over the pids limit: %d %s, want 502 RESOURCE_LIMIT naming the limit of 20 processes", r.Status, r.Body)
	}
	pidfile := filepath.Join(t.TempDir(), "children")
	r = s.do(t, "POST", "/api/v1/agents/"+pidsID+"/run", s.Admin, runBody("crowd", map[string]any{"kind": "processes", "n": 30, "seconds": 30, "pidfile": pidfile}))
	if r.Status != 502 || r.code() != "RESOURCE_LIMIT" || !namesLimit(r.Env.Error.Message, "process", "20", "exceeded") {
		t.Errorf("child processes over the pids limit: %d %s, want 502 RESOURCE_LIMIT naming the limit of 20 processes", r.Status, r.Body)
	}
	// The instance's children went with it (its process group was killed);
	// orphans may linger as zombies until init reaps them.
	b, err := os.ReadFile(pidfile)
	if err != nil {
		t.Errorf("the agent did not record its children: %v", err)
	}
	children := strings.Fields(string(b))
	if err == nil && (len(children) == 0 || len(children) > 30) {
		t.Errorf("the agent recorded %d children, want 1 to 30: %q", len(children), b)
	}
	for _, c := range children {
		pid, _ := strconv.Atoi(c)
		if !pollUntil(10*time.Second, func() bool { st := procState(pid); return st == "" || st == "Z" }) {
			t.Errorf("child process %d of the killed instance still runs (state %s)", pid, procState(pid))
			break
		}
	}
	if got := metricValue(t, s, `runagent_resource_limit_kills_total{agent="`+pidsID+`",limit="pids"}`); got != 2 {
		t.Errorf("pids limit kills = %v, want 2", got)
	}
	if r := s.do(t, "POST", "/api/v1/agents/"+pidsID+"/run", s.Admin, runBody("crowd", map[string]any{"kind": "threads", "n": 3, "seconds": 0.1})); r.Status != 200 || !r.Env.Success {
		t.Errorf("a call within the pids limit after the kills: %d %s", r.Status, r.Body)
	}
}

// --allow-public lets an agent whose config says auth_settings type "none"
// be run (REST and WebSocket) without a key; without the flag, or for any
// other agent, a key is still required.
func TestPlatformAllowPublic(t *testing.T) {
	port := freePort(t)
	s := startPlatform(t, "", port)
	pubDir, _ := newAgent(t, "default")
	editConfig(t, pubDir, func(cfg map[string]any) { cfg["auth_settings"] = map[string]any{"type": "none"} })
	privDir, _ := newAgent(t, "default")
	editConfig(t, privDir, func(cfg map[string]any) { cfg["auth_settings"] = map[string]any{"type": "api_key"} })
	unsetDir, _ := newAgent(t, "default") // no auth_settings at all
	pub := s.deploy(t, pubDir, s.Admin)
	priv := s.deploy(t, privDir, s.Admin)
	unset := s.deploy(t, unsetDir, s.Admin)
	minimal := runBody("minimal", map[string]any{"message": "hi"})

	// Without --allow-public even a public agent needs a key.
	if r := s.do(t, "POST", "/api/v1/agents/"+pub+"/run", "", minimal); r.Status != 401 || r.code() != "AUTHENTICATION_ERROR" {
		t.Errorf("public agent without a key, no --allow-public: %d %s, want 401 AUTHENTICATION_ERROR", r.Status, r.Body)
	}
	if st, _ := s.stream(t, pub, "", "minimal_stream", map[string]any{"message": "hi"}); st != 401 {
		t.Errorf("public agent's stream without a key, no --allow-public: %d, want 401", st)
	}

	// The same data, served again with --allow-public.
	s.Stop()
	s = startPlatform(t, s.DataDir, port, "--allow-public")
	runKey := s.createKey(t, map[string]any{"name": "app", "scopes": []string{"run"}})
	r := s.do(t, "POST", "/api/v1/agents/"+pub+"/run", "", minimal)
	if r.Status != 200 || !r.Env.Success {
		t.Errorf("public agent without a key, --allow-public: %d %s, want 200", r.Status, r.Body)
	}
	if st, frames := s.stream(t, pub, "", "minimal_stream", map[string]any{"message": "hi"}); st != 101 || len(frames) < 2 || frames[len(frames)-1]["status"] != "stream_completed" {
		t.Errorf("public agent's stream without a key, --allow-public: %d %v, want a completed stream", st, frames)
	}
	if r := s.do(t, "GET", "/api/v1/agents/"+pub+"/architecture", "", nil); r.Status != 200 {
		t.Errorf("public agent's architecture without a key: %d %s", r.Status, r.Body)
	}
	// A key that is given is still checked.
	if r := s.do(t, "POST", "/api/v1/agents/"+pub+"/run", "ra_aaaaaaaaaaaa_"+strings.Repeat("A", 40), minimal); r.Status != 401 || r.code() != "AUTHENTICATION_ERROR" {
		t.Errorf("public agent with an unknown key: %d %s, want 401", r.Status, r.Body)
	}
	// Its invocations are not public.
	if l := s.do(t, "GET", "/api/v1/invocations?agent_id="+pub+"&limit=1", s.Admin, nil); l.Status == 200 {
		var d struct {
			Invocations []struct {
				InvocationID string `json:"invocation_id"`
			}
		}
		json.Unmarshal(l.Env.Data, &d)
		if len(d.Invocations) == 0 {
			t.Errorf("the public call was not recorded: %s", l.Body)
		} else if g := s.do(t, "GET", "/api/v1/invocations/"+d.Invocations[0].InvocationID, "", nil); g.Status != 401 {
			t.Errorf("a public agent's invocation read without a key: %d %s, want 401", g.Status, g.Body)
		}
	} else {
		t.Errorf("list invocations: %d %s", l.Status, l.Body)
	}

	// Agents that are not declared public still need a key.
	for name, id := range map[string]string{"auth_settings api_key": priv, "no auth_settings": unset} {
		if r := s.do(t, "POST", "/api/v1/agents/"+id+"/run", "", minimal); r.Status != 401 || r.code() != "AUTHENTICATION_ERROR" {
			t.Errorf("%s, no key, --allow-public: %d %s, want 401 AUTHENTICATION_ERROR", name, r.Status, r.Body)
		}
		if st, _ := s.stream(t, id, "", "minimal_stream", map[string]any{"message": "hi"}); st != 401 {
			t.Errorf("%s, stream without a key, --allow-public: %d, want 401", name, st)
		}
		if r := s.do(t, "POST", "/api/v1/agents/"+id+"/run", runKey, minimal); r.Status != 200 || !r.Env.Success {
			t.Errorf("%s with a run key: %d %s", name, r.Status, r.Body)
		}
	}
}

// lineReader collects the lines a subprocess prints.
type lineReader struct {
	mu    sync.Mutex
	lines []string
	done  chan struct{}
}

func readLines(t testing.TB, cmd *exec.Cmd) *lineReader {
	t.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	lr := &lineReader{done: make(chan struct{})}
	go func() {
		defer close(lr.done)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			lr.mu.Lock()
			lr.lines = append(lr.lines, sc.Text())
			lr.mu.Unlock()
		}
	}()
	return lr
}

// with returns the lines that contain sub.
func (lr *lineReader) with(sub string) []string {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	var out []string
	for _, l := range lr.lines {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return out
}

func (lr *lineReader) all() string {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	return strings.Join(lr.lines, "\n")
}

// runagent logs --follow prints the lines an agent prints during calls made
// after it started, each once, and stops cleanly on Ctrl-C.
func TestPlatformLogsFollow(t *testing.T) {
	s := startPlatform(t, "", 0)
	dir, _ := newAgent(t, "default")
	addPyEntrypoint(t, dir, "shout.py", "def shout(marker):\n    print(\"marker \" + marker)\n    return \"ok\"\n", "shout", "shout")
	id := s.deploy(t, dir, s.Admin)

	cmd := exec.Command(binary, "logs", id, "--follow", "--server", "http://"+s.Addr, "--api-key", s.Admin)
	cmd.Env = append(os.Environ(), "RUNAGENT_CACHE_DIR="+sharedCache)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	lr := readLines(t, cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var exitErr error
	go func() { <-lr.done; exitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
	})

	// The past lines come first; the deploy's are among them.
	if !pollUntil(30*time.Second, func() bool { return len(lr.with("version 1 is serving")) > 0 }) {
		t.Fatalf("runagent logs --follow did not print the past lines:\n%s\nstderr: %s", lr.all(), stderr.String())
	}
	markers := []string{fmt.Sprintf("m1-%d", time.Now().UnixNano()), fmt.Sprintf("m2-%d", time.Now().UnixNano())}
	for _, m := range markers {
		if r := s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, runBody("shout", map[string]any{"marker": m})); r.Status != 200 || !r.Env.Success {
			t.Fatalf("shout: %d %s", r.Status, r.Body)
		}
		if !pollUntil(30*time.Second, func() bool { return len(lr.with("marker "+m)) > 0 }) {
			t.Fatalf("the line printed by a call did not reach logs --follow within 30s:\n%s\nstderr: %s", lr.all(), stderr.String())
		}
		line := lr.with("marker " + m)[0]
		if !strings.Contains(line, "[inv ") || !strings.HasSuffix(line, "stdout: marker "+m) {
			t.Errorf("followed line %q: want an invocation and \"stdout: marker %s\"", line, m)
		}
	}

	// Ctrl-C ends it without an error.
	cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-exited:
		if exitErr != nil {
			t.Errorf("runagent logs --follow after Ctrl-C: %v\nstderr: %s", exitErr, stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Errorf("runagent logs --follow still runs 15s after Ctrl-C")
	}
	for _, m := range markers {
		if n := len(lr.with("marker " + m)); n != 1 {
			t.Errorf("the line of %s was printed %d times, want once:\n%s", m, n, lr.all())
		}
	}
}

// runagent agents delete stops the agent's instances, removes it and its
// files; it refuses without --yes when not on a terminal.
func TestPlatformAgentsDelete(t *testing.T) {
	s := startPlatform(t, "", 0)
	dir, _ := newAgent(t, "default")
	setDeployment(t, dir, map[string]any{"min_instances": 2, "max_instances": 2})
	id := s.deploy(t, dir, s.Admin)
	other, _ := newAgent(t, "default")
	otherID := s.deploy(t, other, s.Admin)
	server := []string{"--server", "http://" + s.Addr, "--api-key", s.Admin}
	minimal := runBody("minimal", map[string]any{"message": "hi"})

	if r := s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, minimal); r.Status != 200 || !r.Env.Success {
		t.Fatalf("call before delete: %d %s", r.Status, r.Body)
	}
	var pids []int
	if !pollUntil(30*time.Second, func() bool { _, pids, _ = s.agentDetail(t, id); return len(pids) == 2 }) {
		t.Fatalf("want 2 ready instances (min_instances 2), have pids %v", pids)
	}
	agentDir := filepath.Join(s.DataDir, "agents", id)
	if _, err := os.Stat(agentDir); err != nil {
		t.Fatalf("the agent's files are not where expected: %v", err)
	}

	// runagent agents show reads the agent the server describes.
	out, errOut, err := runCLI(t, sharedCache, append([]string{"agents", "show", id}, server...)...)
	if err != nil || !strings.Contains(out, id) || !strings.Contains(out, "minimal") {
		t.Errorf("runagent agents show: %v\n%s%s", err, out, errOut)
	}

	// Not on a terminal (a script piping "y") and no --yes: refused, nothing
	// deleted.
	cmd := exec.Command(binary, append([]string{"agents", "delete", id}, server...)...)
	cmd.Env = append(os.Environ(), "RUNAGENT_CACHE_DIR="+sharedCache)
	cmd.Stdin = strings.NewReader("y\n")
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err == nil || !strings.Contains(e.String(), "--yes") {
		t.Errorf("delete without --yes, stdin a pipe: %v\n%s%s", err, o.String(), e.String())
	}
	if r := s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, minimal); r.Status != 200 {
		t.Fatalf("the agent is gone after a refused delete: %d %s", r.Status, r.Body)
	}

	out, errOut, err = runCLI(t, sharedCache, append([]string{"agents", "delete", id, "--yes"}, server...)...)
	if err != nil || !strings.Contains(out, "Deleted agent "+id) {
		t.Fatalf("runagent agents delete --yes: %v\n%s%s\nserver:\n%s", err, out, errOut, s.Logs())
	}
	for _, pid := range pids {
		if !waitReaped(pid, 10*time.Second) {
			t.Errorf("instance pid %d of the deleted agent still exists (state %q)", pid, procState(pid))
		}
	}
	if r := s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, minimal); r.Status != 404 || r.code() != "NOT_FOUND" {
		t.Errorf("run after delete: %d %s, want 404 NOT_FOUND", r.Status, r.Body)
	}
	if r := s.do(t, "GET", "/api/v1/agents/"+id, s.Admin, nil); r.Status != 404 {
		t.Errorf("agent detail after delete: %d %s, want 404", r.Status, r.Body)
	}
	out, errOut, err = runCLI(t, sharedCache, append([]string{"agents", "list", "--json"}, server...)...)
	if err != nil || strings.Contains(out, id) || !strings.Contains(out, otherID) {
		t.Errorf("agents list after delete (want %s gone, %s kept): %v\n%s%s", id, otherID, err, out, errOut)
	}
	if _, err := os.Stat(agentDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the deleted agent's files remain in %s: %v", agentDir, err)
	}
	// The other agent is untouched.
	if r := s.do(t, "POST", "/api/v1/agents/"+otherID+"/run", s.Admin, minimal); r.Status != 200 || !r.Env.Success {
		t.Errorf("the other agent after the delete: %d %s", r.Status, r.Body)
	}
	// Deleting it again: not found, a non-zero exit.
	out, errOut, err = runCLI(t, sharedCache, append([]string{"agents", "delete", id, "--yes"}, server...)...)
	if err == nil || !strings.Contains(errOut, "not found") {
		t.Errorf("deleting a deleted agent: %v\n%s%s", err, out, errOut)
	}
	// The id may be deployed again, from scratch.
	if again := s.deploy(t, dir, s.Admin); again != id {
		t.Errorf("redeploy got agent id %s, want %s", again, id)
	}
	if r := s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, minimal); r.Status != 200 || !r.Env.Success {
		t.Errorf("run after redeploying the deleted agent: %d %s", r.Status, r.Body)
	}
	if _, _, v := s.agentDetail(t, id); v != 1 {
		t.Errorf("the redeployed agent serves version %d, want 1 (a fresh start)", v)
	}
}
