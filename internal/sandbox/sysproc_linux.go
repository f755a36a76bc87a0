package sandbox

import "syscall"

// sysProcAttr puts the runner in its own process group (so it can be killed
// with everything it started) and kills it if the server dies.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
