package bundle

import (
	"archive/zip"
	"bytes"
	"compress/flate"
	"errors"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// zipOf builds an in-memory zip with build.
func zipOf(t *testing.T, build func(zw *zip.Writer)) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	build(zw)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// add stores name with data and mode (0 means a plain 0644 file).
func add(t *testing.T, zw *zip.Writer, name, data string, mode fs.FileMode) {
	t.Helper()
	fh := &zip.FileHeader{Name: name, Method: zip.Deflate}
	if mode != 0 {
		fh.SetMode(mode)
	}
	w, err := zw.CreateHeader(fh)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, data); err != nil {
		t.Fatal(err)
	}
}

func files(t *testing.T, names ...string) []byte {
	return zipOf(t, func(zw *zip.Writer) {
		for _, n := range names {
			data := "x"
			if strings.HasSuffix(n, "/") {
				data = ""
			}
			add(t, zw, n, data, 0)
		}
	})
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// gigabyteBomb is one entry, "bomb", of 1 GiB of zeros, deflated to about
// 1.3 MiB. Built once: compressing takes about half a second.
var gigabyteBomb = sync.OnceValue(func() []byte {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	zw.RegisterCompressor(zip.Deflate, func(w io.Writer) (io.WriteCloser, error) {
		return flate.NewWriter(w, flate.BestSpeed)
	})
	w, err := zw.Create("bomb")
	if err == nil {
		_, err = io.CopyN(w, zeros{}, 1<<30)
	}
	if err == nil {
		err = zw.Close()
	}
	if err != nil {
		panic(err)
	}
	return buf.Bytes()
})

// liar stores real (deflated, correct CRC) under a header claiming claimed
// uncompressed bytes.
func liar(t *testing.T, name string, real []byte, claimed uint64) []byte {
	var comp bytes.Buffer
	fw, _ := flate.NewWriter(&comp, flate.BestSpeed)
	fw.Write(real)
	fw.Close()
	return zipOf(t, func(zw *zip.Writer) {
		w, err := zw.CreateRaw(&zip.FileHeader{
			Name:               name,
			Method:             zip.Deflate,
			CRC32:              crc32.ChecksumIEEE(real),
			CompressedSize64:   uint64(comp.Len()),
			UncompressedSize64: claimed,
		})
		if err != nil {
			t.Fatal(err)
		}
		w.Write(comp.Bytes())
	})
}

// corrupt stores one entry uncompressed and flips a byte of its data.
func corrupt(t *testing.T) []byte {
	data := "hello, this content gets damaged"
	b := zipOf(t, func(zw *zip.Writer) {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: "a.txt", Method: zip.Store})
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, data)
	})
	i := bytes.Index(b, []byte(data))
	if i < 0 {
		t.Fatal("stored data not found")
	}
	b[i+3] ^= 0xff
	return b
}

// assertClean checks that a failed Extract left neither dest nor a
// temporary directory in its parent.
func assertClean(t *testing.T, dest string) {
	t.Helper()
	if _, err := os.Lstat(dest); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("dest exists after failure (err %v)", err)
	}
	des, err := os.ReadDir(filepath.Dir(dest))
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range des {
		if strings.Contains(de.Name(), ".partial-") {
			t.Errorf("left behind %s", de.Name())
		}
	}
}

