package server

import (
	"encoding/json"
	"strconv"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/wire"
)

// EntrypointJSON is an entrypoint as /architecture lists it, the extractor's
// keys in the config's order.
func EntrypointJSON(ep domain.Entrypoint) json.RawMessage {
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
