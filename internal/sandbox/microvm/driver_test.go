package microvm_test

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"testing"

	"github.com/runagent-go/runagent/internal/sandbox"
	"github.com/runagent-go/runagent/internal/sandbox/microvm"
	"github.com/runagent-go/runagent/internal/sandbox/sandboxtest"
)

// newDriver opens the driver on the image in RUNAGENT_MICROVM_IMAGE (else
// the default folder, where `make microvm-image` builds it). Without QEMU
// or the image the test fails, unless RUNAGENT_TEST_NO_MICROVM=1 says this
// machine cannot run microVMs on purpose.
func newDriver(t *testing.T, warm int) *microvm.Driver {
	t.Helper()
	if err := microvmUsable(); err != nil {
		if os.Getenv("RUNAGENT_TEST_NO_MICROVM") == "1" {
			t.Skipf("%v (RUNAGENT_TEST_NO_MICROVM=1)", err)
		}
		t.Fatalf("%v (set RUNAGENT_TEST_NO_MICROVM=1 to skip the microvm tests)", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	d, err := microvm.New(sandbox.Options{StateDir: t.TempDir(), Log: log, MicroVM: sandbox.MicroVMOptions{Warm: warm}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// microvmUsable says why this machine cannot boot the driver's VMs.
func microvmUsable() error {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return fmt.Errorf("the microvm driver needs QEMU: apt-get install qemu-system-x86")
	}
	if _, err := microvm.LoadImage(microvm.DefaultImageDir()); err != nil {
		return fmt.Errorf("%v; build it with `make microvm-image`", err)
	}
	return nil
}

func TestMicroVMDriverConformance(t *testing.T) {
	sandboxtest.Run(t, newDriver(t, 1), sandboxtest.Features{MemoryLimit: true, CPUShare: true, Processors: true})
}
