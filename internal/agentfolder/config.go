// Package agentfolder loads and validates an agent folder: its
// runagent.config.json (or .yaml / .yml), its .env file and the Python files
// its entrypoints name. See "Agent folder and runagent.config.json" in
// shared/docs/wire-v1.md.
//
// Load reports every problem it finds at once, as a *ValidationError whose
// lines read "FILE: FIELD.PATH: problem; expected ...".
package agentfolder

import (
	"slices"
	"strings"
	"time"
)

// Config file names, in the order Load looks for them. When several exist the
// first one wins and the others are named in Folder.Warnings.
const (
	ConfigJSON = "runagent.config.json"
	ConfigYAML = "runagent.config.yaml"
	ConfigYML  = "runagent.config.yml"
)

// ConfigNames lists the accepted config file names, the preferred one first.
var ConfigNames = []string{ConfigJSON, ConfigYAML, ConfigYML}

// EnvFile is the dotenv file merged into the agent's environment.
const EnvFile = ".env"

// ZeroAgentID is the placeholder agent_id that templates ship; `runagent init`
// replaces it with a fresh UUIDv4.
const ZeroAgentID = "00000000-0000-0000-0000-000000000000"

// DefaultWebhookTimeout is a webhook entrypoint's timeout in seconds when the
// config gives none.
const DefaultWebhookTimeout = 30

// frameworks are the accepted values of "framework", in the contract's order.
var frameworks = []string{
	"default", "ag2", "agno", "autogen", "crewai", "langchain", "langgraph", "letta",
	"llamaindex", "openai", "n8n", "parlant", "openclaw", "picoclaw", "zeroclaw",
}

// Frameworks returns the accepted values of "framework".
func Frameworks() []string { return slices.Clone(frameworks) }

// KnownFramework reports whether name is an accepted "framework" value.
func KnownFramework(name string) bool { return slices.Contains(frameworks, name) }

// WebhookFramework reports whether agents of this framework are served by
// webhook entrypoints (n8n) rather than Python functions.
func WebhookFramework(name string) bool { return name == "n8n" }

// Config is runagent.config.json, decoded and validated. The JSON tags give
// the wire names; Created is derived and never marshalled.
type Config struct {
	AgentName   string `json:"agent_name"`
	Description string `json:"description"`
	Framework   string `json:"framework"`
	Template    string `json:"template"`
	Version     string `json:"version"`
	// CreatedAt is created_at as written in the file.
	CreatedAt string `json:"created_at"`
	// Created is CreatedAt parsed; a time written without a zone is taken as UTC.
	Created           time.Time      `json:"-"`
	TemplateSource    TemplateSource `json:"template_source"`
	AgentID           string         `json:"agent_id"`
	AgentArchitecture *Architecture  `json:"agent_architecture,omitempty"`
	// EnvVars is env_vars as written in the config (never nil); Folder.Env
	// adds the .env file.
	EnvVars map[string]string `json:"env_vars"`
	// AuthSettings is auth_settings, {"type": "none"} when absent or null.
	AuthSettings      map[string]any `json:"auth_settings"`
	PersistentFolders []string       `json:"persistent_folders"`
	Metadata          map[string]any `json:"metadata,omitempty"`
}

// TemplateSource says where the agent's template came from.
type TemplateSource struct {
	RepoURL string `json:"repo_url"`
	Author  string `json:"author"`
	Path    string `json:"path"`
}

// Architecture lists the agent's entrypoints.
type Architecture struct {
	Entrypoints []Entrypoint `json:"entrypoints"`
}

// Entrypoint is one callable of the agent: a Python function (File, Module,
// Tag) or, for framework n8n, a webhook (WebhookURL, Method, Tag, Timeout).
// Marshalled, it has the shape the original's /architecture answer gives:
// {file, module, tag, extractor} or {webhook_url, method, tag, timeout, extractor}.
type Entrypoint struct {
	File   string `json:"file,omitempty"`
	Module string `json:"module,omitempty"`
	Tag    string `json:"tag"`
	// Extractor maps an output key to a JSONPath; never nil after Load.
	Extractor map[string]string `json:"extractor"`
	// ExtractorKeys lists Extractor's keys in the order the file has them,
	// which is the order of the extracted result's keys.
	ExtractorKeys []string `json:"-"`
	WebhookURL    string   `json:"webhook_url,omitempty"`
	// Method is "post" or "get" in any case, as written.
	Method string `json:"method,omitempty"`
	// Timeout is in seconds, DefaultWebhookTimeout when not given; webhooks only.
	Timeout int `json:"timeout,omitempty"`
	// Idempotent says a call may safely run twice: a background run whose
	// worker was lost is retried only then (otherwise it fails).
	Idempotent bool `json:"idempotent,omitempty"`
}

// Streaming reports whether the entrypoint streams: its tag ends in "_stream".
func (e Entrypoint) Streaming() bool { return strings.HasSuffix(e.Tag, "_stream") }

// Webhook reports whether the entrypoint is a webhook rather than a Python function.
func (e Entrypoint) Webhook() bool { return e.WebhookURL != "" }

// Entrypoint returns the entrypoint with this tag.
func (c *Config) Entrypoint(tag string) (Entrypoint, bool) {
	if c.AgentArchitecture == nil {
		return Entrypoint{}, false
	}
	for _, e := range c.AgentArchitecture.Entrypoints {
		if e.Tag == tag {
			return e, true
		}
	}
	return Entrypoint{}, false
}
