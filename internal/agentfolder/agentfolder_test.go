package agentfolder_test

import (
	"encoding/json"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/agentfolder"
	"github.com/runagent-go/runagent/internal/domain"
)

const testID = "6f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f"

func TestLoadValid(t *testing.T) {
	tests := []struct {
		dir        string
		configFile string
		check      func(t *testing.T, f *agentfolder.Folder)
	}{
		{"valid-json", agentfolder.ConfigJSON, func(t *testing.T, f *agentfolder.Folder) {
			c := f.Config
			eq(t, "AgentName", c.AgentName, "Valid JSON Agent")
			eq(t, "Framework", c.Framework, "langgraph")
			eq(t, "AgentID", c.AgentID, testID)
			eq(t, "CreatedAt", c.CreatedAt, "2025-06-25 13:42:03")
			eq(t, "Created", c.Created, time.Date(2025, 6, 25, 13, 42, 3, 0, time.UTC))
			eq(t, "TemplateSource", c.TemplateSource, agentfolder.TemplateSource{RepoURL: "https://example.com/repo.git", Author: "tester", Path: "agents/x"})
			eps := c.AgentArchitecture.Entrypoints
			if len(eps) != 2 {
				t.Fatalf("got %d entrypoints, want 2", len(eps))
			}
			eq(t, "ep0", eps[0], domain.Entrypoint{File: "main.py", Module: "run", Tag: "chat", Extractor: map[string]string{"answer": "$.answer"}, ExtractorKeys: []string{"answer"}})
			eq(t, "ep1", eps[1], domain.Entrypoint{File: "pkg/stream.py", Module: "app.stream", Tag: "chat_stream", Extractor: map[string]string{}})
			eq(t, "ep0.Streaming", eps[0].Streaming(), false)
			eq(t, "ep1.Streaming", eps[1].Streaming(), true)
			// .env wins over env_vars.
			eq(t, "Env", f.Env, map[string]string{"MODE": "dotenv", "ONLY_CONFIG": "1", "ONLY_DOTENV": "quoted value"})
			eq(t, "EnvVars", c.EnvVars, map[string]string{"MODE": "config", "ONLY_CONFIG": "1"})
			eq(t, "AuthSettings", c.AuthSettings, map[string]any{"type": "api_key"})
			eq(t, "PersistentFolders", c.PersistentFolders, []string{"data", "cache/db"})
			eq(t, "Metadata", c.Metadata, map[string]any{"owner": "qa", "n": 3.0})
			eq(t, "RawConfig.future_field", f.RawConfig["future_field"], any(true))
			hasWarning(t, f, `runagent.config.json: unknown field "future_field" is ignored`)
			hasWarning(t, f, ".env: MODE overrides env_vars.MODE")
			if ep, ok := c.Entrypoint("chat_stream"); !ok || ep.Module != "app.stream" {
				t.Errorf("Entrypoint(chat_stream) = %+v, %v", ep, ok)
			}
			if _, ok := c.Entrypoint("nope"); ok {
				t.Error("Entrypoint(nope) found")
			}
		}},
		{"valid-yaml", agentfolder.ConfigYAML, func(t *testing.T, f *agentfolder.Folder) {
			eq(t, "AgentName", f.Config.AgentName, "Valid YAML Agent")
			eq(t, "Version", f.Config.Version, "1.0")
			eq(t, "CreatedAt", f.Config.CreatedAt, "2025-06-25T13:42:03.123456+02:00")
			eq(t, "Created", f.Config.Created.UTC(), time.Date(2025, 6, 25, 11, 42, 3, 123456000, time.UTC))
			eq(t, "tags", tags(f), []string{"minimal", "minimal_stream"})
			eq(t, "AuthSettings", f.Config.AuthSettings, map[string]any{"type": "none"})
			eq(t, "Env", f.Env, map[string]string{})
			eq(t, "Warnings", len(f.Warnings), 0)
		}},
		{"valid-yml", agentfolder.ConfigYML, func(t *testing.T, f *agentfolder.Folder) {
			// Unquoted in YAML, yet kept as written.
			eq(t, "CreatedAt", f.Config.CreatedAt, "2025-06-25 13:42:03")
			eq(t, "RawConfig.created_at", f.RawConfig["created_at"], any("2025-06-25 13:42:03"))
			eq(t, "AgentID", f.Config.AgentID, agentfolder.ZeroAgentID)
			if f.Config.AgentArchitecture != nil {
				t.Errorf("AgentArchitecture = %+v, want nil", f.Config.AgentArchitecture)
			}
			hasWarning(t, f, "agent_id: is the all-zero placeholder")
			hasWarning(t, f, "agent_architecture: no entrypoints")
		}},
		{"both", agentfolder.ConfigJSON, func(t *testing.T, f *agentfolder.Folder) {
			eq(t, "AgentName", f.Config.AgentName, "Both Agent")
			hasWarning(t, f, "runagent.config.yaml: ignored, because runagent.config.json is read instead")
		}},
		{"webhook", agentfolder.ConfigJSON, func(t *testing.T, f *agentfolder.Folder) {
			eps := f.Config.AgentArchitecture.Entrypoints
			eq(t, "ep0", eps[0], domain.Entrypoint{Tag: "flow", WebhookURL: "https://n8n.example.com/webhook/abc", Method: "POST", Timeout: 30, Extractor: map[string]string{}})
			eq(t, "ep1.Timeout", eps[1].Timeout, 90)
			eq(t, "ep1.Webhook", eps[1].Webhook(), true)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.dir, func(t *testing.T) {
			f, err := agentfolder.Load(filepath.Join("testdata", tt.dir))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			abs, _ := filepath.Abs(filepath.Join("testdata", tt.dir))
			abs, _ = filepath.EvalSymlinks(abs)
			eq(t, "Dir", f.Dir, abs)
			eq(t, "ConfigFile", f.ConfigFile, tt.configFile)
			tt.check(t, f)
		})
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		dir      string
		exact    string   // the whole Error(), when set
		contains []string // lines the error must have
		count    int      // number of problems, when set
	}{
		{dir: "syntax-json", exact: `runagent.config.json:5:1: invalid character '}' looking for beginning of object key string`},
		{dir: "syntax-yaml", exact: `runagent.config.yaml:5: mapping values are not allowed in this context`},
		{dir: "bad-fields", exact: strings.Join([]string{
			`runagent.config.json: framework: "lang-graph" is not a known framework; expected one of default, ag2, agno, autogen, crewai, langchain, langgraph, letta, llamaindex, openai, n8n, parlant, openclaw, picoclaw, zeroclaw (did you mean "langgraph"?)`,
			`runagent.config.json: version: expected a string, got number`,
			`runagent.config.json: created_at: "yesterday" is not a date and time; expected "2025-06-25 13:42:03" or ISO 8601 like "2025-06-25T13:42:03Z"`,
			`runagent.config.json: template_source.author: expected a string, got number`,
			`runagent.config.json: template_source.path: missing; expected a string`,
			"runagent.config.json: agent_id: \"abc\" is not a UUID; expected the form 00000000-0000-0000-0000-000000000000 (run `runagent init` to get a fresh one)",
			`runagent.config.json: env_vars.PORT: expected a string, got number`,
			`runagent.config.json: auth_settings: expected an object, got string`,
			`runagent.config.json: persistent_folders[1]: "../outside" is outside the agent folder`,
			`runagent.config.json: persistent_folders[2]: "/abs" is an absolute path; expected a path relative to the agent folder`,
			`runagent.config.json: metadata: expected an object, got array`,
		}, "\n")},
		{dir: "missing-fields", count: 7, contains: []string{
			"runagent.config.yaml: description: missing; expected a string",
			"runagent.config.yaml: framework: missing; expected a string",
			"runagent.config.yaml: created_at: missing; expected a string",
			"runagent.config.yaml: template_source: missing; expected an object with repo_url, author and path",
			"runagent.config.yaml: agent_id: missing; expected a string",
		}},
		{dir: "bad-entrypoints", count: 13, contains: []string{
			`runagent.config.json: agent_architecture.entrypoints[1].tag: duplicate tag "chat" (first used by entrypoints[0])`,
			`agent_architecture.entrypoints[2].module: missing; expected a string`,
			`agent_architecture.entrypoints[2].tag: "no module" has characters other than letters, digits, '_', '-' and '.'`,
			`agent_architecture.entrypoints[3].file: "../escape.py" is outside the agent folder`,
			`agent_architecture.entrypoints[4].file: "/etc/passwd.py" is an absolute path`,
			`agent_architecture.entrypoints[5].file: "notes.txt" is not a Python file; expected a name ending in .py`,
			`agent_architecture.entrypoints[6].file: "missing.py" does not exist in the agent folder`,
			`agent_architecture.entrypoints[7].file: "pkg.py" is a directory`,
			`agent_architecture.entrypoints[8].module: "app..invoke" is not a Python attribute path`,
			`agent_architecture.entrypoints[8].extractor.a: expected a JSONPath string, got number`,
			`agent_architecture.entrypoints[9].webhook_url: webhook entrypoints need framework n8n; the framework is "default"`,
			`agent_architecture.entrypoints[9].method: "put" is not a webhook method; expected post or get`,
			`agent_architecture.entrypoints[10]: expected an object, got string`,
		}},
		{dir: "bad-dotenv", exact: ".env:3: unterminated quoted value"},
		{dir: "empty", contains: []string{"no agent config file in ", "runagent.config.json", "runagent.config.yaml", "runagent.config.yml", "runagent init"}},
		{dir: "no-such-folder", contains: []string{"no-such-folder does not exist"}},
	}
	for _, tt := range tests {
		t.Run(tt.dir, func(t *testing.T) {
			f, err := agentfolder.Load(filepath.Join("testdata", tt.dir))
			if err == nil {
				t.Fatalf("Load succeeded: %+v", f)
			}
			if f != nil {
				t.Errorf("Load returned a folder with its error")
			}
			msg := err.Error()
			if tt.exact != "" && msg != tt.exact {
				t.Errorf("error:\n%s\nwant:\n%s", msg, tt.exact)
			}
			for _, s := range tt.contains {
				if !strings.Contains(msg, s) {
					t.Errorf("error does not contain %q:\n%s", s, msg)
				}
			}
			if tt.count > 0 {
				var ve *agentfolder.ValidationError
				if !errors.As(err, &ve) {
					t.Fatalf("error is %T, want *ValidationError", err)
				}
				if len(ve.Problems) != tt.count {
					t.Errorf("got %d problems, want %d:\n%s", len(ve.Problems), tt.count, msg)
				}
				if strings.Count(msg, "\n") != tt.count-1 {
					t.Errorf("want one problem per line:\n%s", msg)
				}
			}
		})
	}
}

func TestNoConfigIsErrNoConfig(t *testing.T) {
	_, err := agentfolder.Load("testdata/empty")
	if !errors.Is(err, agentfolder.ErrNoConfig) {
		t.Errorf("err = %v, want ErrNoConfig", err)
	}
}

func TestDotenvNeverEchoesValues(t *testing.T) {
	_, err := agentfolder.Load("testdata/bad-dotenv")
	if err == nil || strings.Contains(err.Error(), "top secret") {
		t.Errorf("err = %v; want an error without the file's values", err)
	}
}

// baseConfig is a valid config with one entrypoint in main.py.
func baseConfig() map[string]any {
	return map[string]any{
		"agent_name":      "Test Agent",
		"description":     "d",
		"framework":       "default",
		"template":        "default",
		"version":         "1.0.0",
		"created_at":      "2025-06-25 13:42:03",
		"template_source": map[string]any{"repo_url": "r", "author": "a", "path": "p"},
		"agent_id":        testID,
		"agent_architecture": map[string]any{"entrypoints": []any{
			map[string]any{"file": "main.py", "module": "run", "tag": "chat"},
		}},
	}
}

// writeAgent creates an agent folder in a temp dir from cfg, with main.py.
func writeAgent(t *testing.T, cfg map[string]any) string {
	t.Helper()
	dir := t.TempDir()
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, agentfolder.ConfigJSON), string(b))
	writeFile(t, filepath.Join(dir, "main.py"), "def run(message):\n    return message\n")
	return dir
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func entrypoints(eps ...map[string]any) map[string]any {
	list := make([]any, len(eps))
	for i, e := range eps {
		list[i] = e
	}
	return map[string]any{"entrypoints": list}
}

