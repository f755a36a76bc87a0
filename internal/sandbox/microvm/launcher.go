package microvm

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
)

// QEMU advises the kernel to back guest RAM with transparent huge pages,
// so every 4 KiB page a restored VM writes costs 2 MiB of the host
// (measured: a restored 256 MiB guest at 211 MiB RSS, 135 MiB without).
// THP can only be turned off for a whole process, before it maps its
// memory: QEMU is started through this binary, re-executed with
// launcherEnv set, which turns THP off for itself (PR_SET_THP_DISABLE
// survives execve) and then becomes QEMU.
const launcherEnv = "RUNAGENT_MICROVM_EXEC_QEMU"

func init() {
	if qemu := os.Getenv(launcherEnv); qemu != "" {
		execQEMU(qemu)
	}
}

func execQEMU(qemu string) {
	disableTHP()
	env := make([]string, 0, len(os.Environ()))
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, launcherEnv+"=") {
			env = append(env, e)
		}
	}
	err := syscall.Exec(qemu, append([]string{qemu}, os.Args[1:]...), env)
	fmt.Fprintf(os.Stderr, "runagent: exec %s: %v\n", qemu, err)
	os.Exit(127)
}

// qemuCommand is QEMU with args, started through this binary when it can
// find itself (else directly, with huge pages).
func qemuCommand(qemu string, args []string) *exec.Cmd {
	self, err := os.Executable()
	if err == nil {
		_, err = os.Stat(self) // gone if the binary was replaced meanwhile
	}
	if err != nil {
		return exec.Command(qemu, args...)
	}
	cmd := exec.Command(self, args...)
	cmd.Env = []string{launcherEnv + "=" + qemu}
	return cmd
}
