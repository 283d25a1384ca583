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
	mu     sync.Mutex
	have   bool      // a token has been obtained
	expiry time.Time // the current token's; zero: never expires
	counts tokenCounts
}

// tokenCounts are what tokenTracker counts.
type tokenCounts struct {
	logins      int    // the first token (the Refresher logs in)
	expired     int    // refreshes that replaced a token past its Expiry
	early       int    // background refreshes of a still-valid token
	forced      int    // refreshes forced by a rejection
	other       int    // any other refresh of a still-valid token
	failures    int    // failed refreshes, re-authentication required included
	maxWaiters  int    // most callers released by one refresh after the login
	lastFailure string // the last refresh error, for the summary
}

func (t *tokenTracker) observe(ev tokensource.Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := &t.counts
	login := !t.have
	switch ev.Kind {
	case tokensource.RefreshSucceeded:
		switch {
		case login:
			c.logins++
		case !t.expiry.IsZero() && !ev.Time.Before(t.expiry):
			c.expired++
		case ev.Forced:
			c.forced++
		case ev.Background:
			c.early++
		default:
			c.other++
		}
		t.have, t.expiry = true, ev.Expiry
	case tokensource.RefreshFailed, tokensource.ReauthRequired:
		c.failures++
		c.lastFailure = ev.Err.Error()
	default:
		return
	}
	if !login { // the callers of the login are not the load's
		c.maxWaiters = max(c.maxWaiters, ev.Waiters)
	}
}

// tokenSummary is what tokenTracker saw until the end of the load.
type tokenSummary struct {
	tokenCounts
	refreshes int // successful, after the login
	lifetimes int // tokens whose lifetime ended during the run
}

// summary counts the token lifetimes that ended up to end: the tokens
// replaced, plus the current one if it has expired by end (the refresh that
// replaces it may not have happened yet).
func (t *tokenTracker) summary(end time.Time) tokenSummary {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.counts
	s := tokenSummary{tokenCounts: c, refreshes: c.expired + c.early + c.forced + c.other}
	s.lifetimes = s.refreshes
	if t.have && !t.expiry.IsZero() && !end.Before(t.expiry) {
		s.lifetimes++
	}
	return s
}
