package microvm

import "golang.org/x/sys/unix"

// disableTHP turns transparent huge pages off for this process and what it
// execs. Without it (a kernel older than 3.15) QEMU runs with huge pages.
func disableTHP() { _ = unix.Prctl(unix.PR_SET_THP_DISABLE, 1, 0, 0, 0) }
