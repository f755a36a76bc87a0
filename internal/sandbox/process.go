package sandbox

import (
	"context"
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
	return StartProc(cmd, ProcOptions{})
}
