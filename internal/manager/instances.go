package manager

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/runagent-go/runagent/internal/agentfolder"
	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/pyenv"
	"github.com/runagent-go/runagent/internal/runner"
	"github.com/runagent-go/runagent/internal/runproto"
	"github.com/runagent-go/runagent/internal/sandbox"
)

// InstanceSpec says how the instances of one agent version start. It is
// the one start path of runagent serve and of the platform.
type InstanceSpec struct {
	Folder *agentfolder.Folder
	Env    pyenv.Env // the interpreter and virtualenv (pyenv.Prepare)
	Script string    // the runner on disk (pyrunner.WriteScript)
	// BaseEnv is what the process environment starts from (nil: this
	// process's); the agent's env_vars are added to it.
	BaseEnv []string
	Driver  sandbox.Driver // nil: a plain process
	Network bool
	Limits  domain.Limits
	// Mounts are a user's persistent folders (UserPools), and where a
	// driver that cannot bind them keeps them (sandbox.Spec.MountsDisk).
	Mounts          []sandbox.Mount
	MountsDisk      string
	MountsDiskBytes int64
	// Threads of the runner for sync calls (2 more than the calls it runs
	// at once, so that a busy instance still answers health pings).
	Threads int
	Flow    runproto.Flow
	// NamePrefix goes before the instance id in sandbox names, keeping
	// them apart from other servers' on the machine.
	NamePrefix   string
	StartTimeout time.Duration // default 2 min
	Log          *slog.Logger
	// OnLog gets what an instance prints: invocation "" outside calls.
	OnLog func(instance, invocation, stream, text string)
	// Redact, when set, takes the server's paths out of start errors.
	Redact *strings.Replacer
}

// StartFunc is the pool's start function for the spec.
func (s InstanceSpec) StartFunc() StartFunc {
	if s.StartTimeout <= 0 {
		s.StartTimeout = 2 * time.Minute
	}
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	init := runner.InitFor(s.Folder, s.Threads)
	procEnv := runner.Environ(s.BaseEnv, s.Env.Venv, s.Folder.Env)
	redact := func(err error) error {
		if s.Redact == nil {
			return err
		}
		return redactErr(s.Redact, err)
	}
	return func(ctx context.Context, instanceID string) (Runner, error) {
		line := func(invocation, stream, text string) {
			if s.OnLog != nil {
				s.OnLog(instanceID, invocation, stream, strings.TrimRight(text, "\n"))
			}
		}
		ctx, cancel := context.WithTimeout(ctx, s.StartTimeout)
		defer cancel()
		p, err := runner.Start(ctx, runner.Spec{
			Python: s.Env.Python, Script: s.Script, Env: procEnv, Init: init, Logger: s.Log.With("instance", instanceID),
			Driver: s.Driver, InstanceID: s.NamePrefix + instanceID, Venv: s.Env.Venv, Network: s.Network, Limits: s.Limits, Mounts: s.Mounts,
			MountsDisk: s.MountsDisk, MountsDiskBytes: s.MountsDiskBytes,
			OnLog:        line,
			OnOutput:     func(stream, text string) { line("", stream, text) },
			ReadyTimeout: s.StartTimeout,
			Flow:         s.Flow,
		})
		if err != nil {
			return nil, redact(err)
		}
		if len(p.Ready.Errors) > 0 {
			p.Close()
			return nil, redact(runner.LoadErrors(s.Folder, p.Ready.Errors))
		}
		return p, nil
	}
}
