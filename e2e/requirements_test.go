package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The LangGraph template installs its pinned requirements from the package
// index into a cached virtualenv, then runs and streams end to end.
func TestLangGraphTemplate(t *testing.T) {
	if testing.Short() {
		t.Skip("installs LangGraph from the package index: skipped with -short")
	}
	dir, id := newAgent(t, "langgraph")
	s := serve(t, dir, id, serveOpts{cache: sharedCache, wait: 10 * time.Minute})
	if !strings.Contains(s.Logs(), "pip | ") && !strings.Contains(s.Logs(), "Using cached virtualenv") {
		t.Errorf("serve did not show pip's progress:\n%s", s.Logs())
	}

	got := s.result(t, "chat", nil, map[string]any{"message": "Hello there"})
	m, ok := got.(map[string]any)
	if !ok || m["answer"] == nil || m["answer"] == "" {
		t.Fatalf("chat = %#v", got)
	}

	values, last, _ := streamTag(t, s, "chat_stream", nil, map[string]any{"message": "Will it rain tomorrow?"})
	if last["status"] != "stream_completed" || len(values) < 2 {
		t.Fatalf("chat_stream: %d updates, last frame %v", len(values), last)
	}
	nodes := []string{}
	for _, v := range values {
		u, _ := v.(map[string]any)
		nodes = append(nodes, u["node"].(string))
	}
	if strings.Join(nodes, ",") != "classify,respond" {
		t.Fatalf("chat_stream updates came from nodes %v, want classify then respond", nodes)
	}

	tokens, last, _ := streamTag(t, s, "chat_tokens_stream", nil, map[string]any{"message": "what is langgraph"})
	if last["status"] != "stream_completed" || len(tokens) < 5 {
		t.Fatalf("chat_tokens_stream: %d tokens, last %v", len(tokens), last)
	}

	// A second serve of another LangGraph agent reuses the virtualenv.
	dir2, id2 := newAgent(t, "langgraph")
	s2 := serve(t, dir2, id2, serveOpts{cache: sharedCache, wait: 2 * time.Minute})
	if !strings.Contains(s2.Logs(), "Using cached virtualenv") {
		t.Fatalf("second serve did not reuse the virtualenv:\n%s", s2.Logs())
	}
}

// requirements.txt may name a local package path; a broken requirement stops
// serve with pip's explanation.
func TestRequirementsLocalPackageAndFailure(t *testing.T) {
	if testing.Short() {
		t.Skip("creates virtualenvs: skipped with -short")
	}
	dir, id := newAgent(t, "default")
	writeFiles(t, dir, map[string]string{
		"requirements.txt":                   "./vendor/shouter\n",
		"vendor/shouter/setup.py":            "from setuptools import setup\nsetup(name='shouter', version='1.0', packages=['shouter'])\n",
		"vendor/shouter/shouter/__init__.py": "def shout(s):\n    return s.upper() + '!'\n",
		"loud.py":                            "from shouter import shout\n\ndef loud(message):\n    return shout(message)\n",
	})
	addEntrypoint(t, dir, `{"file": "loud.py", "module": "loud", "tag": "loud"}`)
	s := serve(t, dir, id, serveOpts{wait: 5 * time.Minute})
	if got := s.result(t, "loud", []any{"hello"}, nil); got != "HELLO!" {
		t.Fatalf("loud = %#v\n%s", got, s.Logs())
	}
	s.Stop()

	bad, _ := newAgent(t, "default")
	writeFiles(t, bad, map[string]string{"requirements.txt": "runagent-no-such-package-e2e==9.9.9\n"})
	out, errOut, err := runCLI(t, t.TempDir(), "serve", bad, "--port", "0")
	if err == nil {
		t.Fatalf("serve with a missing package succeeded: %s", out)
	}
	if !contains(errOut, "requirements.txt failed", "runagent-no-such-package-e2e", "No matching distribution") {
		t.Fatalf("serve error does not explain the failed install:\n%s", errOut)
	}
}

func writeFiles(t testing.TB, root string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// addEntrypoint appends an entrypoint object to the agent's config.
func addEntrypoint(t testing.TB, dir, entry string) {
	t.Helper()
	p := filepath.Join(dir, "runagent.config.json")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, `"entrypoints": [`)
	if i < 0 {
		t.Fatalf("no entrypoints list in %s", s)
	}
	i += len(`"entrypoints": [`)
	s = s[:i] + "\n      " + entry + "," + s[i:]
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}
