//go:build !(linux && amd64)

package seccomp

// sysnums is empty where the filter is unsupported; Program reports that.
var sysnums = map[string]uint32{}
