// Package apikeys makes and checks API keys (domain.Key): their format
// (ra_<id>_<secret>), the hash of the secret, how a request sends one, and
// the Keyring that authenticates a token in constant time. It stores
// nothing; the store loads keys into a Keyring and keeps it current.
package apikeys

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

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

// Generate makes a new key. token is the whole key, to be shown to the user
// once; k has ID, Hash, Tenant (DefaultTenant) and CreatedAt filled and the
// caller sets the rest.
func Generate() (token string, k domain.Key, err error) {
	id, err := randomString(idAlphabet, idLen)
	if err != nil {
		return "", domain.Key{}, fmt.Errorf("generate API key id: %w", err)
	}
	secret, err := randomString(secretAlphabet, secretLen)
	if err != nil {
		return "", domain.Key{}, fmt.Errorf("generate API key secret: %w", err)
	}
	sum := hashSecret(secret)
	k = domain.Key{
		ID:        id,
		Tenant:    domain.DefaultTenant,
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
func Verify(k *domain.Key, secret string) bool {
	sum := hashSecret(secret)
	match := subtle.ConstantTimeCompare(sum[:], k.Hash) == 1
	return match && k.RevokedAt.IsZero()
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
