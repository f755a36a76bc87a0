//go:build !linux

package microvm

// disableTHP: transparent huge pages are Linux's (and so is the driver).
func disableTHP() {}