func TestLoadFieldCases(t *testing.T) {
	py := func(tag string) map[string]any { return map[string]any{"file": "main.py", "module": "run", "tag": tag} }
	hook := func(tag string) map[string]any {
		return map[string]any{"webhook_url": "https://h.example.com/x", "method": "post", "tag": tag}
	}
	tests := []struct {
		name   string
		change func(m map[string]any)
		want   string // "" when the folder is valid
	}{
		{"created_at ISO with T", func(m map[string]any) { m["created_at"] = "2025-06-25T13:42:03" }, ""},
		{"created_at ISO with Z", func(m map[string]any) { m["created_at"] = "2025-06-25T13:42:03Z" }, ""},
		{"created_at with fraction", func(m map[string]any) { m["created_at"] = "2025-06-25 13:42:03.123456" }, ""},
		{"created_at with offset", func(m map[string]any) { m["created_at"] = "2025-06-25T13:42:03.5+05:30" }, ""},
		{"created_at Python isoformat", func(m map[string]any) { m["created_at"] = "2025-06-25T13:42:03.123456+00:00" }, ""},
		{"created_at date only", func(m map[string]any) { m["created_at"] = "2025-06-25" }, ""},
		{"created_at US format", func(m map[string]any) { m["created_at"] = "06/25/2025" }, `created_at: "06/25/2025" is not a date and time`},
		{"created_at number", func(m map[string]any) { m["created_at"] = 1750858923 }, "created_at: expected a string, got number"},
		{"framework unknown", func(m map[string]any) { m["framework"] = "pytorch" }, `framework: "pytorch" is not a known framework; expected one of default, ag2, agno`},
		{"framework case", func(m map[string]any) { m["framework"] = "LangGraph" }, `(did you mean "langgraph"?)`},
		{"framework openclaw", func(m map[string]any) { m["framework"] = "openclaw" }, ""},
		{"agent_id braces", func(m map[string]any) { m["agent_id"] = "{" + testID + "}" }, "is not a UUID"},
		{"agent_id number", func(m map[string]any) { m["agent_id"] = 5 }, "agent_id: expected a string, got number"},
		{"agent_name empty", func(m map[string]any) { m["agent_name"] = " " }, "agent_name: is empty"},
		{"agent_name null", func(m map[string]any) { m["agent_name"] = nil }, "agent_name: expected a string, got null"},
		{"template_source string", func(m map[string]any) { m["template_source"] = "x" }, "template_source: expected an object with repo_url, author and path, got string"},
		{"env_vars bool", func(m map[string]any) { m["env_vars"] = map[string]any{"DEBUG": true} }, "env_vars.DEBUG: expected a string, got boolean"},
		{"env_vars odd key", func(m map[string]any) { m["env_vars"] = map[string]any{"A=B": "x"} }, `env_vars["A=B"]: "A=B" is not a usable environment variable name`},
		{"env_vars array", func(m map[string]any) { m["env_vars"] = []any{"A=1"} }, "env_vars: expected an object, got array"},
		{"auth_settings type number", func(m map[string]any) { m["auth_settings"] = map[string]any{"type": 1} }, "auth_settings.type: expected a string, got number"},
		{"persistent_folders string", func(m map[string]any) { m["persistent_folders"] = "data" }, "persistent_folders: expected an array of folder paths, got string"},
		{"architecture null", func(m map[string]any) { m["agent_architecture"] = nil }, ""},
		{"architecture without entrypoints", func(m map[string]any) { m["agent_architecture"] = map[string]any{} }, "agent_architecture.entrypoints: missing"},
		{"entrypoints object", func(m map[string]any) { m["agent_architecture"] = map[string]any{"entrypoints": map[string]any{}} }, "agent_architecture.entrypoints: expected an array of entrypoints, got object"},
		{"tag empty", func(m map[string]any) { m["agent_architecture"] = entrypoints(py("")) }, "entrypoints[0].tag: is empty"},
		{"tag missing", func(m map[string]any) {
			m["agent_architecture"] = entrypoints(map[string]any{"file": "main.py", "module": "run"})
		}, "entrypoints[0].tag: missing; expected a string"},
		{"tag slash", func(m map[string]any) { m["agent_architecture"] = entrypoints(py("a/b")) }, `entrypoints[0].tag: "a/b" has characters other than`},
		{"tag too long", func(m map[string]any) { m["agent_architecture"] = entrypoints(py(strings.Repeat("x", 129))) }, "is 129 characters long; expected at most 128"},
		{"tags dashes and dots", func(m map[string]any) { m["agent_architecture"] = entrypoints(py("v1.chat-x_stream"), py("_private")) }, ""},
		{"duplicate tag later", func(m map[string]any) { m["agent_architecture"] = entrypoints(py("a"), py("b"), py("a")) }, `entrypoints[2].tag: duplicate tag "a" (first used by entrypoints[0])`},
		{"file empty", func(m map[string]any) {
			m["agent_architecture"] = entrypoints(map[string]any{"file": "", "module": "run", "tag": "t"})
		}, "entrypoints[0].file: is empty"},
		{"file number", func(m map[string]any) {
			m["agent_architecture"] = entrypoints(map[string]any{"file": 3, "module": "run", "tag": "t"})
		}, "entrypoints[0].file: expected a string, got number"},
		{"module unicode identifier", func(m map[string]any) {
			m["agent_architecture"] = entrypoints(map[string]any{"file": "main.py", "module": "app.répondre", "tag": "t"})
		}, ""},
		{"module starting with digit", func(m map[string]any) {
			m["agent_architecture"] = entrypoints(map[string]any{"file": "main.py", "module": "1run", "tag": "t"})
		}, `entrypoints[0].module: "1run" is not a Python attribute path`},
		{"extractor string", func(m map[string]any) {
			e := py("t")
			e["extractor"] = "$.a"
			m["agent_architecture"] = entrypoints(e)
		}, "entrypoints[0].extractor: expected an object, got string"},
		{"extractor null", func(m map[string]any) {
			e := py("t")
			e["extractor"] = nil
			m["agent_architecture"] = entrypoints(e)
		}, ""},
		{"webhook with n8n", func(m map[string]any) {
			m["framework"] = "n8n"
			m["agent_architecture"] = entrypoints(hook("flow"))
		}, ""},
		{"webhook without n8n", func(m map[string]any) { m["agent_architecture"] = entrypoints(hook("flow")) }, `entrypoints[0].webhook_url: webhook entrypoints need framework n8n; the framework is "default"`},
		{"python entrypoint with n8n", func(m map[string]any) { m["framework"] = "n8n" }, "entrypoints[0]: framework n8n takes webhook entrypoints"},
		{"webhook bad url", func(m map[string]any) {
			m["framework"] = "n8n"
			e := hook("flow")
			e["webhook_url"] = "ftp://x"
			m["agent_architecture"] = entrypoints(e)
		}, `entrypoints[0].webhook_url: "ftp://x" is not an http(s) URL`},
		{"webhook missing method", func(m map[string]any) {
			m["framework"] = "n8n"
			e := hook("flow")
			delete(e, "method")
			m["agent_architecture"] = entrypoints(e)
		}, "entrypoints[0].method: missing; expected a string"},
		{"webhook fractional timeout", func(m map[string]any) {
			m["framework"] = "n8n"
			e := hook("flow")
			e["timeout"] = 1.5
			m["agent_architecture"] = entrypoints(e)
		}, "entrypoints[0].timeout: 1.5 is not a whole number of seconds"},
		{"webhook string timeout", func(m map[string]any) {
			m["framework"] = "n8n"
			e := hook("flow")
			e["timeout"] = "30"
			m["agent_architecture"] = entrypoints(e)
		}, "entrypoints[0].timeout: expected a number of seconds, got string"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := baseConfig()
			tt.change(m)
			_, err := agentfolder.Load(writeAgent(t, m))
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Load: %v", err)
			case tt.want != "" && err == nil:
				t.Errorf("Load succeeded, want an error containing %q", tt.want)
			case tt.want != "" && !strings.Contains(err.Error(), tt.want):
				t.Errorf("error does not contain %q:\n%v", tt.want, err)
			}
		})
	}
}

