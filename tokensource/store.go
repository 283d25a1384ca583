package tokensource

import (
	"context"
	"errors"
	"sync"
)

// Store persists the current token, so that a rotated refresh token survives
// a restart. A Source calls Load once, before its first refresh, and Save
// after every refresh (and SetToken) before handing the new token out. Calls
// come from one goroutine at a time per Source, on a context with the refresh
// timeout.
//
// A Store may later also implement an optional interface for coordinating
// refreshes across processes (a lock or lease held around a refresh); see the
// package documentation. Store itself will not grow methods.
type Store interface {
	// Load returns the stored token, or (nil, nil) when the store is empty.
	// An error (a corrupt file, say) fails the refresh that needed the
	// token; the Source tries to load again after its backoff and never
	// overwrites a store it could not load.
	Load(ctx context.Context) (*Token, error)
	// Save stores t durably, replacing the previous token. t must not be
	// modified or retained beyond the call unless copied.
	Save(ctx context.Context, t *Token) error
}

// errNilToken is returned by the stores for Save(ctx, nil).
var errNilToken = errors.New("tokensource: cannot save a nil token")

// MemoryStore is a Store that keeps the token in memory, for tests and for
// sharing one token between Sources in a process. It is safe for concurrent
// use. The zero value is an empty store.
type MemoryStore struct {
	mu  sync.Mutex
	tok *Token
}

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore { return &MemoryStore{} }

// Load returns a copy of the stored token, or (nil, nil) if there is none.
func (m *MemoryStore) Load(ctx context.Context) (*Token, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.tok == nil {
		return nil, nil
	}
	c := *m.tok
	return &c, nil
}

// Save stores a copy of t.
func (m *MemoryStore) Save(ctx context.Context, t *Token) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if t == nil {
		return errNilToken
	}
	c := *t
	m.mu.Lock()
	m.tok = &c
	m.mu.Unlock()
	return nil
}
