package sandbox

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/runagent-go/runagent/internal/domain"
)

// Proc is an Instance backed by one host command: the runner itself (the
// process driver), or the runner wrapped in bwrap or runsc.
type Proc struct {
	cmd            *exec.Cmd
	conn           net.Conn
	stdout, stderr *os.File
	opts           ProcOptions
	done           chan struct{}
	exit           Exit
	killOnce       sync.Once
}

// ProcOptions are what a driver adds to a plain command.
type ProcOptions struct {
	// ChannelOnStdin puts the runner's channel on fd 0 instead of 3, for
	// runtimes that pass only stdio through (runsc).
	ChannelOnStdin bool
	// ExtraFiles follow the channel (from fd 4, or from 3 when the channel
	// is on stdin): bwrap's seccomp program, its info and block pipes.
	ExtraFiles []*os.File
	// AfterStart runs once the command has started (put it in its cgroup,
	// release bwrap's block fd); an error kills the command.
	AfterStart func(pid int) error
	// Usage reads the sandbox's accounting; nil: none.
	Usage func() (domain.Usage, bool)
	// Kill replaces SIGKILL to the command's process group.
	Kill func()
	// Cleanup runs once the command has exited, before Done is closed: it
	// removes what the sandbox left (cgroup, work dir, container state) and
	// may say which limit ended the instance.
	Cleanup func(e *Exit)
}

// StartProc starts cmd (Path, Args, Env and Dir set by the driver) with the
// runner's channel and output pipes. The command leads a process group of
// its own and is killed if the server dies.
func StartProc(cmd *exec.Cmd, o ProcOptions) (*Proc, error) {
	fds, err := socketPair()
	if err != nil {
		return nil, fmt.Errorf("runner channel: %w", err)
	}
	hostEnd := os.NewFile(uintptr(fds[0]), "runner-host")
	childEnd := os.NewFile(uintptr(fds[1]), "runner-child")
	conn, err := net.FileConn(hostEnd)
	hostEnd.Close()
	if err != nil {
		childEnd.Close()
		return nil, fmt.Errorf("runner channel: %w", err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		conn.Close()
		childEnd.Close()
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		conn.Close()
		childEnd.Close()
		outR.Close()
		outW.Close()
		return nil, err
	}
	if o.ChannelOnStdin {
		cmd.Stdin = childEnd
		cmd.ExtraFiles = o.ExtraFiles
	} else {
		cmd.ExtraFiles = append([]*os.File{childEnd}, o.ExtraFiles...)
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = sysProcAttr()
	}
	err = cmd.Start()
	// Our copies of the child's ends must go now: while we hold them, a
	// runner that dies would never show as the end of its streams.
	childEnd.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		conn.Close()
		outR.Close()
		errR.Close()
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	p := &Proc{cmd: cmd, conn: conn, stdout: outR, stderr: errR, opts: o, done: make(chan struct{})}
	go p.wait()
	if o.AfterStart != nil {
		if err := o.AfterStart(cmd.Process.Pid); err != nil {
			p.Kill()
			<-p.done
			return nil, err
		}
	}
	return p, nil
}

func (p *Proc) wait() {
	err := p.cmd.Wait()
	e := Exit{Status: "exited"}
	if st := p.cmd.ProcessState; st != nil {
		e.Status, e.Code = st.String(), st.ExitCode()
		if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			e.Signal = unix.SignalName(ws.Signal())
			e.Status = "killed by signal " + e.Signal
		}
	} else if err != nil {
		e.Status = err.Error()
	}
	// Whatever the top process left behind goes with it.
	p.signalGroup(syscall.SIGKILL)
	if p.opts.Cleanup != nil {
		p.opts.Cleanup(&e)
	}
	p.exit = e
	close(p.done)
}

func (p *Proc) Channel() net.Conn                  { return p.conn }
func (p *Proc) Output() (stdout, stderr io.Reader) { return p.stdout, p.stderr }
func (p *Proc) PID() int                           { return p.cmd.Process.Pid }
func (p *Proc) Done() <-chan struct{}              { return p.done }

// Exit is how the instance ended; valid once Done is closed.
func (p *Proc) Exit() Exit {
	<-p.done
	return p.exit
}

func (p *Proc) Usage() (domain.Usage, bool) {
	if p.opts.Usage == nil {
		return domain.Usage{}, false
	}
	return p.opts.Usage()
}

func (p *Proc) Kill() {
	if p.opts.Kill != nil {
		p.opts.Kill()
	}
	p.signalGroup(syscall.SIGKILL)
}

func (p *Proc) signalGroup(sig syscall.Signal) {
	// The command leads its own process group, so what it started goes too.
	if err := syscall.Kill(-p.cmd.Process.Pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		p.cmd.Process.Signal(sig)
	}
}