func TestLoadReportsEveryProblem(t *testing.T) {
	m := baseConfig()
	m["version"] = 2
	m["agent_id"] = "abc"
	m["agent_architecture"] = entrypoints(map[string]any{"file": "missing.py", "module": "run", "tag": "chat"})
	dir := writeAgent(t, m)
	writeFile(t, filepath.Join(dir, ".env"), "OK=1\nBAD-NAME=2\n")
	_, err := agentfolder.Load(dir)
	want := strings.Join([]string{
		"runagent.config.json: version: expected a string, got number",
		"runagent.config.json: agent_id: \"abc\" is not a UUID; expected the form 00000000-0000-0000-0000-000000000000 (run `runagent init` to get a fresh one)",
		`runagent.config.json: agent_architecture.entrypoints[0].file: "missing.py" does not exist in the agent folder`,
		`.env:2: unexpected character "-" in variable name`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Errorf("error:\n%v\nwant:\n%s", err, want)
	}
}

func TestDecodeSyntax(t *testing.T) {
	tests := []struct {
		name, data, want string
	}{
		{"runagent.config.json", "", "runagent.config.json: the file is empty"},
		{"runagent.config.json", "  \n", "runagent.config.json: the file is empty"},
		{"runagent.config.json", "[1, 2]", "runagent.config.json: expected an object at the top level, got array"},
		{"runagent.config.json", "{\n  \"a\": 1\n} trailing", "runagent.config.json:3:3: invalid character 't' after top-level value"},
		{"runagent.config.json", "{\n  \"a\": \"é\" x\n}", "runagent.config.json:2:12: invalid character 'x' after object key:value pair"},
		{"runagent.config.json", "{\"a\": ", "runagent.config.json:1:6: unexpected end of JSON input"},
		{"runagent.config.yaml", "a: 1\na: 2\n", `runagent.config.yaml:2:1: key "a" is defined twice (first on line 1)`},
		{"runagent.config.yaml", "- 1\n- 2\n", "runagent.config.yaml: expected an object at the top level, got array"},
		{"runagent.config.yml", "a: [1, 2\n", "runagent.config.yml:1: did not find expected ',' or ']'"},
		{"runagent.config.yaml", "# only a comment\n", "runagent.config.yaml: the file is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.data, func(t *testing.T) {
			_, _, _, err := agentfolder.Decode(tt.name, []byte(tt.data))
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("error = %v, want prefix %q", err, tt.want)
			}
		})
	}
}

