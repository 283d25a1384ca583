package main

import (
	"context"
	"sync"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// tokenTracker follows a Source's tokens through its observer events and
// tells apart why each token was replaced: early in the background, forced
// by a server's rejection, or after it had expired (a caller then waited).
// That is what makes "renewed before expiry" and "one forced refresh per
// revocation" checkable: a refresh storm would show as many forced or
// expired replacements. It also records each refresh's token requests
// (Event.Attempts) and, through its wait hook (RefreshHooks.Wait), how long
// callers waited for it.
type tokenTracker struct {
	// onRefreshed, if set, is called with the time of every successful
	// refresh after the first token, without the tracker's lock held.
	onRefreshed func(time.Time)

	mu     sync.Mutex
	have   bool      // a token has been obtained
	expiry time.Time // the current token's; zero: never expires
	counts tokenCounts
	// For the refreshes in progress, by Event.Refresh: when the first
	// caller started to wait for it, and when its first Refresher call
	// failed. ended holds the refreshes that are over, so that a caller
	// that joins one just as it ends does not start a wait of its own.
	joined   map[uint64]time.Time
	failedAt map[uint64]time.Time
	ended    map[uint64]bool
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
	// attemptsRetried counts the failed Refresher calls that their refresh
	// tried again (RefreshAttemptFailed); failedCalls every failed
	// Refresher call, tried again or not.
	attemptsRetried int
	failedCalls     int
	flights         []flightRecord // the refreshes after the login, in the order they ended
}

// flightRecord is one refresh after the login, as its events told it.
type flightRecord struct {
	end      time.Time // its result event's time
	ok       bool      // it installed a token
	attempts int       // its Refresher calls (Event.Attempts)
	// firstFailure is when its first Refresher call failed; zero if none
	// did.
	firstFailure time.Time
	waiters      int
	wait         time.Duration // the longest a caller waited for it
}

func (t *tokenTracker) observe(ev tokensource.Event) {
	t.mu.Lock()
	refreshed := t.record(ev)
	t.mu.Unlock()
	if refreshed && t.onRefreshed != nil {
		t.onRefreshed(ev.Time)
	}
}

// wait is the Source's RefreshHooks.Wait: a caller starts to wait for
// refresh.
func (t *tokenTracker) wait(_ context.Context, refresh uint64) {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.joined[refresh]; ok || t.ended[refresh] {
		return
	}
	if t.joined == nil {
		t.joined = map[uint64]time.Time{}
	}
	t.joined[refresh] = now
}

// record counts ev and reports whether it is a successful refresh after
// the first token. t.mu must be held.
func (t *tokenTracker) record(ev tokensource.Event) bool {
	c := &t.counts
	login := !t.have
	switch ev.Kind {
	case tokensource.RefreshAttemptFailed:
		c.attemptsRetried++
		c.failedCalls++
		t.failed(ev)
		return false
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
		if ev.Attempts > 0 { // its last Refresher call failed
			c.failedCalls++
			t.failed(ev)
		}
	case tokensource.RefreshUnchanged:
	default:
		return false
	}
	f := flightRecord{end: ev.Time, ok: ev.Kind == tokensource.RefreshSucceeded, attempts: ev.Attempts,
		waiters: ev.Waiters, firstFailure: t.failedAt[ev.Refresh]}
	if at, ok := t.joined[ev.Refresh]; ok && ev.Time.After(at) {
		f.wait = ev.Time.Sub(at)
	}
	delete(t.joined, ev.Refresh)
	delete(t.failedAt, ev.Refresh)
	if t.ended == nil {
		t.ended = map[uint64]bool{}
	}
	t.ended[ev.Refresh] = true
	if login { // the first token, and its callers, are not the load's
		return false
	}
	c.maxWaiters = max(c.maxWaiters, ev.Waiters)
	c.flights = append(c.flights, f)
	return f.ok
}

// failed notes the first failed Refresher call of ev's refresh.
func (t *tokenTracker) failed(ev tokensource.Event) {
	if _, ok := t.failedAt[ev.Refresh]; ok {
		return
	}
	if t.failedAt == nil {
		t.failedAt = map[uint64]time.Time{}
	}
	t.failedAt[ev.Refresh] = ev.Time
}

// tokenSummary is what tokenTracker saw until the end of the load.
type tokenSummary struct {
	tokenCounts
	refreshes   int           // successful, after the login
	lifetimes   int           // tokens whose lifetime ended during the run
	longestWait time.Duration // the longest a caller waited for a refresh
}

// summary counts the token lifetimes that ended up to end: the tokens
// replaced, plus the current one if it has expired by end (the refresh that
// replaces it may not have happened yet).
func (t *tokenTracker) summary(end time.Time) tokenSummary {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.counts
	c.flights = append([]flightRecord(nil), c.flights...)
	s := tokenSummary{tokenCounts: c, refreshes: c.expired + c.early + c.forced + c.other}
	s.lifetimes = s.refreshes
	if t.have && !t.expiry.IsZero() && !end.Before(t.expiry) {
		s.lifetimes++
	}
	for _, f := range c.flights {
		s.longestWait = max(s.longestWait, f.wait)
	}
	// Callers still waiting for a refresh that has not ended.
	for _, at := range t.joined {
		if end.After(at) {
			s.longestWait = max(s.longestWait, end.Sub(at))
		}
	}
	return s
}
