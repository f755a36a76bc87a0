package microvm

import (
	"os"
	"strings"
	"testing"
)

func TestHostTSCkHz(t *testing.T) {
	info, err := os.ReadFile("/proc/cpuinfo")
	if err != nil || !haveRDTSC || !strings.Contains(string(info), " constant_tsc") || !strings.Contains(string(info), " nonstop_tsc") {
		if got := hostTSCkHz(); got != 0 {
			t.Errorf("without an invariant TSC hostTSCkHz = %d, want 0", got)
		}
		t.Skip("this host's TSC is not invariant: the guest calibrates its own")
	}
	a, b := hostTSCkHz(), hostTSCkHz()
	// Any x86 of the last twenty years: between 500 MHz and 10 GHz, and two
	// measurements agree to 1%.
	if a < 500_000 || a > 10_000_000 {
		t.Fatalf("hostTSCkHz = %d kHz", a)
	}
	if d := int64(a) - int64(b); d*100 > int64(a) || -d*100 > int64(a) {
		t.Errorf("two measurements disagree: %d and %d kHz", a, b)
	}
	if args := tscKernelArgs(); !strings.HasPrefix(args, "tsc_early_khz=") || !strings.Contains(args, "tsc=reliable") {
		t.Errorf("tscKernelArgs() = %q", args)
	}
	t.Logf("host TSC: %d kHz", a)
}
