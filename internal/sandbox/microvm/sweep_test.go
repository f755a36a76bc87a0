package microvm

import (
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/sandbox"
)

// sleeper is a vm whose process is a real sleep (no QEMU needed).
func sleeper(t *testing.T) *vm {
	t.Helper()
	p, err := sandbox.StartProc(exec.Command("sleep", "60"), sandbox.ProcOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Kill(); <-p.Done() })
	return &vm{proc: p, dir: t.TempDir()}
}

func TestSweep(t *testing.T) {
	const ttl = time.Minute
	now := time.Now()
	dir := t.TempDir()
	snapFile := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("state"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name             string
		idle             time.Duration
		refilling        bool
		wantWarm         bool // the warm VM still runs
		wantSnapshotKept bool
	}{
		{"in use", ttl / 2, false, true, true},
		{"idle past the warm TTL", ttl + time.Second, false, false, true},
		{"idle past the snapshot TTL", snapshotTTLFactor*ttl + time.Second, false, false, false},
		{"idle past both but refilling", snapshotTTLFactor*ttl + time.Second, true, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &Driver{mo: Options{WarmTTL: ttl}, log: slog.New(slog.DiscardHandler),
				snaps: map[string]*snapshot{}, warm: map[string][]*vm{}, refilling: map[string]bool{}}
			v := sleeper(t)
			s := &snapshot{key: "k", path: snapFile(tc.name), used: now.Add(-tc.idle)}
			d.snaps["k"], d.warm["k"], d.refilling["k"] = s, []*vm{v}, tc.refilling
			d.sweep(now)
			select {
			case <-v.proc.Done():
				if tc.wantWarm {
					t.Error("the warm VM was stopped")
				}
			default:
				if !tc.wantWarm {
					t.Error("the warm VM still runs")
				}
			}
			if got := len(d.warm["k"]) == 1; got != tc.wantWarm {
				t.Errorf("warm VMs listed: %v, want %v", got, tc.wantWarm)
			}
			_, statErr := os.Stat(s.path)
			if kept := d.snaps["k"] != nil; kept != tc.wantSnapshotKept || (statErr == nil) != tc.wantSnapshotKept {
				t.Errorf("snapshot listed %v, file stat error %v; want kept=%v", kept, statErr, tc.wantSnapshotKept)
			}
		})
	}
}

func TestSweepDisks(t *testing.T) {
	const ttl = time.Minute
	now := time.Now()
	dir := t.TempDir()
	d := &Driver{mo: Options{WarmTTL: ttl}, log: slog.New(slog.DiscardHandler),
		snaps: map[string]*snapshot{}, warm: map[string][]*vm{}, refilling: map[string]bool{}}
	disk := func(name string, idle time.Duration) string {
		p := filepath.Join(dir, name+".ext4")
		if err := os.WriteFile(p, []byte("disk"), 0o600); err != nil {
			t.Fatal(err)
		}
		if d.disks.used == nil {
			d.disks.used = map[string]time.Time{}
		}
		d.disks.used[p] = now.Add(-idle)
		return p
	}
	old := snapshotTTLFactor*ttl + time.Second
	recent := disk("recent", ttl)
	stale := disk("stale", old)
	snapshotted := disk("snapshotted", old)
	d.snaps["k"] = &snapshot{key: "k", path: filepath.Join(dir, "k.snap"), used: now, cfg: vmConfig{agentDisk: snapshotted}}
	d.sweep(now)
	for p, want := range map[string]bool{recent: true, stale: false, snapshotted: true} {
		if _, err := os.Stat(p); (err == nil) != want {
			t.Errorf("%s: kept=%v, want %v", filepath.Base(p), err == nil, want)
		}
	}
}
