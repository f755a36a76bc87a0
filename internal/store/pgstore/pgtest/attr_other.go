//go:build !linux

package pgtest

import "syscall"

// serverAttr runs the server in its own process group (Stop ends it).
func serverAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred, Setpgid: true}
}
