package tokensource

import (
	"errors"
	"time"
)

// apply makes res the Source's state and counts it, under s.mu (which it
// takes), then releases f's waiters and ends f. The counters change before
// the waiters are released, so that a caller holding the result already
// sees it in Stats. It returns what report needs: the result's Event
// (without its kind), whether the refresh timeout had already released the
// waiters (and reported the failure), and the time to the next attempt.
func (s *Source) apply(f *flight, res result) (ev Event, released bool, retryIn time.Duration) {
	now := s.now()
	s.mu.Lock()
	if s.flight == f {
		s.flight = nil
	}
	if s.running == f { // not for SetToken, which may overtake a timed-out Refresher
		s.running = nil
		s.inFlight.Store(false)
	}
	if res.kind == superseded {
		s.mu.Unlock()
		close(f.end)
		return ev, true, 0
	}
	if res.storeRead {
		s.loaded = true
		if res.err != nil && res.loaded != nil {
			// Keep the loaded token even though it is unusable: the next
			// refresh needs its RefreshToken.
			s.installLocked(s.newState(res.loaded, s.cur.Load().gen+1, now))
		}
	}
	switch res.kind {
	case set:
		// A login: it ends the re-authentication state and the rate limit.
		s.reauthErr, s.guard = nil, stormGuard{}
		s.reauth.Store(false)
		fallthrough
	case refreshed, loaded, adopted:
		s.installLocked(s.newState(res.tok, s.cur.Load().gen+1, now))
		s.holdLocked(res.tok, res.ver, res.saveErr)
		s.failures, s.lastErr, s.retryAt, s.rotated = 0, nil, time.Time{}, ""
		if f.forced && f.attempts > 0 {
			s.guard.spend(now, s.opts.minRefreshInterval)
		}
	case declined:
		// Neither a success nor a failure: the consultation changes nothing.
	case permanent:
		s.reauthErr = res.err
		s.reauth.Store(true)
		// No more refreshes: serve the still-valid token (if any) from the
		// hot path until it goes stale.
		st := s.cur.Load()
		s.installLocked(st.withFreshUntil(st.staleAt))
	default: // failed, unchanged
		if res.rotated != "" {
			s.rotated = res.rotated
			if res.ver > 0 {
				// The record must not fall behind the rotation either: a
				// commit that failed stays pending like a refreshed token's.
				s.holdLocked(res.kept, res.ver, res.saveErr)
			}
		}
		if f.released {
			s.serveUntilRetryLocked() // the timeout has counted the failure and backed off
			break
		}
		s.backOffLocked(now, res.err)
		if f.forced && res.kind == unchanged {
			// The Refresher will hand back the same token for a while:
			// the storm guard counts it like a refresh.
			s.guard.spend(now, s.opts.minRefreshInterval)
		}
	}
	s.countLocked(f, res)
	ev = f.event(0, now, s.cur.Load().gen)
	ev.Err, ev.Waiters = res.err, f.waiters
	released, retryIn = f.released, s.retryAt.Sub(now)
	if released {
		ev.Waiters = 0 // the timeout already reported them, with its failure
	} else {
		f.tok, f.err, f.refreshed = res.tok, res.err, res.kind == refreshed
	}
	s.mu.Unlock()
	if !released {
		close(f.done)
	}
	close(f.end)
	return ev, released, retryIn
}

// countLocked counts res in the Source's Stats. s.mu must be held.
func (s *Source) countLocked(f *flight, res result) {
	switch {
	case res.kind == refreshed && res.changed:
		s.refreshes.Add(1)
	case res.kind == adopted:
		s.adopted.Add(1)
	case res.kind == declined:
	case res.err != nil && !f.released:
		s.failed.Add(1)
	}
	if res.kind == unchanged {
		s.unchanged.Add(1)
	}
	if res.saveErr != nil {
		s.storeFailures.Add(1)
	}
}

// backOffLocked records a failed refresh: callers that need a new token get
// err at once until the backoff (which grows with consecutive failures)
// ends. s.mu must be held.
func (s *Source) backOffLocked(now time.Time, err error) {
	s.failures++
	d := s.backoff(s.failures)
	if errors.Is(err, ErrCoordinatorUnavailable) {
		// The fleet is healthy again as soon as its coordinator answers:
		// its members must not sit out a backoff grown during the outage.
		d = s.coordBackoff(s.failures)
	}
	s.retryAt = now.Add(d)
	s.lastErr = err
	s.serveUntilRetryLocked()
}

// serveUntilRetryLocked keeps a still-valid current token on the hot path
// until the backoff ends (then one more background attempt) or it goes
// stale. s.mu must be held.
func (s *Source) serveUntilRetryLocked() {
	st, until := s.cur.Load(), s.retryAt
	if until.Before(st.refreshAt) {
		until = st.refreshAt
	}
	if st.staleAt.Before(until) {
		until = st.staleAt
	}
	s.installLocked(st.withFreshUntil(until))
}

