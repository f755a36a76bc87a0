package manager

import (
	"os"
	"syscall"
	"testing"
)

func TestParseStat(t *testing.T) {
	line := []byte("4242 (python3 (x) y) S 1 777 777 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 9 0 123 456789 2500 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0")
	pgrp, u, ok := parseStat(line)
	if !ok || pgrp != 777 || u.CPUSeconds != 2 || u.Tasks != 9 || u.MemoryBytes != 2500*pageSize {
		t.Fatalf("parseStat = %d %+v %v", pgrp, u, ok)
	}
	if _, _, ok := parseStat([]byte("garbage")); ok {
		t.Fatal("garbage parsed")
	}
}

func TestSampleGroupsSeesThisProcess(t *testing.T) {
	pgrp := syscall.Getpgrp()
	got := SampleGroups([]int{pgrp})[pgrp]
	if got.MemoryBytes <= 0 || got.Tasks < 1 {
		t.Fatalf("usage of our own group (pid %d, pgrp %d): %+v", os.Getpid(), pgrp, got)
	}
}
