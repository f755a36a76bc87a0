package pgtest

import "syscall"

// serverAttr runs the server in its own process group, stopped if the test
// binary dies without Stop.
func serverAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred, Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
