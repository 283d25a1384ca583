package tokensource

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"
)

// A flight (run) obtains a token (runLocal or runCoordinated), applies it to
// the Source's state (apply) and reports it (report): see "One refresh
// pipeline" in docs/design.md.

// resultKind says how a flight ended.
type resultKind uint8

const (
	refreshed  resultKind = iota + 1 // tok from the Refresher
	loaded                           // tok from the Store (or WithInitialToken), no Refresher call
	adopted                          // tok is one a peer of the fleet committed
	failed                           // err; the Source backs off
	unchanged                        // a failure that also arms the rate limit: err matches ErrUnchangedToken
	permanent                        // err requires re-authentication; no more refreshes
	superseded                       // a late result after SetToken installed a newer token: dropped, not saved
	set                              // tok from SetToken
	declined                         // a consultation found nothing newer: tok (unchanged) or err; nothing changes
)

// result is what a flight produced.
type result struct {
	kind    resultKind
	tok     *Token // refreshed, loaded, adopted
	err     error  // failed, unchanged, permanent
	changed bool   // refreshed: the access token differs from the one replaced (counted in Stats)
	// loaded is what the Store held on first use (storeRead), or
	// WithInitialToken's token when it was empty (!fromStore).
	loaded               *Token
	storeRead, fromStore bool
	saveErr              error // persisting failed; tok is used anyway
	// ver is tok's version in the fleet's shared record (0: none): the
	// record's for an adopted or loaded token, the one a commit writes for
	// a token committed under the lease, even if the commit failed (it is
	// pending: see repair.go).
	ver     uint64
	rotated string // the refresh token of a refused result: see Source.rotated
	kept    *Token // what is written for a rotated result: the replaced token carrying rotated, at ver
}

// run is the refresh goroutine of f. ctx bounds the Refresher call (the
// refresh timeout); wctx, derived from it, also ends at Close and bounds the
// steps that have not reached the authorization server. prev is the token
// being replaced (nil when there is none), current what the Refresher is
// given.
func (s *Source) run(ctx, wctx context.Context, f *flight, prev, current *Token) {
	start := s.now()
	var res result
	switch {
	case f.consult:
		res = s.runConsult(wctx, f, prev)
	case s.coord != nil:
		res = s.runCoordinated(ctx, wctx, f, prev, current)
	default:
		res = s.runLocal(ctx, wctx, f, prev, current)
	}
	ev, released, retryIn := s.apply(f, res)
	s.report(f, start, res, ev, released, retryIn)
}

// runLocal obtains the token of a Source without a Coordinator.
func (s *Source) runLocal(ctx, wctx context.Context, f *flight, prev, current *Token) result {
	var ld result // what the Store holds on first use
	if f.load {
		t, err := s.opts.store.Load(wctx)
		if err != nil {
			return result{kind: failed, err: fmt.Errorf("tokensource: loading the token store: %w", err)}
		}
		ld = result{kind: loaded, tok: t.clone(), storeRead: true, fromStore: t != nil}
		if t == nil {
			ld.tok = s.opts.initial
		}
		ld.loaded, prev, current = ld.tok, ld.tok, ld.tok
		if !f.forced && validateToken(ld.tok, s.now()) == nil {
			if !ld.fromStore {
				// The login token must be in the Store before it is used:
				// a restart before the first refresh would otherwise find
				// no refresh token and require a new login.
				ld.saveErr = s.save(ctx, ld.tok)
			}
			return ld
		}
	}
	res := s.refresh(ctx, wctx, f, prev, current, s.toStore())
	res.loaded, res.storeRead, res.fromStore = ld.loaded, ld.storeRead, ld.fromStore
	return res
}

// persistence is how a flight makes a token durable before anyone sees it,
// the one thing in which the ways of obtaining a token differ: write saves
// it to the Store (if any), or commits it under the fleet's lease; release
// gives a lease up without writing.
type persistence struct {
	write   func(ctx context.Context, t *Token) error
	release func(ctx context.Context)
	ver     uint64      // the version in the fleet's record that write gives a token (0: none)
	held    func() bool // nil, or whether a lease is still certainly held (see ExpiringLease)
}

// toStore persists to the Store, if there is one: for a Source without a
// Coordinator, and on a best-effort basis for one refreshing while its
// Coordinator is unavailable (WithUncoordinatedRefresh): not at all while it
// is known to be down, so that the token is used at once, not after a dial
// budget.
func (s *Source) toStore() persistence {
	return persistence{
		write: func(ctx context.Context, t *Token) error {
			if err := s.coordinatorDown(); err != nil {
				return err
			}
			return s.save(ctx, t)
		},
		release: func(context.Context) {},
	}
}

