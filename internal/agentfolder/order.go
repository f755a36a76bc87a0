package agentfolder

import (
	"bytes"
	"encoding/json"
	"strings"

	"go.yaml.in/yaml/v3"
)

// keyOrder records the keys of a JSON or YAML object in the order they are
// written. Extractors need it: the original builds its result dict in the
// config's key order, and Go maps have none.
type keyOrder []string

func (k *keyOrder) UnmarshalJSON(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil // not an object: validation reports it
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil
		}
		key, _ := t.(string)
		*k = append(*k, key)
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return nil
		}
	}
	return nil
}

func (k *keyOrder) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		*k = append(*k, n.Content[i].Value)
	}
	return nil
}

// extractorOrders returns, per entrypoint, its extractor's keys in file
// order; nil when the file does not have that shape (validation says why).
func extractorOrders(name string, data []byte) [][]string {
	var doc struct {
		AgentArchitecture *struct {
			Entrypoints []struct {
				Extractor keyOrder `json:"extractor" yaml:"extractor"`
			} `json:"entrypoints" yaml:"entrypoints"`
		} `json:"agent_architecture" yaml:"agent_architecture"`
	}
	var err error
	if strings.HasSuffix(name, ".json") {
		err = json.Unmarshal(data, &doc)
	} else {
		err = yaml.Unmarshal(data, &doc)
	}
	if err != nil || doc.AgentArchitecture == nil {
		return nil
	}
	out := make([][]string, len(doc.AgentArchitecture.Entrypoints))
	for i, ep := range doc.AgentArchitecture.Entrypoints {
		out[i] = ep.Extractor
	}
	return out
}

// orderExtractors fills ExtractorKeys of every entrypoint from the file's
// order; keys it could not place follow in sorted order.
func orderExtractors(cfg *Config, name string, data []byte) {
	if cfg == nil || cfg.AgentArchitecture == nil {
		return
	}
	orders := extractorOrders(name, data)
	for i := range cfg.AgentArchitecture.Entrypoints {
		ep := &cfg.AgentArchitecture.Entrypoints[i]
		ep.ExtractorKeys = ep.ExtractorKeys[:0]
		seen := map[string]bool{}
		if i < len(orders) {
			for _, k := range orders[i] {
				if _, ok := ep.Extractor[k]; ok && !seen[k] {
					ep.ExtractorKeys = append(ep.ExtractorKeys, k)
					seen[k] = true
				}
			}
		}
		for _, k := range sortedKeys(ep.Extractor) {
			if !seen[k] {
				ep.ExtractorKeys = append(ep.ExtractorKeys, k)
			}
		}
	}
}
