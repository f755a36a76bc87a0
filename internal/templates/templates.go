// Package templates holds the agent templates built into the binary, the
// starting points of `runagent init`. Each is a complete agent folder under
// files/<name>/ whose runagent.config.json carries the all-zero agent_id
// (agentfolder.ZeroAgentID) for init to replace.
package templates

import (
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// all: keeps dotfiles such as .env.example.
//
//go:embed all:files
var files embed.FS

// descriptions says what each template is; every directory under files/ must
// have an entry (the tests check).
var descriptions = map[string]string{
	"default":   "a mock chat agent: no network, no API key (tags minimal, minimal_stream)",
	"showcase":  "one entrypoint per function shape: async, generators, errors, slow calls, crash",
	"langgraph": "a LangGraph graph on a fake chat model (tags chat, chat_stream, chat_tokens_stream)",
}

// Names lists the templates, "default" first, then by name.
func Names() []string {
	entries, _ := fs.ReadDir(files, "files")
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	if i := slices.Index(names, "default"); i > 0 {
		names = slices.Insert(slices.Delete(names, i, i+1), 0, "default")
	}
	return names
}

// Describe returns a one-line description of the template, "" for an
// unknown name.
func Describe(name string) string { return descriptions[name] }

// FS returns the files of the template, rooted at the agent folder.
func FS(name string) (fs.FS, error) {
	if !slices.Contains(Names(), name) {
		return nil, unknown(name)
	}
	return fs.Sub(files, path.Join("files", name))
}

// Write copies the template into destDir, creating it. It refuses a destDir
// that exists and is not an empty directory, so it never overwrites anything.
func Write(name, destDir string) error {
	src, err := FS(name)
	if err != nil {
		return err
	}
	if err := checkDest(destDir); err != nil {
		return err
	}
	if err := os.MkdirAll(destDir, 0o755); err != nil {
		return fmt.Errorf("create agent folder: %w", err)
	}
	return fs.WalkDir(src, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Name() == "__pycache__" {
			return fs.SkipDir // left by running a template in place
		}
		dst := filepath.Join(destDir, filepath.FromSlash(p))
		if d.IsDir() {
			if p == "." {
				return nil
			}
			return os.Mkdir(dst, 0o755)
		}
		return copyFile(src, p, dst)
	})
}

func checkDest(dir string) error {
	st, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s exists and is not a directory; choose another path for the new agent", dir)
	}
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Readdirnames(1); err != io.EOF {
		if err != nil {
			return err
		}
		return fmt.Errorf("%s is not empty; choose a new or empty folder for the new agent (nothing was written)", dir)
	}
	return nil
}

func copyFile(src fs.FS, p, dst string) error {
	in, err := src.Open(p)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func unknown(name string) error {
	return fmt.Errorf("there is no template %q; choose one of: %s", name, strings.Join(Names(), ", "))
}