// refresh obtains f's token from the Refresher with current (prev is the
// token being replaced) and persists it through p. A transient failure is
// tried again, up to WithRefreshAttempts calls in all, within the refresh
// timeout (ctx) and until Close (wctx); the waiters keep waiting meanwhile,
// and a fleet's lease stays held (its Coordinator renews it).
func (s *Source) refresh(ctx, wctx context.Context, f *flight, prev, current *Token, p persistence) result {
	s.log.Debug("tokensource: refreshing token", "forced", f.forced, "background", f.background)
	s.emit(f.event(RefreshStarted, s.now(), f.gen))
	var res result
	var refused *Token
	inTime := true
	for {
		if f.attempts > 0 && p.held != nil && !p.held() {
			// Paused past the lease's lifetime between two attempts:
			// another member may be presenting this refresh token now.
			p.release(ctx)
			close(f.refDone)
			return result{kind: failed, err: errLeaseExpired}
		}
		f.attempts++
		res, refused, inTime = s.callRefresher(ctx, f, prev, current, p)
		if !inTime || !retryable(res) || f.attempts >= s.opts.refreshAttempts || !s.pause(ctx, wctx, f, res.err) {
			break
		}
	}
	close(f.refDone)
	switch {
	case !inTime && !s.reoccupy(f):
		p.release(ctx)
		return result{kind: superseded}
	case res.err == nil:
		// Persisted before any caller sees it: the Store must not fall
		// behind the refresh token servers have seen.
		res.ver = p.ver // committed, or pending if the write failed: see repair.go
		if res.saveErr = p.write(ctx, res.tok); errors.Is(res.saveErr, ErrLeaseLost) {
			return s.adoptAfterLostLease(ctx, prev, res)
		}
	case rotatedBy(refused, current):
		// The Refresher may have consumed current's refresh token: the
		// next refresh, here or in the fleet, must present the new one.
		res.rotated, res.kept, res.ver = refused.RefreshToken, withRefreshToken(current, refused.RefreshToken), p.ver
		res.saveErr = p.write(ctx, res.kept)
	default:
		p.release(ctx)
	}
	return res
}

// callRefresher makes one Refresher call for f and checks its result. At
// the refresh timeout it releases f's waiters (releaseAtTimeout) and gives
// up p's lease, then waits on for the late result: inTime is false.
func (s *Source) callRefresher(ctx context.Context, f *flight, prev, current *Token, p persistence) (res result, refused *Token, inTime bool) {
	f.called.Store(true)
	ch := s.startRefresher(ctx, current)
	r, inTime := awaitRefresher(ctx, ch)
	if !inTime {
		// Released at the timeout even if the Refresher is about to return
		// (its result follows). The lease is given up so that a hung call
		// cannot stall the fleet; a late result may still be committed.
		s.releaseAtTimeout(f)
		p.release(ctx)
		r = s.awaitLate(ch)
	}
	res, refused = s.checkResult(ctx, f, prev, r)
	return res, refused, inTime
}

// errLeaseExpired fails a flight whose lease expired between two Refresher
// attempts; it matches ErrCoordinatorUnavailable, a transient failure.
var errLeaseExpired = fmt.Errorf("tokensource: the fleet's refresh lease expired between two refresh attempts (was the process paused?): %w", ErrCoordinatorUnavailable)

// retryable reports whether a failed attempt may be tried again inside its
// flight: a transient failure, but not the refresh timeout (the flight is
// over), a panic or an invalid token (a bug, not an outage; an invalid token
// may also carry a rotated refresh token, persisted first, which gives up a
// fleet's lease) or an unchanged token (the Refresher would hand it back
// again: its kind is not failed).
func retryable(res result) bool {
	return res.kind == failed && !errors.Is(res.err, ErrRefreshTimeout) && !errors.Is(res.err, ErrRefresherPanicked) &&
		!errors.Is(res.err, ErrInvalidToken)
}

func rotatedBy(refused, current *Token) bool {
	return refused != nil && refused.RefreshToken != "" && (current == nil || refused.RefreshToken != current.RefreshToken)
}

// pause waits before f's next attempt after err: the Retry-After that err
// carries (see RetryAfter), capped by WithBackoff's maximum, or else the
// jittered backoff of WithBackoff for the attempts made so far. It reports
// false, at once, when the wait would outlast the refresh timeout, and when
// Close ends wctx meanwhile.
func (s *Source) pause(ctx, wctx context.Context, f *flight, err error) bool {
	d, ok := retryAfter(err)
	if ok {
		d = min(d, s.opts.backoffMax)
	} else {
		d = s.backoff(f.attempts)
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= d {
		return false
	}
	s.mu.Lock()
	f.attemptErr = err
	s.mu.Unlock()
	ev := f.event(RefreshAttemptFailed, s.now(), f.gen)
	ev.Err, ev.Attempts, ev.Duration = err, f.attempts, d
	s.log.Debug("tokensource: refresh attempt failed; trying again", "error", err, "attempt", f.attempts, "retry_in", d)
	s.emit(ev)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-wctx.Done():
		return false
	}
}

// save stores t in the Store, if there is one. It gets a timeout of its
// own, and ignores the cancellation of ctx (keeping its values), so neither
// a slow refresh nor Close can cut short the write of a rotated refresh
// token.
func (s *Source) save(ctx context.Context, t *Token) error {
	if s.opts.store == nil {
		return nil
	}
	sctx, cancel := s.saveContext(ctx)
	defer cancel()
	return s.opts.store.Save(sctx, t)
}

func (s *Source) saveContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), s.opts.refreshTimeout)
}

// withRefreshToken returns a copy of t (of the zero Token when t is nil)
// that holds the refresh token rt.
func withRefreshToken(t *Token, rt string) *Token {
	c := cmp.Or(t.clone(), &Token{})
	c.RefreshToken = rt
	return c
}

// reoccupy takes the flight slot back for the late result of f, so that it
// can be saved before anyone sees it, unless SetToken has installed a newer
// token meanwhile (or is saving one): then the late result is stale and
// reoccupy reports false. It takes s.mu.
func (s *Source) reoccupy(f *flight) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.flight != nil || s.cur.Load().gen != f.gen {
		return false
	}
	s.flight = f
	return true
}

// refreshTimedOut reports whether the refresh timeout of ctx has elapsed. It
// looks at the deadline too: a Refresher can return before ctx's timer has
// fired, with the error of a server that enforced the same deadline (gRPC
// propagates it).
func refreshTimedOut(ctx context.Context) bool {
	if ctx.Err() != nil {
		return context.Cause(ctx) == ErrRefreshTimeout
	}
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}
