// Package cgroup puts each sandboxed agent instance in its own control group
// (runagent/<name>) to cap its memory and process count, read its usage, tell
// which limit the kernel enforced, and kill everything in it. It works on
// cgroup v2 (unified, with the memory and pids controllers) and on cgroup v1
// (separate memory, pids and cpuacct hierarchies, plus freezer if mounted,
// and cpu for a group with a CPU limit).
package cgroup

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/runagent-go/runagent/internal/sandbox/mountinfo"
)

// Limits for a group.
type Limits struct {
	MemoryBytes int64 // 0: none. v1: memory.limit_in_bytes and memory.memsw.limit_in_bytes (if present); v2: memory.max and memory.swap.max=0
	Pids        int   // 0: none. pids.max
	// CPUs caps CPU time per wall second, in cores (0: none): v2 cpu.max,
	// v1 cpu.cfs_quota_us in the cpu hierarchy (used only when set).
	CPUs float64
}

// cpuPeriodUsec is the CPU bandwidth period: the quota is CPUs times it.
const cpuPeriodUsec = 100000

// Usage of a group.
type Usage struct {
	MemoryBytes int64   // current usage (v1 memory.usage_in_bytes; v2 memory.current)
	CPUSeconds  float64 // v1 cpuacct.usage (ns); v2 cpu.stat usage_usec
	Pids        int     // pids.current
}

// Group is one control group, present in every hierarchy used.
type Group struct {
	rel string // "/runagent/<name>"
	v2  bool
	dir string // v2: the group's directory

	// v1: the group's directory in each hierarchy. cpuacct and freezer may be
	// "" for an opened group; two may share a directory if co-mounted.
	mem, pids, cpuacct, freezer string
	cpu                         string // only for a group with a CPU limit
}

const (
	parentName = "runagent"
	killWait   = 2 * time.Second
	rmdirWait  = 2 * time.Second
	pollEvery  = 10 * time.Millisecond
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)

// Available reports which version is usable ("v1" or "v2") or why none is.
func Available() (string, error) {
	l, err := detect()
	if err != nil {
		return "", err
	}
	return l.version, nil
}

// New creates the group runagent/<name> (name: [A-Za-z0-9_.-]) in every
// controller used, with the limits set. A leftover empty group of that name
// (e.g. from a crash) is replaced, so the LimitHit counters start at zero.
func New(name string, l Limits) (*Group, error) {
	if !nameRE.MatchString(name) || name == "." || name == ".." || len(name) > 200 {
		return nil, fmt.Errorf("cgroup: invalid group name %q (want 1-200 of [A-Za-z0-9_.-], not . or ..)", name)
	}
	if l.MemoryBytes < 0 || l.Pids < 0 || l.CPUs < 0 {
		return nil, fmt.Errorf("cgroup: negative limit %+v", l)
	}
	lay, err := detect()
	if err != nil {
		return nil, err
	}
	rel := "/" + parentName + "/" + name
	g := lay.group(rel)
	if l.CPUs > 0 && !g.v2 {
		if lay.v1["cpu"] == "" {
			return nil, fmt.Errorf("cgroup: a CPU limit needs the v1 cpu hierarchy, which is not mounted")
		}
		g.cpu = filepath.Join(lay.v1["cpu"], filepath.FromSlash(rel))
	}
	if made, err := g.create(lay, l.CPUs > 0); err != nil {
		// Only undo our own directories: a same-named live group stays.
		for _, d := range slices.Backward(made) {
			_ = syscall.Rmdir(d)
		}
		return nil, err
	}
	if err := g.setLimits(l); err != nil {
		_ = g.Remove()
		return nil, err
	}
	return g, nil
}

// Open opens an existing group by its path relative to the hierarchy roots
// (e.g. "/runagent/<name>" that runsc created from an OCI linux.cgroupsPath).
func Open(rel string) (*Group, error) {
	clean := "/" + strings.Trim(rel, "/")
	if clean == "/" || slices.Contains(strings.Split(clean, "/"), "..") || filepath.Clean(clean) != clean {
		return nil, fmt.Errorf("cgroup: invalid group path %q", rel)
	}
	lay, err := detect()
	if err != nil {
		return nil, err
	}
	g := lay.group(clean)
	required := []string{g.dir}
	if !g.v2 {
		required = []string{g.mem, g.pids}
		// Optional hierarchies are used only if the group exists there too.
		if !isDir(g.cpuacct) {
			g.cpuacct = ""
		}
		if !isDir(g.freezer) {
			g.freezer = ""
		}
	}
	for _, d := range required {
		if !isDir(d) {
			return nil, fmt.Errorf("cgroup: group %s does not exist (%s)", clean, d)
		}
	}
	return g, nil
}

