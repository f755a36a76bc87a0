package bundle

import (
	"archive/zip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
)

// Limits bound what Extract accepts.
type Limits struct {
	MaxFiles int   // entries (default 10000 when 0)
	MaxBytes int64 // total uncompressed bytes, counted while decompressing (default 512 MiB when 0)
}

const (
	defaultMaxFiles = 10000
	defaultMaxBytes = 512 << 20
)

func (l Limits) withDefaults() Limits {
	if l.MaxFiles <= 0 {
		l.MaxFiles = defaultMaxFiles
	}
	if l.MaxBytes <= 0 {
		l.MaxBytes = defaultMaxBytes
	}
	return l
}

// entry is a validated zip entry.
type entry struct {
	f    *zip.File
	name string // cleaned slash path
	dir  bool
	perm fs.FileMode
}

// ExtractFile opens the zip file zipPath and calls Extract.
func ExtractFile(zipPath, dest string, lim Limits) error {
	f, err := os.Open(zipPath)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	return Extract(f, st.Size(), dest, lim)
}

// Extract unpacks the zip in r (size bytes) into dest, which must not exist
// yet. It writes into a temporary sibling directory (dest + ".partial-<random>")
// and renames it to dest only when everything succeeded; on any error nothing
// is left behind. A bundle rejected for its content gives an *Error: unsafe or
// duplicate names, symlinks and other non-regular entries, more than
// lim.MaxFiles entries, more than lim.MaxBytes decompressed bytes, corrupt
// data. Directories are created 0755, files 0644 or 0755.
func Extract(r io.ReaderAt, size int64, dest string, lim Limits) error {
	lim = lim.withDefaults()
	if _, err := os.Lstat(dest); err == nil {
		return fmt.Errorf("bundle: destination %s already exists", dest)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}

	zr, err := zip.NewReader(r, size)
	// ErrInsecurePath (GODEBUG=zipinsecurepath=0) still returns a usable
	// reader; plan reports such names with a precise reason.
	if err != nil && !errors.Is(err, zip.ErrInsecurePath) {
		return &Error{Reason: "not a valid zip archive: " + err.Error()}
	}
	entries, err := plan(zr.File, lim)
	if err != nil {
		return err
	}

	tmp, err := os.MkdirTemp(filepath.Dir(dest), filepath.Base(dest)+".partial-*")
	if err != nil {
		return err
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp)
		}
	}()
	if err := writeAll(tmp, entries, lim.MaxBytes); err != nil {
		return err
	}
	// MkdirTemp made it 0700.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	if err := renameNoReplace(tmp, dest); err != nil {
		return err
	}
	done = true
	return nil
}

// plan validates every entry before anything is written, so that a bundle
// is rejected as a whole.
func plan(files []*zip.File, lim Limits) ([]entry, error) {
	if len(files) > lim.MaxFiles {
		return nil, &Error{Reason: fmt.Sprintf("too many entries: %d (limit %d)", len(files), lim.MaxFiles)}
	}
	entries := make([]entry, 0, len(files))
	seen := make(map[string]bool, len(files))
	dirs := make(map[string]bool) // explicit directories and parents of every entry
	for _, f := range files {
		name, reason := checkName(f.Name)
		if reason != "" {
			return nil, &Error{Entry: f.Name, Reason: reason}
		}
		mode := f.Mode()
		if t := mode.Type() &^ fs.ModeDir; t != 0 {
			return nil, &Error{Entry: f.Name, Reason: typeName(t) + " entries are not allowed"}
		}
		if seen[name] {
			return nil, &Error{Entry: f.Name, Reason: "duplicate name"}
		}
		seen[name] = true
		e := entry{f: f, name: name, dir: mode.IsDir(), perm: 0o644}
		if mode&0o111 != 0 {
			e.perm = 0o755
		}
		if e.dir {
			dirs[name] = true
		}
		for p := path.Dir(name); p != "."; p = path.Dir(p) {
			dirs[p] = true
		}
		entries = append(entries, e)
	}
	for _, e := range entries {
		if !e.dir && dirs[e.name] {
			return nil, &Error{Entry: e.f.Name, Reason: "path is used both as a file and as a directory"}
		}
	}
	return entries, nil
}

