package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/uuid"
)

// A framework n8n agent: its entrypoints are webhooks. The payload (one
// positional argument or the keyword payload) is POSTed as JSON and the
// JSON answer, through the extractor, is the result.
func TestWebhookEntrypoints(t *testing.T) {
	hooks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/hook":
			body, _ := io.ReadAll(r.Body)
			var in map[string]any
			json.Unmarshal(body, &in)
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"reply": "got %v via %s", "ct": %q}`, in["q"], r.Method, r.Header.Get("Content-Type"))
		case "/status":
			w.Write([]byte(`{"ok": true, "method": "` + r.Method + `"}`))
		default:
			http.Error(w, "no such hook", http.StatusNotFound)
		}
	}))
	defer hooks.Close()

	dir := filepath.Join(t.TempDir(), "n8n-agent")
	id := uuid.NewString()
	writeFiles(t, dir, map[string]string{"runagent.config.json": fmt.Sprintf(`{
  "agent_name": "Hooks", "description": "n8n webhooks", "framework": "n8n", "template": "custom",
  "version": "1.0.0", "created_at": "2025-06-25 13:42:03",
  "template_source": {"repo_url": "local", "author": "test", "path": "."},
  "agent_architecture": {"entrypoints": [
    {"webhook_url": "%[1]s/hook", "method": "post", "tag": "hook", "timeout": 10, "extractor": {"answer": "$.reply"}},
    {"webhook_url": "%[1]s/status", "method": "get", "tag": "status"},
    {"webhook_url": "%[1]s/missing", "method": "post", "tag": "missing"}
  ]},
  "agent_id": %[2]q
}`, hooks.URL, id)})
	s := serve(t, dir, id, serveOpts{})

	if got := s.result(t, "hook", []any{map[string]any{"q": "ping"}}, nil); !jsonEqual(t, got, map[string]any{"answer": "got ping via POST"}) {
		t.Fatalf("hook(positional) = %#v", got)
	}
	if got := s.result(t, "hook", nil, map[string]any{"payload": map[string]any{"q": "kw"}}); !jsonEqual(t, got, map[string]any{"answer": "got kw via POST"}) {
		t.Fatalf("hook(payload=) = %#v", got)
	}
	if got := s.result(t, "status", nil, nil); !jsonEqual(t, got, map[string]any{"ok": true, "method": "GET"}) {
		t.Fatalf("status = %#v", got)
	}
	for _, tt := range []struct {
		tag    string
		args   []any
		kwargs map[string]any
		has    string
	}{
		{"hook", []any{1, 2}, nil, "Too many positional arguments"},
		{"hook", nil, map[string]any{"other": 1}, "Only 'payload' keyword argument is allowed."},
		{"missing", []any{map[string]any{}}, nil, "Client error '404"},
	} {
		st, env := s.run(t, tt.tag, tt.args, tt.kwargs)
		if st != 200 || env.Success || env.Error.Code != "INTERNAL_ERROR" || !strings.Contains(env.Error.Message, tt.has) {
			t.Errorf("%s(%v, %v) = %d %+v, want INTERNAL_ERROR with %q", tt.tag, tt.args, tt.kwargs, st, env.Error, tt.has)
		}
	}

	_, body := s.get(t, "/api/v1/agents/"+id+"/architecture")
	if !strings.Contains(string(body), `{"webhook_url":"`+hooks.URL+`/hook","method":"post","tag":"hook","timeout":10,"extractor":{"answer":"$.reply"}}`) {
		t.Fatalf("architecture lists the webhook as %s", body)
	}
}
