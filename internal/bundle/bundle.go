// Package bundle builds and unpacks agent bundles: the zip of an agent folder
// that `runagent deploy` uploads, and its safe extraction on the server.
//
// Create runs on the client and decides what goes into a bundle (.gitignore
// rules, fixed exclusions, regular files only). Extract runs on the server and
// treats the bundle as hostile input: every entry is validated before anything
// is written, decompressed bytes are counted rather than taken from headers,
// and a rejected bundle leaves nothing on disk.
package bundle

import (
	"fmt"
	"path"
	"strings"
	"unicode"
)

// Error is a bundle rejected for what it contains; Entry names the zip entry
// at fault ("" if none).
type Error struct {
	Entry  string
	Reason string
}

func (e *Error) Error() string {
	if e.Entry == "" {
		return "bundle: " + e.Reason
	}
	return fmt.Sprintf("bundle entry %q: %s", e.Entry, e.Reason)
}

// checkName validates a zip entry name and returns its cleaned form, or a
// reason for rejecting it. Create uses it too, so that a client never builds
// a bundle the server would refuse.
func checkName(name string) (clean, reason string) {
	if name == "" {
		return "", "empty name"
	}
	for _, r := range name {
		if r == 0 {
			return "", "NUL character in name"
		}
		if unicode.IsControl(r) {
			return "", "control character in name"
		}
	}
	if strings.HasPrefix(name, "/") {
		return "", "absolute path"
	}
	if len(name) >= 2 && name[1] == ':' && isASCIILetter(name[0]) {
		return "", "absolute path (drive letter)"
	}
	if strings.Contains(name, `\`) {
		return "", "backslash in name"
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", "path leaves the bundle"
		}
	}
	clean = path.Clean(name)
	if clean == "." {
		return "", "empty name"
	}
	return clean, ""
}

func isASCIILetter(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}
