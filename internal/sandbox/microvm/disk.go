package microvm

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"
)

// diskCache builds the read-only disk an agent's folder and virtualenv
// reach the guest on (agent/ and venv/ at its root, bound to /agent and
// /venv), once per content: the key is every file's path, mode, size and
// modification time.
type diskCache struct {
	dir   string
	image *Image
	mu    sync.Mutex
	locks map[string]*sync.Mutex
	used  map[string]time.Time // disk path -> its last get
}

func (c *diskCache) lock(key string) *sync.Mutex {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.locks == nil {
		c.locks = map[string]*sync.Mutex{}
	}
	if c.locks[key] == nil {
		c.locks[key] = &sync.Mutex{}
	}
	return c.locks[key]
}

// get returns the disk image for agentDir and venv ("" for none).
func (c *diskCache) get(agentDir, venv string) (string, error) {
	h := sha256.New()
	var size int64
	for _, src := range []struct{ name, dir string }{{"agent", agentDir}, {"venv", venv}} {
		if src.dir == "" {
			continue
		}
		n, err := fingerprint(h, src.name, src.dir)
		if err != nil {
			return "", fmt.Errorf("microVM agent disk: %w", err)
		}
		size += n
	}
	key := hex.EncodeToString(h.Sum(nil))[:24]
	path := filepath.Join(c.dir, key+".ext4")
	l := c.lock(key)
	l.Lock()
	defer l.Unlock()
	c.mu.Lock()
	if c.used == nil {
		c.used = map[string]time.Time{}
	}
	c.used[path] = time.Now()
	c.mu.Unlock()
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := c.build(path, agentDir, venv, size); err != nil {
		return "", fmt.Errorf("microVM agent disk for %s: %w", agentDir, err)
	}
	return path, nil
}

// sweep removes the disks not asked for since before idle and not in keep
// (the disks snapshots restore with). A VM running on a removed disk keeps
// reading it; the next start of its agent builds it again.
func (c *diskCache) sweep(now time.Time, idle time.Duration, keep map[string]bool) int {
	c.mu.Lock()
	var stale []string
	for path, at := range c.used {
		if now.Sub(at) >= idle && !keep[path] {
			stale = append(stale, path)
		}
	}
	c.mu.Unlock()
	removed := 0
	for _, path := range stale {
		l := c.lock(strings.TrimSuffix(filepath.Base(path), ".ext4"))
		l.Lock()
		c.mu.Lock()
		if at, ok := c.used[path]; ok && now.Sub(at) >= idle { // not asked for meanwhile
			delete(c.used, path)
			if os.Remove(path) == nil {
				removed++
			}
		}
		c.mu.Unlock()
		l.Unlock()
	}
	return removed
}

func fingerprint(w io.Writer, name, dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fmt.Fprintf(w, "%s/%s %o %d %d\n", name, rel, info.Mode(), info.Size(), info.ModTime().UnixNano())
		total += info.Size()
		return nil
	})
	return total, err
}

func (c *diskCache) build(path, agentDir, venv string, size int64) error {
	stage, err := os.MkdirTemp(c.dir, "stage-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	if err := copyTree(agentDir, filepath.Join(stage, "agent")); err != nil {
		return err
	}
	if venv != "" {
		if err := c.stageVenv(venv, filepath.Join(stage, "venv")); err != nil {
			return err
		}
	}
	// ext4 needs room for its metadata beyond the files themselves.
	mib := size*5/4/(1<<20) + 16
	tmp := path + ".tmp"
	out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", stage, "-L", "ra-agent", "-O", "^has_journal",
		"-E", "root_owner=0:0", "-N", fmt.Sprint(countEntries(stage)+256), tmp, fmt.Sprintf("%dM", mib)).CombinedOutput()
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("mkfs.ext4: %v: %s", err, bytes.TrimSpace(out))
	}
	return os.Rename(tmp, path)
}

func countEntries(dir string) int {
	n := 0
	filepath.WalkDir(dir, func(string, fs.DirEntry, error) error { n++; return nil })
	return n
}

// copyTree copies src to dst: directories, regular files and symlinks,
// readable by the guest's unprivileged runner whatever their host modes.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		info, err := e.Info()
		if err != nil {
			return err
		}
		switch {
		case e.IsDir():
			return os.MkdirAll(to, 0o755)
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, to)
		case info.Mode().IsRegular():
			mode := fs.FileMode(0o644)
			if info.Mode()&0o111 != 0 {
				mode = 0o755
			}
			return copyFile(p, to, mode)
		}
		return nil // sockets, fifos, devices: not an agent's files
	})
}

func copyFile(src, dst string, mode fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

var pyVersionDir = regexp.MustCompile(`^python(\d+\.\d+)$`)

// stageVenv copies a virtualenv and points it at the guest's interpreter:
// pyvenv.cfg's home, the bin/python links and the scripts' #! lines. Its
// packages must be for the guest's Python version.
func (c *diskCache) stageVenv(venv, dst string) error {
	libs, _ := os.ReadDir(filepath.Join(venv, "lib"))
	for _, e := range libs {
		if m := pyVersionDir.FindStringSubmatch(e.Name()); m != nil && m[1] != c.image.Python {
			return fmt.Errorf("the virtualenv %s is for Python %s, the microVM image has Python %s: recreate it with python%s, or build the image from a Debian release with Python %s",
				venv, m[1], c.image.Python, c.image.Python, m[1])
		}
	}
	if err := copyTree(venv, dst); err != nil {
		return err
	}
	cfg := "home = /usr/bin\ninclude-system-site-packages = false\nversion = " + c.image.Python + "\n"
	if err := os.WriteFile(filepath.Join(dst, "pyvenv.cfg"), []byte(cfg), 0o644); err != nil {
		return err
	}
	bin := filepath.Join(dst, "bin")
	ents, _ := os.ReadDir(bin)
	for _, e := range ents {
		p := filepath.Join(bin, e.Name())
		if strings.HasPrefix(e.Name(), "python") {
			os.Remove(p)
			if err := os.Symlink("/usr/bin/python"+c.image.Python, p); err != nil {
				return err
			}
			continue
		}
		if e.Type().IsRegular() {
			if err := rewriteShebang(p, venv); err != nil {
				return err
			}
		}
	}
	return nil
}

// rewriteShebang points a script's "#!<venv>/bin/python" at the guest's venv.
func rewriteShebang(path, venv string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	old := []byte("#!" + venv + "/bin/")
	if !bytes.HasPrefix(b, old) {
		return nil
	}
	b = append([]byte("#!"+GuestVenv+"/bin/"), b[len(old):]...)
	info, err := os.Stat(path)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, info.Mode())
}
