package main

import (
	"sync"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// tokenTracker follows a Source's tokens through its observer events and
// tells apart why each token was replaced: early in the background, forced
// by a server's rejection, or after it had expired (a caller then waited).
// That is what makes "renewed before expiry" and "one forced refresh per
// revocation" checkable: a refresh storm would show as many forced or
// expired replacements.
type tokenTracker struct {
	mu          sync.Mutex
	have        bool      // a token has been obtained
	expiry      time.Time // the current token's; zero: never expires
	logins      int       // the first token (the Refresher logs in)
	expired     int       // refreshes that replaced a token past its Expiry
	early       int       // background refreshes of a still-valid token
	forced      int       // refreshes forced by a rejection
	other       int       // any other refresh of a still-valid token
	failures    int
	reauth      int
	maxWaiters  int    // most callers released by one refresh
	lastFailure string // the last refresh error, for the summary
}

func (t *tokenTracker) observe(ev tokensource.Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	login := !t.have
	switch ev.Kind {
	case tokensource.RefreshSucceeded:
		switch {
		case login:
			t.logins++
		case !t.expiry.IsZero() && !ev.Time.Before(t.expiry):
			t.expired++
		case ev.Forced:
			t.forced++
		case ev.Background:
			t.early++
		default:
			t.other++
		}
		t.have, t.expiry = true, ev.Expiry
	case tokensource.RefreshFailed:
		t.failures++
		t.lastFailure = ev.Err.Error()
	case tokensource.ReauthRequired:
		t.reauth++
		t.lastFailure = ev.Err.Error()
	default:
		return
	}
	if !login { // the callers of the login are not the load's
		t.maxWaiters = max(t.maxWaiters, ev.Waiters)
	}
}

// tokenSummary is what tokenTracker saw until the end of the load.
type tokenSummary struct {
	logins, refreshes             int // refreshes: successful, after the login
	expired, early, forced, other int
	failures, reauth              int
	lifetimes                     int // tokens whose lifetime ended during the run
	maxWaiters                    int
	lastFailure                   string
}

// summary counts the token lifetimes that ended up to end: the tokens
// replaced, plus the current one if it has expired by end (the refresh that
// replaces it may not have happened yet).
func (t *tokenTracker) summary(end time.Time) tokenSummary {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := tokenSummary{
		logins:      t.logins,
		refreshes:   t.expired + t.early + t.forced + t.other,
		expired:     t.expired,
		early:       t.early,
		forced:      t.forced,
		other:       t.other,
		failures:    t.failures,
		reauth:      t.reauth,
		maxWaiters:  t.maxWaiters,
		lastFailure: t.lastFailure,
	}
	s.lifetimes = s.refreshes
	if t.have && !t.expiry.IsZero() && !end.Before(t.expiry) {
		s.lifetimes++
	}
	return s
}
