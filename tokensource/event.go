package tokensource

import (
	"strconv"
	"time"
)

// EventKind says what an Event reports.
type EventKind int

// The kinds of Event a Source reports to its observer (see WithObserver).
const (
	// RefreshStarted: the Source is calling the Refresher.
	RefreshStarted EventKind = iota + 1
	// RefreshSucceeded: the Refresher returned a valid token, now current.
	// Duration is how long the refresh took (including the store save).
	RefreshSucceeded
	// RefreshFailed: the refresh (or the store load before it) failed with
	// Err; the Source backs off before trying again. Not reported for a
	// Permanent error, which is reported as ReauthRequired.
	RefreshFailed
	// ReauthRequired: the Refresher returned a Permanent error; the Source
	// will not refresh again until SetToken. Err matches ErrReauthRequired.
	ReauthRequired
	// StoreFailed: saving a token to the Store failed (Err). The token was
	// kept in memory and handed out anyway.
	StoreFailed
	// TokenLoaded: the Source took its first token from the Store.
	TokenLoaded
	// TokenSet: SetToken installed a token.
	TokenSet
	// RefreshRateLimited: a forced refresh was skipped by the storm guard
	// (see WithMinRefreshInterval). With a Coordinator, the Source still
	// looks for a newer token a peer committed.
	RefreshRateLimited
	// RefreshUnchanged: a forced refresh returned the access token the
	// server had just rejected (an oauth2.ReuseTokenSource handing back its
	// cache, typically). It counts as a failed refresh: Err matches
	// ErrUnchangedToken and the Source backs off.
	RefreshUnchanged
	// TokenAdopted: the Source took a token that another member of its
	// fleet committed to the shared Store (a Coordinator) instead of
	// calling its Refresher.
	TokenAdopted
	// LeaseWaited: the Source waited for another member of its fleet that
	// held the refresh lease, until it adopted that member's token or took
	// the lease itself; Duration is how long.
	LeaseWaited
	// LeaseTakenOver: the Source took over a refresh lease whose holder had
	// stopped renewing it (it died, hung or paused past the lease TTL).
	LeaseTakenOver
	// RefreshAttemptFailed: one Refresher call of a refresh failed
	// transiently (Err) and the refresh tries again after Duration; its
	// waiters keep waiting (see WithRefreshAttempts). Attempts is the number
	// of calls made so far.
	RefreshAttemptFailed
	// TokenRestored: the Source put its token back into the fleet's shared
	// record, which was behind it: a commit of this Source had failed (the
	// coordinator did not answer), or the record was lost or rolled back
	// (a Redis restart without persistence, a failover to a lagging
	// replica). See Restorer.
	TokenRestored
)

var eventKindNames = [...]string{
	RefreshStarted:       "RefreshStarted",
	RefreshSucceeded:     "RefreshSucceeded",
	RefreshFailed:        "RefreshFailed",
	ReauthRequired:       "ReauthRequired",
	StoreFailed:          "StoreFailed",
	TokenLoaded:          "TokenLoaded",
	TokenSet:             "TokenSet",
	RefreshRateLimited:   "RefreshRateLimited",
	RefreshUnchanged:     "RefreshUnchanged",
	TokenAdopted:         "TokenAdopted",
	LeaseWaited:          "LeaseWaited",
	LeaseTakenOver:       "LeaseTakenOver",
	RefreshAttemptFailed: "RefreshAttemptFailed",
	TokenRestored:        "TokenRestored",
}

// String returns the constant's name, such as "RefreshSucceeded".
func (k EventKind) String() string {
	if k > 0 && int(k) < len(eventKindNames) {
		return eventKindNames[k]
	}
	return "EventKind(" + strconv.Itoa(int(k)) + ")"
}

// Event describes one thing a Source did. It carries no token, only facts
// suitable for logs and metrics.
type Event struct {
	// Kind says what happened.
	Kind EventKind
	// Refresh identifies the refresh the event belongs to: a number unique
	// among the refreshes of one Source, the same on every event of one
	// refresh (RefreshStarted, the lease events, TokenLoaded, StoreFailed,
	// its result, and a late result after the refresh timeout) and in
	// RefreshInfo.ID and the calls of RefreshHooks. 0 for events outside a
	// refresh: TokenSet, RefreshRateLimited, and StoreFailed after SetToken.
	Refresh uint64
	// Time is when the event happened, by the Source's clock.
	Time time.Time
	// Duration is how long the refresh took, for RefreshSucceeded,
	// RefreshFailed and ReauthRequired; otherwise 0.
	Duration time.Duration
	// Err is the failure, for RefreshFailed, ReauthRequired and StoreFailed.
	Err error
	// Waiters is how many callers blocked on this refresh, for
	// RefreshSucceeded, RefreshFailed and ReauthRequired.
	Waiters int
	// Forced reports that the refresh was requested through Source.Refresh
	// because a server rejected the current token.
	Forced bool
	// Background reports an early refresh that no caller waited for when it
	// started.
	Background bool
	// Expiry is the new token's expiry, for RefreshSucceeded, TokenLoaded
	// and TokenSet (zero: never expires).
	Expiry time.Time
	// Attempts is how many Refresher calls the refresh made, for
	// RefreshSucceeded, RefreshFailed, RefreshUnchanged, ReauthRequired and
	// RefreshAttemptFailed; 0 for a refresh that made none.
	Attempts int
	// Generation counts the tokens the Source has installed; it is the
	// generation of the current token after the event.
	Generation uint64
}

// Stats is a snapshot of a Source's counters, cheap enough to read for every
// metrics scrape.
type Stats struct {
	// Refreshes counts successful Refresher calls that changed the token
	// (a Refresher handing back the token it was given is not counted).
	Refreshes uint64
	// Failures counts failed refreshes (including failed store loads and
	// Permanent errors).
	Failures uint64
	// Waiting is the number of callers blocked on a refresh right now.
	Waiting int64
	// Waited counts the callers that have blocked on a refresh, in total.
	Waited uint64
	// RateLimited counts forced refreshes skipped by the minimum refresh
	// interval.
	RateLimited uint64
	// StoreFailures counts failed Store saves.
	StoreFailures uint64
	// Unchanged counts forced refreshes that returned the rejected token
	// (ErrUnchangedToken); they are counted in Failures too.
	Unchanged uint64
	// Adopted counts tokens taken from the fleet's shared record (a peer's
	// refresh) instead of calling the Refresher.
	Adopted uint64
	// InFlight reports whether a refresh is running now.
	InFlight bool
	// ReauthRequired reports whether the Source is waiting for SetToken.
	ReauthRequired bool
	// Generation counts the tokens the Source has installed.
	Generation uint64
}
