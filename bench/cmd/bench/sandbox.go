package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
	"unicode"

	"github.com/runagent-go/runagent/bench/internal/loadgen"
	"github.com/runagent-go/runagent/bench/internal/procs"
	"github.com/runagent-go/runagent/internal/agentfolder"
	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/pyrunner"
	"github.com/runagent-go/runagent/internal/runner"
	"github.com/runagent-go/runagent/internal/sandbox"
	"github.com/runagent-go/runagent/internal/sandbox/drivers"
	"github.com/runagent-go/runagent/internal/sandbox/microvm"
)

// The sandbox drivers are measured without HTTP: the harness starts the
// runner through each driver as the manager does (runner.Start) and calls it
// over its channel, so that what differs between rows is the driver alone.

// sandboxResult is one driver's numbers.
type sandboxResult struct {
	name     string
	skipped  string
	first    time.Duration   // the first start (for microvm: the cold boot)
	starts   []time.Duration // start -> READY
	floor    []time.Duration // the driver's bare tool running python -c pass
	idleRSS  int64
	idlePer  []procs.ProcRSS
	calls    []time.Duration
	errors   int
	firstErr string
}

func (r *sandboxResult) fail(err error) {
	r.errors++
	if r.firstErr == "" {
		r.firstErr = err.Error()
	}
}

func (b *bench) runSandboxes() []*sandboxResult {
	o := b.opts
	if len(o.sandboxes) == 0 || b.ctx.Err() != nil {
		return nil
	}
	var out []*sandboxResult
	set := drivers.New(drivers.Builtin(microvm.Options{}), sandbox.Options{StateDir: filepath.Join(b.tmp, "sandbox")})
	defer set.Close()
	script, err := pyrunner.WriteScript(filepath.Join(b.tmp, "runner"))
	agentDir := filepath.Join(b.tmp, "sandbox-agent")
	if err == nil {
		err = copyDir(filepath.Join(o.root, "bench", "agent"), agentDir)
	}
	var folder *agentfolder.Folder
	if err == nil {
		folder, err = agentfolder.Load(agentDir)
	}
	python, perr := realInterpreter(b.ctx, b.python)
	for _, name := range o.sandboxes {
		if err == nil && perr == nil && name == "microvm" {
			// Two rows: every start restoring a new VM from the snapshot,
			// then starts served from the warm pool.
			for _, warm := range []int{0, 1} {
				r := b.measureMicroVM(warm, python, script, folder)
				out = append(out, r)
				if b.ctx.Err() != nil {
					return out
				}
			}
			continue
		}
		r := &sandboxResult{name: name}
		out = append(out, r)
		switch {
		case err != nil:
			r.skipped = "prepare: " + err.Error()
			continue
		case perr != nil:
			r.skipped = perr.Error()
			continue
		}
		d, derr := set.Get(name)
		if derr != nil {
			r.skipped = derr.Error()
			b.logf("sandbox %s: NOT MEASURED: %s", name, r.skipped)
			continue
		}
		b.waitQuiet("sandbox " + name)
		b.measureSandbox(r, d, python, script, folder, 0)
		if b.ctx.Err() != nil {
			break
		}
	}
	return out
}

// measureMicroVM measures the microvm driver with warm VMs kept ready per
// agent (0: every start restores a new VM from the agent's snapshot). The
// first start boots the VM and saves the snapshot.
func (b *bench) measureMicroVM(warm int, python, script string, folder *agentfolder.Folder) *sandboxResult {
	r := &sandboxResult{name: "microvm, restored"}
	var pause time.Duration
	if warm > 0 {
		// Time for the pool to restore the next VM, so that each start is
		// served from it as it would be between an agent's scale-ups.
		r.name, pause = "microvm, warm pool", 2*time.Second
	}
	set := drivers.New(drivers.Builtin(microvm.Options{Warm: warm}),
		sandbox.Options{StateDir: filepath.Join(b.tmp, fmt.Sprintf("sandbox-microvm-%d", warm))})
	defer set.Close()
	d, err := set.Get("microvm")
	if err != nil {
		r.skipped = err.Error()
		b.logf("sandbox microvm: NOT MEASURED: %s", r.skipped)
		return r
	}
	if a, ok := d.(interface{ Acceleration() string }); ok {
		r.name += " (" + a.Acceleration() + ")"
	}
	b.waitQuiet("sandbox " + r.name)
	b.measureSandbox(r, d, python, script, folder, pause)
	return r
}

