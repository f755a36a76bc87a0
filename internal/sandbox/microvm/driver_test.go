package microvm_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/pyrunner"
	"github.com/runagent-go/runagent/internal/runner"
	"github.com/runagent-go/runagent/internal/runproto"
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
	d, err := microvm.New(sandbox.Options{StateDir: state, Log: log}, microvm.Options{Warm: warm})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, state
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
	sandboxtest.Run(t, d, sandboxtest.Features{MemoryLimit: true, CPUShare: true, Processors: true, MountsOnDisk: true})
	// The suite's instances are all stopped; only warm VMs may run, and
	// Close stops those. (The suite's own check finds processes by the
	// instance's environment, which never reaches QEMU.)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	// The driver starts each QEMU with RUNAGENT_MICROVM=<its folder in state>.
	if left := sandboxtest.WaitNoProcsWithEnv("RUNAGENT_MICROVM="+state+"/", 10*time.Second); len(left) > 0 {
		t.Errorf("QEMU processes left after every instance stopped and the driver closed: %v", left)
	}
}

const snapshotAgent = `
import os, random, time, uuid
AT_IMPORT = random.random()
def probe():
    return {"at_import": AT_IMPORT, "random": random.random(), "urandom": os.urandom(16).hex(),
            "uuid": str(uuid.uuid4()), "time": time.time()}
`

// TestRestoredInstancesDiverge: a second instance of an agent is restored
// from the first one's snapshot (the value it computed at import is the
// same), yet its randomness is its own (Python's random, the kernel's, so
// uuid4 too) and its clock is the host's.
func TestRestoredInstancesDiverge(t *testing.T) {
	d, _ := newDriver(t, 1)
	python := sandboxtest.Python(t)
	script, err := pyrunner.WriteScript(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	agentDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(agentDir, "main.py"), []byte(snapshotAgent), 0o644); err != nil {
		t.Fatal(err)
	}
	probe := func(i int) map[string]any {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		p, err := runner.Start(ctx, runner.Spec{
			Python: python, Script: script, Env: []string{"PATH=/usr/bin:/bin"}, Driver: d,
			InstanceID: fmt.Sprintf("diverge-%d-%d", os.Getpid(), i),
			Init: runproto.Init{AgentDir: agentDir, Threads: 2,
				Entrypoints: []runproto.InitEntrypoint{{Tag: "probe", File: "main.py", Module: "probe"}}},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		v, err := p.Call(ctx, "probe", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		var outer struct{ Payload string }
		var m map[string]any
		if err := json.Unmarshal(v, &outer); err != nil {
			t.Fatalf("probe = %s: %v", v, err)
		}
		if err := json.Unmarshal([]byte(outer.Payload), &m); err != nil {
			t.Fatalf("probe payload = %s: %v", outer.Payload, err)
		}
		if now := float64(time.Now().UnixNano()) / 1e9; math.Abs(m["time"].(float64)-now) > 5 {
			t.Errorf("instance %d: the guest's clock says %v, the host's %v", i, m["time"], now)
		}
		return m
	}
	first, second, third := probe(0), probe(1), probe(2)
	if first["at_import"] != second["at_import"] || first["at_import"] != third["at_import"] {
		t.Fatalf("the later instances were not restored from the first's snapshot: import-time values %v, %v, %v",
			first["at_import"], second["at_import"], third["at_import"])
	}
	for _, k := range []string{"random", "urandom", "uuid"} {
		if first[k] == second[k] || second[k] == third[k] || first[k] == third[k] {
			t.Errorf("%s is shared between restored instances: %v, %v, %v", k, first[k], second[k], third[k])
		}
	}
}
