package microvm

import (
	"os"
	"time"
)

// An agent's warm VMs hold over a hundred MiB of the host each, its
// snapshot as much disk, and its agent disk the size of its folder and
// virtualenv: an agent nobody starts any more (scaled to zero for good,
// undeployed, replaced by a new version) gives them back.
const (
	// DefaultWarmTTL is how long an agent's warm VMs wait for a start
	// before they are stopped (Options.WarmTTL).
	DefaultWarmTTL = 10 * time.Minute
	// snapshotTTLFactor times the warm TTL is how long a snapshot nobody
	// restores stays on disk; the agent's next instance then boots.
	snapshotTTLFactor = 6
)

func (d *Driver) warmTTL() time.Duration {
	if d.mo.WarmTTL > 0 {
		return d.mo.WarmTTL
	}
	return DefaultWarmTTL
}

// sweepLoop sweeps a few times per warm TTL until Close.
func (d *Driver) sweepLoop() {
	t := time.NewTicker(max(d.warmTTL()/4, time.Second))
	defer t.Stop()
	for {
		select {
		case <-d.stopSweep:
			return
		case now := <-t.C:
			d.sweep(now)
		}
	}
}

// sweep stops the warm VMs of snapshots unused for the warm TTL and
// removes snapshots unused for snapshotTTLFactor times as long.
func (d *Driver) sweep(now time.Time) {
	warmTTL := d.warmTTL()
	var stop []*vm
	var remove []string
	d.mu.Lock()
	for key, s := range d.snaps {
		idle := now.Sub(s.used)
		if idle < warmTTL {
			continue
		}
		stop = append(stop, d.warm[key]...)
		delete(d.warm, key)
		if idle >= snapshotTTLFactor*warmTTL && !d.refilling[key] {
			delete(d.snaps, key)
			remove = append(remove, s.path)
		}
	}
	keep := map[string]bool{}
	for _, s := range d.snaps {
		keep[s.cfg.agentDisk] = true
	}
	d.mu.Unlock()
	disks := d.disks.sweep(now, snapshotTTLFactor*warmTTL, keep)
	for _, v := range stop {
		v.kill()
		<-v.proc.Done()
		os.RemoveAll(v.dir)
	}
	for _, p := range remove {
		// A restore that has the file open keeps reading it.
		os.Remove(p)
	}
	if len(stop)+len(remove)+disks > 0 {
		d.log.Debug("microVM: idle agents' warm VMs, snapshots and disks released", "vms", len(stop), "snapshots", len(remove), "disks", disks)
	}
}