// Path is the group's path relative to the hierarchy roots, "/runagent/<name>":
// what an OCI config's linux.cgroupsPath would name.
func (g *Group) Path() string { return g.rel }

// Add moves a process into the group (v1: in every hierarchy used).
func (g *Group) Add(pid int) error {
	for _, d := range g.dirs() {
		if err := writeFile(filepath.Join(d, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return err
		}
	}
	return nil
}

// Usage reads the group's current memory, CPU time and process count.
func (g *Group) Usage() (Usage, error) {
	var u Usage
	var err error
	if g.v2 {
		if u.MemoryBytes, err = readInt(filepath.Join(g.dir, "memory.current")); err != nil {
			return u, err
		}
		usec, err := readKey(filepath.Join(g.dir, "cpu.stat"), "usage_usec")
		if err != nil {
			return u, err
		}
		u.CPUSeconds = float64(usec) / 1e6
		pids, err := readInt(filepath.Join(g.dir, "pids.current"))
		u.Pids = int(pids)
		return u, err
	}
	if u.MemoryBytes, err = readInt(filepath.Join(g.mem, "memory.usage_in_bytes")); err != nil {
		return u, err
	}
	if g.cpuacct != "" {
		ns, err := readInt(filepath.Join(g.cpuacct, "cpuacct.usage"))
		if err != nil {
			return u, err
		}
		u.CPUSeconds = float64(ns) / 1e9
	}
	pids, err := readInt(filepath.Join(g.pids, "pids.current"))
	u.Pids = int(pids)
	return u, err
}

// Pids lists the processes in the group (v1: in any of its hierarchies), sorted.
func (g *Group) Pids() ([]int, error) { return g.procs(false) }

// LimitHit names a limit the kernel enforced since the group was created:
// "memory" if the OOM killer killed in it, "pids" if a fork was refused, ""
// otherwise. Memory wins when both, since an OOM kill is what ended the
// instance. Unreadable counters count as not hit.
func (g *Group) LimitHit() string {
	if g.v2 {
		if n, err := readKey(filepath.Join(g.dir, "memory.events"), "oom_kill"); err == nil && n > 0 {
			return "memory"
		}
		if n, err := readKey(filepath.Join(g.dir, "pids.events"), "max"); err == nil && n > 0 {
			return "pids"
		}
		return ""
	}
	n, err := readKey(filepath.Join(g.mem, "memory.oom_control"), "oom_kill")
	if errors.Is(err, errNoKey) {
		// Kernels before 4.13 have no oom_kill counter: with swap accounted
		// in memsw, hitting that limit is the best sign of an OOM kill.
		n, err = readInt(filepath.Join(g.mem, "memory.memsw.failcnt"))
		if errors.Is(err, fs.ErrNotExist) {
			n, err = readInt(filepath.Join(g.mem, "memory.failcnt"))
		}
	}
	if err == nil && n > 0 {
		return "memory"
	}
	if n, err := readKey(filepath.Join(g.pids, "pids.events"), "max"); err == nil && n > 0 {
		return "pids"
	}
	return ""
}

// Kill SIGKILLs every process in the group until it is empty, waiting at most
// about two seconds. v2 uses cgroup.kill where the kernel has it; v1 freezes
// the group first if the freezer is mounted, so nothing forks while we kill.
func (g *Group) Kill() error {
	deadline := time.Now().Add(killWait)
	switch {
	case g.v2 && exists(filepath.Join(g.dir, "cgroup.kill")):
		if err := writeFile(filepath.Join(g.dir, "cgroup.kill"), "1"); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	case !g.v2 && g.freezer != "":
		g.freezeAndKill(deadline.Add(-killWait / 2))
	}
	for {
		pids, err := g.procs(true)
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup: %s still has processes %v after SIGKILL", g.rel, pids)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL) // ESRCH: already gone
		}
		time.Sleep(pollEvery)
	}
}