func TestExtractRejects(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 512<<10) // 8 MiB
	tests := []struct {
		name   string
		zip    func(t *testing.T) []byte
		lim    Limits
		entry  string
		reason string
	}{
		{"zip slip", func(t *testing.T) []byte { return files(t, "ok.txt", "../../etc/x") }, Limits{}, "../../etc/x", "leaves the bundle"},
		{"zip slip nested", func(t *testing.T) []byte { return files(t, "a/../../x") }, Limits{}, "a/../../x", "leaves the bundle"},
		{"dotdot inside", func(t *testing.T) []byte { return files(t, "a/../b") }, Limits{}, "a/../b", "leaves the bundle"},
		{"absolute", func(t *testing.T) []byte { return files(t, "/etc/passwd") }, Limits{}, "/etc/passwd", "absolute path"},
		{"drive letter backslash", func(t *testing.T) []byte { return files(t, `C:\x`) }, Limits{}, `C:\x`, "absolute path"},
		{"drive letter slash", func(t *testing.T) []byte { return files(t, "c:/x") }, Limits{}, "c:/x", "absolute path"},
		{"drive relative", func(t *testing.T) []byte { return files(t, "D:x") }, Limits{}, "D:x", "absolute path"},
		{"backslash dotdot", func(t *testing.T) []byte { return files(t, `a\..\x`) }, Limits{}, `a\..\x`, "backslash"},
		{"backslash", func(t *testing.T) []byte { return files(t, `dir\file`) }, Limits{}, `dir\file`, "backslash"},
		{"NUL", func(t *testing.T) []byte { return files(t, "a\x00b") }, Limits{}, "a\x00b", "NUL"},
		{"newline", func(t *testing.T) []byte { return files(t, "a\nb") }, Limits{}, "a\nb", "control character"},
		{"C1 control", func(t *testing.T) []byte { return files(t, "a\u0085b") }, Limits{}, "a\u0085b", "control character"},
		{"empty name", func(t *testing.T) []byte { return files(t, "") }, Limits{}, "", "empty name"},
		{"dot name", func(t *testing.T) []byte { return files(t, "./") }, Limits{}, "./", "empty name"},
		{"symlink", func(t *testing.T) []byte {
			return zipOf(t, func(zw *zip.Writer) { add(t, zw, "data/link", "/etc/passwd", os.ModeSymlink|0o777) })
		}, Limits{}, "data/link", "symlink entries are not allowed"},
		{"block device", func(t *testing.T) []byte {
			return zipOf(t, func(zw *zip.Writer) { add(t, zw, "sda", "", os.ModeDevice|0o644) })
		}, Limits{}, "sda", "device entries are not allowed"},
		{"char device", func(t *testing.T) []byte {
			return zipOf(t, func(zw *zip.Writer) { add(t, zw, "tty", "", os.ModeDevice|os.ModeCharDevice|0o644) })
		}, Limits{}, "tty", "device entries are not allowed"},
		{"named pipe", func(t *testing.T) []byte {
			return zipOf(t, func(zw *zip.Writer) { add(t, zw, "fifo", "", os.ModeNamedPipe|0o644) })
		}, Limits{}, "fifo", "named pipe entries are not allowed"},
		{"socket", func(t *testing.T) []byte {
			return zipOf(t, func(zw *zip.Writer) { add(t, zw, "sock", "", os.ModeSocket|0o644) })
		}, Limits{}, "sock", "socket entries are not allowed"},
		{"duplicate", func(t *testing.T) []byte { return files(t, "a.txt", "b.txt", "a.txt") }, Limits{}, "a.txt", "duplicate name"},
		{"duplicate after cleaning", func(t *testing.T) []byte { return files(t, "a/b", "a/./b") }, Limits{}, "a/./b", "duplicate name"},
		{"duplicate dir", func(t *testing.T) []byte { return files(t, "d/", "d//") }, Limits{}, "d//", "duplicate name"},
		{"file then dir", func(t *testing.T) []byte { return files(t, "a", "a/b") }, Limits{}, "a", "both as a file and as a directory"},
		{"dir then file", func(t *testing.T) []byte { return files(t, "a/b/c", "a/b") }, Limits{}, "a/b", "both as a file and as a directory"},
		{"file and dir entry", func(t *testing.T) []byte { return files(t, "x", "x/") }, Limits{}, "x/", "duplicate name"},
		{"too many files", func(t *testing.T) []byte { return files(t, "1", "2", "3", "4") }, Limits{MaxFiles: 3}, "", "too many entries: 4 (limit 3)"},
		{"zip bomb", func(*testing.T) []byte { return gigabyteBomb() }, Limits{MaxBytes: 1 << 20}, "bomb", "larger than 1048576 bytes"},
		{"total over limit", func(t *testing.T) []byte {
			return zipOf(t, func(zw *zip.Writer) {
				add(t, zw, "a", strings.Repeat("a", 600<<10), 0)
				add(t, zw, "b", strings.Repeat("b", 600<<10), 0)
			})
		}, Limits{MaxBytes: 1 << 20}, "b", "larger than 1048576 bytes"},
		{"header claims less", func(t *testing.T) []byte { return liar(t, "liar", big, 10) }, Limits{MaxBytes: 1 << 20}, "liar", "does not match its header"},
		{"header claims zero", func(t *testing.T) []byte { return liar(t, "liar", big, 0) }, Limits{MaxBytes: 1 << 20}, "liar", "does not match its header"},
		{"header claims within limit", func(t *testing.T) []byte { return liar(t, "liar", big, 1<<20) }, Limits{MaxBytes: 1 << 20}, "liar", "does not match its header"},
		{"checksum", corrupt, Limits{}, "a.txt", "checksum mismatch"},
		{"unsupported method", func(t *testing.T) []byte {
			return zipOf(t, func(zw *zip.Writer) {
				w, _ := zw.CreateRaw(&zip.FileHeader{Name: "m", Method: 99, CompressedSize64: 1, UncompressedSize64: 1})
				w.Write([]byte{1})
			})
		}, Limits{}, "m", "unsupported compression method"},
		{"truncated", func(t *testing.T) []byte { b := files(t, "a", "b"); return b[:len(b)-10] }, Limits{}, "", "not a valid zip archive"},
		{"not a zip", func(t *testing.T) []byte { return []byte("PK\x03\x04 surely not a zip") }, Limits{}, "", "not a valid zip archive"},
		{"nothing", func(t *testing.T) []byte { return nil }, Limits{}, "", "not a valid zip archive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.zip(t)
			dest := filepath.Join(t.TempDir(), "agent")
			err := Extract(bytes.NewReader(b), int64(len(b)), dest, tt.lim)
			var be *Error
			if !errors.As(err, &be) {
				t.Fatalf("Extract = %v, want *Error", err)
			}
			if be.Entry != tt.entry || !strings.Contains(be.Reason, tt.reason) {
				t.Errorf("Extract = %q %q, want entry %q and reason containing %q", be.Entry, be.Reason, tt.entry, tt.reason)
			}
			if !strings.Contains(err.Error(), tt.reason) {
				t.Errorf("message %q lacks the reason", err)
			}
			assertClean(t, dest)
		})
	}
}