func TestDecodeYAMLFeatures(t *testing.T) {
	data := `
base: &src
  repo_url: r
  author: a
agent_name: "YAML"
description: |
  two
  lines
framework: default
template: t
version: '1'
created_at: 2025-06-25T13:42:03Z
template_source:
  <<: *src
  path: p
agent_id: ` + testID + `
metadata:
  nan: .nan
  n: 3
`
	cfg, raw, warnings, err := agentfolder.Decode(agentfolder.ConfigYAML, []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "Description", cfg.Description, "two\nlines\n")
	eq(t, "TemplateSource", cfg.TemplateSource, agentfolder.TemplateSource{RepoURL: "r", Author: "a", Path: "p"})
	eq(t, "CreatedAt", cfg.CreatedAt, "2025-06-25T13:42:03Z")
	eq(t, "Metadata", cfg.Metadata, map[string]any{"nan": "NaN", "n": 3.0})
	if _, err := json.Marshal(raw); err != nil {
		t.Errorf("RawConfig does not marshal: %v", err)
	}
	eq(t, "warnings", warnings, []string{
		"runagent.config.yaml: agent_architecture: no entrypoints; add agent_architecture.entrypoints to make the agent callable",
		`runagent.config.yaml: unknown field "base" is ignored`,
	})
}

