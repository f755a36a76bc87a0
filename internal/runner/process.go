package runner

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/runproto"
	"github.com/runagent-go/runagent/internal/sandbox"
)

// Spec says how to start one runner process.
type Spec struct {
	Python string   // interpreter: the agent's virtualenv python, or python3
	Script string   // the runner's folder on disk, which the interpreter runs (pyrunner.WriteScript)
	Env    []string // the process environment; nil means the server's
	Init   runproto.Init
	// Driver isolates the runner (nil: a plain process); the fields below
	// are what it needs beyond the command.
	Driver     sandbox.Driver
	InstanceID string // unique per instance ("" picks one)
	Venv       string
	Network    bool
	Limits     domain.Limits
	Mounts     []sandbox.Mount // writable folders inside the agent folder
	// MountsDisk, MountsDiskBytes: sandbox.Spec's.
	MountsDisk      string
	MountsDiskBytes int64
	Logger          *slog.Logger
	OnLog           LogFunc
	// OnOutput, when set, gets every line the process itself printed on
	// stdout or stderr outside a call (start-up, threads of its own).
	OnOutput func(stream, line string)
	// ReadyTimeout bounds start-up: process start plus importing the agent.
	ReadyTimeout time.Duration
	// Flow bounds the data of calls (zero fields: the defaults).
	Flow runproto.Flow
}

// Process is one running runner: a Python process and its protocol stream.
type Process struct {
	*Conn
	Ready   *runproto.Ready
	Started time.Time

	inst    sandbox.Instance
	limits  domain.Limits
	log     *slog.Logger
	tail    *tail
	exited  chan struct{}
	closing chan struct{}
	once    sync.Once
	onOut   func(stream, line string)
	// killed is why the process was killed on purpose (KillWith): what its
	// in-flight calls fail with instead of a crash report.
	killed atomic.Pointer[domain.Error]
}

// Start starts a runner process, sends INIT and waits for READY.
func Start(ctx context.Context, spec Spec) (*Process, error) {
	if spec.Logger == nil {
		spec.Logger = slog.New(slog.DiscardHandler)
	}
	if spec.ReadyTimeout == 0 {
		spec.ReadyTimeout = 2 * time.Minute
	}
	driver := spec.Driver
	if driver == nil {
		driver = sandbox.ProcessDriver{}
	}
	id := spec.InstanceID
	if id == "" {
		id = fmt.Sprintf("r%d-%d", os.Getpid(), instanceSeq.Add(1))
	}
	if spec.Limits.CPUSeconds > 0 || spec.Limits.OpenFiles > 0 {
		spec.Init.Limits = &runproto.InitLimits{CPUSeconds: spec.Limits.CPUSeconds, OpenFiles: spec.Limits.OpenFiles}
	}
	flow := spec.Flow.WithDefaults()
	spec.Init.Flow = &flow
	initBody, err := json.Marshal(spec.Init)
	if err != nil {
		return nil, err
	}
	ictx, cancel := context.WithTimeoutCause(ctx, spec.ReadyTimeout,
		fmt.Errorf("the agent did not finish importing within %s", spec.ReadyTimeout))
	defer cancel()
	inst, err := driver.Start(ictx, sandbox.Spec{
		ID: id, Python: spec.Python, Args: []string{"-u", "-X", "utf8", spec.Script}, Env: spec.Env,
		AgentDir: spec.Init.AgentDir, Venv: spec.Venv, Script: spec.Script, Network: spec.Network, Limits: spec.Limits,
		Mounts: spec.Mounts, MountsDisk: spec.MountsDisk, MountsDiskBytes: spec.MountsDiskBytes, Init: initBody,
	})
	if err != nil {
		return nil, fmt.Errorf("start python runner %q (%s sandbox): %w", spec.Python, driver.Name(), err)
	}
	p := &Process{
		Started: time.Now(),
		inst:    inst,
		limits:  spec.Limits,
		log:     spec.Logger.With("pid", inst.PID()),
		tail:    &tail{max: 20},
		exited:  make(chan struct{}),
		closing: make(chan struct{}),
		onOut:   spec.OnOutput,
	}
	stdout, stderr := inst.Output()
	var outputs sync.WaitGroup
	outputs.Add(2)
	go p.pump(&outputs, "stdout", stdout)
	go p.pump(&outputs, "stderr", stderr)
	go func() {
		<-inst.Done()
		outputs.Wait()
		close(p.exited)
	}()
	sock := inst.Channel()
	p.Conn = NewConn(sock, ConnOptions{OnLog: spec.OnLog, Lost: p.lost, Flow: flow})

	var ready *runproto.Ready
	if in, ok := inst.(sandbox.Initialized); ok && in.Ready() != nil {
		// The driver sent INIT itself (a snapshot-restored microVM).
		ready = new(runproto.Ready)
		if err := json.Unmarshal(in.Ready(), ready); err != nil {
			p.Kill()
			return nil, fmt.Errorf("runner protocol: bad READY frame: %w", err)
		}
	} else {
		if r, ok := inst.(sandbox.Relocated); ok {
			spec.Init.AgentDir = r.AgentDir()
		}
		ready, err = p.Conn.Init(ictx, spec.Init)
	}
	if err != nil {
		p.Kill()
		if errors.Is(err, ErrClosed) || domain.CodeOf(err) == domain.CodeAgentCrashed {
			return nil, fmt.Errorf("the Python runner exited during start-up%s", p.tail.describe())
		}
		return nil, err
	}
	p.Ready = ready
	return p, nil
}

