package bundle

import (
	"archive/zip"
	"bytes"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// writeTree creates files below dir; a value starting with "0755:" is made
// executable.
func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, data := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := fs.FileMode(0o644)
		if rest, ok := strings.CutPrefix(data, "0755:"); ok {
			data, mode = rest, 0o755
		}
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // umask
			t.Fatal(err)
		}
	}
}

func create(t *testing.T, dir string) ([]byte, Summary) {
	t.Helper()
	var buf bytes.Buffer
	sum, err := Create(dir, &buf, nil)
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), sum
}

// names lists the entries of a zip in order.
func names(t *testing.T, b []byte) []string {
	t.Helper()
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range zr.File {
		out = append(out, f.Name)
	}
	return out
}

func TestCreateGitignore(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		".gitignore":        "# comment\n*.log\n!keep.log\nbuild/\n/secret.txt\r\n\n",
		"app.py":            "print()",
		"debug.log":         "",
		"keep.log":          "",
		"sub/keep.log":      "",
		"secret.txt":        "",
		"sub/secret.txt":    "",
		"build/out.bin":     "",
		"sub/build/out.bin": "",
		"notes/build":       "a file, not a directory",
		"a.tmp":             "",
		"sub/.gitignore":    "*.tmp\n!important.log\n",
		"sub/a.tmp":         "",
		"sub/deep/b.tmp":    "",
		"sub/important.log": "",
		"sub/other.log":     "",
		"other/c.tmp":       "",
	})
	b, sum := create(t, dir)
	want := []string{
		".gitignore", "a.tmp", "app.py", "keep.log", "notes/build", "other/c.tmp",
		"sub/.gitignore", "sub/important.log", "sub/keep.log", "sub/secret.txt",
	}
	if got := names(t, b); !slices.Equal(got, want) {
		t.Errorf("entries\n got %q\nwant %q", got, want)
	}
	if sum.Files != len(want) {
		t.Errorf("Summary.Files = %d, want %d", sum.Files, len(want))
	}
}

func TestCreateAlwaysExcluded(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		// Negations cannot bring these back.
		".gitignore":                    "!*.pyc\n!.venv\n!venv\n",
		"main.py":                       "",
		".git/config":                   "",
		".git/objects/ab/cd":            "",
		"__pycache__/main.cpython.pyc":  "",
		"pkg/__pycache__/m.cpython.pyc": "",
		"pkg/m.pyc":                     "",
		"pkg/m.py":                      "",
		"pkg/.git":                      "gitdir: elsewhere",
		".venv/bin/python":              "",
		"venv/bin/python":               "",
		"pkg/venv/x.py":                 "",
		".deployments/1.json":           "",
		".DS_Store":                     "",
		"pkg/.DS_Store":                 "",
	})
	b, _ := create(t, dir)
	want := []string{".gitignore", "main.py", "pkg/m.py", "pkg/venv/x.py"}
	if got := names(t, b); !slices.Equal(got, want) {
		t.Errorf("entries\n got %q\nwant %q", got, want)
	}
}

func TestCreateSkipsSymlinks(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"data/real.txt": "x", ".gitignore": "ignored-link\n"})
	for link, target := range map[string]string{
		"data/link":    "real.txt",
		"dirlink":      "data",
		"outside":      "/etc/passwd",
		"ignored-link": "data",
	} {
		if err := os.Symlink(target, filepath.Join(dir, filepath.FromSlash(link))); err != nil {
			t.Skip("symlinks unsupported:", err)
		}
	}
	b, sum := create(t, dir)
	if got, want := names(t, b), []string{".gitignore", "data/real.txt"}; !slices.Equal(got, want) {
		t.Errorf("entries %q, want %q", got, want)
	}
	want := []string{"data/link: symlink", "dirlink: symlink", "outside: symlink"}
	if !slices.Equal(sum.Skipped, want) {
		t.Errorf("Skipped = %q, want %q", sum.Skipped, want)
	}
}