func TestSymlinks(t *testing.T) {
	root := t.TempDir()
	agent := filepath.Join(root, "agent")
	m := baseConfig()
	m["agent_architecture"] = entrypoints(
		map[string]any{"file": "link.py", "module": "run", "tag": "file_link"},
		map[string]any{"file": "sub/outside.py", "module": "run", "tag": "dir_link"},
		map[string]any{"file": "inner.py", "module": "run", "tag": "inner_link"},
		map[string]any{"file": "dangling.py", "module": "run", "tag": "dangling"},
	)
	b, _ := json.Marshal(m)
	writeFile(t, filepath.Join(agent, agentfolder.ConfigJSON), string(b))
	writeFile(t, filepath.Join(agent, "real.py"), "def run(): pass\n")
	writeFile(t, filepath.Join(root, "outside.py"), "def run(): pass\n")
	for link, target := range map[string]string{
		"link.py":     filepath.Join(root, "outside.py"), // absolute target outside
		"sub":         "..",                              // a folder link leading out
		"inner.py":    "real.py",                         // stays inside: fine
		"dangling.py": "nowhere.py",
	} {
		if err := os.Symlink(target, filepath.Join(agent, link)); err != nil {
			t.Skipf("symlinks unavailable: %v", err)
		}
	}
	_, err := agentfolder.Load(agent)
	if err == nil {
		t.Fatal("Load succeeded")
	}
	var ve *agentfolder.ValidationError
	if !errors.As(err, &ve) || len(ve.Problems) != 3 {
		t.Fatalf("want 3 problems, got:\n%v", err)
	}
	resolvedRoot, _ := filepath.EvalSymlinks(root)
	for _, want := range []string{
		`runagent.config.json: agent_architecture.entrypoints[0].file: "link.py" resolves to ` + filepath.Join(resolvedRoot, "outside.py") + ", outside the agent folder",
		`agent_architecture.entrypoints[1].file: "sub/outside.py" resolves to ` + filepath.Join(resolvedRoot, "outside.py") + ", outside the agent folder",
		`agent_architecture.entrypoints[3].file: "dangling.py" is a symlink to something that does not exist`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not contain %q:\n%v", want, err)
		}
	}

	// The folder itself may be reached through a symlink: Dir is resolved.
	m["agent_architecture"] = entrypoints(map[string]any{"file": "inner.py", "module": "run", "tag": "t"})
	b, _ = json.Marshal(m)
	writeFile(t, filepath.Join(agent, agentfolder.ConfigJSON), string(b))
	viaLink := filepath.Join(root, "agent-link")
	if err := os.Symlink(agent, viaLink); err != nil {
		t.Fatal(err)
	}
	f, err := agentfolder.Load(viaLink)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want, _ := filepath.EvalSymlinks(agent)
	eq(t, "Dir", f.Dir, want)
}