// measureSandbox times instance starts through d (pausing between them),
// then the last instance's idle RSS and calls.
func (b *bench) measureSandbox(r *sandboxResult, d sandbox.Driver, python, script string, folder *agentfolder.Folder, pause time.Duration) {
	o := b.opts
	r.floor = b.floor(r.name, python)
	spec := func(i int) runner.Spec {
		return runner.Spec{
			Python: python, Script: script, Env: []string{"PATH=/usr/bin:/bin"}, Init: runner.InitFor(folder, 4),
			Driver: d, InstanceID: fmt.Sprintf("bench-%s-%d-%d", instanceName(r.name), os.Getpid(), i),
			// 96 MiB: the microvm driver's guest is then 256 MiB (the
			// limit plus what the guest's kernel and supervisor need).
			Limits:   domain.Limits{MemoryBytes: 96 << 20, Pids: 256, WorkDirBytes: 64 << 20},
			OnOutput: func(string, string) {},
		}
	}
	b.logf("sandbox %s: %d instance starts", r.name, o.sandboxStarts)
	var keep *runner.Process
	for i := range o.sandboxStarts + 1 {
		if b.ctx.Err() != nil {
			return
		}
		ctx, cancel := context.WithTimeout(b.ctx, o.startTimeout)
		t0 := time.Now()
		p, err := runner.Start(ctx, spec(i))
		dt := time.Since(t0)
		cancel()
		if err != nil {
			r.fail(err)
			continue
		}
		if i > 0 { // the first start warms the page cache and the driver
			r.starts = append(r.starts, dt)
		} else {
			r.first = dt
		}
		if i < o.sandboxStarts {
			p.Close()
			sleepCtx(b.ctx, pause)
		} else {
			keep = p
		}
	}
	if keep == nil {
		r.skipped = "no instance started: " + r.firstErr
		return
	}
	defer keep.Close()
	b.logf("sandbox %s: start to ready p50 %s", r.name, ms(loadgen.Percentile(r.starts, 50)))
	sleepCtx(b.ctx, o.settle)
	r.idlePer = procs.TreeRSSByProc(keep.PID())
	for _, p := range r.idlePer {
		r.idleRSS += p.RSS
	}
	kwargs, _ := json.Marshal(map[string]any{"message": o.message})
	call := func() (time.Duration, error) {
		ctx, cancel := context.WithTimeout(b.ctx, o.callTimeout)
		defer cancel()
		t0 := time.Now()
		_, err := keep.Call(ctx, "minimal", nil, kwargs)
		return time.Since(t0), err
	}
	for range o.latWarmup {
		call()
	}
	n := max(1, o.latCalls/3)
	for range n {
		if b.ctx.Err() != nil {
			return
		}
		dt, err := call()
		if err != nil {
			r.fail(err)
			continue
		}
		r.calls = append(r.calls, dt)
	}
	b.logf("sandbox %s: idle RSS %.1f MiB, call p50 %s", r.name, mib(r.idleRSS), ms(loadgen.Percentile(r.calls, 50)))
}

// floor times the driver's bare tool running `python -c pass` (the least a
// start through it can cost), for comparison with the full start.
func (b *bench) floor(name, python string) []time.Duration {
	var argv []string
	switch name {
	case "process":
		argv = []string{python, "-c", "pass"}
	case "namespace":
		argv = []string{"bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-all", "--die-with-parent", python, "-c", "pass"}
	case "gvisor":
		argv = []string{"runsc", "--root", filepath.Join(b.tmp, "runsc-floor"), "--platform=ptrace", "--network=none", "do", python, "-c", "pass"}
	default:
		return nil
	}
	var out []time.Duration
	for i := range 6 {
		t0 := time.Now()
		cmd := exec.CommandContext(b.ctx, argv[0], argv[1:]...)
		cmd.Dir = b.tmp
		if err := cmd.Run(); err != nil {
			return nil
		}
		if i > 0 {
			out = append(out, time.Since(t0))
		}
	}
	return out
}

// realInterpreter is sys.executable of python: a sandbox cannot run a
// launcher such as pyenv's shims.
func realInterpreter(ctx context.Context, python string) (string, error) {
	out, err := exec.CommandContext(ctx, python, "-c", "import sys; print(sys.executable)").Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w", python, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// instanceName makes a row's name fit an instance id ("microvm, warm pool
// (tcg)" -> "microvm--warm-pool--tcg-").
func instanceName(row string) string {
	return strings.Map(func(r rune) rune {
		if r < 128 && (unicode.IsLetter(r) || unicode.IsDigit(r)) {
			return r
		}
		return '-'
	}, row)
}
