package apikeys

import (
	"crypto/rand"
	"errors"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

// Authentication errors. Every way a sent key can be wrong is ErrBadKey, so
// that a caller learns nothing about which ids exist or were revoked.
var (
	ErrNoKey  = errors.New("missing API key: send it as \"Authorization: Bearer <key>\"")
	ErrBadKey = errors.New("invalid or revoked API key")
)

// Keyring is an in-memory index of keys by id, read on every request. The
// zero Keyring is empty and ready to use.
//
// Readers load an immutable snapshot with one atomic read and take no lock;
// writers (rare: key creation and revocation) copy the map under a mutex. The
// *Key values in a snapshot are never modified after they are published, so a
// *Key returned by Authenticate or Get stays valid and race-free; callers must
// not modify it either.
type Keyring struct {
	mu   sync.Mutex // serializes writers
	keys atomic.Pointer[map[string]*domain.Key]
}

// NewKeyring returns a keyring holding keys.
func NewKeyring(keys []domain.Key) *Keyring {
	m := make(map[string]*domain.Key, len(keys))
	for i := range keys {
		m[keys[i].ID] = cloneKey(keys[i])
	}
	kr := &Keyring{}
	kr.keys.Store(&m)
	return kr
}

// Replace makes keys the whole keyring (a reload from the store).
func (kr *Keyring) Replace(keys []domain.Key) {
	m := make(map[string]*domain.Key, len(keys))
	for i := range keys {
		m[keys[i].ID] = cloneKey(keys[i])
	}
	kr.mu.Lock()
	defer kr.mu.Unlock()
	kr.keys.Store(&m)
}

// Put adds k, or replaces the key with the same id.
func (kr *Keyring) Put(k domain.Key) {
	kr.update(func(m map[string]*domain.Key) { m[k.ID] = cloneKey(k) })
}

// Revoke marks the key revoked at at; later Authenticate calls fail with
// ErrBadKey. An unknown id, or a key already revoked, is left as it is.
func (kr *Keyring) Revoke(id string, at time.Time) {
	kr.update(func(m map[string]*domain.Key) {
		old, ok := m[id]
		if !ok || old.Revoked() {
			return
		}
		k := cloneKey(*old) // a new value: published keys are immutable
		k.RevokedAt = at
		m[id] = k
	})
}

func (kr *Keyring) update(change func(map[string]*domain.Key)) {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	m := maps.Clone(kr.snapshot())
	if m == nil {
		m = make(map[string]*domain.Key)
	}
	change(m)
	kr.keys.Store(&m)
}

// snapshot is the current map, nil for a zero Keyring; it must not be modified.
func (kr *Keyring) snapshot() map[string]*domain.Key {
	if p := kr.keys.Load(); p != nil {
		return *p
	}
	return nil
}

// Get returns the key with id, revoked or not. The result must not be modified.
func (kr *Keyring) Get(id string) (*domain.Key, bool) {
	k, ok := kr.snapshot()[id]
	return k, ok
}

// Len returns the number of keys, revoked ones included.
func (kr *Keyring) Len() int { return len(kr.snapshot()) }

// dummy stands in for unknown ids so that they cost the same hash and
// constant-time compare as known ones. Its hash is random, so no secret matches.
var dummy = func() *domain.Key {
	h := make([]byte, 32)
	rand.Read(h)
	return &domain.Key{Hash: h}
}()

// Authenticate returns the active key that token belongs to. It fails with
// ErrNoKey for an empty token and ErrBadKey for anything else wrong. The result
// must not be modified.
func (kr *Keyring) Authenticate(token string) (*domain.Key, error) {
	if token == "" {
		return nil, ErrNoKey
	}
	// The token format is public, so returning early on a malformed one leaks nothing.
	id, secret, err := Parse(token)
	if err != nil {
		return nil, ErrBadKey
	}
	k, ok := kr.snapshot()[id]
	if !ok {
		Verify(dummy, secret)
		return nil, ErrBadKey
	}
	if !Verify(k, secret) {
		return nil, ErrBadKey
	}
	return k, nil
}

// cloneKey copies k with slices of its own, so callers of Put cannot change
// a published key through slices they still hold.
func cloneKey(k domain.Key) *domain.Key {
	k.Scopes = slices.Clone(k.Scopes)
	k.Agents = slices.Clone(k.Agents)
	k.Hash = slices.Clone(k.Hash)
	return &k
}
