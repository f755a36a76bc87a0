// Package procs starts the benchmarked servers in their own process groups,
// stops them (and everything they started), and reads their memory and CPU
// use from /proc.
package procs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is a started server.
type Proc struct {
	Name    string
	Cmd     *exec.Cmd
	LogPath string
	done    chan struct{}
	waitErr error
}

var (
	mu      sync.Mutex
	running = map[*Proc]bool{}
)

// Start runs cmd in a new process group with stdout and stderr appended to
// logPath. The process is remembered until Stop so that StopAll can clean up.
func Start(name string, cmd *exec.Cmd, logPath string) (*Proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if cmd.Stdin == nil {
		devnull, err := os.Open(os.DevNull)
		if err != nil {
			logf.Close()
			return nil, err
		}
		cmd.Stdin = devnull
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	p := &Proc{Name: name, Cmd: cmd, LogPath: logPath, done: make(chan struct{})}
	mu.Lock()
	running[p] = true
	mu.Unlock()
	go func() {
		p.waitErr = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// Pid of the server process.
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Exited reports whether the process has ended, and how.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// Stop ends the server: SIGTERM to its process group and to every process of
// its tree (children may have made groups of their own), then SIGKILL to
// whatever is left after grace.
func (p *Proc) Stop(grace time.Duration) {
	mu.Lock()
	delete(running, p)
	mu.Unlock()
	tree := Tree(p.Pid())
	signalAll(p.Pid(), tree, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
	}
	// Children outlive their parent for a moment; wait for them too.
	end := time.Now().Add(grace)
	for time.Now().Before(end) && anyAlive(tree[1:]) {
		time.Sleep(20 * time.Millisecond)
	}
	signalAll(p.Pid(), tree, syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(2 * time.Second):
	}
}

func signalAll(pgid int, tree []int, sig syscall.Signal) {
	syscall.Kill(-pgid, sig)
	for _, pid := range tree {
		syscall.Kill(pid, sig)
	}
}

func anyAlive(pids []int) bool {
	for _, pid := range pids {
		if alive(pid) {
			return true
		}
	}
	return false
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	st, _, err := parseStat(b)
	return err == nil && st != "Z" && st != "X"
}

// StopAll stops every server still running (on exit or Ctrl+C).
func StopAll(grace time.Duration) {
	mu.Lock()
	ps := make([]*Proc, 0, len(running))
	for p := range running {
		ps = append(ps, p)
	}
	mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		go func() { defer wg.Done(); p.Stop(grace) }()
	}
	wg.Wait()
}

// LogTail is the last n lines of the server's log.
func (p *Proc) LogTail(n int) string { return Tail(p.LogPath, n) }

// Tail is the last n lines of a file.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Tree is pid followed by all its live descendants (from /proc).
func Tree(pid int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		cpid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		_, ppid, err := parseStat(b)
		if err != nil {
			continue
		}
		children[ppid] = append(children[ppid], cpid)
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// parseStat returns the state and ppid from /proc/PID/stat.
func parseStat(b []byte) (state string, ppid int, err error) {
	// pid (comm) S ppid ...; comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return "", 0, errors.New("bad stat")
	}
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 2 {
		return "", 0, errors.New("bad stat")
	}
	ppid, err = strconv.Atoi(f[1])
	return f[0], ppid, err
}

// TreeRSS is the summed VmRSS, in bytes, of pid and its descendants, and how
// many processes that was.
func TreeRSS(pid int) (bytes int64, nprocs int) {
	for _, p := range TreeRSSByProc(pid) {
		bytes += p.RSS
		nprocs++
	}
	return bytes, nprocs
}

// ProcRSS is one process's name (comm) and resident memory in bytes.
type ProcRSS struct {
	Comm string
	RSS  int64
}

// TreeRSSByProc is the VmRSS of pid and each of its live descendants.
func TreeRSSByProc(pid int) []ProcRSS {
	var out []ProcRSS
	for _, p := range Tree(pid) {
		rss, err := RSS(p)
		if err != nil {
			continue
		}
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p))
		out = append(out, ProcRSS{Comm: strings.TrimSpace(string(comm)), RSS: rss})
	}
	return out
}

// RSS of one process in bytes (VmRSS of /proc/PID/status).
func RSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				return kb * 1024, err
			}
		}
	}
	return 0, errors.New("no VmRSS (zombie?)")
}

// TreeCPU is the CPU time (user+system) used so far by pid and its live
// descendants.
func TreeCPU(pid int) time.Duration {
	var total time.Duration
	for _, p := range Tree(pid) {
		total += CPU(p)
	}
	return total
}

// CPUSnapshot is the CPU time used so far by each process of a tree, by pid.
type CPUSnapshot map[int]ProcCPU

// ProcCPU is one process's name (comm) and CPU time.
type ProcCPU struct {
	Comm string
	CPU  time.Duration
}

// TreeCPUs snapshots the CPU time of pid and its live descendants.
func TreeCPUs(pid int) CPUSnapshot {
	snap := CPUSnapshot{}
	for _, p := range Tree(pid) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		comm := ""
		if i, j := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')'); i >= 0 && j > i {
			comm = string(b[i+1 : j])
		}
		snap[p] = ProcCPU{Comm: comm, CPU: CPU(p)}
	}
	return snap
}

// Since is the CPU each process used between before and s (processes that
// started in between count from zero), and the total.
func (s CPUSnapshot) Since(before CPUSnapshot) (per []ProcCPU, total time.Duration) {
	for pid, now := range s {
		d := now.CPU - before[pid].CPU
		if d < 0 {
			d = now.CPU
		}
		per = append(per, ProcCPU{Comm: now.Comm, CPU: d})
		total += d
	}
	return per, total
}

// clockTick is USER_HZ, 100 on every Linux this runs on.
const clockTick = 100

// CPU time (utime+stime) of one process; 0 if it is gone.
func CPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0
	}
	f := strings.Fields(string(b[i+2:]))
	// fields after comm: state(0) ppid(1) ... utime(11) stime(12)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / clockTick
}

// SystemBusy is the CPU time all processes of the machine used so far
// (every non-idle column of the cpu line of /proc/stat).
func SystemBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0
	}
	var busy int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 || i >= 8 { // idle, iowait; guest time is already in user
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		busy += n
	}
	return time.Duration(busy) * time.Second / clockTick
}

// SelfCPU is the CPU time used so far by this process (the load generator).
func SelfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
