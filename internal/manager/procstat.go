package manager

import (
	"bytes"
	"os"
	"strconv"

	"github.com/runagent-go/runagent/internal/domain"
)

const (
	clockTicks = 100 // USER_HZ: Linux reports /proc CPU times in 1/100 s
)

var pageSize = int64(os.Getpagesize())

// SampleGroups reads /proc once and sums the usage of the processes of
// every process group in pgids (an instance's runner leads its group). One
// pass serves every instance of every pool.
func SampleGroups(pgids []int) map[int]domain.Usage {
	out := make(map[int]domain.Usage, len(pgids))
	if len(pgids) == 0 {
		return out
	}
	want := make(map[int]bool, len(pgids))
	for _, g := range pgids {
		want[g] = true
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	buf := make([]byte, 0, 1024)
	for _, e := range ents {
		name := e.Name()
		if name[0] < '0' || name[0] > '9' {
			continue
		}
		f, err := os.Open("/proc/" + name + "/stat")
		if err != nil {
			continue
		}
		n, _ := f.Read(buf[:cap(buf)])
		f.Close()
		pgrp, u, ok := parseStat(buf[:n])
		if !ok || !want[pgrp] {
			continue
		}
		acc := out[pgrp]
		acc.MemoryBytes += u.MemoryBytes
		acc.CPUSeconds += u.CPUSeconds
		acc.Tasks += u.Tasks
		out[pgrp] = acc
	}
	return out
}

// parseStat reads the fields of /proc/PID/stat that matter here. The
// command name (field 2) may hold spaces and parentheses, so fields are
// counted from the last ')'.
func parseStat(b []byte) (pgrp int, u domain.Usage, ok bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, u, false
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state): field n is f[n-3].
	if len(f) < 22 {
		return 0, u, false
	}
	num := func(n int) int64 {
		v, _ := strconv.ParseInt(string(f[n-3]), 10, 64)
		return v
	}
	u.CPUSeconds = float64(num(14)+num(15)) / clockTicks
	u.Tasks = int(num(20))
	u.MemoryBytes = num(24) * pageSize
	return int(num(5)), u, true
}
