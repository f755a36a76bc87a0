package runner

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/runagent-go/runagent/internal/agentfolder"
	"github.com/runagent-go/runagent/internal/runproto"
)

// InitFor is the INIT of a runner serving the agent in folder.
func InitFor(folder *agentfolder.Folder, threads int) runproto.Init {
	init := runproto.Init{AgentDir: folder.Dir, Env: folder.Env, Threads: threads}
	if folder.Config.AgentArchitecture == nil {
		return init
	}
	for _, ep := range folder.Config.AgentArchitecture.Entrypoints {
		ie := runproto.InitEntrypoint{Tag: ep.Tag, File: ep.File, Module: ep.Module,
			WebhookURL: ep.WebhookURL, Method: ep.Method, Timeout: ep.Timeout}
		for _, k := range ep.ExtractorKeys {
			ie.Extractor = append(ie.Extractor, [2]string{k, ep.Extractor[k]})
		}
		init.Entrypoints = append(init.Entrypoints, ie)
	}
	return init
}

// Environ is a runner's environment: base (nil: this process's), the
// agent's virtualenv (venv "" for none) in front of PATH, unbuffered UTF-8
// output, then the agent's env_vars, sorted so starts are reproducible.
func Environ(base []string, venv string, agentEnv map[string]string) []string {
	if base == nil {
		base = os.Environ()
	}
	out := append([]string(nil), base...)
	if venv != "" {
		path := ""
		for _, kv := range base {
			if v, ok := strings.CutPrefix(kv, "PATH="); ok {
				path = v
			}
		}
		out = append(out, "VIRTUAL_ENV="+venv, "PATH="+filepath.Join(venv, "bin")+string(os.PathListSeparator)+path)
	}
	out = append(out, "PYTHONUNBUFFERED=1", "PYTHONIOENCODING=utf-8")
	keys := make([]string, 0, len(agentEnv))
	for k := range agentEnv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		out = append(out, k+"="+agentEnv[k])
	}
	return out
}

// LoadErrors explains entrypoints that failed to import (READY's errors).
func LoadErrors(folder *agentfolder.Folder, errs map[string]string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "the agent in %s could not be loaded:", folder.Dir)
	for _, ep := range folder.Config.AgentArchitecture.Entrypoints {
		if msg, ok := errs[ep.Tag]; ok {
			fmt.Fprintf(&b, "\n  entrypoint %q (%s: %s): %s", ep.Tag, ep.File, ep.Module, msg)
		}
	}
	b.WriteString("\nFix the code or the entrypoint in " + folder.ConfigFile + "; a missing module usually belongs in requirements.txt.")
	return errors.New(b.String())
}
