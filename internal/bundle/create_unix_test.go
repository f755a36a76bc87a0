//go:build unix

package bundle

import (
	"path/filepath"
	"slices"
	"syscall"
	"testing"
)

func TestCreateSkipsNamedPipe(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"main.py": ""})
	if err := syscall.Mkfifo(filepath.Join(dir, "pipe"), 0o644); err != nil {
		t.Skip("mkfifo:", err)
	}
	b, sum := create(t, dir)
	if got := names(t, b); !slices.Equal(got, []string{"main.py"}) {
		t.Errorf("entries %q", got)
	}
	if want := []string{"pipe: named pipe"}; !slices.Equal(sum.Skipped, want) {
		t.Errorf("Skipped = %q, want %q", sum.Skipped, want)
	}
}
