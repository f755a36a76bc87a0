package microvm

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"sort"
	"strings"
)

// cpioEntry is one member of an initramfs. Mode carries the type
// (fs.ModeDir, fs.ModeSymlink, fs.ModeDevice|fs.ModeCharDevice, or none for
// a regular file) and the permission bits; Data is a regular file's
// contents or a symlink's target; Major and Minor number a device node.
type cpioEntry struct {
	Name         string
	Mode         fs.FileMode
	Data         []byte
	Major, Minor uint32
}

// The type bits of a cpio header's mode, as in <sys/stat.h>.
const (
	cpioRegular = 0o100000
	cpioDir     = 0o040000
	cpioSymlink = 0o120000
	cpioCharDev = 0o020000
)

// cpioMode is e's mode as the kernel's initramfs unpacker reads it.
func cpioMode(e cpioEntry) (uint32, error) {
	perm := uint32(e.Mode.Perm())
	if e.Mode&fs.ModeSetuid != 0 {
		perm |= 0o4000
	}
	if e.Mode&fs.ModeSetgid != 0 {
		perm |= 0o2000
	}
	if e.Mode&fs.ModeSticky != 0 {
		perm |= 0o1000
	}
	switch t := e.Mode.Type(); t {
	case 0:
		return cpioRegular | perm, nil
	case fs.ModeDir:
		return cpioDir | perm, nil
	case fs.ModeSymlink:
		return cpioSymlink | 0o777, nil
	case fs.ModeDevice | fs.ModeCharDevice:
		return cpioCharDev | perm, nil
	default:
		return 0, fmt.Errorf("cpio: %s: unsupported file type %v", e.Name, t)
	}
}

// writeCPIO writes entries as an uncompressed "newc" cpio archive, the
// format the kernel unpacks as an initramfs. Entries are written in name
// order, which puts every directory before what it holds and makes the
// output depend on the entries only; times and owners are zero for the
// same reason. Names are relative to the archive's root ("/init" is
// written "init").
func writeCPIO(w io.Writer, entries []cpioEntry) error {
	sorted := make([]cpioEntry, len(entries))
	copy(sorted, entries)
	for i := range sorted {
		sorted[i].Name = strings.TrimLeft(sorted[i].Name, "/")
		if sorted[i].Name == "" || sorted[i].Name == "TRAILER!!!" {
			return fmt.Errorf("cpio: bad entry name %q", entries[i].Name)
		}
	}
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	bw := bufio.NewWriter(w)
	cw := &cpioWriter{w: bw}
	for i, e := range sorted {
		if i > 0 && e.Name == sorted[i-1].Name {
			return fmt.Errorf("cpio: %s is in the archive twice", e.Name)
		}
		mode, err := cpioMode(e)
		if err != nil {
			return err
		}
		nlink := uint32(1)
		if e.Mode.IsDir() {
			nlink = 2
		}
		cw.entry(uint32(i+1), mode, nlink, e.Major, e.Minor, e.Name, e.Data)
	}
	// The trailer ends the archive; the kernel stops reading there.
	cw.entry(0, 0, 1, 0, 0, "TRAILER!!!", nil)
	if cw.err != nil {
		return cw.err
	}
	return bw.Flush()
}

// cpioWriter writes newc headers and 4-byte aligned names and data,
// keeping the first write error.
type cpioWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *cpioWriter) entry(ino, mode, nlink, major, minor uint32, name string, data []byte) {
	// magic, then 13 fields of 8 hex digits: ino, mode, uid, gid, nlink,
	// mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize
	// (with its NUL) and check (0: no checksum in the 070701 format).
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, major, minor, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write([]byte(name))
	c.write([]byte{0})
	c.pad()
	c.write(data)
	c.pad()
}

func (c *cpioWriter) write(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.n += int64(n)
	c.err = err
}

// pad aligns the output to 4 bytes, as newc wants after a name and after
// data.
func (c *cpioWriter) pad() {
	if r := c.n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}
