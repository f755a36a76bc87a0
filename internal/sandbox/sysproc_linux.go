package sandbox

import "syscall"

// sysProcAttr puts the runner in its own process group (so it can be killed
// with everything it started) and kills it if the server dies.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// socketPair is a connected pair of Unix stream sockets, close-on-exec.
func socketPair() ([2]int, error) {
	return syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
}
