package domain

import (
	"strings"
	"time"
)

// Agent is one running version of an agent, as the gateway serves it: what
// clients are told about it and how its calls are bounded. It is read-only
// once published.
type Agent struct {
	ID      string
	Tenant  string // the platform's; "" for runagent serve
	Version int    // the deployed version (runagent serve: 1)
	// Name, Framework and ConfigVersion come from runagent.config.json.
	Name, Framework, ConfigVersion string
	// Entrypoints in config order, as /architecture lists them.
	Entrypoints []Entrypoint
	// Config is the agent's config without env_vars (GET /api/v1).
	Config map[string]any
	// CallTimeout, when set, bounds its calls below the server's timeout.
	CallTimeout time.Duration
	// Public: its config says auth_settings.type "none" (callable without
	// a key where the server allows it).
	Public bool
}

// Target is where the agent's calls go.
func (a *Agent) Target() Target { return Target{AgentID: a.ID, Version: a.Version} }

// Idempotent reports whether the config declares tag idempotent.
func (a *Agent) Idempotent(tag string) bool {
	ep, ok := a.Entrypoint(tag)
	return ok && ep.Idempotent
}

// Entrypoint returns the entrypoint with this tag.
func (a *Agent) Entrypoint(tag string) (Entrypoint, bool) {
	for _, e := range a.Entrypoints {
		if e.Tag == tag {
			return e, true
		}
	}
	return Entrypoint{}, false
}

// Entrypoint is one callable of the agent: a Python function (File, Module,
// Tag) or, for framework n8n, a webhook (WebhookURL, Method, Tag, Timeout).
// The /architecture answer lists it as the original does: {file, module,
// tag, extractor} or {webhook_url, method, tag, timeout, extractor}.
type Entrypoint struct {
	File   string
	Module string
	Tag    string
	// Extractor maps an output key to a JSONPath; never nil after Load.
	Extractor map[string]string
	// ExtractorKeys lists Extractor's keys in the order the file has them,
	// which is the order of the extracted result's keys.
	ExtractorKeys []string
	WebhookURL    string
	// Method is "post" or "get" in any case, as written.
	Method string
	// Timeout is in seconds (agentfolder.DefaultWebhookTimeout when not given); webhooks only.
	Timeout int
	// Idempotent says a call may safely run twice: a background run whose
	// worker was lost is retried only then (otherwise it fails).
	Idempotent bool
}

// Streaming reports whether the entrypoint streams: its tag ends in "_stream".
func (e Entrypoint) Streaming() bool { return strings.HasSuffix(e.Tag, "_stream") }

// Webhook reports whether the entrypoint is a webhook rather than a Python function.
func (e Entrypoint) Webhook() bool { return e.WebhookURL != "" }
