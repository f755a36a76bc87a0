package sandbox

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// buildView makes dir a view of agentDir in which every mount's target is
// a symlink to its source and everything else a symlink to the agent's own
// file: the process driver's stand-in for bind mounts, which a plain
// process cannot have.
func buildView(dir, agentDir string, mounts []Mount) error {
	targets := map[string]string{}
	for _, m := range mounts {
		targets[path.Clean(m.Target)] = m.Source
	}
	if err := linkTree(dir, agentDir, "", targets); err != nil {
		return fmt.Errorf("sandbox: the agent folder's view with its persistent folders: %w", err)
	}
	return nil
}

// linkTree links the entries of src (at rel in the agent folder) into
// dst, with the targets at rel or below it, whether src has them or not.
func linkTree(dst, src, rel string, targets map[string]string) error {
	names := map[string]bool{}
	entries, err := os.ReadDir(src)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	for _, e := range entries {
		names[e.Name()] = true
	}
	for t := range targets {
		rest, ok := t, rel == ""
		if !ok {
			rest, ok = strings.CutPrefix(t, rel+"/")
		}
		if ok {
			first, _, _ := strings.Cut(rest, "/")
			names[first] = true
		}
	}
	for name := range names {
		r := path.Join(rel, name)
		switch {
		case targets[r] != "":
			err = os.Symlink(targets[r], filepath.Join(dst, name))
		case under(r, targets):
			if err = os.Mkdir(filepath.Join(dst, name), 0o755); err == nil {
				err = linkTree(filepath.Join(dst, name), filepath.Join(src, name), r, targets)
			}
		default:
			err = os.Symlink(filepath.Join(src, name), filepath.Join(dst, name))
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// under reports whether a target lies below r.
func under(r string, targets map[string]string) bool {
	for t := range targets {
		if strings.HasPrefix(t, r+"/") {
			return true
		}
	}
	return false
}
