//go:build unix

package bundle

import "syscall"

const oNoFollow = syscall.O_NOFOLLOW
