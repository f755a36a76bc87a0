package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
)

type machineInfo struct {
	date     time.Time
	nproc    int
	cpuModel string
	kernel   string
	memTotal string
	goVer    string
	pyVer    string
	python   string
}

func gatherMachineInfo(ctx context.Context, python string) machineInfo {
	m := machineInfo{date: time.Now().UTC(), nproc: runtime.NumCPU(), goVer: runtime.Version(), python: python}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.cpuModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if m.cpuModel == "" {
		m.cpuModel = "unknown (" + runtime.GOARCH + ")"
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.kernel = "Linux " + strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				if f := strings.Fields(rest); len(f) > 0 {
					if kb, err := strconv.ParseInt(f[0], 10, 64); err == nil {
						m.memTotal = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
					}
				}
			}
		}
	}
	if out, err := exec.CommandContext(ctx, "go", "version").Output(); err == nil {
		m.goVer = strings.TrimSpace(string(out))
	}
	if out, err := exec.CommandContext(ctx, python, "--version").CombinedOutput(); err == nil {
		m.pyVer = strings.TrimSpace(string(out))
	} else {
		m.pyVer = "unknown"
	}
	return m
}
