// Package seccomp builds the classic-BPF seccomp filter that the bubblewrap
// driver hands to `bwrap --seccomp FD`: a deny-list of system calls that a
// Python agent has no business making (tracing, kernel modules, mounts,
// namespaces, clock changes, io_uring, ...). Everything else is allowed, so
// ordinary Python (threads, fork, sockets, files) keeps working.
package seccomp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"slices"

	"golang.org/x/net/bpf"
)

// denied is refused with EPERM. Keep in step with sysnums (sysnum_linux_amd64.go).
var denied = []string{
	"acct",
	"add_key",
	"adjtimex",
	"bpf",
	"clock_adjtime",
	"clock_settime",
	"delete_module",
	"finit_module",
	"fsmount",
	"fsopen",
	"fspick",
	"init_module",
	"io_uring_enter",
	"io_uring_register",
	"io_uring_setup",
	"ioperm",
	"iopl",
	"kcmp",
	"kexec_file_load",
	"kexec_load",
	"keyctl",
	"lookup_dcookie",
	"mount",
	"mount_setattr",
	"move_mount",
	"name_to_handle_at",
	"open_by_handle_at",
	"open_tree",
	"perf_event_open",
	"pidfd_getfd",
	"pivot_root",
	"process_vm_readv",
	"process_vm_writev",
	"ptrace",
	"quotactl",
	"reboot",
	"request_key",
	"setns",
	"settimeofday",
	"swapoff",
	"swapon",
	"syslog",
	"umount2",
	"unshare",
	"uselib",
	"userfaultfd",
	"vhangup",
}

// Denied is the names of the system calls the filter refuses with EPERM,
// sorted. clone3 (ENOSYS) and clone with namespace flags (EPERM) are handled
// separately and not listed.
func Denied() []string {
	out := slices.Clone(denied)
	slices.Sort(out)
	return out
}

// Offsets into struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6];}.
const (
	offNr   = 0
	offArch = 4
	offArg0 = 16 // low 32 bits on little-endian, which is all we inspect
)

// Return values (linux/seccomp.h); spelled out so the file builds everywhere.
const (
	retKillProcess = 0x80000000
	retErrno       = 0x00050000
	retAllow       = 0x7fff0000

	errnoEPERM  = 1
	errnoENOSYS = 38

	auditArchX86_64 = 0xc000003e
	x32SyscallBit   = 0x40000000

	// CLONE_NEWNS|CLONE_NEWCGROUP|CLONE_NEWUTS|CLONE_NEWIPC|CLONE_NEWUSER|CLONE_NEWPID|CLONE_NEWNET
	cloneNamespaceFlags = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000

	maxInstructions = 4096 // BPF_MAXINSNS
)

// Program is the compiled filter: the raw array of struct sock_filter that
// bwrap reads from its --seccomp FD. Only linux/amd64 is supported.
func Program() ([]byte, error) {
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		return nil, fmt.Errorf("seccomp: only linux/amd64 is supported, not %s/%s", runtime.GOOS, runtime.GOARCH)
	}
	insts, err := instructions(sysnums)
	if err != nil {
		return nil, err
	}
	return assemble(insts)
}

// instructions lays the filter out as a straight line of short forward jumps
// (every jump skips at most a few instructions), so the 8-bit jump offsets of
// classic BPF can never overflow however long the deny-list grows.
func instructions(nums map[string]uint32) ([]bpf.Instruction, error) {
	clone, ok1 := nums["clone"]
	clone3, ok2 := nums["clone3"]
	if !ok1 || !ok2 {
		return nil, errors.New("seccomp: no syscall numbers for clone/clone3 on this architecture")
	}
	p := []bpf.Instruction{
		// A foreign ABI would give the numbers below other meanings: kill.
		bpf.LoadAbsolute{Off: offArch, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: auditArchX86_64, SkipTrue: 1},
		bpf.RetConstant{Val: retKillProcess},
		bpf.LoadAbsolute{Off: offNr, Size: 4},
		// x32 calls (nr|0x40000000) would bypass every check below.
		bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: x32SyscallBit, SkipFalse: 1},
		bpf.RetConstant{Val: retErrno | errnoEPERM},
	}
	for _, name := range Denied() {
		nr, ok := nums[name]
		if !ok {
			return nil, fmt.Errorf("seccomp: no syscall number for %q on this architecture", name)
		}
		p = append(p,
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: nr, SkipFalse: 1},
			bpf.RetConstant{Val: retErrno | errnoEPERM},
		)
	}
	p = append(p,
		// clone3 passes its flags in memory, which BPF cannot read; ENOSYS
		// makes glibc fall back to clone, whose flags we can check.
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: clone3, SkipFalse: 1},
		bpf.RetConstant{Val: retErrno | errnoENOSYS},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: clone, SkipFalse: 3},
		bpf.LoadAbsolute{Off: offArg0, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: cloneNamespaceFlags, SkipFalse: 1},
		bpf.RetConstant{Val: retErrno | errnoEPERM},
		bpf.RetConstant{Val: retAllow},
	)
	if len(p) > maxInstructions {
		return nil, fmt.Errorf("seccomp: filter has %d instructions, the kernel allows %d", len(p), maxInstructions)
	}
	return p, nil
}

// assemble serializes struct sock_filter {u16 code; u8 jt; u8 jf; u32 k;}
// in the (little-endian) byte order of amd64.
func assemble(insts []bpf.Instruction) ([]byte, error) {
	raw, err := bpf.Assemble(insts)
	if err != nil {
		return nil, fmt.Errorf("seccomp: assemble: %w", err)
	}
	out := make([]byte, 0, 8*len(raw))
	for _, r := range raw {
		out = binary.LittleEndian.AppendUint16(out, r.Op)
		out = append(out, r.Jt, r.Jf)
		out = binary.LittleEndian.AppendUint32(out, r.K)
	}
	return out, nil
}