func TestCreateEntries(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"run.sh":     "0755:#!/bin/sh\n",
		"a.txt":      "a",
		"a/b.txt":    "ab",
		"z/y/x.py":   "zyx",
		"empty.txt":  "",
		"a.b/c.json": "{}",
	})
	if err := os.Chmod(filepath.Join(dir, "a.txt"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "emptydir"), 0o755); err != nil {
		t.Fatal(err)
	}
	var calls [][2]int64
	var buf bytes.Buffer
	sum, err := Create(dir, &buf, func(files int, bytes int64) {
		calls = append(calls, [2]int64{int64(files), bytes})
	})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Files != 6 || sum.Bytes != int64(len("#!/bin/sh\n")+1+2+3+0+2) || len(sum.Skipped) != 0 {
		t.Errorf("Summary = %+v", sum)
	}
	if len(calls) != 6 || calls[5] != [2]int64{6, sum.Bytes} || calls[0][0] != 1 {
		t.Errorf("progress calls %v", calls)
	}

	zr, err := zip.NewReader(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	wantNames := []string{"a.b/c.json", "a.txt", "a/b.txt", "empty.txt", "run.sh", "z/y/x.py"}
	wantModes := map[string]fs.FileMode{"run.sh": 0o755}
	var got []string
	for _, f := range zr.File {
		got = append(got, f.Name)
		want := wantModes[f.Name]
		if want == 0 {
			want = 0o644
		}
		if f.Mode() != want {
			t.Errorf("%s: mode %v, want %v", f.Name, f.Mode(), want)
		}
		if !f.Modified.Equal(modTime) {
			t.Errorf("%s: modified %v, want %v", f.Name, f.Modified, modTime)
		}
		if f.Method != zip.Deflate {
			t.Errorf("%s: method %d", f.Name, f.Method)
		}
	}
	if !slices.Equal(got, wantNames) {
		t.Errorf("entries\n got %q\nwant %q", got, wantNames)
	}
}

func TestCreateDeterministic(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"main.py": "print('hi')", "lib/a.py": "a", "lib/b.py": "b", "run.sh": "0755:x",
	})
	first, _ := create(t, dir)
	// Different modification and access times must not change the bytes.
	later := time.Now().Add(time.Hour)
	for _, p := range []string{"main.py", "lib/a.py", "lib"} {
		if err := os.Chtimes(filepath.Join(dir, filepath.FromSlash(p)), later, later); err != nil {
			t.Fatal(err)
		}
	}
	second, _ := create(t, dir)
	if !bytes.Equal(first, second) {
		t.Error("two Creates of the same folder differ")
	}
}

func TestCreateRejectsUnsafeNames(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, `a\b`), nil, 0o644); err != nil {
		t.Skip("file system refuses backslashes:", err)
	}
	if _, err := Create(dir, io.Discard, nil); err == nil || !strings.Contains(err.Error(), "backslash") {
		t.Errorf("Create = %v, want an error about the backslash", err)
	}
}

func TestCreateNotADirectory(t *testing.T) {
	f := filepath.Join(t.TempDir(), "f")
	os.WriteFile(f, nil, 0o644)
	if _, err := Create(f, io.Discard, nil); err == nil {
		t.Error("Create of a file succeeded")
	}
	if _, err := Create(filepath.Join(t.TempDir(), "missing"), io.Discard, nil); err == nil {
		t.Error("Create of a missing folder succeeded")
	}
}

func TestRoundTrip(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src, map[string]string{
		"runagent.config.json": `{"agent_name":"x"}`,
		"main.py":              "def run(): pass\n",
		"bin/start":            "0755:#!/bin/sh\nexec python main.py\n",
		"pkg/__init__.py":      "",
		"pkg/data/big.bin":     strings.Repeat("0123456789", 100000),
		"pkg/__pycache__/x":    "cache",
		".gitignore":           "*.tmp\n",
		"scratch.tmp":          "",
	})
	b, sum := create(t, src)
	dest := filepath.Join(t.TempDir(), "agent")
	if err := Extract(bytes.NewReader(b), int64(len(b)), dest, Limits{}); err != nil {
		t.Fatal(err)
	}
	want := tree(t, src)
	delete(want, "pkg/__pycache__")
	delete(want, "pkg/__pycache__/x")
	delete(want, "scratch.tmp")
	for k, v := range want {
		if strings.HasPrefix(v, "d") { // directories are not stored; Extract makes them 0755
			want[k] = "drwxr-xr-x"
		}
	}
	assertTree(t, tree(t, dest), want)
	if sum.Files != 6 {
		t.Errorf("Summary.Files = %d, want 6", sum.Files)
	}
}
