package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestKeptTail(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		name, page, want string
	}{
		{"no page", "", ""},
		{"no marker", "# Benchmarks\n\nold results\n", ""},
		{"marker", "# Benchmarks\nold\n" + keptMarker + "\n## A/B\nrow\n", "\n" + keptMarker + "\n## A/B\nrow\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, tt.name+".md")
			if tt.page != "" {
				if err := os.WriteFile(path, []byte(tt.page), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if got := keptTail(path); got != tt.want {
				t.Errorf("keptTail = %q, want %q", got, tt.want)
			}
		})
	}
}