func TestErrorMessage(t *testing.T) {
	if got, want := (&Error{Entry: "../x", Reason: "path leaves the bundle"}).Error(), `bundle entry "../x": path leaves the bundle`; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	if got, want := (&Error{Reason: "too many entries"}).Error(), "bundle: too many entries"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

// tree reads every file and directory below dir as "path" -> "mode content".
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	got := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		v := info.Mode().String()
		if d.Type().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			v += " " + string(data)
		}
		got[filepath.ToSlash(rel)] = v
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestExtract(t *testing.T) {
	b := zipOf(t, func(zw *zip.Writer) {
		add(t, zw, "run.sh", "#!/bin/sh\n", 0o700)
		add(t, zw, "docs/", "", os.ModeDir|0o700)
		add(t, zw, "docs/readme", "hi", 0o600)
		add(t, zw, "a/./b/c.py", "print()", 0o744)
		add(t, zw, "empty/", "", 0)
		add(t, zw, "plain", "no mode", 0)
	})
	dest := filepath.Join(t.TempDir(), "agent")
	if err := Extract(bytes.NewReader(b), int64(len(b)), dest, Limits{}); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"run.sh":      "-rwxr-xr-x #!/bin/sh\n",
		"docs":        "drwxr-xr-x",
		"docs/readme": "-rw-r--r-- hi",
		"a":           "drwxr-xr-x",
		"a/b":         "drwxr-xr-x",
		"a/b/c.py":    "-rwxr-xr-x print()",
		"empty":       "drwxr-xr-x",
		"plain":       "-rw-r--r-- no mode",
	}
	assertTree(t, tree(t, dest), want)
	if st, err := os.Stat(dest); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("dest mode %v (%v), want 0755", st.Mode(), err)
	}
	assertNoPartial(t, dest)
}

func assertTree(t *testing.T, got, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected %s (%q)", k, v)
		}
	}
}

func assertNoPartial(t *testing.T, dest string) {
	t.Helper()
	des, _ := os.ReadDir(filepath.Dir(dest))
	for _, de := range des {
		if strings.Contains(de.Name(), ".partial-") {
			t.Errorf("left behind %s", de.Name())
		}
	}
}

func TestExtractEmptyZip(t *testing.T) {
	b := zipOf(t, func(*zip.Writer) {})
	dest := filepath.Join(t.TempDir(), "agent")
	if err := Extract(bytes.NewReader(b), int64(len(b)), dest, Limits{}); err != nil {
		t.Fatal(err)
	}
	des, err := os.ReadDir(dest)
	if err != nil || len(des) != 0 {
		t.Errorf("dest = %v (%v), want an empty directory", des, err)
	}
}

