package microvm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"

	"github.com/runagent-go/runagent/internal/sandbox"
)

// A user's persistent folders reach a VM on a writable disk of their own
// (serial ra-persist): the guest mounts it on /persist and binds each
// folder over the agent's. QEMU cannot share a host folder with this
// guest kernel (no 9p; virtio-fs needs a daemon per VM and shared guest
// memory), so the disk is the folders' only copy under microvm, sized to
// the quota. A VM with such a disk boots: a snapshot restore would bring
// back another user's open files.

// persistDisks serialises the VMs of one disk: a new one waits until the
// last has exited (QEMU would refuse the disk's lock, and two kernels on
// one ext4 corrupt it).
type persistDisks struct {
	mu   sync.Mutex
	busy map[string]chan struct{}
}

func (p *persistDisks) acquire(ctx context.Context, path string) (release func(), err error) {
	for {
		p.mu.Lock()
		if p.busy == nil {
			p.busy = map[string]chan struct{}{}
		}
		ch, taken := p.busy[path]
		if !taken {
			done := make(chan struct{})
			p.busy[path] = done
			p.mu.Unlock()
			var once sync.Once
			return func() {
				once.Do(func() {
					p.mu.Lock()
					delete(p.busy, path)
					p.mu.Unlock()
					close(done)
				})
			}, nil
		}
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("microvm sandbox: the persistent folders' disk %s is still in use by the user's previous instance: %w", path, context.Cause(ctx))
		}
	}
}

// ensureMountsDisk makes the disk the first time, from the mounts' sources
// (their content at the mount's target), atomically.
func ensureMountsDisk(spec sandbox.Spec) error {
	path := spec.MountsDisk
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	stage, err := os.MkdirTemp(filepath.Dir(path), ".stage-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	for _, m := range spec.Mounts {
		dst := filepath.Join(stage, filepath.FromSlash(m.Target))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := os.CopyFS(dst, os.DirFS(m.Source)); err != nil {
			return fmt.Errorf("copy %s: %w", m.Source, err)
		}
	}
	size := spec.MountsDiskBytes
	if size < 8<<20 {
		size = 8 << 20 // ext4 with its journal needs a few MiB
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(size) // sparse: it holds what is written
	f.Close()
	if err == nil {
		var out []byte
		out, err = exec.Command("mkfs.ext4", "-q", "-F", "-d", stage, "-L", "ra-persist", "-m", "0", tmp).CombinedOutput()
		if err != nil {
			err = fmt.Errorf("mkfs.ext4: %v: %s", err, bytes.TrimSpace(out))
		}
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("microvm sandbox: the persistent folders' disk %s: %w", path, err)
	}
	return nil
}

// persistTargets are the guest paths the folders are bound at.
func persistTargets(mounts []sandbox.Mount) []string {
	out := make([]string, 0, len(mounts))
	for _, m := range mounts {
		out = append(out, GuestAgentDir+"/"+m.Target)
	}
	return out
}
