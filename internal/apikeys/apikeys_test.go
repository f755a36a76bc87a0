package apikeys

import (
	"errors"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

func TestGenerateParseRoundTrip(t *testing.T) {
	seen := map[string]bool{}
	for range 50 {
		token, k, err := Generate()
		if err != nil {
			t.Fatal(err)
		}
		if len(token) != tokenLen || !strings.HasPrefix(token, "ra_") {
			t.Fatalf("token %q: want ra_ and %d characters", token, tokenLen)
		}
		id, secret, err := Parse(token)
		if err != nil {
			t.Fatalf("Parse(%q): %v", token, err)
		}
		if id != k.ID {
			t.Errorf("id %q, key id %q", id, k.ID)
		}
		if !Verify(&k, secret) {
			t.Errorf("Verify of the generated secret failed")
		}
		if k.Tenant != domain.DefaultTenant || k.CreatedAt.IsZero() || len(k.Hash) != 32 {
			t.Errorf("key not filled: %+v", k)
		}
		if strings.Contains(string(k.Hash), secret) {
			t.Errorf("hash holds the secret")
		}
		if seen[id] {
			t.Fatalf("id %q generated twice", id)
		}
		seen[id] = true
	}
}

func TestParseMalformed(t *testing.T) {
	const id = "abcdefgh2345"
	secret := strings.Repeat("aZ9", 13) + "x" // 40 base62 characters
	if _, _, err := Parse("ra_" + id + "_" + secret); err != nil {
		t.Fatalf("valid token: %v", err)
	}
	tests := []struct {
		name, token, want string
	}{
		{"empty", "", "must start with"},
		{"wrong prefix", "rb_" + id + "_" + secret, "must start with"},
		{"upper prefix", "RA_" + id + "_" + secret, "must start with"},
		{"bearer left in", "Bearer ra_" + id + "_" + secret, "must start with"},
		{"too short", "ra_" + id + "_" + secret[:39], "got 55"},
		{"too long", "ra_" + id + "_" + secret + "a", "got 57"},
		{"prefix only", "ra_", "got 3"},
		{"no separator", "ra_" + id + "x" + secret, "between"},
		{"id too long", "ra_" + id + "a" + "_" + secret[:39], "between"},
		{"id uppercase", "ra_" + "ABCDEFGH2345" + "_" + secret, "id must be"},
		{"id base32 excludes 1", "ra_" + "abcdefgh2341" + "_" + secret, "id must be"},
		{"secret with dash", "ra_" + id + "_" + secret[:39] + "-", "secret must be"},
		{"secret with underscore", "ra_" + id + "_" + secret[:39] + "_", "secret must be"},
		{"secret non-ascii", "ra_" + id + "_" + secret[:38] + "é", "secret must be"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := Parse(tt.token)
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("error %v does not wrap ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want it to mention %q", err, tt.want)
			}
			if strings.Contains(err.Error(), secret[:20]) {
				t.Errorf("error %q echoes the secret", err)
			}
		})
	}
}

