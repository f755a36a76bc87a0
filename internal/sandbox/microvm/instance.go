package microvm

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/sandbox"
)

// instance is a VM handed out to the runner layer.
type instance struct {
	v      *vm
	limits domain.Limits
	ready  []byte
	before []byte
	ch     net.Conn
	done   chan struct{}
	exit   sandbox.Exit
}

func newInstance(v *vm, limits domain.Limits) *instance {
	in := &instance{v: v, limits: limits, done: make(chan struct{})}
	go in.wait()
	return in
}

func (in *instance) wait() {
	<-in.v.proc.Done()
	e := in.v.proc.Exit()
	if g := in.v.guestExit(); g != nil {
		// The supervisor saw the runner end and powered the VM off: its
		// report is how the instance ended, not QEMU's exit.
		e = sandbox.Exit{Code: int(num(g["code"])), Signal: str(g["signal"])}
		if e.Signal != "" {
			e.Code, e.Status = -1, "killed by signal "+e.Signal
		} else {
			e.Status = fmt.Sprintf("exit status %d", e.Code)
		}
		if str(g["limit"]) == "memory" && in.limits.MemoryBytes > 0 {
			e.Limit = "memory " + sandbox.MiB(in.limits.MemoryBytes)
		}
	}
	in.exit = e
	os.RemoveAll(in.v.dir)
	close(in.done)
}

func (in *instance) Channel() net.Conn {
	if in.ch == nil {
		in.ch = in.v.channel
		if len(in.before) > 0 {
			in.ch = &prefixConn{Conn: in.ch, r: bytes.NewReader(in.before)}
		}
	}
	return in.ch
}

func (in *instance) Output() (stdout, stderr io.Reader) { return in.v.stdout, in.v.stderr }
func (in *instance) PID() int                           { return in.v.proc.PID() }
func (in *instance) Kill()                              { in.v.kill() }
func (in *instance) Done() <-chan struct{}              { return in.done }
func (in *instance) Ready() []byte                      { return in.ready }

func (in *instance) Exit() sandbox.Exit {
	<-in.done
	return in.exit
}

// Usage is the guest's accounting of the runner's cgroup: at most 200 ms
// old, asked for when older.
func (in *instance) Usage() (domain.Usage, bool) {
	return in.v.readUsage(200*time.Millisecond, 500*time.Millisecond)
}

// prefixConn replays frames the driver read off the channel before the
// runner layer took it.
type prefixConn struct {
	net.Conn
	r *bytes.Reader
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if c.r.Len() > 0 {
		return c.r.Read(p)
	}
	return c.Conn.Read(p)
}
