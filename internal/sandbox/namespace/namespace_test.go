package namespace_test

import (
	"os"
	"os/exec"
	"testing"

	"github.com/runagent-go/runagent/internal/sandbox"
	"github.com/runagent-go/runagent/internal/sandbox/cgroup"
	"github.com/runagent-go/runagent/internal/sandbox/namespace"
	"github.com/runagent-go/runagent/internal/sandbox/sandboxtest"
)

func newDriver(t *testing.T) *namespace.Driver {
	t.Helper()
	if _, err := exec.LookPath("bwrap"); err != nil && os.Getenv("RUNAGENT_TEST_NO_BWRAP") == "1" {
		t.Skip("RUNAGENT_TEST_NO_BWRAP=1: bubblewrap is not installed")
	}
	d, err := namespace.New(sandbox.Options{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestNamespaceDriverConformance(t *testing.T) {
	_, cgErr := cgroup.Available()
	sandboxtest.Run(t, newDriver(t), sandboxtest.Features{MemoryLimit: cgErr == nil, CPUShare: cgErr == nil})
}