func typeName(t fs.FileMode) string {
	switch {
	case t&fs.ModeSymlink != 0:
		return "symlink"
	case t&fs.ModeDevice != 0, t&fs.ModeCharDevice != 0:
		return "device"
	case t&fs.ModeNamedPipe != 0:
		return "named pipe"
	case t&fs.ModeSocket != 0:
		return "socket"
	default:
		return "non-regular file"
	}
}

// writeAll writes the planned entries below dir. os.Root keeps every
// operation inside dir whatever the names say.
func writeAll(dir string, entries []entry, maxBytes int64) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	made := make(map[string]bool)
	remaining := maxBytes
	for _, e := range entries {
		parent := e.name
		if !e.dir {
			parent = path.Dir(e.name)
		}
		if err := mkdirs(root, parent, made); err != nil {
			return err
		}
		if e.dir {
			continue
		}
		n, err := writeFile(root, e, remaining, maxBytes)
		if err != nil {
			return err
		}
		remaining -= n
	}
	return root.Close()
}

// mkdirs creates dir and its missing parents with mode 0755 (chmod after
// mkdir so that the umask does not matter).
func mkdirs(root *os.Root, dir string, made map[string]bool) error {
	if dir == "." || made[dir] {
		return nil
	}
	if err := mkdirs(root, path.Dir(dir), made); err != nil {
		return err
	}
	if err := root.Mkdir(dir, 0o755); err != nil {
		return err
	}
	if err := root.Chmod(dir, 0o755); err != nil {
		return err
	}
	made[dir] = true
	return nil
}

// writeFile decompresses one entry, stopping as soon as more than remaining
// bytes (what is left of maxBytes) come out, and returns the number of bytes
// written.
func writeFile(root *os.Root, e entry, remaining, maxBytes int64) (int64, error) {
	rc, err := e.f.Open()
	if err != nil {
		return 0, zipError(e.f.Name, err)
	}
	defer rc.Close()
	out, err := root.OpenFile(e.name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|oNoFollow, e.perm)
	if err != nil {
		return 0, err
	}
	src := &errReader{r: rc}
	n, err := io.Copy(out, io.LimitReader(src, remaining+1))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	switch {
	case src.err != nil:
		return 0, zipError(e.f.Name, src.err)
	case err != nil:
		return 0, err
	case n > remaining:
		return 0, &Error{Entry: e.f.Name, Reason: fmt.Sprintf("bundle is larger than %d bytes uncompressed", maxBytes)}
	}
	if err := root.Chmod(e.name, e.perm); err != nil {
		return 0, err
	}
	return n, nil
}

func zipError(entry string, err error) error {
	reason := "corrupt data: " + err.Error()
	switch {
	case errors.Is(err, zip.ErrAlgorithm):
		reason = "unsupported compression method"
	case errors.Is(err, zip.ErrChecksum):
		reason = "corrupt data: checksum mismatch"
	case errors.Is(err, zip.ErrFormat):
		// Also what archive/zip reports when the data outgrows the
		// header's uncompressed size.
		reason = "corrupt data: does not match its header"
	case errors.Is(err, io.ErrUnexpectedEOF):
		reason = "corrupt data: truncated"
	}
	return &Error{Entry: entry, Reason: reason}
}

// errReader remembers a read error so that a corrupt bundle can be told
// apart from a failing write.
type errReader struct {
	r   io.Reader
	err error
}

func (r *errReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}

// renameChecked is the portable rename: it refuses an existing newpath,
// leaving only a small race with whoever creates it meanwhile.
func renameChecked(oldpath, newpath string) error {
	if _, err := os.Lstat(newpath); err == nil {
		return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: fs.ErrExist}
	}
	return os.Rename(oldpath, newpath)
}