func TestDotenv(t *testing.T) {
	dir := writeAgent(t, func() map[string]any {
		m := baseConfig()
		m["env_vars"] = map[string]any{"A": "from config", "B": "from config"}
		return m
	}())
	writeFile(t, filepath.Join(dir, ".env"), "# comment\r\nA=from dotenv\r\nexport C='single quoted'\r\nD=\"multi\nline\"\nE=${C}-expanded\n")
	f, err := agentfolder.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "Env", f.Env, map[string]string{
		"A": "from dotenv", "B": "from config", "C": "single quoted", "D": "multi\nline", "E": "single quoted-expanded",
	})
	hasWarning(t, f, ".env: A overrides env_vars.A of runagent.config.json")

	writeFile(t, filepath.Join(dir, ".env"), "A=1\n\n# x\nB@C=2\n")
	_, err = agentfolder.Load(dir)
	if err == nil || err.Error() != `.env:4: unexpected character "@" in variable name` {
		t.Errorf("err = %v", err)
	}
}

func TestFrameworks(t *testing.T) {
	fw := agentfolder.Frameworks()
	if len(fw) != 15 || fw[0] != "default" || !slices.Contains(fw, "n8n") {
		t.Errorf("Frameworks() = %v", fw)
	}
	fw[0] = "changed"
	if !agentfolder.KnownFramework("default") || agentfolder.KnownFramework("Default") {
		t.Error("KnownFramework is wrong or Frameworks() shares its slice")
	}
}

