package server

import (
	"strings"
	"testing"

	"github.com/runagent-go/runagent/internal/domain"
)

func TestDecodeRunRequest(t *testing.T) {
	tests := []struct {
		name, body          string
		field, msg          string // wanted error; msg "" means success
		wantArgs, wantKwarg string
	}{
		{name: "full", body: `{"entrypoint_tag":"a","input_args":[1],"input_kwargs":{"k":2}}`, wantArgs: `[1]`, wantKwarg: `{"k":2}`},
		{name: "defaults", body: `{"entrypoint_tag":"a"}`, wantArgs: `[]`, wantKwarg: `{}`},
		{name: "nulls", body: `{"entrypoint_tag":"a","input_args":null,"input_kwargs":null}`, wantArgs: `[]`, wantKwarg: `{}`},
		{name: "extra fields", body: `{"entrypoint_tag":"a","timeout_seconds":300,"async_execution":false,"user_id":"u","id":"x"}`, wantArgs: `[]`, wantKwarg: `{}`},
		{name: "empty", body: "  ", msg: "request body is empty"},
		{name: "syntax", body: `{"entrypoint_tag":`, msg: "not valid JSON"},
		{name: "array body", body: `[]`, msg: "must be a JSON object, got an array"},
		{name: "string body", body: `"x"`, msg: "must be a JSON object, got a string"},
		{name: "no tag", body: `{}`, field: "entrypoint_tag", msg: "required"},
		{name: "tag number", body: `{"entrypoint_tag":1}`, field: "entrypoint_tag", msg: "expected a string, got a number"},
		{name: "args object", body: `{"entrypoint_tag":"a","input_args":{}}`, field: "input_args", msg: "expected a list, got an object"},
		{name: "args string", body: `{"entrypoint_tag":"a","input_args":"x"}`, field: "input_args", msg: "expected a list, got a string"},
		{name: "kwargs list", body: `{"entrypoint_tag":"a","input_kwargs":[]}`, field: "input_kwargs", msg: "expected an object, got a list"},
		{name: "kwargs bool", body: `{"entrypoint_tag":"a","input_kwargs":true}`, field: "input_kwargs", msg: "expected an object, got a boolean"},
		{name: "timeout string", body: `{"entrypoint_tag":"a","timeout_seconds":"5"}`, field: "timeout_seconds", msg: "expected a number, got a string"},
		{name: "timeout negative", body: `{"entrypoint_tag":"a","timeout_seconds":-1}`, field: "timeout_seconds", msg: "must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, e := decodeRunRequest([]byte(tt.body))
			if tt.msg == "" {
				if e != nil {
					t.Fatalf("unexpected error %v", e)
				}
				if string(req.InputArgs) != tt.wantArgs || string(req.InputKwargs) != tt.wantKwarg {
					t.Fatalf("args %s kwargs %s, want %s %s", req.InputArgs, req.InputKwargs, tt.wantArgs, tt.wantKwarg)
				}
				return
			}
			if e == nil || e.Code != "VALIDATION_ERROR" || e.Field != tt.field || !strings.Contains(e.Message, tt.msg) {
				t.Fatalf("error = %+v, want field %q and message with %q", e, tt.field, tt.msg)
			}
		})
	}
}

func TestPayloadOf(t *testing.T) {
	tests := map[string]string{
		`{"type": "string", "payload": "\"hi\""}`:     `"hi"`,
		`{"type": "object", "payload": "{\"a\": 1}"}`: `{"a": 1}`,
		`{"type": "null", "payload": "null"}`:         `null`,
		`not json`:                                    ``,
		`{"type": "string", "payload": "{broken"}`:    ``,
	}
	for in, want := range tests {
		if got := string(payloadOf([]byte(in))); got != want {
			t.Errorf("payloadOf(%s) = %s, want %s", in, got, want)
		}
	}
}

// An entrypoint is listed as the original's /architecture lists it: the
// extractor's keys in the config's order, a webhook's own fields.
func TestEntrypointJSON(t *testing.T) {
	tests := []struct {
		ep   domain.Entrypoint
		want string
	}{
		{domain.Entrypoint{File: "pkg/stream.py", Module: "app.stream", Tag: "chat_stream", Extractor: map[string]string{}},
			`{"file":"pkg/stream.py","module":"app.stream","tag":"chat_stream","extractor":{}}`},
		{domain.Entrypoint{File: "main.py", Module: "run", Tag: "chat", Idempotent: true,
			Extractor: map[string]string{"b": "$.b", "a": "$.a"}, ExtractorKeys: []string{"b", "a"}},
			`{"file":"main.py","module":"run","tag":"chat","extractor":{"b":"$.b","a":"$.a"}}`},
		{domain.Entrypoint{Tag: "flow", WebhookURL: "https://n8n.example.com/webhook/abc", Method: "POST", Timeout: 30, Extractor: map[string]string{}},
			`{"webhook_url":"https://n8n.example.com/webhook/abc","method":"POST","tag":"flow","timeout":30,"extractor":{}}`},
	}
	for _, tt := range tests {
		if got := string(EntrypointJSON(tt.ep)); got != tt.want {
			t.Errorf("got  %s\nwant %s", got, tt.want)
		}
	}
}
