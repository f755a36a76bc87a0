package microvm

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"time"
)

// The guest kernel learns its TSC's rate by timing it against the emulated
// PIT at boot. On a busy host (another VM saving its snapshot is enough)
// that calibration fails, the kernel marks the TSC unstable and then spins
// calibrating its delay loop for minutes under emulation (seen in the
// attack suite: a second VM never got to init). The guest's TSC is the
// host's (QEMU passes the host's counter through under TCG and KVM), so the
// host measures its rate once and hands it to the kernel: tsc_early_khz
// skips the calibration and tsc=reliable the watchdog that, under load,
// would misjudge the TSC against jiffies.

// tscKernelArgs are the guest kernel arguments that give it the host's TSC
// rate, or "" when the host's TSC is not invariant or not readable.
func tscKernelArgs() string {
	khz := hostTSCkHz()
	if khz == 0 {
		return ""
	}
	return fmt.Sprintf("tsc_early_khz=%d tsc=reliable no_timer_check", khz)
}

// hostTSCkHz measures the host's TSC rate against the monotonic clock, or
// returns 0 without an invariant TSC (constant_tsc and nonstop_tsc).
func hostTSCkHz() uint64 {
	if !haveRDTSC {
		return 0
	}
	info, err := os.ReadFile("/proc/cpuinfo")
	if err != nil || !bytes.Contains(info, []byte(" constant_tsc")) || !bytes.Contains(info, []byte(" nonstop_tsc")) {
		return 0
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	// The best of a few short windows: a preemption between the two reads
	// of a pair only makes that window's error larger.
	var best uint64
	var bestErr time.Duration = 1 << 62
	for range 3 {
		t0 := time.Now()
		c0 := rdtsc()
		t0b := time.Since(t0)
		time.Sleep(50 * time.Millisecond)
		t1 := time.Now()
		c1 := rdtsc()
		t1b := time.Since(t1)
		el := t1.Sub(t0)
		if el <= 0 || c1 <= c0 {
			continue
		}
		if e := t0b + t1b; e < bestErr {
			bestErr, best = e, (c1-c0)*uint64(time.Millisecond)/uint64(el)
		}
	}
	return best
}