func TestExtractLimitsAreInclusive(t *testing.T) {
	b := zipOf(t, func(zw *zip.Writer) {
		add(t, zw, "a", strings.Repeat("a", 600), 0)
		add(t, zw, "b", strings.Repeat("b", 424), 0)
	})
	dest := filepath.Join(t.TempDir(), "agent")
	if err := Extract(bytes.NewReader(b), int64(len(b)), dest, Limits{MaxFiles: 2, MaxBytes: 1024}); err != nil {
		t.Fatal(err)
	}
}

func TestExtractDestExists(t *testing.T) {
	b := files(t, "a")
	dest := filepath.Join(t.TempDir(), "agent")
	if err := os.Mkdir(dest, 0o755); err != nil {
		t.Fatal(err)
	}
	err := Extract(bytes.NewReader(b), int64(len(b)), dest, Limits{})
	var be *Error
	if err == nil || errors.As(err, &be) {
		t.Fatalf("Extract = %v, want a plain error", err)
	}
	if des, _ := os.ReadDir(dest); len(des) != 0 {
		t.Errorf("existing dest was written to: %v", des)
	}
	assertNoPartial(t, dest)
}

func TestExtractFile(t *testing.T) {
	dir := t.TempDir()
	zp := filepath.Join(dir, "b.zip")
	if err := os.WriteFile(zp, files(t, "x/y.txt"), 0o644); err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(dir, "agent")
	if err := ExtractFile(zp, dest, Limits{}); err != nil {
		t.Fatal(err)
	}
	assertTree(t, tree(t, dest), map[string]string{"x": "drwxr-xr-x", "x/y.txt": "-rw-r--r-- x"})

	if err := os.WriteFile(zp, files(t, "../y"), 0o644); err != nil {
		t.Fatal(err)
	}
	dest2 := filepath.Join(dir, "agent2")
	var be *Error
	if err := ExtractFile(zp, dest2, Limits{}); !errors.As(err, &be) || be.Entry != "../y" {
		t.Errorf("ExtractFile = %v, want *Error for ../y", err)
	}
	assertClean(t, dest2)
}

// countingReaderAt counts the bytes Extract reads from the bundle.
type countingReaderAt struct {
	r io.ReaderAt
	n int64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.n += int64(n)
	return n, err
}

// TestExtractBombStopsEarly checks that the limit stops decompression,
// rather than inflating the whole gigabyte and rejecting afterwards.
func TestExtractBombStopsEarly(t *testing.T) {
	b := gigabyteBomb()
	cr := &countingReaderAt{r: bytes.NewReader(b)}
	dest := filepath.Join(t.TempDir(), "agent")
	var be *Error
	if err := Extract(cr, int64(len(b)), dest, Limits{MaxBytes: 1 << 20}); !errors.As(err, &be) || be.Entry != "bomb" {
		t.Fatalf("Extract = %v, want *Error for bomb", err)
	}
	if cr.n > int64(len(b))/10 {
		t.Errorf("read %d of %d compressed bytes; decompression did not stop at the limit", cr.n, len(b))
	}
	assertClean(t, dest)
}

// TestExtractTruncatedEntry cuts the data of the only entry short while
// keeping the central directory intact.
func TestExtractTruncatedEntry(t *testing.T) {
	real := bytes.Repeat([]byte("abc"), 1000)
	b := liar(t, "short", real, uint64(2*len(real)))
	dest := filepath.Join(t.TempDir(), "agent")
	var be *Error
	err := Extract(bytes.NewReader(b), int64(len(b)), dest, Limits{})
	if !errors.As(err, &be) || be.Entry != "short" || !strings.Contains(be.Reason, "corrupt data") {
		t.Fatalf("Extract = %v, want corrupt data for short", err)
	}
	assertClean(t, dest)
}

// TestRenameNoReplace: an empty directory appearing at dest after the
// existence check must not be replaced (plain rename(2) would).
func TestRenameNoReplace(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "f"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := renameNoReplace(src, dst); err == nil {
		t.Fatal("renameNoReplace replaced an existing directory")
	}
	if des, _ := os.ReadDir(dst); len(des) != 0 {
		t.Errorf("dst was replaced: %v", des)
	}
}
