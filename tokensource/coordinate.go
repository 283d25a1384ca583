package tokensource

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// runCoordinated obtains the token of a Source whose Store is a
// Coordinator: from the fleet's shared record when a peer has already
// replaced prev, and from this Source's Refresher only under the fleet's
// lease, when the record read under that lease still needs it (see decide).
func (s *Source) runCoordinated(ctx, wctx context.Context, f *flight, prev, current *Token) result {
	c := s.coord
	var waitStart time.Time
	restored, waited := false, false
	var graced graceMark // the flight's last repair grace
	for {
		rec, err := s.loadRecord(wctx)
		if err != nil {
			return s.runUncoordinated(ctx, wctx, f, prev, current, err)
		}
		if !restored && s.restoreBehind(wctx, rec) {
			// This Source's token is newer than the record (its commit did
			// not land, or the record went back): it is the fleet's again.
			restored = true
			continue
		}
		if _, behind := s.behind(rec); behind {
			// The restore did not take. The record's token is older than
			// this Source's: adopting it would drop the newest refresh
			// token, and presenting its refresh token would spend it twice.
			return result{kind: failed, err: errStillBehind}
		}
		cand, seed, need := s.decide(rec, prev)
		adoptable := !need && !seed
		if adoptable && !lookForPeer(f, waited) {
			s.leaseWaited(f, waitStart)
			return s.adopt(cand, prev, rec.Version)
		}
		lease, err := c.TryLease(wctx)
		switch {
		case err != nil && adoptable && wctx.Err() == nil:
			return s.adopt(cand, prev, rec.Version) // the look for a peer is moot
		case err != nil:
			return s.runUncoordinated(ctx, wctx, f, prev, current, err)
		case lease == nil:
			// A peer is refreshing: wait for its commit (or for its lease
			// to end), then decide again.
			if waitStart.IsZero() {
				waitStart = s.now()
			}
			err := s.waitForPeer(wctx, rec.Version, adoptable)
			switch {
			case wctx.Err() != nil:
				return result{kind: failed, err: s.waitError(wctx, err)}
			case err != nil && adoptable:
				// The look ended without a commit: the record's token
				// stands (most likely only this member's was rejected).
				s.leaseWaited(f, waitStart)
				return s.adopt(cand, prev, rec.Version)
			case err != nil:
				return result{kind: failed, err: s.waitError(wctx, err)}
			}
			waited = true
			continue
		}
		s.leaseWaited(f, waitStart)
		waitStart = time.Time{}
		if lease.TakenOver() {
			s.log.Warn("tokensource: took over the fleet's refresh lease from a holder that stopped renewing it")
			s.emit(f.event(LeaseTakenOver, s.now(), f.gen))
		}
		lrec := lease.Record()
		s.mu.Lock()
		s.noteLocked(lrec.Version)
		s.mu.Unlock()
		cand, seed, need = s.decide(lrec, prev)
		switch {
		case !need && !seed:
			s.releaseLease(ctx, lease)
			return s.adopt(cand, prev, lrec.Version)
		case !need:
			// The Store is empty and this Source has a usable login token:
			// it becomes the fleet's, saved before it is handed out.
			err := s.commit(ctx, lease, cand)
			if errors.Is(err, ErrLeaseLost) {
				continue // a peer stored a token meanwhile: look again
			}
			return result{kind: loaded, tok: cand, saveErr: err, ver: lrec.Version + 1}
		}
		if cand != nil {
			// Present the newest refresh token of the fleet.
			current = cand
		}
		if s.graceDue(lease, current, restored, graced) {
			// A newer token may live in a member's memory only: give it
			// the time to come back before spending this refresh token.
			moved, err := s.waitForCandidates(wctx, lease)
			graced = s.markGrace(lease)
			if err != nil || moved {
				s.releaseLease(ctx, lease)
			}
			switch {
			case err != nil:
				return s.runUncoordinated(ctx, wctx, f, prev, current, err)
			case moved:
				continue
			}
		}
		if !leaseHeld(lease) {
			// Paused past the lease's lifetime before presenting: another
			// member may hold it now and present this refresh token.
			s.log.Warn("tokensource: the fleet's refresh lease expired before this member presented its refresh token (was the process paused?); looking again")
			s.releaseLease(ctx, lease)
			continue
		}
		return s.refresh(ctx, wctx, f, prev, current, s.underLease(lease))
	}
}

