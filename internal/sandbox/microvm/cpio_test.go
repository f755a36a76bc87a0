package microvm

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// cpioExtractors are the real cpio implementations an archive is checked
// with: busybox's is the one closest to the kernel's unpacker.
func cpioExtractors(t *testing.T) map[string][]string {
	t.Helper()
	found := map[string][]string{}
	if p, err := exec.LookPath("busybox"); err == nil {
		found["busybox"] = []string{p, "cpio", "-i", "-d"}
	}
	if p, err := exec.LookPath("cpio"); err == nil {
		found["cpio"] = []string{p, "-i", "-d", "--quiet"}
	}
	if len(found) == 0 {
		t.Skip("neither busybox nor cpio is installed (apt-get install busybox-static)")
	}
	return found
}

func TestWriteCPIOExtracts(t *testing.T) {
	root := os.Geteuid() == 0
	entries := []cpioEntry{
		// Out of order on purpose: the writer sorts.
		{Name: "/lib/modules/virtio.ko", Mode: 0o644, Data: []byte("module")},
		{Name: "/bin", Mode: fs.ModeDir | 0o755},
		{Name: "/init", Mode: 0o755, Data: []byte("#!/bin/busybox sh\necho hi\n")},
		{Name: "/bin/busybox", Mode: 0o755, Data: bytes.Repeat([]byte{0x7f, 'E', 'L', 'F', 1}, 1001)},
		{Name: "/lib", Mode: fs.ModeDir | 0o755},
		{Name: "/lib/modules", Mode: fs.ModeDir | 0o700},
		{Name: "/bin/sh", Mode: fs.ModeSymlink | 0o777, Data: []byte("busybox")},
		{Name: "/empty", Mode: 0o600},
		{Name: "/a", Mode: 0o640, Data: []byte("x")},
		{Name: "/ab", Mode: 0o640, Data: []byte("xy")},
		{Name: "/abc", Mode: 0o640, Data: []byte("xyz")},
		{Name: "/abcd", Mode: 0o640, Data: []byte("wxyz")},
		{Name: "/newroot", Mode: fs.ModeDir | 0o755},
		{Name: "/dev", Mode: fs.ModeDir | 0o755},
	}
	if root {
		entries = append(entries, cpioEntry{Name: "/dev/console", Mode: fs.ModeDevice | fs.ModeCharDevice | 0o600, Major: 5, Minor: 1})
	} else {
		t.Log("not root: the device node is left out")
	}
	var buf bytes.Buffer
	if err := writeCPIO(&buf, entries); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive is %d bytes, not a multiple of 4", buf.Len())
	}
	for name, argv := range cpioExtractors(t) {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			cmd := exec.Command(argv[0], argv[1:]...)
			cmd.Dir = dir
			cmd.Stdin = bytes.NewReader(buf.Bytes())
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
			}
			for _, e := range entries {
				checkExtracted(t, filepath.Join(dir, e.Name), e)
			}
		})
	}
}

func checkExtracted(t *testing.T, path string, e cpioEntry) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Errorf("%s: %v", e.Name, err)
		return
	}
	if fi.Mode().Type() != e.Mode.Type() {
		t.Errorf("%s: type %v, want %v", e.Name, fi.Mode().Type(), e.Mode.Type())
		return
	}
	switch {
	case e.Mode.Type() == fs.ModeSymlink:
		if target, _ := os.Readlink(path); target != string(e.Data) {
			t.Errorf("%s: links to %q, want %q", e.Name, target, e.Data)
		}
		return
	case e.Mode.Type() == 0:
		if b, _ := os.ReadFile(path); !bytes.Equal(b, e.Data) {
			t.Errorf("%s: %d bytes differ from the %d written", e.Name, len(b), len(e.Data))
		}
	case e.Mode&fs.ModeDevice != 0:
		st := fi.Sys().(*syscall.Stat_t)
		major, minor := unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev))
		if major != e.Major || minor != e.Minor {
			t.Errorf("%s: device %d:%d, want %d:%d", e.Name, major, minor, e.Major, e.Minor)
		}
	}
	if fi.Mode().Perm() != e.Mode.Perm() {
		t.Errorf("%s: mode %v, want %v", e.Name, fi.Mode().Perm(), e.Mode.Perm())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && os.Geteuid() == 0 && (st.Uid != 0 || st.Gid != 0) {
		t.Errorf("%s: owner %d:%d, want 0:0", e.Name, st.Uid, st.Gid)
	}
}

func TestWriteCPIOReproducible(t *testing.T) {
	a := []cpioEntry{
		{Name: "/x", Mode: fs.ModeDir | 0o755},
		{Name: "/x/y", Mode: 0o644, Data: []byte("y")},
		{Name: "/z", Mode: fs.ModeSymlink | 0o777, Data: []byte("x/y")},
	}
	b := []cpioEntry{a[2], a[1], a[0]}
	var ba, bb bytes.Buffer
	if err := writeCPIO(&ba, a); err != nil {
		t.Fatal(err)
	}
	if err := writeCPIO(&bb, b); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ba.Bytes(), bb.Bytes()) {
		t.Error("the same entries in another order give another archive")
	}
	if !bytes.HasSuffix(ba.Bytes(), []byte("TRAILER!!!\x00\x00\x00\x00")) {
		t.Errorf("archive does not end with the padded trailer: %q", ba.Bytes()[ba.Len()-16:])
	}
}

func TestWriteCPIOErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries []cpioEntry
		want    string
	}{
		{"twice", []cpioEntry{{Name: "/a", Mode: 0o644}, {Name: "a", Mode: 0o644}}, "twice"},
		{"fifo", []cpioEntry{{Name: "/p", Mode: fs.ModeNamedPipe | 0o644}}, "unsupported"},
		{"socket", []cpioEntry{{Name: "/s", Mode: fs.ModeSocket | 0o644}}, "unsupported"},
		{"block device", []cpioEntry{{Name: "/b", Mode: fs.ModeDevice | 0o644}}, "unsupported"},
		{"root", []cpioEntry{{Name: "/", Mode: fs.ModeDir | 0o755}}, "bad entry name"},
		{"trailer", []cpioEntry{{Name: "TRAILER!!!", Mode: 0o644}}, "bad entry name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := writeCPIO(&bytes.Buffer{}, tc.entries)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one with %q", err, tc.want)
			}
		})
	}
}