// freezeAndKill freezes the v1 group (waiting until freezeBy at most), kills
// what is in it, and thaws it so the signals are delivered.
func (g *Group) freezeAndKill(freezeBy time.Time) {
	state := filepath.Join(g.freezer, "freezer.state")
	if writeFile(state, "FROZEN") == nil {
		for time.Now().Before(freezeBy) {
			b, err := os.ReadFile(state)
			if err != nil || strings.TrimSpace(string(b)) == "FROZEN" {
				break
			}
			time.Sleep(pollEvery)
		}
	}
	pids, _ := g.procs(true)
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	_ = writeFile(state, "THAWED")
}

// Remove deletes the group's directories, retrying briefly while exiting
// processes leave. Removing a removed group is not an error.
func (g *Group) Remove() error {
	var errs []error
	for _, d := range g.dirs() {
		deadline := time.Now().Add(rmdirWait)
		for {
			err := syscall.Rmdir(d)
			if err == nil || errors.Is(err, syscall.ENOENT) {
				break
			}
			if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("cgroup: rmdir %s: %w", d, err))
				break
			}
			time.Sleep(pollEvery)
		}
	}
	return errors.Join(errs...)
}

// dirs is the group's distinct directories, the v1 memory one last so that
// Remove takes it down after processes have left the others.
func (g *Group) dirs() []string {
	if g.v2 {
		return []string{g.dir}
	}
	var out []string
	for _, d := range []string{g.pids, g.cpuacct, g.cpu, g.freezer, g.mem} {
		if d != "" && !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	return out
}

// procs is the union of the group's cgroup.procs; with gone, a missing
// directory counts as empty (Kill after Remove) instead of an error.
func (g *Group) procs(gone bool) ([]int, error) {
	var pids []int
	for _, d := range g.dirs() {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			if gone && errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return nil, fmt.Errorf("cgroup: %w", err)
		}
		for _, f := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(f)
			if err != nil {
				return nil, fmt.Errorf("cgroup: %s/cgroup.procs: bad pid %q", d, f)
			}
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	return slices.Compact(pids), nil
}

// create makes the group's directories (and runagent/ above them, which
// stays), enabling the v2 controllers on the way down. It returns the group
// directories it made, for New to undo on failure.
func (g *Group) create(lay *layout, cpu bool) (made []string, err error) {
	if g.v2 {
		parent := filepath.Dir(g.dir)
		if err := enableControllers(lay.v2Root, cpu); err != nil {
			return nil, err
		}
		if err := mkdir(parent); err != nil {
			return nil, err
		}
		if err := enableControllers(parent, cpu); err != nil {
			return nil, err
		}
	}
	for _, d := range g.dirs() {
		if err := mkdir(filepath.Dir(d)); err != nil {
			return made, err
		}
		err := os.Mkdir(d, 0o755)
		if errors.Is(err, fs.ErrExist) {
			// Leftover: rmdir succeeds only if no process is in it.
			if rerr := syscall.Rmdir(d); rerr != nil {
				return made, fmt.Errorf("cgroup: %s already exists and cannot be replaced: %w", d, rerr)
			}
			err = os.Mkdir(d, 0o755)
		}
		if err != nil {
			return made, fmt.Errorf("cgroup: %w", err)
		}
		made = append(made, d)
	}
	return made, nil
}

func (g *Group) setLimits(l Limits) error {
	memDir, pidsDir := g.mem, g.pids
	if g.v2 {
		memDir, pidsDir = g.dir, g.dir
	}
	if l.MemoryBytes > 0 {
		v := strconv.FormatInt(l.MemoryBytes, 10)
		if g.v2 {
			if err := writeFile(filepath.Join(memDir, "memory.max"), v); err != nil {
				return err
			}
			// No swapping past the limit; the file is absent without swap accounting.
			if f := filepath.Join(memDir, "memory.swap.max"); exists(f) {
				if err := writeFile(f, "0"); err != nil {
					return err
				}
			}
		} else {
			// memsw must stay >= the memory limit, so set the memory limit first.
			if err := writeFile(filepath.Join(memDir, "memory.limit_in_bytes"), v); err != nil {
				return err
			}
			if f := filepath.Join(memDir, "memory.memsw.limit_in_bytes"); exists(f) {
				if err := writeFile(f, v); err != nil {
					return err
				}
			}
		}
	}
	if l.Pids > 0 {
		if err := writeFile(filepath.Join(pidsDir, "pids.max"), strconv.Itoa(l.Pids)); err != nil {
			return err
		}
	}
	if l.CPUs > 0 {
		quota := max(1000, int64(l.CPUs*cpuPeriodUsec))
		if g.v2 {
			return writeFile(filepath.Join(g.dir, "cpu.max"), fmt.Sprintf("%d %d", quota, cpuPeriodUsec))
		}
		if err := writeFile(filepath.Join(g.cpu, "cpu.cfs_period_us"), strconv.Itoa(cpuPeriodUsec)); err != nil {
			return err
		}
		return writeFile(filepath.Join(g.cpu, "cpu.cfs_quota_us"), strconv.FormatInt(quota, 10))
	}
	return nil
}

// enableControllers turns on memory and pids (and cpu) for dir's children (v2).
func enableControllers(dir string, cpu bool) error {
	f := filepath.Join(dir, "cgroup.subtree_control")
	b, err := os.ReadFile(f)
	if err != nil {
		return fmt.Errorf("cgroup: %w", err)
	}
	have := strings.Fields(string(b))
	want := []string{"memory", "pids"}
	if cpu {
		want = append(want, "cpu")
	}
	for _, c := range want {
		if slices.Contains(have, c) {
			continue
		}
		if err := writeFile(f, "+"+c); err != nil {
			if errors.Is(err, syscall.EBUSY) {
				// The no-internal-processes rule: dir itself holds processes.
				return fmt.Errorf("%w (processes in %s keep it from delegating controllers)", err, dir)
			}
			return err
		}
	}
	return nil
}

// layout is where this machine's usable cgroup hierarchies are mounted.
type layout struct {
	version string
	v2Root  string            // v2: the cgroup2 mount point
	v1      map[string]string // v1: controller -> mount point
}

func (l *layout) group(rel string) *Group {
	g := &Group{rel: rel, v2: l.version == "v2"}
	at := func(mp string) string {
		if mp == "" {
			return ""
		}
		return filepath.Join(mp, filepath.FromSlash(rel))
	}
	if g.v2 {
		g.dir = at(l.v2Root)
		return g
	}
	g.mem, g.pids, g.cpuacct, g.freezer = at(l.v1["memory"]), at(l.v1["pids"]), at(l.v1["cpuacct"]), at(l.v1["freezer"])
	return g
}

// detect prefers a cgroup2 mount that has the memory and pids controllers
// (pure v2); otherwise the v1 memory, pids and cpuacct hierarchies. A cgroup2
// mount without controllers (v1 hosts' /sys/fs/cgroup/unified) doesn't count.
func detect() (*layout, error) {
	mounts, err := cgroupMounts()
	if err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	var why []string
	v1 := map[string]string{}
	found2 := false
	for _, m := range mounts {
		if m.fstype == "cgroup" {
			for _, opt := range strings.Split(m.opts, ",") {
				if _, ok := v1[opt]; !ok {
					v1[opt] = m.point
				}
			}
			continue
		}
		b, err := os.ReadFile(filepath.Join(m.point, "cgroup.controllers"))
		if err != nil {
			why = append(why, fmt.Sprintf("v2 at %s: %v", m.point, err))
			continue
		}
		ctrls := strings.Fields(string(b))
		if !slices.Contains(ctrls, "memory") || !slices.Contains(ctrls, "pids") {
			why = append(why, fmt.Sprintf("v2 at %s lacks the memory and pids controllers (has %q)", m.point, strings.Join(ctrls, " ")))
			continue
		}
		found2 = true
		if err := writable(m.point); err != nil {
			why = append(why, "v2: "+err.Error())
			continue
		}
		if err := canDelegate(m.point); err != nil {
			why = append(why, "v2: "+err.Error())
			continue
		}
		return &layout{version: "v2", v2Root: m.point}, nil
	}
	if len(mounts) == 0 {
		why = append(why, "no cgroup or cgroup2 file system is mounted")
	}
	if !found2 {
		ok := true
		for _, c := range []string{"memory", "pids", "cpuacct"} {
			mp, has := v1[c]
			if !has {
				if len(v1) > 0 {
					why = append(why, fmt.Sprintf("v1: the %s controller is not mounted", c))
				}
				ok = false
				continue
			}
			if err := writable(mp); err != nil {
				why = append(why, "v1: "+err.Error())
				ok = false
			}
		}
		if ok {
			lay := &layout{version: "v1", v1: map[string]string{}}
			for _, c := range []string{"memory", "pids", "cpuacct", "freezer", "cpu"} {
				if mp, has := v1[c]; has {
					lay.v1[c] = mp
				}
			}
			if lay.v1["freezer"] != "" && writable(lay.v1["freezer"]) != nil {
				delete(lay.v1, "freezer") // optional: Kill falls back to a kill loop
			}
			if lay.v1["cpu"] != "" && writable(lay.v1["cpu"]) != nil {
				delete(lay.v1, "cpu") // needed only by groups with a CPU limit
			}
			return lay, nil
		}
	}
	return nil, fmt.Errorf("cgroup: no usable cgroup hierarchy: %s", strings.Join(why, "; "))
}

// canDelegate checks that the v2 mount's root cgroup can give memory and pids
// to child groups. A namespaced root (e.g. in a container) is a non-root
// cgroup, and if it holds processes the no-internal-processes rule forbids that.
func canDelegate(root string) error {
	b, err := os.ReadFile(filepath.Join(root, "cgroup.subtree_control"))
	if err != nil {
		return err
	}
	have := strings.Fields(string(b))
	if slices.Contains(have, "memory") && slices.Contains(have, "pids") {
		return nil
	}
	if !exists(filepath.Join(root, "cgroup.type")) {
		return nil // the real root cgroup is exempt from the rule
	}
	procs, err := os.ReadFile(filepath.Join(root, "cgroup.procs"))
	if err != nil {
		return err
	}
	if n := len(strings.Fields(string(procs))); n > 0 {
		return fmt.Errorf("%s is a non-root cgroup holding %d processes, so it cannot enable memory and pids for child groups (move them into a leaf cgroup first)", root, n)
	}
	return nil
}

// writable checks that we can create runagent/<name> under mount point mp.
func writable(mp string) error {
	dir := filepath.Join(mp, parentName)
	if !isDir(dir) {
		dir = mp
	}
	if err := syscall.Access(dir, 2 /* W_OK */); err != nil {
		return fmt.Errorf("cannot create groups in %s: %w", dir, err)
	}
	return nil
}

type mount struct{ point, fstype, opts string }

// cgroupMounts parses mountinfo for cgroup and cgroup2 mounts, in order.
// Line format: id parent maj:min root mountpoint opts [optional...] - fstype source superopts
func cgroupMounts() ([]mount, error) {
	b, err := os.ReadFile(mountinfo.Path)
	if err != nil {
		return nil, err
	}
	return parseMountinfo(b), nil
}

func parseMountinfo(b []byte) []mount {
	var out []mount
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		sep := slices.Index(f, "-")
		if sep < 6 || len(f) < sep+4 {
			continue
		}
		if fstype := f[sep+1]; fstype == "cgroup" || fstype == "cgroup2" {
			out = append(out, mount{point: mountinfo.Unescape(f[4]), fstype: fstype, opts: f[sep+3]})
		}
	}
	return out
}

var errNoKey = errors.New("key not found")

// readKey reads the value of "key N" in a flat-keyed file (cpu.stat, memory.events, ...).
func readKey(file, key string) (int64, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, fmt.Errorf("cgroup: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, " ")
		if ok && k == key {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("cgroup: %s: %s: %w", file, key, err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("cgroup: %s: %w: %s", file, errNoKey, key)
}

func readInt(file string) (int64, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, fmt.Errorf("cgroup: %w", err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("cgroup: %s: %w", file, err)
	}
	return n, nil
}

// writeFile writes one value the way cgroupfs wants it: a single write to
// the existing file, whose error is the kernel's verdict on the value.
func writeFile(file, v string) error {
	f, err := os.OpenFile(file, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("cgroup: %w", err)
	}
	_, werr := f.WriteString(v)
	cerr := f.Close()
	if werr != nil {
		return fmt.Errorf("cgroup: write %q to %s: %w", v, file, werr)
	}
	if cerr != nil {
		return fmt.Errorf("cgroup: %w", cerr)
	}
	return nil
}

func mkdir(dir string) error {
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("cgroup: %w", err)
	}
	return nil
}

func isDir(p string) bool {
	if p == "" {
		return false
	}
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