// leaseHeld reports whether lease is certainly still held: a Lease without
// a lifetime (ExpiringLease) always is.
func leaseHeld(lease Lease) bool {
	el, ok := lease.(ExpiringLease)
	return !ok || time.Now().Before(el.Expires())
}

// leaseWaited reports a wait for a peer's lease that began at start (zero:
// there was none), whether it ended in adoption or in this Source's lease.
func (s *Source) leaseWaited(f *flight, start time.Time) {
	if start.IsZero() {
		return
	}
	ev := f.event(LeaseWaited, s.now(), f.gen)
	ev.Duration = ev.Time.Sub(start)
	s.emit(ev)
}

// decide looks at the shared record for a flight that replaces prev. cand is
// the record's token (WithInitialToken's when the record is empty: seed).
// need reports that cand must be refreshed: it is not usable (missing,
// invalid, inside its expiry leeway) or it is prev itself, the token this
// Source saw expire, enter its early window, or be rejected. Anything else is
// newer than prev, and adopting it is what makes one Refresher call per
// expiry, or per rejected token, fleet-wide. With seed and !need, cand is a
// usable login token for an empty record.
func (s *Source) decide(rec Record, prev *Token) (cand *Token, seed, need bool) {
	cand = rec.Token.clone()
	if cand == nil && s.opts.initial != nil {
		cand, seed = s.opts.initial.clone(), true
	}
	usable := s.usable(cand, s.now()) && (prev == nil || cand.AccessToken != prev.AccessToken)
	return cand, seed, !usable
}

// adopt makes the shared record's token, at version ver, the flight's
// result: a peer's refresh, or, for a Source that had no token yet, what it
// loads at start.
func (s *Source) adopt(tok, prev *Token, ver uint64) result {
	if prev == nil {
		return result{kind: loaded, tok: tok, loaded: tok, storeRead: true, fromStore: true, ver: ver}
	}
	return result{kind: adopted, tok: tok, ver: ver}
}

// underLease persists under the fleet's lease: a token is committed (fenced
// by the record's version) before anyone sees it, and the lease is given up
// with it.
func (s *Source) underLease(lease Lease) persistence {
	return persistence{
		write:   func(ctx context.Context, t *Token) error { return s.commit(ctx, lease, t) },
		release: func(ctx context.Context) { s.releaseLease(ctx, lease) },
		held:    func() bool { return leaseHeld(lease) },
		ver:     lease.Record().Version + 1, // a Commit writes the next version
	}
}

// adoptAfterLostLease handles the refresh result res whose commit was
// refused: another member refreshed after this one's lease lapsed (this
// process paused, say), and its commit is the fleet's token now. If there is
// none yet (the member that took the lease over has not presented, or is
// waiting the repair grace), res stays pending at the version its commit
// would have written: a restore writes it only while nobody has committed
// since, and the member that took over then adopts it instead of presenting
// the refresh token res has already spent.
func (s *Source) adoptAfterLostLease(ctx context.Context, prev *Token, res result) result {
	rctx, cancel := s.saveContext(ctx)
	rec, err := s.coord.LoadRecord(rctx)
	cancel()
	if err == nil {
		if cand, _, need := s.decide(rec, prev); !need {
			s.log.Warn("tokensource: lost the fleet's refresh lease during the refresh; adopting the token a peer committed")
			return s.adopt(cand, prev, rec.Version)
		}
	}
	s.log.Warn("tokensource: lost the fleet's refresh lease during the refresh; keeping the result to put it back into the fleet's record")
	return res
}

// commit commits t under lease with a timeout of its own.
func (s *Source) commit(ctx context.Context, lease Lease, t *Token) error {
	sctx, cancel := s.saveContext(ctx)
	defer cancel()
	return lease.Commit(sctx, t)
}

// releaseLease gives up lease; a failure is logged (the lease then expires
// after its TTL).
func (s *Source) releaseLease(ctx context.Context, lease Lease) {
	sctx, cancel := s.saveContext(ctx)
	defer cancel()
	if err := lease.Release(sctx); err != nil {
		s.log.Warn("tokensource: releasing the fleet's refresh lease failed; it will expire", "error", err)
	}
}

