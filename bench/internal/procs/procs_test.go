package procs

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	st, ppid, err := parseStat([]byte("42 (we (ird) name) S 7 42 42 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 9 10 11"))
	if err != nil || st != "S" || ppid != 7 {
		t.Fatalf("got %q %d %v", st, ppid, err)
	}
	if _, _, err := parseStat([]byte("garbage")); err == nil {
		t.Fatal("no error for garbage")
	}
}

// TestStartStopTree starts a shell that starts a child in its own process
// group, and checks that Stop ends both and that RSS and CPU are read.
func TestStartStopTree(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc")
	}
	dir := t.TempDir()
	cmd := exec.Command("sh", "-c", "setsid sleep 60 & echo started; wait")
	p, err := Start("test", cmd, filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	var tree []int
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if tree = Tree(p.Pid()); len(tree) >= 2 {
			break
		}
	}
	if len(tree) < 2 {
		t.Fatalf("tree %v: the child did not start", tree)
	}
	if rss, n := TreeRSS(p.Pid()); rss <= 0 || n < 2 {
		t.Errorf("TreeRSS = %d over %d processes", rss, n)
	}
	if TreeCPU(p.Pid()) < 0 || SystemBusy() <= 0 {
		t.Error("CPU times not read")
	}
	p.Stop(2 * time.Second)
	if exited, _ := p.Exited(); !exited {
		t.Error("the shell still runs")
	}
	for _, pid := range tree {
		if alive(pid) {
			t.Errorf("pid %d survived Stop", pid)
		}
	}
	if got := p.LogTail(5); got != "started" {
		t.Errorf("log tail %q", got)
	}
}