// PID is the runner's process id.
func (p *Process) PID() int { return p.inst.PID() }

// Usage is the sandbox's accounting of the instance, if its driver has one.
func (p *Process) Usage() (domain.Usage, bool) { return p.inst.Usage() }

var instanceSeq atomic.Int64

// Exited is closed once the process has exited.
func (p *Process) Exited() <-chan struct{} { return p.exited }

func (p *Process) pump(wg *sync.WaitGroup, stream string, r io.Reader) {
	defer wg.Done()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		p.tail.add(line)
		if p.onOut != nil {
			p.onOut(stream, line)
		} else {
			p.log.Info("agent output", "stream", stream, "line", line)
		}
	}
}

// lost builds the error in-flight calls get when the stream ends: a
// deliberate Close is ErrClosed; anything else is the runner crashing.
func (p *Process) lost(err error) error {
	select {
	case <-p.closing:
		return ErrClosed
	default:
	}
	if e := p.killed.Load(); e != nil {
		return e
	}
	var pe *runproto.ProtocolError
	if errors.As(err, &pe) {
		// Only agent code tampering with the runner gets here.
		p.inst.Kill()
		p.log.Warn("agent runner broke the protocol; stopped", "error", err)
		return &domain.Error{Code: domain.CodeAgentCrashed, Err: err,
			Message: "the agent's runner broke the runner protocol (" + pe.What + "); the instance was stopped and replaced"}
	}
	// The exit status usually follows the end of the stream closely.
	select {
	case <-p.exited:
	case <-time.After(time.Second):
		p.inst.Kill()
		select {
		case <-p.exited:
		case <-time.After(time.Second):
		}
	}
	how := "its connection broke: " + err.Error()
	select {
	case <-p.inst.Done():
		exit := p.inst.Exit()
		how = exit.Status
		if kind, limit := p.limitOf(exit); limit != "" {
			p.log.Warn("agent runner killed by a limit", "limit", limit)
			return &domain.Error{Code: domain.CodeResourceLimit, Limit: kind, Err: err,
				Message: "RESOURCE_LIMIT: " + limit + " exceeded; the instance was stopped"}
		}
	default:
	}
	p.log.Warn("agent runner died", "how", how)
	return &domain.Error{
		Code:    domain.CodeAgentCrashed,
		Message: "the agent process exited unexpectedly (" + how + ")" + p.tail.describe(),
		Err:     err,
	}
}

// Close stops the runner: closing its stream makes it exit; it is killed if
// it has not within two seconds.
func (p *Process) Close() error {
	p.once.Do(func() { close(p.closing) })
	p.Conn.Close()
	select {
	case <-p.exited:
	case <-time.After(2 * time.Second):
		p.inst.Kill()
		<-p.exited
	}
	return nil
}

// Kill stops the runner and everything it started at once.
func (p *Process) Kill() {
	p.once.Do(func() { close(p.closing) })
	p.inst.Kill()
	p.Conn.Close()
	<-p.exited
}

// KillWith kills the runner and everything it started, and fails its
// in-flight calls with e (a resource limit, a failed health check).
func (p *Process) KillWith(e *domain.Error) {
	p.killed.CompareAndSwap(nil, e)
	p.inst.Kill()
}

// limitOf names the limit that ended the runner, if one did: the sandbox's
// (a cgroup's OOM kill: memory), or the CPU rlimit the runner set on itself.
func (p *Process) limitOf(e sandbox.Exit) (domain.Limit, string) {
	if e.Limit != "" {
		return domain.LimitMemory, e.Limit
	}
	if e.Signal == "SIGXCPU" && p.limits.CPUSeconds > 0 {
		return domain.LimitCPU, fmt.Sprintf("cpu time %g s", p.limits.CPUSeconds)
	}
	return "", ""
}

// tail keeps the last lines a process printed, for crash reports.
type tail struct {
	mu    sync.Mutex
	max   int
	lines []string
}

func (t *tail) add(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == t.max {
		copy(t.lines, t.lines[1:])
		t.lines = t.lines[:t.max-1]
	}
	t.lines = append(t.lines, line)
}

func (t *tail) describe() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == 0 {
		return ""
	}
	return "; its last output:\n" + strings.Join(t.lines, "\n")
}