// releaseAtTimeout hands a timeout error to the waiters of f while its
// Refresher is still running, and backs off, under s.mu (which it takes).
// No other refresh starts until that Refresher returns (s.running stays f).
func (s *Source) releaseAtTimeout(f *flight) {
	err := &timeoutError{after: s.opts.refreshTimeout, err: errNotReturned}
	now := s.now()
	s.mu.Lock()
	if s.flight == f {
		s.flight = nil
	}
	f.released = true
	f.err = err
	s.backOffLocked(now, err)
	ev := f.event(RefreshFailed, now, s.cur.Load().gen)
	ev.Duration, ev.Err, ev.Waiters, ev.Attempts = s.opts.refreshTimeout, err, f.waiters, f.attempts
	s.failed.Add(1)
	s.mu.Unlock()
	close(f.done)

	s.log.Warn("tokensource: token refresh timed out", "refresh_timeout", s.opts.refreshTimeout, "waiters", ev.Waiters)
	s.emit(ev)
}

// unchangedMsg is the warning for a Refresher that handed back the rejected
// token.
const unchangedMsg = "tokensource: the refresh returned the access token the server had just rejected; " +
	"the Refresher probably caches tokens (FromOAuth2 around an oauth2.ReuseTokenSource, as " +
	"clientcredentials.Config.TokenSource and oauth2.Config.TokenSource return): use " +
	"tokensource.ClientCredentials or tokensource.OAuth2Refresher, which obtain a new token on every refresh"

// report logs the result of f and tells the observers, without any lock
// held. start is when the flight began; ev, released and retryIn are what
// apply returned.
func (s *Source) report(f *flight, start time.Time, res result, ev Event, released bool, retryIn time.Duration) {
	if res.kind == superseded {
		s.log.Debug("tokensource: late refresh result dropped: SetToken installed a newer token")
		return
	}
	if res.fromStore {
		s.log.Debug("tokensource: loaded token from store", "expiry", expiryString(res.loaded.Expiry))
		s.emit(Event{Kind: TokenLoaded, Refresh: f.id, Time: ev.Time, Expiry: res.loaded.Expiry, Generation: ev.Generation})
	}
	if res.saveErr != nil {
		s.log.Error("tokensource: saving the token failed; using it anyway", "error", res.saveErr)
		s.emit(Event{Kind: StoreFailed, Refresh: f.id, Time: ev.Time, Err: res.saveErr, Generation: ev.Generation})
	}
	ev.Duration, ev.Attempts = ev.Time.Sub(start), f.attempts
	if res.tok != nil {
		ev.Expiry = res.tok.Expiry
	}
	switch res.kind {
	case set:
		s.log.Debug("tokensource: token set", "expiry", expiryString(ev.Expiry))
		ev.Kind, ev.Duration = TokenSet, 0
	case adopted:
		s.log.Debug("tokensource: adopted the token a peer committed", "expiry", expiryString(ev.Expiry),
			"duration", ev.Duration, "waiters", ev.Waiters)
		ev.Kind = TokenAdopted
	case refreshed:
		s.log.Debug("tokensource: token refreshed", "expiry", expiryString(ev.Expiry), "duration", ev.Duration,
			"waiters", ev.Waiters, "forced", f.forced, "background", f.background, "late", released, "changed", res.changed)
		ev.Kind = RefreshSucceeded
	case permanent:
		s.log.Error("tokensource: re-authentication required", "error", res.err, "waiters", ev.Waiters)
		ev.Kind = ReauthRequired
	case unchanged:
		if s.unchangedWarned.CompareAndSwap(false, true) {
			s.log.Warn(unchangedMsg, "retry_in", retryIn, "waiters", ev.Waiters)
		} else {
			s.log.Debug(unchangedMsg, "retry_in", retryIn, "waiters", ev.Waiters)
		}
		ev.Kind = RefreshUnchanged
	case failed:
		if released {
			s.log.Debug("tokensource: late result of a timed-out refresh failed too", "error", res.err)
			return
		}
		s.log.Warn("tokensource: token refresh failed", "error", res.err, "retry_in", retryIn,
			"waiters", ev.Waiters, "background", f.background)
		ev.Kind = RefreshFailed
	default: // loaded: reported as TokenLoaded (from the Store) or not at all; declined: as RefreshRateLimited
		return
	}
	s.emit(ev)
}

// event returns an Event of kind k about f, at t, of generation gen.
func (f *flight) event(k EventKind, t time.Time, gen uint64) Event {
	return Event{Kind: k, Refresh: f.id, Time: t, Forced: f.forced, Background: f.background, Generation: gen}
}

// emit hands e to every observer, in the order they were given.
func (s *Source) emit(e Event) {
	for _, o := range s.opts.observers {
		o(e)
	}
}
