package tokensource

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// runCoordinated is run for a Source whose Store is a Coordinator: the
// flight's token comes from the fleet's shared record when a peer has
// already replaced prev, and from this Source's Refresher only under the
// fleet's lease, when the record read under that lease still needs it.
//
// A record needs a refresh when its token is not usable (missing, invalid,
// inside its expiry leeway) or when it is prev itself: the token this Source
// saw expire, enter its early window, or be rejected. Anything else in the
// record is newer than prev, and adopting it is what makes one Refresher call
// per expiry fleet-wide (contract item 16).
func (s *Source) runCoordinated(ctx, wctx context.Context, f *flight, prev, current *Token) outcome {
	c := s.coord
	var out outcome
	var waitStart time.Time
	for {
		rec, err := c.LoadRecord(wctx)
		if err != nil {
			return s.runUncoordinated(ctx, wctx, f, prev, current, err)
		}
		out.loadOK = true
		cand, seed, need := s.decide(rec, prev)
		if !need && !seed {
			s.leaseWaited(f, waitStart)
			return s.adopt(out, cand, prev)
		}
		lease, err := c.TryLease(wctx)
		if err != nil {
			return s.runUncoordinated(ctx, wctx, f, prev, current, err)
		}
		if lease == nil {
			// A peer is refreshing: wait for its commit (or for its lease
			// to end), then decide again.
			if waitStart.IsZero() {
				waitStart = s.now()
			}
			if err := c.Wait(wctx, rec.Version); err != nil {
				out.err = s.waitError(wctx, err)
				return out
			}
			continue
		}
		s.leaseWaited(f, waitStart)
		waitStart = time.Time{}
		if lease.TakenOver() {
			s.log.Warn("tokensource: took over the fleet's refresh lease from a holder that stopped renewing it")
			s.emit(Event{Kind: LeaseTakenOver, Refresh: f.id, Time: s.now(), Forced: f.forced, Background: f.background, Generation: f.gen})
		}

		rec = lease.Record()
		cand, seed, need = s.decide(rec, prev)
		if !need && !seed {
			s.releaseLease(ctx, lease)
			return s.adopt(out, cand, prev)
		}
		if !need && seed {
			// The Store is empty and this Source has a usable login token:
			// it becomes the fleet's, saved before it is handed out.
			sctx, cancel := s.saveContext(ctx)
			err := lease.Commit(sctx, cand)
			cancel()
			if errors.Is(err, ErrLeaseLost) {
				continue // a peer stored a token meanwhile: look again
			}
			out.saveErr = err
			out.tok = cand
			return out
		}
		if cand != nil {
			// Present the newest refresh token of the fleet.
			current = cand
		}
		return s.refreshUnderLease(ctx, f, lease, prev, current, out)
	}
}

// leaseWaited reports a wait for a peer's lease that began at start (zero:
// there was none), whether it ended in adoption or in this Source's lease.
func (s *Source) leaseWaited(f *flight, start time.Time) {
	if start.IsZero() {
		return
	}
	now := s.now()
	s.emit(Event{Kind: LeaseWaited, Refresh: f.id, Time: now, Duration: now.Sub(start), Forced: f.forced,
		Background: f.background, Generation: f.gen})
}

// decide looks at the shared record for a flight that replaces prev. cand is
// the record's token (WithInitialToken's when the record is empty: seed).
// need reports that cand must be refreshed; with seed and !need, cand is a
// usable login token for an empty record.
func (s *Source) decide(rec Record, prev *Token) (cand *Token, seed, need bool) {
	cand = rec.Token
	if cand == nil && s.opts.initial != nil {
		c := *s.opts.initial
		cand, seed = &c, true
	} else if cand != nil {
		c := *cand
		cand = &c
	}
	usable := s.usable(cand, s.now()) && (prev == nil || cand.AccessToken != prev.AccessToken)
	return cand, seed, !usable
}

// adopt makes the shared record's token the flight's result: a peer's
// refresh, or, for a Source that had no token yet, what it loads at start.
func (s *Source) adopt(out outcome, tok, prev *Token) outcome {
	out.tok = tok
	if prev == nil {
		out.fromStore, out.candidate = true, tok
	} else {
		out.adopted = tok.AccessToken != prev.AccessToken
	}
	return out
}

// refreshUnderLease calls the Refresher while this Source holds the fleet's
// lease and commits the result before anyone sees it.
func (s *Source) refreshUnderLease(ctx context.Context, f *flight, lease Lease, prev, current *Token, out outcome) outcome {
	// A Refresher still running at the refresh timeout gives up the lease,
	// so that a hung call cannot stall the fleet; a late result may still
	// be committed (Lease.Commit allows it while nobody else has).
	rc := s.callRefresher(ctx, f, prev, current, func() { s.releaseLease(ctx, lease) })
	tok, refused, err, late := rc.tok, rc.refused, rc.err, rc.late
	out.err, out.permanent, out.unchanged = err, rc.permanent, errors.Is(err, ErrUnchangedToken)
	if late && !s.reoccupy(f) {
		out.superseded = true
		s.releaseLease(ctx, lease)
		return out
	}
	if err != nil {
		if refused != nil && refused.RefreshToken != "" && (current == nil || refused.RefreshToken != current.RefreshToken) {
			// The Refresher may have consumed current's refresh token: the
			// fleet must present the new one next.
			out.rotated = refused.RefreshToken
			out.saveErr = s.commit(ctx, lease, withRefreshToken(current, out.rotated))
			return out
		}
		s.releaseLease(ctx, lease)
		return out
	}
	out.tok = tok
	out.refreshed = prev == nil || tok.AccessToken != prev.AccessToken
	if cerr := s.commit(ctx, lease, tok); cerr != nil {
		if errors.Is(cerr, ErrLeaseLost) {
			// Another member refreshed after this one's lease lapsed (this
			// process paused, say). Its commit is the fleet's token now.
			rctx, cancel := s.saveContext(ctx)
			rec, lerr := s.coord.LoadRecord(rctx)
			cancel()
			if lerr == nil {
				if cand, _, need := s.decide(rec, prev); !need {
					s.log.Warn("tokensource: lost the fleet's refresh lease during the refresh; adopting the token a peer committed")
					out.refreshed = false
					return s.adopt(out, cand, prev)
				}
			}
		}
		out.saveErr = cerr
	}
	return out
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
func (s *Source) runUncoordinated(ctx, wctx context.Context, f *flight, prev, current *Token, err error) outcome {
	var out outcome
	if wctx.Err() != nil {
		out.err = s.waitError(wctx, err)
		return out
	}
	if !s.opts.uncoordinated || !errors.Is(err, ErrCoordinatorUnavailable) {
		out.err = fmt.Errorf("tokensource: not refreshing without the fleet's lease: %w", err)
		return out
	}
	s.log.Warn("tokensource: coordinator unavailable; refreshing locally (WithUncoordinatedRefresh)", "error", err)
	rc := s.callRefresher(ctx, f, prev, current, nil)
	tok, rerr, late := rc.tok, rc.err, rc.late
	out.err, out.permanent, out.unchanged = rerr, rc.permanent, errors.Is(rerr, ErrUnchangedToken)
	if late && !s.reoccupy(f) {
		out.superseded = true
		return out
	}
	if rerr == nil {
		out.tok = tok
		out.refreshed = prev == nil || tok.AccessToken != prev.AccessToken
		out.saveErr = s.save(ctx, tok) // best effort: the coordinator is likely still down
	}
	return out
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