func TestParseCreatedAt(t *testing.T) {
	utc := time.Date(2025, 6, 25, 13, 42, 3, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Time
		ok   bool
	}{
		{"2025-06-25 13:42:03", utc, true},
		{"2025-06-25T13:42:03", utc, true},
		{"2025-06-25T13:42:03Z", utc, true},
		{"2025-06-25T15:42:03+02:00", utc, true},
		{"2025-06-25T15:42:03+0200", utc, true},
		{"2025-06-25 13:42:03.000001", utc.Add(time.Microsecond), true},
		{"2025-06-25 13:42:03.5 +00:00", utc.Add(500 * time.Millisecond), true},
		{"2025-06-25T13:42", utc.Add(-3 * time.Second), true},
		{"2025-06-25", time.Date(2025, 6, 25, 0, 0, 0, 0, time.UTC), true},
		{"2025-13-25 13:42:03", time.Time{}, false},
		{"25-06-2025", time.Time{}, false},
		{"", time.Time{}, false},
	}
	for _, tt := range tests {
		got, ok := agentfolder.ParseCreatedAt(tt.in)
		if ok != tt.ok || !got.Equal(tt.want) {
			t.Errorf("ParseCreatedAt(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestWriteAgentID(t *testing.T) {
	const newID = "11111111-2222-4333-8444-555555555555"
	tests := []struct {
		name, file, in, want string
	}{
		{"json in place", agentfolder.ConfigJSON,
			"{\n  \"agent_name\": \"x\",\n  \"agent_id\" :  \"00000000-0000-0000-0000-000000000000\",\n  \"version\": \"1\"\n}\n",
			"{\n  \"agent_name\": \"x\",\n  \"agent_id\" :  \"" + newID + "\",\n  \"version\": \"1\"\n}\n"},
		{"json null value", agentfolder.ConfigJSON,
			`{"agent_id": null, "nested": {"agent_id": "keep"}}`,
			`{"agent_id": "` + newID + `", "nested": {"agent_id": "keep"}}`},
		{"json added, indented like the rest", agentfolder.ConfigJSON,
			"{\n    \"agent_name\": \"x\",\n    \"meta\": {\"a\": [1, 2]}\n}\n",
			"{\n    \"agent_name\": \"x\",\n    \"meta\": {\"a\": [1, 2]},\n    \"agent_id\": \"" + newID + "\"\n}\n"},
		{"json added, compact", agentfolder.ConfigJSON,
			`{"agent_name":"x"}`,
			`{"agent_name":"x", "agent_id": "` + newID + `"}`},
		{"json added to empty object", agentfolder.ConfigJSON,
			`{ }`,
			`{ "agent_id": "` + newID + `"}`},
		{"yaml plain with comment", agentfolder.ConfigYAML,
			"# top\nagent_name: x   # name\nagent_id: 00000000-0000-0000-0000-000000000000  # replaced\nversion: '1'\n",
			"# top\nagent_name: x   # name\nagent_id: " + newID + "  # replaced\nversion: '1'\n"},
		{"yaml double quoted", agentfolder.ConfigYAML,
			"agent_name: é\nagent_id:   \"old\\\"id\"\n",
			"agent_name: é\nagent_id:   \"" + newID + "\"\n"},
		{"yaml single quoted", agentfolder.ConfigYML,
			"agent_id: 'it''s old' # c\n",
			"agent_id: '" + newID + "' # c\n"},
		{"yaml added", agentfolder.ConfigYAML,
			"agent_name: x\nversion: '1'",
			"agent_name: x\nversion: '1'\nagent_id: " + newID + "\n"},
		{"yaml null value re-encoded", agentfolder.ConfigYAML,
			"agent_name: x\nagent_id:\n",
			"agent_name: x\nagent_id: " + newID + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, tt.file)
			writeFile(t, path, tt.in)
			if err := agentfolder.WriteAgentID(dir, newID); err != nil {
				t.Fatal(err)
			}
			got, _ := os.ReadFile(path)
			if string(got) != tt.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

func TestWriteAgentIDThenLoad(t *testing.T) {
	for _, src := range []string{"valid-json", "valid-yaml", "valid-yml"} {
		t.Run(src, func(t *testing.T) {
			dir := t.TempDir()
			copyDir(t, filepath.Join("testdata", src), dir)
			const id = "abcdefab-cdef-4abc-8def-abcdefabcdef"
			if err := agentfolder.WriteAgentID(dir, id); err != nil {
				t.Fatal(err)
			}
			f, err := agentfolder.Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			eq(t, "AgentID", f.Config.AgentID, id)
		})
	}
}

func TestWriteAgentIDErrors(t *testing.T) {
	if err := agentfolder.WriteAgentID(t.TempDir(), "not-a-uuid"); err == nil || !strings.Contains(err.Error(), `"not-a-uuid" is not a UUID`) {
		t.Errorf("err = %v", err)
	}
	if err := agentfolder.WriteAgentID(t.TempDir(), testID); !errors.Is(err, agentfolder.ErrNoConfig) {
		t.Errorf("err = %v, want ErrNoConfig", err)
	}
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, agentfolder.ConfigJSON), "[1]")
	if err := agentfolder.WriteAgentID(dir, testID); err == nil || !strings.Contains(err.Error(), "runagent.config.json: cannot set agent_id: the top level is not an object") {
		t.Errorf("err = %v", err)
	}
}

func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func tags(f *agentfolder.Folder) []string {
	var out []string
	for _, e := range f.Config.AgentArchitecture.Entrypoints {
		out = append(out, e.Tag)
	}
	return out
}

func hasWarning(t *testing.T, f *agentfolder.Folder, want string) {
	t.Helper()
	for _, w := range f.Warnings {
		if strings.Contains(w, want) {
			return
		}
	}
	t.Errorf("no warning contains %q; warnings: %q", want, f.Warnings)
}

func eq[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if !equal(got, want) {
		t.Errorf("%s = %#v, want %#v", what, got, want)
	}
}

func equal(a, b any) bool {
	switch x := a.(type) {
	case time.Time:
		return x.Equal(b.(time.Time))
	case map[string]string:
		return maps.Equal(x, b.(map[string]string))
	}
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(ja) == string(jb)
}
