package microvm_test

import (
	"log/slog"
	"os"
	"testing"

	"github.com/runagent-go/runagent/internal/sandbox"
	"github.com/runagent-go/runagent/internal/sandbox/microvm"
	"github.com/runagent-go/runagent/internal/sandbox/sandboxtest"
)

// newDriver opens the driver on the image in RUNAGENT_MICROVM_IMAGE (else
// the default folder).
//
// The driver is not finished (issue 7): the host's writes on the runner's
// channel port do not reach the guest yet, so the conformance suite fails.
// It runs only when RUNAGENT_TEST_MICROVM=1 asks for it, and CI does not.
func newDriver(t *testing.T, warm int) *microvm.Driver {
	t.Helper()
	if os.Getenv("RUNAGENT_TEST_MICROVM") != "1" {
		t.Skip("the microvm driver is unfinished (issue 7: the runner channel does not carry host-to-guest data yet); RUNAGENT_TEST_MICROVM=1 runs it")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	d, err := microvm.New(sandbox.Options{StateDir: t.TempDir(), Log: log, MicroVM: sandbox.MicroVMOptions{Warm: warm}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestMicroVMDriverConformance(t *testing.T) {
	sandboxtest.Run(t, newDriver(t, 0), sandboxtest.Features{MemoryLimit: true})
}
