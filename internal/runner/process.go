package runner

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/runagent-go/runagent/internal/wire"
)

// Init is the body of the INIT frame.
type Init struct {
	AgentDir    string            `json:"agent_dir"`
	Entrypoints []InitEntrypoint  `json:"entrypoints"`
	Env         map[string]string `json:"env"`
	Threads     int               `json:"threads"`
}

// InitEntrypoint is one entrypoint the runner imports.
type InitEntrypoint struct {
	Tag    string `json:"tag"`
	File   string `json:"file"`
	Module string `json:"module"`
	// Extractor is [key, JSONPath] pairs in the config's order: the
	// extracted result's keys come out in this order, as in the original.
	Extractor [][2]string `json:"extractor,omitempty"`
	// A webhook entrypoint (framework n8n) has these instead of File/Module.
	WebhookURL string `json:"webhook_url,omitempty"`
	Method     string `json:"method,omitempty"`
	Timeout    int    `json:"timeout,omitempty"`
}

// Spec says how to start one runner process.
type Spec struct {
	Python string   // interpreter: the agent's virtualenv python, or python3
	Script string   // runagent_runner.py on disk (see WriteScript)
	Env    []string // the process environment; nil means the server's
	Init   Init
	Logger *slog.Logger
	OnLog  LogFunc
	// OnOutput, when set, gets every line the process itself printed on
	// stdout or stderr outside a call (start-up, threads of its own).
	OnOutput func(stream, line string)
	// ReadyTimeout bounds start-up: process start plus importing the agent.
	ReadyTimeout time.Duration
}

// Process is one running runner: a Python process and its protocol stream.
type Process struct {
	*Conn
	Ready   *Ready
	Started time.Time

	cmd     *exec.Cmd
	log     *slog.Logger
	tail    *tail
	exited  chan struct{}
	closing chan struct{}
	once    sync.Once
	onOut   func(stream, line string)
	// killed is why the process was killed on purpose (KillWith): what its
	// in-flight calls fail with instead of a crash report.
	killed atomic.Pointer[wire.Error]
}

// Start starts a runner process, sends INIT and waits for READY.
func Start(ctx context.Context, spec Spec) (*Process, error) {
	if spec.Logger == nil {
		spec.Logger = slog.New(slog.DiscardHandler)
	}
	if spec.ReadyTimeout == 0 {
		spec.ReadyTimeout = 2 * time.Minute
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("runner channel: %w", err)
	}
	hostEnd := os.NewFile(uintptr(fds[0]), "runner-host")
	childEnd := os.NewFile(uintptr(fds[1]), "runner-child")
	sock, err := net.FileConn(hostEnd)
	hostEnd.Close()
	if err != nil {
		return nil, fmt.Errorf("runner channel: %w", err)
	}

	cmd := exec.Command(spec.Python, "-u", "-X", "utf8", spec.Script, "--fd", "3")
	cmd.Dir = spec.Init.AgentDir
	cmd.Env = spec.Env
	cmd.ExtraFiles = []*os.File{childEnd}
	cmd.SysProcAttr = sysProcAttr()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		sock.Close()
		childEnd.Close()
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		sock.Close()
		childEnd.Close()
		return nil, err
	}
	err = cmd.Start()
	// Our copy of the child's end must go now: while we hold it, a runner
	// that dies would never show as the end of the stream.
	childEnd.Close()
	if err != nil {
		sock.Close()
		return nil, fmt.Errorf("start python runner %q: %w", spec.Python, err)
	}
	p := &Process{
		Started: time.Now(),
		cmd:     cmd,
		log:     spec.Logger.With("pid", cmd.Process.Pid),
		tail:    &tail{max: 20},
		exited:  make(chan struct{}),
		closing: make(chan struct{}),
		onOut:   spec.OnOutput,
	}
	var outputs sync.WaitGroup
	outputs.Add(2)
	go p.pump(&outputs, "stdout", stdout)
	go p.pump(&outputs, "stderr", stderr)
	go func() {
		outputs.Wait() // Wait must not close the pipes before they are read
		cmd.Wait()
		close(p.exited)
	}()
	p.Conn = NewConn(sock, spec.OnLog, p.lost)

	ictx, cancel := context.WithTimeoutCause(ctx, spec.ReadyTimeout,
		fmt.Errorf("the agent did not finish importing within %s", spec.ReadyTimeout))
	defer cancel()
	ready, err := p.Conn.Init(ictx, spec.Init)
	if err != nil {
		p.Kill()
		if errors.Is(err, ErrClosed) || wire.CodeOf(err) == wire.CodeAgentCrashed {
			return nil, fmt.Errorf("the Python runner exited during start-up%s", p.tail.describe())
		}
		return nil, err
	}
	p.Ready = ready
	return p, nil
}

// PID is the runner's process id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

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
	// The exit status usually follows the end of the stream closely.
	select {
	case <-p.exited:
	case <-time.After(time.Second):
		p.signalGroup(syscall.SIGKILL)
		select {
		case <-p.exited:
		case <-time.After(time.Second):
		}
	}
	how := "its connection broke: " + err.Error()
	if st := p.cmd.ProcessState; st != nil {
		how = st.String()
		if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			how = "killed by signal " + ws.Signal().String()
		}
	}
	p.log.Warn("agent runner died", "how", how)
	return &wire.Error{
		Code:    wire.CodeAgentCrashed,
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
		p.signalGroup(syscall.SIGKILL)
		<-p.exited
	}
	return nil
}

// Kill stops the runner and everything it started at once.
func (p *Process) Kill() {
	p.once.Do(func() { close(p.closing) })
	p.signalGroup(syscall.SIGKILL)
	p.Conn.Close()
	<-p.exited
}

// KillWith kills the runner and everything it started, and fails its
// in-flight calls with e (a resource limit, a failed health check).
func (p *Process) KillWith(e *wire.Error) {
	p.killed.CompareAndSwap(nil, e)
	p.signalGroup(syscall.SIGKILL)
}

func (p *Process) signalGroup(sig syscall.Signal) {
	// The runner leads its own process group, so agent subprocesses go too.
	if err := syscall.Kill(-p.cmd.Process.Pid, sig); err != nil {
		p.cmd.Process.Signal(sig)
	}
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
