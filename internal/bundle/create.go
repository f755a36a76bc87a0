package bundle

import (
	"archive/zip"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/go-git/go-git/v5/plumbing/format/gitignore"
)

// Summary describes a bundle written by Create.
type Summary struct {
	Files   int      // regular files stored
	Bytes   int64    // their uncompressed size
	Skipped []string // slash paths left out because of a symlink or special file, with reason, e.g. "data/link: symlink"
}

// modTime is stored for every entry so that the same folder always gives
// the same bytes (and a bundle hash that only changes with the content).
var modTime = time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)

// excludedAnywhere are names never bundled, whatever .gitignore says: VCS
// data, Python caches and virtualenvs, and local deployment state.
var excludedAnywhere = map[string]bool{
	".git":         true,
	"__pycache__":  true,
	".venv":        true,
	".deployments": true,
	".DS_Store":    true,
}

// excluded reports whether the fixed rules leave rel out. "venv" only counts
// at the top level, where a virtualenv lives; deeper it may be a package.
func excluded(rel []string) bool {
	name := rel[len(rel)-1]
	return excludedAnywhere[name] ||
		strings.HasSuffix(name, ".pyc") ||
		len(rel) == 1 && name == "venv"
}

// Create writes a zip of the agent folder dir to w. It honours .gitignore
// files (the root one and nested ones, git semantics, via go-git's gitignore
// package) and always leaves out .git/, __pycache__/, *.pyc, .venv/, venv/
// (only at top level), .deployments/ and .DS_Store. Entries use forward
// slashes, relative paths, regular files only, mode preserved (0644/0755
// style), deterministic order (sorted) and fixed modification time so the
// same folder gives the same bytes. progress (may be nil) is called after each
// file with the running totals.
func Create(dir string, w io.Writer, progress func(files int, bytes int64)) (Summary, error) {
	var sum Summary
	st, err := os.Stat(dir)
	if err != nil {
		return sum, err
	}
	if !st.IsDir() {
		return sum, fmt.Errorf("bundle: %s is not a directory", dir)
	}
	var files []string
	if err := walk(dir, nil, nil, &files, &sum.Skipped); err != nil {
		return sum, err
	}
	slices.Sort(files)
	slices.Sort(sum.Skipped)

	zw := zip.NewWriter(w)
	for _, rel := range files {
		// Fail here rather than have the server reject the upload.
		if _, reason := checkName(rel); reason != "" {
			return sum, fmt.Errorf("bundle: cannot store %q: %s", rel, reason)
		}
		n, err := addFile(zw, filepath.Join(dir, filepath.FromSlash(rel)), rel)
		if err != nil {
			return sum, err
		}
		sum.Files++
		sum.Bytes += n
		if progress != nil {
			progress(sum.Files, sum.Bytes)
		}
	}
	return sum, zw.Close()
}

// walk lists the files to bundle below dir/rel. patterns holds the
// .gitignore patterns of the enclosing directories, lowest priority first.
// Like git, it does not descend into an ignored directory, so a negation
// cannot re-include a file below one.
func walk(dir string, rel []string, patterns []gitignore.Pattern, files, skipped *[]string) error {
	abs := filepath.Join(dir, filepath.Join(rel...))
	ps, err := readIgnore(filepath.Join(abs, ".gitignore"), rel)
	if err != nil {
		return err
	}
	// Clip so that sibling directories never share an appended array.
	patterns = append(slices.Clip(patterns), ps...)
	m := gitignore.NewMatcher(patterns)

	des, err := os.ReadDir(abs)
	if err != nil {
		return err
	}
	for _, de := range des {
		p := append(slices.Clip(rel), de.Name())
		t := de.Type()
		if excluded(p) || m.Match(p, t.IsDir()) {
			continue
		}
		slash := strings.Join(p, "/")
		switch {
		case t.IsDir():
			if err := walk(dir, p, patterns, files, skipped); err != nil {
				return err
			}
		case t.IsRegular():
			*files = append(*files, slash)
		default:
			*skipped = append(*skipped, slash+": "+typeName(t))
		}
	}
	return nil
}

// readIgnore parses the .gitignore at file, if it is a regular file; domain
// is its directory relative to the bundle root.
func readIgnore(file string, domain []string) ([]gitignore.Pattern, error) {
	st, err := os.Lstat(file)
	if err != nil || !st.Mode().IsRegular() {
		// Absent, or a symlink git would not read either.
		return nil, nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var ps []gitignore.Pattern
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSuffix(line, "\r") // CRLF files
		if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
			continue
		}
		ps = append(ps, gitignore.ParsePattern(line, domain))
	}
	return ps, nil
}

// addFile stores one regular file and returns its size.
func addFile(zw *zip.Writer, abs, rel string) (int64, error) {
	f, err := os.OpenFile(abs, os.O_RDONLY|oNoFollow, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if !st.Mode().IsRegular() {
		return 0, fmt.Errorf("bundle: %s changed while bundling: no longer a regular file", rel)
	}
	perm := fs.FileMode(0o644)
	if st.Mode()&0o111 != 0 {
		perm = 0o755
	}
	fh := &zip.FileHeader{Name: rel, Method: zip.Deflate, Modified: modTime}
	fh.SetMode(perm)
	zf, err := zw.CreateHeader(fh)
	if err != nil {
		return 0, err
	}
	return io.Copy(zf, f)
}