// runUncoordinated handles a Coordinator that failed with err. Unless
// WithUncoordinatedRefresh allows it, the Source does not refresh without the
// fleet's lease: presenting a rotating refresh token a peer may present too
// would look like token theft to the authorization server.
func (s *Source) runUncoordinated(ctx, wctx context.Context, f *flight, prev, current *Token, err error) result {
	switch {
	case wctx.Err() != nil:
		return result{kind: failed, err: s.waitError(wctx, err)}
	case errors.Is(err, ErrStoreUnusable):
		return result{kind: failed, err: err} // the Store's own words: a mistake in its configuration
	}
	if !s.opts.uncoordinated || !errors.Is(err, ErrCoordinatorUnavailable) {
		return result{kind: failed, err: fmt.Errorf("tokensource: not refreshing without the fleet's lease: %w", err)}
	}
	s.log.Warn("tokensource: coordinator unavailable; refreshing locally (WithUncoordinatedRefresh)", "error", err)
	return s.refresh(ctx, wctx, f, prev, current, s.toStore())
}

// waitError is the flight's error when wctx ended while the Source waited
// for the fleet (or for the Coordinator).
func (s *Source) waitError(wctx context.Context, err error) error {
	switch cause := context.Cause(wctx); {
	case errors.Is(cause, ErrClosed):
		return fmt.Errorf("%w: stopped waiting for the fleet's refresh", ErrClosed)
	case errors.Is(cause, ErrRefreshTimeout):
		return &timeoutError{after: s.opts.refreshTimeout, err: fmt.Errorf("waiting for the fleet's refresh: %w", err)}
	}
	return fmt.Errorf("tokensource: waiting for the fleet's refresh: %w", err)
}

// coordinatorProbe bounds the first look at a Coordinator known to be down,
// so that a dead Redis costs a caller one short probe, not the client's whole
// dial-retry budget.
const coordinatorProbe = time.Second

// coordinatorRetry caps the backoff after failures of the Coordinator (the
// Source's, and between probes of a Coordinator known to be down), so that
// members recover within about a second of it answering again. A dead Redis
// still costs each Source at most one bounded probe per second.
const coordinatorRetry = time.Second

// coordBackoff is the backoff after the n-th consecutive failure of the
// Coordinator: the Source's backoff, capped by coordinatorRetry and then
// jittered like it, so that a fleet does not probe in lockstep. A backoff
// within the cap is kept as it is: it is within WithBackoff's maximum too.
func (s *Source) coordBackoff(n int) time.Duration {
	if d := s.backoff(n); d <= coordinatorRetry {
		return d
	}
	return coordinatorRetry/2 + rand.N(coordinatorRetry-coordinatorRetry/2+1)
}

// loadRecord reads the shared record, bounded by coordinatorProbe. While the
// Coordinator is known to be down (its last answer was
// ErrCoordinatorUnavailable) it is asked at most once per backoff period; in
// between, the last error comes back at once.
func (s *Source) loadRecord(wctx context.Context) (Record, error) {
	if err := s.coordinatorDown(); err != nil {
		return Record{}, err
	}
	return s.probeRecord(wctx)
}

// probeRecord reads the shared record, bounded by coordinatorProbe, and
// records whether the Coordinator answered (see loadRecord).
func (s *Source) probeRecord(wctx context.Context) (Record, error) {
	bound := min(coordinatorProbe, s.opts.refreshTimeout/2)
	ctx, cancel := context.WithTimeout(wctx, bound)
	defer cancel()
	rec, err := s.coord.LoadRecord(ctx)
	if err != nil && wctx.Err() == nil && ctx.Err() != nil {
		err = fmt.Errorf("%w: no answer within %v", ErrCoordinatorUnavailable, bound)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case err == nil:
		s.noteLocked(rec.Version)
		s.coordErr, s.coordFailures = nil, 0
	case errors.Is(err, ErrCoordinatorUnavailable):
		s.coordFailures++
		s.coordErr, s.coordDownUntil, s.coordFailedAt = err, s.now().Add(s.coordBackoff(s.coordFailures)), s.now()
	}
	return rec, err
}

// coordinatorDown returns the Coordinator's last error while it is known to
// be down (see loadRecord), else nil.
func (s *Source) coordinatorDown() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.coordErr != nil && s.now().Before(s.coordDownUntil) {
		return s.coordErr
	}
	return nil
}
