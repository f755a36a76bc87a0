package domain

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Scope is a permission a key carries.
type Scope string

// The scopes of docs/platform-api.md. Admin implies the others.
const (
	ScopeAdmin  Scope = "admin"
	ScopeDeploy Scope = "deploy"
	ScopeRun    Scope = "run"
)

// validScopes is in the order error messages list them.
var validScopes = []Scope{ScopeAdmin, ScopeDeploy, ScopeRun}

// DefaultTenant is the tenant of a key created without one.
const DefaultTenant = "default"

// ParseScopes turns names into scopes, keeping the first occurrence of each.
func ParseScopes(list []string) ([]Scope, error) {
	if len(list) == 0 {
		return nil, fmt.Errorf("at least one scope is required (valid: %s)", validScopeList())
	}
	out := make([]Scope, 0, len(list))
	for _, name := range list {
		s := Scope(name)
		if !slices.Contains(validScopes, s) {
			return nil, fmt.Errorf("unknown scope %q (valid: %s)", name, validScopeList())
		}
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out, nil
}

func validScopeList() string {
	names := make([]string, len(validScopes))
	for i, s := range validScopes {
		names[i] = string(s)
	}
	return strings.Join(names, ", ")
}

// Key is an API key (internal/apikeys makes and checks them). It never holds the secret, only its SHA-256.
type Key struct {
	ID             string // 12 lowercase base32 characters
	Name           string
	Tenant         string // "" is treated as DefaultTenant
	Scopes         []Scope
	Agents         []string // when non-empty, the only agent ids this key may use
	Hash           []byte   // SHA-256 of the secret
	RatePerSecond  float64  // 0: server default
	Burst          int      // 0: server default
	MaxConcurrency int      // 0: server default
	CreatedAt      time.Time
	RevokedAt      time.Time // zero while active
}

// Revoked reports whether k has been revoked.
func (k *Key) Revoked() bool { return !k.RevokedAt.IsZero() }

// Has reports whether k carries scope s; admin carries every scope.
func (k *Key) Has(s Scope) bool {
	return slices.Contains(k.Scopes, s) || slices.Contains(k.Scopes, ScopeAdmin)
}

// AllowsAgent reports whether k may use the agent: admin keys and keys
// without an agent list may use every agent of the tenants they can see.
func (k *Key) AllowsAgent(agentID string) bool {
	return len(k.Agents) == 0 || k.Has(ScopeAdmin) || slices.Contains(k.Agents, agentID)
}

// CanSee reports whether k may see things of tenant: admin sees every tenant,
// other keys only their own. An empty tenant on either side means DefaultTenant.
func (k *Key) CanSee(tenant string) bool {
	return k.Has(ScopeAdmin) || orDefault(k.Tenant) == orDefault(tenant)
}

func orDefault(tenant string) string {
	if tenant == "" {
		return DefaultTenant
	}
	return tenant
}
