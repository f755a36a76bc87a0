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
	"time"

	"github.com/runagent-go/runagent/internal/domain"
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
	Entrypoints []domain.Entrypoint `json:"entrypoints"`
}

// Entrypoint returns the entrypoint with this tag.
func (c *Config) Entrypoint(tag string) (domain.Entrypoint, bool) {
	if c.AgentArchitecture == nil {
		return domain.Entrypoint{}, false
	}
	for _, e := range c.AgentArchitecture.Entrypoints {
		if e.Tag == tag {
			return e, true
		}
	}
	return domain.Entrypoint{}, false
}
