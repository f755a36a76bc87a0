package templates_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/runagent-go/runagent/internal/agentfolder"
	"github.com/runagent-go/runagent/internal/templates"
)

func TestNames(t *testing.T) {
	got := templates.Names()
	want := []string{"default", "langgraph", "showcase"}
	if !slices.Equal(got, want) {
		t.Errorf("Names() = %v, want %v", got, want)
	}
	for _, n := range got {
		if templates.Describe(n) == "" {
			t.Errorf("template %q has no description", n)
		}
	}
	if templates.Describe("nope") != "" {
		t.Error(`Describe("nope") is not empty`)
	}
}

// wantTags are the entrypoints each template must offer.
var wantTags = map[string][]string{
	"default":   {"minimal", "minimal_stream"},
	"langgraph": {"chat", "chat_stream", "chat_tokens_stream"},
	"showcase": {
		"echo", "add", "greet", "rich", "fail", "slow", "slow_async", "getenv", "crash", "method",
		"count_stream", "count_async_stream", "list_stream", "list_async_stream", "fail_stream",
		"tick_stream", "tick_async_stream",
	},
}

func TestEveryTemplateLoads(t *testing.T) {
	for _, name := range templates.Names() {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "agent")
			if err := templates.Write(name, dir); err != nil {
				t.Fatal(err)
			}
			f, err := agentfolder.Load(dir)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			c := f.Config
			if c.AgentID != agentfolder.ZeroAgentID {
				t.Errorf("agent_id = %q, want the all-zero placeholder", c.AgentID)
			}
			if c.Template != name {
				t.Errorf("template = %q, want %q", c.Template, name)
			}
			if c.CreatedAt != "2025-06-25 13:42:03" {
				t.Errorf("created_at = %q", c.CreatedAt)
			}
			ts := c.TemplateSource
			if ts.RepoURL == "" || ts.Author == "" || ts.Path != "internal/templates/files/"+name {
				t.Errorf("template_source = %+v", ts)
			}
			var tags []string
			for _, e := range c.AgentArchitecture.Entrypoints {
				tags = append(tags, e.Tag)
			}
			if !slices.Equal(tags, wantTags[name]) {
				t.Errorf("tags = %v, want %v", tags, wantTags[name])
			}
			// The only warning expected is the placeholder agent_id.
			for _, w := range f.Warnings {
				if !strings.Contains(w, "all-zero placeholder") {
					t.Errorf("warning: %s", w)
				}
			}
			if _, err := os.Stat(filepath.Join(dir, "README.md")); err != nil {
				t.Errorf("no README.md: %v", err)
			}

			// After init's WriteAgentID the folder loads without warnings.
			const id = "0b7e0c7c-1f2d-4e4b-9a8f-3c2d1e0f9a8b"
			if err := agentfolder.WriteAgentID(dir, id); err != nil {
				t.Fatal(err)
			}
			f, err = agentfolder.Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			if f.Config.AgentID != id || len(f.Warnings) != 0 {
				t.Errorf("after WriteAgentID: agent_id %q, warnings %q", f.Config.AgentID, f.Warnings)
			}
		})
	}
}

func TestTemplateDetails(t *testing.T) {
	dir := t.TempDir()
	if err := templates.Write("default", dir); err != nil {
		t.Fatal(err)
	}
	// all: in the embed pattern keeps dotfiles.
	if _, err := os.Stat(filepath.Join(dir, ".env.example")); err != nil {
		t.Errorf(".env.example missing: %v", err)
	}
	main, err := os.ReadFile(filepath.Join(dir, "main.py"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(main), "from .mock_llm import MockLLM") {
		t.Error("default main.py does not import its sibling module relatively")
	}

	lg := t.TempDir()
	if err := templates.Write("langgraph", lg); err != nil {
		t.Fatal(err)
	}
	req, err := os.ReadFile(filepath.Join(lg, "requirements.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, pkg := range []string{"langgraph==", "langchain-core=="} {
		if !strings.Contains(string(req), pkg) {
			t.Errorf("requirements.txt does not pin %s:\n%s", pkg, req)
		}
	}
}

func TestWriteRefuses(t *testing.T) {
	// A non-empty folder.
	dir := t.TempDir()
	keep := filepath.Join(dir, "mine.txt")
	if err := os.WriteFile(keep, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := templates.Write("default", dir)
	if err == nil || !strings.Contains(err.Error(), "is not empty") {
		t.Errorf("err = %v, want a not-empty error", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "main.py")); !os.IsNotExist(err) {
		t.Error("Write wrote into a non-empty folder")
	}

	// A file in the way.
	if err := templates.Write("default", keep); err == nil || !strings.Contains(err.Error(), "is not a directory") {
		t.Errorf("err = %v, want a not-a-directory error", err)
	}

	// An unknown template.
	if err := templates.Write("nope", filepath.Join(dir, "x")); err == nil || !strings.Contains(err.Error(), `there is no template "nope"; choose one of: default, langgraph, showcase`) {
		t.Errorf("err = %v", err)
	}

	// An existing empty folder is fine.
	empty := t.TempDir()
	if err := templates.Write("showcase", empty); err != nil {
		t.Errorf("Write into an empty folder: %v", err)
	}
}
