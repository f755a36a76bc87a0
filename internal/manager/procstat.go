package manager

import (
	"bytes"
	"os"
	"strconv"
)

// Usage is what the processes of one instance (its process group) use.
type Usage struct {
	RSSBytes   int64
	CPUSeconds float64 // user + system, of the live processes
	Tasks      int     // threads of all its processes, as a pids cgroup counts them
	Processes  int
	LimitHit   string // a limit the kernel enforced ("pids": a refused fork), from a cgroup
}

const (
	clockTicks = 100 // USER_HZ: Linux reports /proc CPU times in 1/100 s
)

var pageSize = int64(os.Getpagesize())

// sampleGroups reads /proc once and sums the usage of every process group
// in want. One pass serves every instance of every pool.
func sampleGroups(want map[int]bool) map[int]Usage {
	out := make(map[int]Usage, len(want))
	if len(want) == 0 {
		return out
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
		acc.RSSBytes += u.RSSBytes
		acc.CPUSeconds += u.CPUSeconds
		acc.Tasks += u.Tasks
		acc.Processes++
		out[pgrp] = acc
	}
	return out
}

// parseStat reads the fields of /proc/PID/stat that matter here. The
// command name (field 2) may hold spaces and parentheses, so fields are
// counted from the last ')'.
func parseStat(b []byte) (pgrp int, u Usage, ok bool) {
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
	u.RSSBytes = num(24) * pageSize
	return int(num(5)), u, true
}