func TestVerify(t *testing.T) {
	token, k, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	_, secret, _ := Parse(token)
	wrong := []byte(secret)
	wrong[0] ^= 1
	revoked := k
	revoked.RevokedAt = time.Now()
	tests := []struct {
		name   string
		key    domain.Key
		secret string
		want   bool
	}{
		{"right secret", k, secret, true},
		{"wrong secret", k, string(wrong), false},
		{"empty secret", k, "", false},
		{"long secret", k, secret + secret, false},
		{"revoked", revoked, secret, false},
		{"no hash", domain.Key{}, secret, false},
	}
	for _, tt := range tests {
		if got := Verify(&tt.key, tt.secret); got != tt.want {
			t.Errorf("%s: Verify = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestRequestTokens(t *testing.T) {
	tests := []struct {
		name, auth, url, bearer, query string
	}{
		{"bearer", "Bearer ra_x", "/", "ra_x", ""},
		{"lowercase scheme", "bearer ra_x", "/", "ra_x", ""},
		{"uppercase scheme", "BEARER ra_x", "/", "ra_x", ""},
		{"extra spaces", "  Bearer   ra_x  ", "/", "ra_x", ""},
		{"query", "", "/ws?token=ra_q", "", "ra_q"},
		{"query among others", "", "/ws?a=1&token=ra_q&b=2", "", "ra_q"},
		{"header and query", "Bearer ra_h", "/ws?token=ra_q", "ra_h", "ra_q"},
		{"basic is no bearer", "Basic dXNlcjpwYXNz", "/ws?token=ra_q", "", "ra_q"},
		{"empty bearer", "Bearer ", "/", "", ""},
		{"scheme alone", "Bearer", "/", "", ""},
		{"nothing", "", "/", "", ""},
		{"empty query token", "", "/ws?token=", "", ""},
	}
	for _, tt := range tests {
		r := httptest.NewRequest("GET", tt.url, nil)
		if tt.auth != "" {
			r.Header.Set("Authorization", tt.auth)
		}
		if got := BearerToken(r); got != tt.bearer {
			t.Errorf("%s: BearerToken = %q, want %q", tt.name, got, tt.bearer)
		}
		if got := QueryToken(r); got != tt.query {
			t.Errorf("%s: QueryToken = %q, want %q", tt.name, got, tt.query)
		}
	}
}

func TestKeyringAuthenticate(t *testing.T) {
	tokA, a, _ := Generate()
	a.Scopes = []domain.Scope{domain.ScopeRun}
	tokB, b, _ := Generate()
	b.RevokedAt = time.Now()
	tokC, _, _ := Generate() // never put in the keyring
	kr := NewKeyring([]domain.Key{a, b})

	wrongSecret := "ra_" + a.ID + "_" + strings.Repeat("x", secretLen)

	tests := []struct {
		name    string
		token   string
		wantID  string
		wantErr error
	}{
		{"active key", tokA, a.ID, nil},
		{"empty", "", "", ErrNoKey},
		{"malformed", "ra_nope", "", ErrBadKey},
		{"unknown id", tokC, "", ErrBadKey},
		{"revoked", tokB, "", ErrBadKey},
		{"wrong secret", wrongSecret, "", ErrBadKey},
	}
	for _, tt := range tests {
		k, err := kr.Authenticate(tt.token)
		if err != tt.wantErr {
			t.Errorf("%s: error %v, want %v", tt.name, err, tt.wantErr)
			continue
		}
		if tt.wantErr != nil {
			if k != nil {
				t.Errorf("%s: key returned with an error", tt.name)
			}
			continue
		}
		if k.ID != tt.wantID || !k.Has(domain.ScopeRun) {
			t.Errorf("%s: got key %+v", tt.name, k)
		}
	}
	if ErrBadKey.Error() != "invalid or revoked API key" {
		t.Errorf("ErrBadKey message %q", ErrBadKey)
	}
}

func TestKeyringPutRevoke(t *testing.T) {
	kr := &Keyring{} // the zero value works
	tok, k, _ := Generate()
	if kr.Len() != 0 {
		t.Fatalf("zero Keyring Len %d", kr.Len())
	}
	if _, err := kr.Authenticate(tok); err != ErrBadKey {
		t.Fatalf("before Put: %v", err)
	}
	kr.Put(k)
	got, err := kr.Authenticate(tok)
	if err != nil {
		t.Fatalf("after Put: %v", err)
	}

	// Put copies: changing the caller's slices does not change the keyring.
	k.Hash[0] ^= 1
	if _, err := kr.Authenticate(tok); err != nil {
		t.Fatalf("caller's change to Hash reached the keyring: %v", err)
	}
	k.Hash[0] ^= 1

	// Replace: a new name is seen by later calls.
	k.Name = "renamed"
	kr.Put(k)
	if now, _ := kr.Authenticate(tok); now.Name != "renamed" {
		t.Errorf("Put did not replace: %+v", now)
	}

	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	kr.Revoke(k.ID, at)
	if _, err := kr.Authenticate(tok); err != ErrBadKey {
		t.Errorf("after Revoke: %v", err)
	}
	if !got.RevokedAt.IsZero() {
		t.Errorf("Revoke changed a key already handed out")
	}
	kr.Revoke(k.ID, at.Add(time.Hour)) // the first revocation time stays
	if r, _ := kr.Get(k.ID); !r.RevokedAt.Equal(at) {
		t.Errorf("RevokedAt %v, want %v", r.RevokedAt, at)
	}
	kr.Revoke("unknownid234", at) // no-op
	if kr.Len() != 1 {
		t.Errorf("Len %d, want 1", kr.Len())
	}
}

// TestKeyringConcurrent is meant for go test -race.
func TestKeyringConcurrent(t *testing.T) {
	tok, k, _ := Generate()
	kr := NewKeyring([]domain.Key{k})
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 200 {
				if i == 0 && j%10 == 0 {
					_, other, _ := Generate()
					kr.Put(other)
				}
				if key, err := kr.Authenticate(tok); err == nil {
					_ = key.Has(domain.ScopeRun) && key.CanSee("default")
				}
			}
		}()
	}
	wg.Wait()
	if kr.Len() != 21 {
		t.Errorf("Len %d, want 21", kr.Len())
	}
}

func BenchmarkAuthenticate(b *testing.B) {
	keys := make([]domain.Key, 1000)
	tokens := make([]string, len(keys))
	for i := range keys {
		tokens[i], keys[i], _ = Generate()
	}
	kr := NewKeyring(keys)
	unknown := make([]string, len(keys))
	for i := range unknown {
		unknown[i], _, _ = Generate()
	}
	b.Run("valid", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, err := kr.Authenticate(tokens[i%len(tokens)]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("unknown", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, err := kr.Authenticate(unknown[i%len(unknown)]); err != ErrBadKey {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				kr.Authenticate(tokens[i%len(tokens)])
				i++
			}
		})
	})
}
