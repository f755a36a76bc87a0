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
// The driver is not finished (issue 7): it is not wired into the server
// and CI does not build an image yet, so this runs only when
// RUNAGENT_TEST_MICROVM=1 asks for it (the whole conformance suite passes
// then, in about 35 s under emulation).
func newDriver(t *testing.T, warm int) *microvm.Driver {
	t.Helper()
	if os.Getenv("RUNAGENT_TEST_MICROVM") != "1" {
		t.Skip("the microvm driver is unfinished (issue 7); RUNAGENT_TEST_MICROVM=1 runs it on the image in RUNAGENT_MICROVM_IMAGE")
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
	sandboxtest.Run(t, newDriver(t, 1), sandboxtest.Features{MemoryLimit: true})
}
