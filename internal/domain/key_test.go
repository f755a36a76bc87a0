package domain

import (
	"strings"
	"testing"
)

func TestParseScopes(t *testing.T) {
	tests := []struct {
		in      []string
		want    []Scope
		wantErr string
	}{
		{in: []string{"run"}, want: []Scope{ScopeRun}},
		{in: []string{"deploy", "run", "deploy"}, want: []Scope{ScopeDeploy, ScopeRun}},
		{in: []string{"admin", "run", "deploy"}, want: []Scope{ScopeAdmin, ScopeRun, ScopeDeploy}},
		{in: nil, wantErr: "at least one scope is required (valid: admin, deploy, run)"},
		{in: []string{}, wantErr: "at least one scope"},
		{in: []string{"run", "write"}, wantErr: `unknown scope "write" (valid: admin, deploy, run)`},
		{in: []string{"Run"}, wantErr: `unknown scope "Run"`},
		{in: []string{""}, wantErr: `unknown scope ""`},
	}
	for _, tt := range tests {
		got, err := ParseScopes(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseScopes(%q) error %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseScopes(%q): %v", tt.in, err)
			continue
		}
		if strings.Join(scopeStrings(got), ",") != strings.Join(scopeStrings(tt.want), ",") {
			t.Errorf("ParseScopes(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func scopeStrings(ss []Scope) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = string(s)
	}
	return out
}

func TestAuthorization(t *testing.T) {
	admin := Key{Tenant: "acme", Scopes: []Scope{ScopeAdmin}, Agents: []string{"a1"}}
	deploy := Key{Tenant: "acme", Scopes: []Scope{ScopeDeploy}}
	run := Key{Tenant: "acme", Scopes: []Scope{ScopeRun}, Agents: []string{"a1", "a2"}}
	def := Key{Scopes: []Scope{ScopeRun}} // created before tenants were filled in

	tests := []struct {
		name string
		got  bool
		want bool
	}{
		{"admin has admin", admin.Has(ScopeAdmin), true},
		{"admin has deploy", admin.Has(ScopeDeploy), true},
		{"admin has run", admin.Has(ScopeRun), true},
		{"deploy has deploy", deploy.Has(ScopeDeploy), true},
		{"deploy lacks run", deploy.Has(ScopeRun), false},
		{"deploy lacks admin", deploy.Has(ScopeAdmin), false},
		{"run has run", run.Has(ScopeRun), true},
		{"run lacks deploy", run.Has(ScopeDeploy), false},
		{"no scopes", (&Key{}).Has(ScopeRun), false},

		{"admin ignores its agent list", admin.AllowsAgent("zz"), true},
		{"no list allows any agent", deploy.AllowsAgent("zz"), true},
		{"listed agent", run.AllowsAgent("a2"), true},
		{"unlisted agent", run.AllowsAgent("a3"), false},
		{"agent ids are exact", run.AllowsAgent("A1"), false},

		{"admin sees other tenant", admin.CanSee("other"), true},
		{"own tenant", run.CanSee("acme"), true},
		{"other tenant", run.CanSee("other"), false},
		{"deploy other tenant", deploy.CanSee("default"), false},
		{"empty key tenant is default", def.CanSee("default"), true},
		{"empty agent tenant is default", def.CanSee(""), true},
		{"empty key tenant not acme", def.CanSee("acme"), false},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, tt.got, tt.want)
		}
	}
}
