// Package mountinfo reads /proc/self/mountinfo: the mount points under a
// folder, and the octal escapes the kernel puts in its paths.
package mountinfo

import (
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Path is the mount table of this process's mount namespace.
const Path = "/proc/self/mountinfo"

// Under lists the mount points in the mountinfo text b that are dir or
// below it, sorted (so outermost first).
func Under(b []byte, dir string) []string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil
	}
	var points []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 5 {
			continue
		}
		p := Unescape(f[4])
		if p == abs || strings.HasPrefix(p, abs+"/") {
			points = append(points, p)
		}
	}
	sort.Strings(points)
	return points
}

// UnderNow is Under on this process's mount table now (nil without /proc).
func UnderNow(dir string) []string {
	b, err := os.ReadFile(Path)
	if err != nil {
		return nil
	}
	return Under(b, dir)
}

// Unescape undoes mountinfo's octal escapes (\040 for a space, \012 for a
// newline, ...).
func Unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
