package storetest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

func testKeys(t *testing.T, open Opener) {
	ctx := context.Background()

	t.Run("round trip", func(t *testing.T) {
		s := open(t, "store")
		k := domain.Key{ID: "abc", Name: "ci", Tenant: "acme", Scopes: []domain.Scope{"run", "deploy"}, Agents: []string{"a1", "a2"},
			Hash: []byte{1, 2, 3}, RatePerSecond: 2.5, Burst: 5, MaxConcurrency: 3, CreatedAt: now()}
		if err := s.InsertAPIKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		if err := s.InsertAPIKey(ctx, k); err == nil {
			t.Fatal("a duplicate key id was accepted")
		}
		keys, err := s.APIKeys(ctx)
		if err != nil || len(keys) != 1 {
			t.Fatalf("keys %v, %v", keys, err)
		}
		if g := keys[0]; g.Revoked() || !g.RevokedAt.IsZero() {
			t.Fatalf("a new key is revoked: %+v", g)
		}
		at := now()
		if err := s.RevokeAPIKey(ctx, "abc", at); err != nil {
			t.Fatal(err)
		}
		if err := s.RevokeAPIKey(ctx, "nope", at); !errors.Is(err, domain.ErrNotFound) {
			t.Fatalf("revoke unknown: %v, want ErrNotFound", err)
		}
		keys, err = s.APIKeys(ctx)
		if err != nil || len(keys) != 1 {
			t.Fatalf("keys %v, %v", keys, err)
		}
		g := keys[0]
		if g.ID != "abc" || g.Name != "ci" || g.Tenant != "acme" || fmt.Sprint(g.Scopes) != "[run deploy]" || fmt.Sprint(g.Agents) != "[a1 a2]" ||
			g.Burst != 5 || g.RatePerSecond != 2.5 || g.MaxConcurrency != 3 || string(g.Hash) != "\x01\x02\x03" ||
			!g.CreatedAt.Equal(k.CreatedAt) || !g.RevokedAt.Equal(at) {
			t.Fatalf("key read back as %+v", g)
		}
	})

	t.Run("a key with defaults", func(t *testing.T) {
		s := open(t, "store")
		hash := make([]byte, 32)
		for i := range hash {
			hash[i] = byte(255 - i)
		}
		k := domain.Key{ID: "k", Name: "admin", Tenant: domain.DefaultTenant, Scopes: []domain.Scope{domain.ScopeAdmin}, Hash: hash, CreatedAt: t0}
		if err := s.InsertAPIKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		keys, err := s.APIKeys(ctx)
		if err != nil || len(keys) != 1 {
			t.Fatalf("keys %v, %v", keys, err)
		}
		g := keys[0]
		if g.ID != "k" || len(g.Agents) != 0 || fmt.Sprint(g.Scopes) != "[admin]" || string(g.Hash) != string(hash) ||
			g.RatePerSecond != 0 || g.Burst != 0 || g.MaxConcurrency != 0 || !g.CreatedAt.Equal(t0) || g.Revoked() {
			t.Fatalf("key read back as %+v", g)
		}
	})

	t.Run("oldest first, revoked ones too", func(t *testing.T) {
		s := open(t, "store")
		for i, id := range []string{"k2", "k0", "k1"} {
			n := int(id[1] - '0')
			k := domain.Key{ID: id, Name: id, Tenant: "t", Scopes: []domain.Scope{domain.ScopeRun}, Hash: []byte{byte(i)},
				CreatedAt: t0.Add(time.Duration(n) * time.Second)}
			if err := s.InsertAPIKey(ctx, k); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.RevokeAPIKey(ctx, "k1", now()); err != nil {
			t.Fatal(err)
		}
		keys, err := s.APIKeys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, k := range keys {
			got = append(got, fmt.Sprintf("%s:%v", k.ID, k.Revoked()))
		}
		if fmt.Sprint(got) != "[k0:false k1:true k2:false]" {
			t.Errorf("APIKeys = %v, want [k0:false k1:true k2:false]", got)
		}
	})

	t.Run("a second revoke keeps the first time", func(t *testing.T) {
		s := open(t, "store")
		if err := s.InsertAPIKey(ctx, domain.Key{ID: "k", Name: "k", Tenant: "t", Scopes: []domain.Scope{domain.ScopeRun}, Hash: []byte{1}, CreatedAt: t0}); err != nil {
			t.Fatal(err)
		}
		first := t0.Add(time.Hour)
		if err := s.RevokeAPIKey(ctx, "k", first); err != nil {
			t.Fatal(err)
		}
		if err := s.RevokeAPIKey(ctx, "k", first.Add(time.Hour)); err != nil {
			t.Fatalf("second revoke: %v", err)
		}
		keys, err := s.APIKeys(ctx)
		if err != nil || len(keys) != 1 || !keys[0].RevokedAt.Equal(first) {
			t.Fatalf("keys after two revokes: %+v, %v; want revoked at %v", keys, err, first)
		}
	})
}
