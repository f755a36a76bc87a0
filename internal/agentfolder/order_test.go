package agentfolder

import (
	"slices"
	"testing"
)

func TestExtractorKeysKeepFileOrder(t *testing.T) {
	tests := []struct {
		name, file string
		data       string
	}{
		{"json", "runagent.config.json", `{"agent_architecture": {"entrypoints": [
			{"file": "main.py", "module": "f", "tag": "a"},
			{"file": "main.py", "module": "g", "tag": "b", "extractor": {"zeta": "$.z", "alpha": "$.a", "mid": "$.m"}}]}}`},
		{"yaml", "runagent.config.yaml", "agent_architecture:\n  entrypoints:\n    - {file: main.py, module: f, tag: a}\n    - file: main.py\n      module: g\n      tag: b\n      extractor:\n        zeta: $.z\n        alpha: $.a\n        mid: $.m\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _, _, _ := decode(tt.file, []byte(tt.data), "")
			if cfg == nil || cfg.AgentArchitecture == nil || len(cfg.AgentArchitecture.Entrypoints) != 2 {
				t.Fatalf("decode: %+v", cfg)
			}
			eps := cfg.AgentArchitecture.Entrypoints
			if len(eps[0].ExtractorKeys) != 0 {
				t.Errorf("no extractor: keys %v", eps[0].ExtractorKeys)
			}
			if want := []string{"zeta", "alpha", "mid"}; !slices.Equal(eps[1].ExtractorKeys, want) {
				t.Errorf("ExtractorKeys = %v, want %v", eps[1].ExtractorKeys, want)
			}
		})
	}
}
