// Package apikeys holds what the platform server knows about API keys: their
// format (ra_<id>_<secret>), hashing, scopes, and the authorization decisions
// made from them. It stores nothing; the store loads keys into a Keyring and
// keeps it current.
package apikeys

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
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

// Token layout: "ra_" + 12-character id + "_" + 40-character secret.
const (
	tokenPrefix = "ra_"
	idLen       = 12
	secretLen   = 40
	tokenLen    = len(tokenPrefix) + idLen + 1 + secretLen
)

const (
	idAlphabet     = "abcdefghijklmnopqrstuvwxyz234567"                               // lowercase base32
	secretAlphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" // base62
)

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

// Key is a stored key. It never holds the secret, only its SHA-256.
type Key struct {
	ID             string    `json:"id"` // 12 lowercase base32 characters
	Name           string    `json:"name"`
	Tenant         string    `json:"tenant"` // "" is treated as DefaultTenant
	Scopes         []Scope   `json:"scopes"`
	Agents         []string  `json:"agents"`          // when non-empty, the only agent ids this key may use
	Hash           []byte    `json:"-"`               // SHA-256 of the secret; never serialized
	RatePerSecond  float64   `json:"rate_per_second"` // 0: server default
	Burst          int       `json:"burst"`           // 0: server default
	MaxConcurrency int       `json:"max_concurrency"` // 0: server default
	CreatedAt      time.Time `json:"created_at"`
	RevokedAt      time.Time `json:"revoked_at,omitzero"` // zero while active
}

// Generate makes a new key. token is the whole key, to be shown to the user
// once; k has ID, Hash, Tenant (DefaultTenant) and CreatedAt filled and the
// caller sets the rest.
func Generate() (token string, k Key, err error) {
	id, err := randomString(idAlphabet, idLen)
	if err != nil {
		return "", Key{}, fmt.Errorf("generate API key id: %w", err)
	}
	secret, err := randomString(secretAlphabet, secretLen)
	if err != nil {
		return "", Key{}, fmt.Errorf("generate API key secret: %w", err)
	}
	sum := hashSecret(secret)
	k = Key{
		ID:        id,
		Tenant:    DefaultTenant,
		Hash:      sum[:],
		CreatedAt: time.Now().UTC(),
	}
	return tokenPrefix + id + "_" + secret, k, nil
}

// randomString draws n characters uniformly from alphabet (at most 256
// characters) by rejection sampling, so no character is more likely than another.
func randomString(alphabet string, n int) (string, error) {
	limit := 256 - 256%len(alphabet) // bytes >= limit would bias the modulo
	out := make([]byte, 0, n)
	var buf [64]byte
	for len(out) < n {
		if _, err := rand.Read(buf[:]); err != nil {
			return "", err
		}
		for _, b := range buf {
			if int(b) < limit {
				out = append(out, alphabet[int(b)%len(alphabet)])
				if len(out) == n {
					break
				}
			}
		}
	}
	return string(out), nil
}

// ErrMalformed is wrapped by every Parse error.
var ErrMalformed = errors.New("malformed API key")

// Parse errors are fixed values: they never quote the token, which may be a
// real secret pasted into the wrong place.
var (
	errPrefix    = fmt.Errorf("%w: it must start with %q", ErrMalformed, tokenPrefix)
	errSeparator = fmt.Errorf("%w: expected %q between the %d-character id and the secret", ErrMalformed, "_", idLen)
	errID        = fmt.Errorf("%w: the id must be %d lowercase base32 characters (a-z, 2-7)", ErrMalformed, idLen)
	errSecret    = fmt.Errorf("%w: the secret must be %d base62 characters (0-9, A-Z, a-z)", ErrMalformed, secretLen)
)

// Parse splits a token into its id and secret.
func Parse(token string) (id, secret string, err error) {
	if !strings.HasPrefix(token, tokenPrefix) {
		return "", "", errPrefix
	}
	if len(token) != tokenLen {
		return "", "", fmt.Errorf("%w: it must be %d characters (%q, a %d-character id, \"_\", a %d-character secret), got %d",
			ErrMalformed, tokenLen, tokenPrefix, idLen, secretLen, len(token))
	}
	rest := token[len(tokenPrefix):]
	if rest[idLen] != '_' {
		return "", "", errSeparator
	}
	id, secret = rest[:idLen], rest[idLen+1:]
	if !onlyFrom(id, idAlphabet) {
		return "", "", errID
	}
	if !onlyFrom(secret, secretAlphabet) {
		return "", "", errSecret
	}
	return id, secret, nil
}

// onlyFrom reports whether every byte of s is in alphabet; the alphabets are
// ASCII, so bytes are characters here.
func onlyFrom(s, alphabet string) bool {
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(alphabet, s[i]) < 0 {
			return false
		}
	}
	return true
}

// hashSecret is SHA-256 of secret. Secrets of the expected size are copied to
// a stack buffer first so that hashing does not allocate on every request.
func hashSecret(secret string) [sha256.Size]byte {
	if len(secret) <= secretLen {
		var buf [secretLen]byte
		n := copy(buf[:], secret)
		return sha256.Sum256(buf[:n])
	}
	return sha256.Sum256([]byte(secret))
}

// Verify reports whether secret is k's and k is not revoked. The hash
// comparison takes the same time whatever the secret.
func (k *Key) Verify(secret string) bool {
	sum := hashSecret(secret)
	match := subtle.ConstantTimeCompare(sum[:], k.Hash) == 1
	return match && k.RevokedAt.IsZero()
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

// BearerToken returns the key of an "Authorization: Bearer" header (scheme
// in any case), "" when there is none.
func BearerToken(r *http.Request) string {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, rest, ok := strings.Cut(strings.TrimSpace(h), " ")
		if ok && strings.EqualFold(scheme, "Bearer") {
			return strings.TrimSpace(rest)
		}
	}
	return ""
}

// QueryToken returns the "token" query parameter, which the official SDKs
// send on WebSockets where browsers cannot set headers ("" when absent).
// Only WebSocket handshakes should accept it: URLs end up in proxy and
// access logs.
func QueryToken(r *http.Request) string {
	// Parsing the query allocates, so it is only done when there is one.
	if r.URL != nil && r.URL.RawQuery != "" {
		return r.URL.Query().Get("token")
	}
	return ""
}
