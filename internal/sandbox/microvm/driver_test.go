package microvm_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/sandbox"
	"github.com/runagent-go/runagent/internal/sandbox/microvm"
	"github.com/runagent-go/runagent/internal/sandbox/sandboxtest"
)

// newDriver opens the driver on the image in RUNAGENT_MICROVM_IMAGE (else
// the default folder, where `make microvm-image` builds it). Without QEMU
// or the image the test fails, unless RUNAGENT_TEST_NO_MICROVM=1 says this
// machine cannot run microVMs on purpose.
func newDriver(t *testing.T, warm int) (*microvm.Driver, string) {
	t.Helper()
	if err := microvmUsable(); err != nil {
		if os.Getenv("RUNAGENT_TEST_NO_MICROVM") == "1" {
			t.Skipf("%v (RUNAGENT_TEST_NO_MICROVM=1)", err)
		}
		t.Fatalf("%v (set RUNAGENT_TEST_NO_MICROVM=1 to skip the microvm tests)", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	state := t.TempDir()
	d, err := microvm.New(sandbox.Options{StateDir: state, Log: log, MicroVM: sandbox.MicroVMOptions{Warm: warm}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, state
}

// qemusUnder lists the live QEMU processes of the driver whose state is in
// dir: the driver starts each with RUNAGENT_MICROVM=<its folder there>.
func qemusUnder(dir string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil || !bytes.Contains(env, []byte("RUNAGENT_MICROVM="+dir+"/")) {
			continue
		}
		if stat, err := os.ReadFile("/proc/" + e.Name() + "/stat"); err == nil && !bytes.Contains(stat, []byte(") Z ")) {
			pids = append(pids, pid)
		}
	}
	return pids
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
	d, state := newDriver(t, 1)
	sandboxtest.Run(t, d, sandboxtest.Features{MemoryLimit: true, CPUShare: true, Processors: true})
	// The suite's instances are all stopped; only warm VMs may run, and
	// Close stops those. (The suite's own check finds processes by the
	// instance's environment, which never reaches QEMU.)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	var left []int
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if left = qemusUnder(state); len(left) == 0 {
			break
		}
	}
	if len(left) > 0 {
		t.Errorf("QEMU processes left after every instance stopped and the driver closed: %v", left)
	}
}
