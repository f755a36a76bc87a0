package server

import (
	"encoding/json"
	"strconv"

	"github.com/runagent-go/runagent/internal/agentfolder"
	"github.com/runagent-go/runagent/internal/wire"
)

// AgentFromFolder describes a loaded agent folder for serving; the caller
// sets Invoker (and CallTimeout) and calls Prepare.
func AgentFromFolder(folder *agentfolder.Folder) Agent {
	cfg := folder.Config
	a := Agent{ID: cfg.AgentID, Name: cfg.AgentName, Version: cfg.Version, Framework: cfg.Framework}
	for _, ep := range cfg.AgentArchitecture.Entrypoints {
		a.Entrypoints = append(a.Entrypoints, Entrypoint{Tag: ep.Tag, JSON: entrypointJSON(ep), Idempotent: ep.Idempotent})
	}
	a.Config = map[string]any{}
	for k, v := range folder.RawConfig {
		if k != "env_vars" {
			a.Config[k] = v
		}
	}
	return a
}

// entrypointJSON is an entrypoint as /architecture lists it, the extractor's
// keys in the config's order.
func entrypointJSON(ep agentfolder.Entrypoint) json.RawMessage {
	var b []byte
	if ep.WebhookURL != "" { // the original's WebHookEntryPoint fields
		b = append(b, `{"webhook_url":`...)
		b = wire.AppendString(b, ep.WebhookURL)
		b = append(b, `,"method":`...)
		b = wire.AppendString(b, ep.Method)
		b = append(b, `,"tag":`...)
		b = wire.AppendString(b, ep.Tag)
		b = append(b, `,"timeout":`...)
		b = strconv.AppendInt(b, int64(ep.Timeout), 10)
	} else {
		b = append(b, `{"file":`...)
		b = wire.AppendString(b, ep.File)
		b = append(b, `,"module":`...)
		b = wire.AppendString(b, ep.Module)
		b = append(b, `,"tag":`...)
		b = wire.AppendString(b, ep.Tag)
	}
	b = append(b, `,"extractor":{`...)
	for i, k := range ep.ExtractorKeys {
		if i > 0 {
			b = append(b, ',')
		}
		b = wire.AppendString(b, k)
		b = append(b, ':')
		b = wire.AppendString(b, ep.Extractor[k])
	}
	return append(b, "}}"...)
}
