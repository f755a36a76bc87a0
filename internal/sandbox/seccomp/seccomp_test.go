package seccomp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/bpf"
)

func TestProgramShape(t *testing.T) {
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		if _, err := Program(); err == nil || !strings.Contains(err.Error(), "only linux/amd64") {
			t.Fatalf("Program on %s/%s: err = %v, want an 'only linux/amd64' error", runtime.GOOS, runtime.GOARCH, err)
		}
		return
	}
	prog, err := Program()
	if err != nil {
		t.Fatal(err)
	}
	if len(prog) == 0 || len(prog)%8 != 0 {
		t.Fatalf("program is %d bytes, want a non-empty multiple of 8", len(prog))
	}
	if n := len(prog) / 8; n > maxInstructions {
		t.Fatalf("program has %d instructions, max %d", n, maxInstructions)
	}
	// Every jump must land inside the program, and the last instruction must return.
	raw := decode(prog)
	insts, ok := bpf.Disassemble(raw)
	if !ok {
		t.Fatal("program does not disassemble cleanly")
	}
	for i, in := range insts {
		if j, ok := in.(bpf.JumpIf); ok {
			if end := i + 1 + int(max(j.SkipTrue, j.SkipFalse)); end >= len(insts) {
				t.Errorf("instruction %d (%v) jumps past the end", i, in)
			}
		}
	}
	if _, ok := insts[len(insts)-1].(bpf.RetConstant); !ok {
		t.Errorf("last instruction is %v, want a return", insts[len(insts)-1])
	}

	d := Denied()
	if !slices.IsSorted(d) {
		t.Errorf("Denied() is not sorted: %v", d)
	}
	for _, want := range []string{"ptrace", "mount", "unshare", "setns", "bpf", "io_uring_setup"} {
		if !slices.Contains(d, want) {
			t.Errorf("Denied() lacks %q", want)
		}
	}
	for _, allowed := range []string{"clone", "clone3", "personality", "read", "fork"} {
		if slices.Contains(d, allowed) {
			t.Errorf("Denied() lists %q", allowed)
		}
	}
	if len(slices.Compact(slices.Clone(d))) != len(d) {
		t.Errorf("Denied() has duplicates: %v", d)
	}
	d[0] = "mutated"
	if Denied()[0] == "mutated" {
		t.Error("Denied() returns the package's own slice")
	}
}

// TestProgramSemantics runs the filter in the x/net/bpf VM against seccomp_data
// records, so the decision for each call is checked without a kernel.
func TestProgramSemantics(t *testing.T) {
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		t.Skipf("filter only exists for linux/amd64, not %s/%s", runtime.GOOS, runtime.GOARCH)
	}
	prog, err := Program()
	if err != nil {
		t.Fatal(err)
	}
	insts, _ := bpf.Disassemble(decode(prog))
	vm, err := bpf.NewVM(insts)
	if err != nil {
		t.Fatal(err)
	}
	const (
		cloneNewUser = 0x10000000
		cloneNewNS   = 0x00020000
		cloneNewNet  = 0x40000000
		threadFlags  = 0x003d0f00 // CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|PARENT_SETTID|CHILD_CLEARTID
		sigchld      = 17
	)
	tests := []struct {
		name string
		arch uint32
		nr   uint32
		arg0 uint64
		want uint32
	}{
		{"read allowed", auditArchX86_64, 0, 0, retAllow},
		{"personality allowed", auditArchX86_64, 135, 0, retAllow},
		{"foreign arch killed", 0x40000003 /* i386 */, 0, 0, retKillProcess},
		{"x32 getpid refused", auditArchX86_64, x32SyscallBit | 39, 0, retErrno | errnoEPERM},
		{"clone3 ENOSYS", auditArchX86_64, sysnums["clone3"], 0, retErrno | errnoENOSYS},
		{"clone fork allowed", auditArchX86_64, sysnums["clone"], sigchld, retAllow},
		{"clone thread allowed", auditArchX86_64, sysnums["clone"], threadFlags, retAllow},
		{"clone high bits ignored", auditArchX86_64, sysnums["clone"], 0xffffffff00000000 | sigchld, retAllow},
		{"clone newuser refused", auditArchX86_64, sysnums["clone"], cloneNewUser | sigchld, retErrno | errnoEPERM},
		{"clone newns refused", auditArchX86_64, sysnums["clone"], cloneNewNS, retErrno | errnoEPERM},
		{"clone newnet refused", auditArchX86_64, sysnums["clone"], cloneNewNet | threadFlags, retErrno | errnoEPERM},
		{"setuid allowed", auditArchX86_64, 105, 0, retAllow},
	}
	for _, name := range Denied() {
		tests = append(tests, struct {
			name string
			arch uint32
			nr   uint32
			arg0 uint64
			want uint32
		}{name + " refused", auditArchX86_64, sysnums[name], 0, retErrno | errnoEPERM})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// The kernel loads seccomp_data words in native order; the x/net VM
			// loads packet words big-endian. So store each 32-bit word
			// big-endian where amd64 would hold it: arg0's low half at 16.
			data := make([]byte, 64) // sizeof(struct seccomp_data)
			binary.BigEndian.PutUint32(data[offNr:], tc.nr)
			binary.BigEndian.PutUint32(data[offArch:], tc.arch)
			binary.BigEndian.PutUint32(data[offArg0:], uint32(tc.arg0))
			binary.BigEndian.PutUint32(data[offArg0+4:], uint32(tc.arg0>>32))
			got, err := vm.Run(data)
			if err != nil {
				t.Fatal(err)
			}
			if uint32(got) != tc.want {
				t.Errorf("filter returned %#x, want %#x", got, tc.want)
			}
		})
	}
}

