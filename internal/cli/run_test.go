package cli

import (
	"strings"
	"testing"
	"time"
)

func TestParseRunArgs(t *testing.T) {
	tests := []struct {
		args    string
		check   func(runArgs) bool
		wantErr string
	}{
		{"--id A --tag t --message=hi --role user", func(r runArgs) bool {
			return r.id == "A" && r.tag == "t" && r.kwargs["message"] == "hi" && r.kwargs["role"] == "user"
		}, ""},
		{"--id=A --tag=t --port 8451 --host 127.0.0.1 --timeout 30s --json", func(r runArgs) bool {
			return r.port == 8451 && r.host == "127.0.0.1" && r.timeout == 30*time.Second && r.json
		}, ""},
		{"--json=false --local --input in.json --x=", func(r runArgs) bool {
			return !r.json && r.input == "in.json" && r.kwargs["x"] == "" && len(r.kwargs) == 1
		}, ""},
		{"-h", func(r runArgs) bool { return r.help }, ""},
		{"--port nope", nil, `--port: "nope" is not a port number`},
		{"--port", nil, "--port needs a value"},
		{"--message", nil, "--message needs a value: --message=VALUE"},
		{"stray", nil, `unexpected argument "stray"`},
		{"--timeout soon", nil, "not a duration"},
		{"--json=maybe", nil, "not true or false"},
	}
	for _, tt := range tests {
		r, err := parseRunArgs(strings.Fields(tt.args))
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseRunArgs(%q) error = %v, want %q", tt.args, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !tt.check(r) {
			t.Errorf("parseRunArgs(%q) = %+v, %v", tt.args, r, err)
		}
	}
}
