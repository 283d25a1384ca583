package tokensource

import (
	"context"
	"errors"
	"time"
)

// ErrLeaseLost is matched (errors.Is) by the error of Lease.Commit when the
// write was refused: the shared record has changed since the lease was taken
// (another member committed a newer token), or another member holds the lease
// now. Nothing was written.
var ErrLeaseLost = errors.New("tokensource: refresh lease lost; a newer token may be in the store")

// ErrCoordinatorUnavailable is matched (errors.Is) by the errors of a
// Coordinator that cannot reach what it coordinates through (a Redis server,
// say): a passing outage, unlike ErrStoreUnusable. A Source that cannot
// coordinate does not refresh on its own unless WithUncoordinatedRefresh
// allows it; members with a valid token are not affected.
var ErrCoordinatorUnavailable = errors.New("tokensource: token coordinator unavailable")

// Record is the shared token of a Coordinator with its version.
type Record struct {
	// Token is the shared token; nil when nothing has been stored yet.
	Token *Token
	// Version is 0 for an empty record and grows by at least one with
	// every Save and every successful Commit. It fences commits: a Lease
	// commits only over the version it read.
	Version uint64
	// Restored reports that Token was put back by a Restorer after the
	// record went back, and nothing has been saved or committed since. A
	// newer token may still be on its way back (a holder whose commit
	// failed), so a member about to present Token's refresh token waits
	// for it first. A Coordinator may also set it in a lease's Record when
	// it can tell that the record may have gone back since it was written
	// (redisstore: written under another replication history, before a
	// failover or a restart). Coordinators that do not implement Restorer
	// leave it false.
	Restored bool
}

// Coordinator is an optional interface of a Store shared by several Sources,
// in one process or many (FileStore on one host, redisstore across hosts).
// A Source whose Store implements it makes one Refresher call per expiry (or
// per rejected token) for all of them: it refreshes only under the fleet's
// lease and only if the shared record still needs it, and otherwise adopts
// the token a peer committed.
//
// Store's Load returns Record().Token; Store's Save writes unconditionally
// (a login through SetToken is newer than anything stored), bumps the
// version and wakes waiters. All methods are safe for concurrent use.
type Coordinator interface {
	Store
	// LoadRecord returns the shared record.
	LoadRecord(ctx context.Context) (Record, error)
	// TryLease takes the refresh lease if no live member holds it, without
	// waiting for one that does: it then returns (nil, nil). A lease whose
	// holder died or stopped renewing expires after its TTL and is taken
	// over. The Coordinator renews a lease it granted until Commit or
	// Release.
	TryLease(ctx context.Context) (Lease, error)
	// Wait blocks until the record's version differs from version, the
	// lease is released or expires, or ctx ends (returning ctx.Err()). It
	// may return early (a timed re-read is the fallback for a lost
	// notification), so callers re-read with LoadRecord and decide again.
	Wait(ctx context.Context, version uint64) error
}

// Lease is the right, held by one member of a fleet at a time, to refresh the
// shared token. Its methods are not required to be safe for concurrent use.
type Lease interface {
	// Record returns the shared record as read after the lease was taken:
	// the newest token, whose refresh token the holder must present.
	Record() Record
	// Commit writes t as the shared token at version Record().Version+1
	// exactly (a Source relies on that to know the version of a token it
	// committed, or failed to commit: see Restorer) and gives up the
	// lease. It is fenced: it writes only if the record still holds
	// Record().Version and
	// no other member holds the lease, so a member that lost its lease (it
	// paused past the TTL, say) can never overwrite a newer token. A Commit
	// after Release, or after the lease expired while nobody took it over,
	// still succeeds on those terms, so a late result is not lost. A
	// refused write returns an error matching ErrLeaseLost.
	Commit(ctx context.Context, t *Token) error
	// Release gives up the lease without writing. It is idempotent; it
	// never releases a lease another member has taken since.
	Release(ctx context.Context) error
	// TakenOver reports whether the lease was taken over from a holder
	// whose lease had expired (it died, hung or paused), for observability.
	TakenOver() bool
}

// Restorer is an optional interface of a Coordinator that lets a fleet put
// back a token its shared record lost: a commit that failed or was never
// acknowledged, a record lost with a Redis restart without persistence, or
// one rolled back by a failover to a lagging replica. A Source whose
// Coordinator implements it puts its token back into a record that is behind
// it, and waits a short grace before it refreshes from a record that may
// have lost a newer token, so that the fleet does not spend a refresh token
// twice while a live member holds the newer one (see "Data loss" in the
// package documentation for what remains possible); one that does not keeps
// working as before.
type Restorer interface {
	// Restore writes rec.Token as the shared token at version rec.Version
	// if the shared record's version is lower (a missing or empty record
	// has version 0), whoever holds the lease, marks the record Restored
	// until the next Save or Commit, and wakes waiters. It reports whether
	// it wrote. Since it raises the version, a lease
	// holder that read the older record can no longer commit over it.
	// Restore is a maximum: of two restores, the higher version wins in
	// either order.
	Restore(ctx context.Context, rec Record) (bool, error)
}

// ExpiringLease is an optional interface of a Lease with a lifetime (the
// FileStore's, redisstore's). A Source checks it before it presents the
// fleet's refresh token: a holder paused past its lease's lifetime (GC,
// SIGSTOP) while it waited to present may have been taken over, and the
// member that took over may present the same refresh token.
type ExpiringLease interface {
	Lease
	// Expires returns until when the lease is certainly still held: its
	// lifetime counted from just before the acquisition or the last
	// renewal that succeeded, on the wall clock. Past it, another member
	// may hold the lease. It takes no lock that I/O holds.
	Expires() time.Time
}
