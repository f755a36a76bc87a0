package sandbox

import (
	"context"
	"os"
	"os/exec"
)

// ProcessDriver runs the runner as a plain child process: no isolation but
// its own process group, which the manager samples from /proc for its limits.
// It is the default for local development, and the fastest.
type ProcessDriver struct{}

func (ProcessDriver) Name() string { return "process" }

func (ProcessDriver) Start(ctx context.Context, s Spec) (Instance, error) {
	if err := CheckSpec(s); err != nil {
		return nil, err
	}
	cmd := exec.Command(s.Python, append(append([]string{}, s.Args...), "--fd", "3")...)
	cmd.Dir = s.AgentDir
	cmd.Env = s.Env
	if len(s.Mounts) == 0 {
		return StartProc(cmd, ProcOptions{})
	}
	// Mounts: the runner works in a view of the agent folder made of
	// symlinks, its persistent folders pointing at their sources.
	view, err := os.MkdirTemp("", "runagent-view-"+s.ID+"-")
	if err != nil {
		return nil, err
	}
	if err := buildView(view, s.AgentDir, s.Mounts); err != nil {
		os.RemoveAll(view)
		return nil, err
	}
	cmd.Dir = view
	p, err := StartProc(cmd, ProcOptions{Cleanup: func(*Exit) { os.RemoveAll(view) }})
	if err != nil {
		os.RemoveAll(view)
		return nil, err
	}
	return viewed{p, view}, nil
}

// viewed is a process running in a view of its agent folder.
type viewed struct {
	*Proc
	view string
}

func (v viewed) AgentDir() string { return v.view }