func decode(prog []byte) []bpf.RawInstruction {
	var raw []bpf.RawInstruction
	for b := prog; len(b) >= 8; b = b[8:] {
		raw = append(raw, bpf.RawInstruction{
			Op: binary.LittleEndian.Uint16(b), Jt: b[2], Jf: b[3], K: binary.LittleEndian.Uint32(b[4:]),
		})
	}
	return raw
}

// probe prints "check=errno" lines (0: the call succeeded) for the kernel checks.
// ptrace(PTRACE_TRACEME) runs in a forked child so that its tracer is python
// itself, with the same credentials: under bwrap's pid 1, which has no
// capabilities, TRACEME fails with EPERM even without a filter.
const probe = `
import ctypes, os, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return r, ctypes.get_errno()
def report(name, r, e):
    print(f"{name}={0 if r >= 0 else e}", flush=True)

# fork and threads must survive the filter (glibc tries clone3 first, then clone).
pid = os.fork()
if pid == 0:
    os._exit(7)
_, st = os.waitpid(pid, 0)
print(f"fork={0 if os.waitstatus_to_exitcode(st) == 7 else 1}", flush=True)
box = []
th = threading.Thread(target=lambda: box.append(1)); th.start(); th.join()
print(f"thread={0 if box == [1] else 1}", flush=True)
with open(os.path.realpath(sys.executable), "rb") as f:
    elf = f.read(4) == b"\x7fELF"
print(f"read={0 if elf else 1}", flush=True)

pid = os.fork()
if pid == 0:
    r, e = sc(101, 0, 0, 0, 0)
    os._exit(0 if r >= 0 else e)
_, st = os.waitpid(pid, 0)
print(f"ptrace_traceme={os.waitstatus_to_exitcode(st)}", flush=True)
report("clone3", *sc(435, 0, 0))
report("x32_getpid", *sc(0x40000000 | 39))
# raw clone(CLONE_NEWUSER|SIGCHLD) behaves like fork if allowed: the child leaves at once.
r, e = sc(56, 0x10000000 | 17, 0, 0, 0, 0)
if r == 0:
    os._exit(0)
if r > 0:
    os.waitpid(r, 0)
report("clone_newuser", r, e)
# after clone: a successful unshare would leave us unmapped in a new user namespace.
report("unshare_newuser", *sc(272, 0x10000000))
`

type probeCase struct {
	check string
	want  int // errno under the filter; 0 means the call must succeed
}

var probeCases = []probeCase{
	{"fork", 0},
	{"thread", 0},
	{"read", 0},
	{"clone3", 38},         // ENOSYS
	{"unshare_newuser", 1}, // EPERM
	{"x32_getpid", 1},      // EPERM
	{"clone_newuser", 1},   // EPERM
	{"ptrace_traceme", 1},  // EPERM
}

func TestBwrapEnforces(t *testing.T) {
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		t.Skipf("filter only exists for linux/amd64, not %s/%s", runtime.GOOS, runtime.GOARCH)
	}
	bwrap, err := exec.LookPath("bwrap")
	if err != nil {
		const why = "bwrap not on PATH: install bubblewrap (apt-get install bubblewrap)"
		if os.Getenv("RUNAGENT_TEST_NO_BWRAP") == "1" {
			t.Skip(why + "; skipped because RUNAGENT_TEST_NO_BWRAP=1")
		}
		t.Fatal(why + " or set RUNAGENT_TEST_NO_BWRAP=1 to skip")
	}
	py := realPython(t)
	prog, err := Program()
	if err != nil {
		t.Fatal(err)
	}

	filtered := runProbe(t, bwrap, py, prog)
	// The same probe without the filter shows each denied check would
	// otherwise have a different outcome, i.e. that this test can fail.
	unfiltered := runProbe(t, bwrap, py, nil)

	for _, tc := range probeCases {
		got, ok := filtered[tc.check]
		if !ok {
			t.Errorf("%s: no result under the filter", tc.check)
			continue
		}
		if got != tc.want {
			t.Errorf("%s: errno %d under the filter, want %d", tc.check, got, tc.want)
		}
		base, ok := unfiltered[tc.check]
		switch {
		case !ok:
			t.Errorf("%s: no result without the filter", tc.check)
		case tc.want == 0 && base != 0:
			t.Errorf("%s: fails (errno %d) even without the filter", tc.check, base)
		case tc.want != 0 && base == tc.want:
			t.Errorf("%s: errno %d even without the filter, so the check proves nothing here", tc.check, base)
		}
	}
}

func realPython(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("python3", "-c", "import sys,os;print(os.path.realpath(sys.executable))").Output()
	if err != nil {
		t.Fatalf("python3 not usable: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// runProbe runs the probe in bwrap, with prog on --seccomp unless prog is nil.
func runProbe(t *testing.T, bwrap, py string, prog []byte) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	args := []string{"--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid", "--die-with-parent"}
	var extra []*os.File
	if prog != nil {
		// A file, not a pipe: a pipe larger than its buffer would need a writer goroutine.
		f, err := os.CreateTemp(t.TempDir(), "seccomp")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.Write(prog); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Seek(0, 0); err != nil {
			t.Fatal(err)
		}
		extra = append(extra, f)
		args = append(args, "--seccomp", "3") // ExtraFiles[0] is fd 3 in the child
	}
	args = append(args, py, "-c", probe)
	cmd := exec.CommandContext(ctx, bwrap, args...)
	cmd.ExtraFiles = extra
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bwrap (filter=%v): %v\nstdout:\n%s\nstderr:\n%s", prog != nil, err, out, stderr.String())
	}
	res := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("bad probe line %q", sc.Text())
		}
		res[k] = n
	}
	t.Logf("filter=%v: %v", prog != nil, res)
	return res
}
