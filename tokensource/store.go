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
// A Store may also implement Coordinator, to share one token among several
// Sources; Store itself will not grow methods.
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
// sharing one token between Sources in a process. It is a Coordinator: the
// Sources sharing it make one Refresher call per expiry between them and
// adopt each other's results. Its lease has no TTL, since its holder cannot
// die without the whole process; a Source gives up a lease whose Refresher
// outlives the refresh timeout. It is safe for concurrent use. The zero value
// is an empty store.
type MemoryStore struct {
	mu      sync.Mutex
	tok     *Token
	version uint64
	restore bool          // the token was put back by Restore, nothing written since
	holder  *memoryLease  // nil: the lease is free
	changed chan struct{} // closed and replaced on every change; lazily made
}

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore { return &MemoryStore{} }

// Load returns a copy of the stored token, or (nil, nil) if there is none.
func (m *MemoryStore) Load(ctx context.Context) (*Token, error) {
	rec, err := m.LoadRecord(ctx)
	return rec.Token, err
}

// Save stores a copy of t unconditionally and wakes the Sources waiting for
// a change.
func (m *MemoryStore) Save(ctx context.Context, t *Token) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if t == nil {
		return errNilToken
	}
	m.mu.Lock()
	m.writeLocked(t)
	m.mu.Unlock()
	return nil
}

// LoadRecord returns a copy of the stored token with its version.
func (m *MemoryStore) LoadRecord(ctx context.Context) (Record, error) {
	if err := ctx.Err(); err != nil {
		return Record{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.recordLocked(), nil
}

// TryLease takes the lease if it is free; it returns (nil, nil) if another
// Source holds it.
func (m *MemoryStore) TryLease(ctx context.Context) (Lease, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.holder != nil {
		return nil, nil
	}
	l := &memoryLease{m: m, rec: m.recordLocked()}
	m.holder = l
	return l, nil
}

// Wait blocks until the version differs from version, the lease is free, or
// ctx ends.
func (m *MemoryStore) Wait(ctx context.Context, version uint64) error {
	for {
		m.mu.Lock()
		if m.version != version || m.holder == nil {
			m.mu.Unlock()
			return nil
		}
		if m.changed == nil {
			m.changed = make(chan struct{})
		}
		ch := m.changed
		m.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Restore is Restorer.Restore: it stores a copy of rec.Token at
// rec.Version if the stored version is lower, whoever holds the lease, and
// wakes the Sources waiting for a change.
func (m *MemoryStore) Restore(ctx context.Context, rec Record) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if rec.Token == nil {
		return false, errNilToken
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.version >= rec.Version {
		return false, nil
	}
	m.tok, m.version, m.restore = rec.Token.clone(), rec.Version, true
	m.notifyLocked()
	return true, nil
}

func (m *MemoryStore) recordLocked() Record {
	return Record{Token: m.tok.clone(), Version: m.version, Restored: m.restore}
}

func (m *MemoryStore) writeLocked(t *Token) {
	m.tok, m.restore = t.clone(), false
	m.version++
	m.notifyLocked()
}

func (m *MemoryStore) notifyLocked() {
	if m.changed != nil {
		close(m.changed)
		m.changed = nil
	}
}

// memoryLease is the lease of a MemoryStore.
type memoryLease struct {
	m   *MemoryStore
	rec Record
}

func (l *memoryLease) Record() Record  { return l.rec }
func (l *memoryLease) TakenOver() bool { return false }

func (l *memoryLease) Commit(ctx context.Context, t *Token) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if t == nil {
		return errNilToken
	}
	m := l.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.version != l.rec.Version || (m.holder != nil && m.holder != l) {
		return ErrLeaseLost
	}
	if m.holder == l {
		m.holder = nil
	}
	m.writeLocked(t)
	return nil
}

func (l *memoryLease) Release(context.Context) error {
	m := l.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.holder == l {
		m.holder = nil
		m.notifyLocked()
	}
	return nil
}

var (
	_ Coordinator = (*MemoryStore)(nil)
	_ Restorer    = (*MemoryStore)(nil)
)
