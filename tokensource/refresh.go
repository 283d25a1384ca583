package tokensource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"runtime/debug"
	"time"
)

// outcome is what a refresh goroutine produced.
type outcome struct {
	tok       *Token
	err       error
	permanent bool   // err is a Permanent failure of the Refresher
	refreshed bool   // tok came from the Refresher and differs from the token it replaces
	unchanged bool   // err is ErrUnchangedToken
	adopted   bool   // tok is a peer's, taken from the Coordinator
	loadOK    bool   // the Store was loaded successfully
	candidate *Token // the token the load produced (from the Store or WithInitialToken)
	fromStore bool   // candidate came from the Store
	saveErr   error
	rotated   string // the refresh token of a refused result
	// superseded: the result arrived after the refresh timeout and after
	// SetToken installed a newer token; it was dropped, not saved.
	superseded bool
}

// errNotReturned is the cause in the timeout error of a Refresher that was
// still running when the refresh timeout released its waiters.
var errNotReturned = errors.New("the Refresher had not returned")

// ignoredContextGrace is how long after the refresh timeout a Refresher may
// take to return before the Source logs that it ignores its context.
const ignoredContextGrace = time.Second

// run obtains the flight's token: from the Store, from a peer of the fleet,
// or from the Refresher. ctx bounds the Refresher call (the refresh timeout);
// wctx, derived from it, also ends at Close and bounds the steps that have
// not reached the authorization server. prev is the token being replaced
// (nil when there is none), current what the Refresher is given.
func (s *Source) run(ctx, wctx context.Context, f *flight, prev, current *Token) {
	start := s.now()
	var out outcome
	if s.coord != nil {
		out = s.runCoordinated(ctx, wctx, f, prev, current)
	} else {
		out = s.runLocal(ctx, wctx, f, prev, current)
	}
	s.finish(f, start, out)
}

// runLocal is run for a Source without a Coordinator.
func (s *Source) runLocal(ctx, wctx context.Context, f *flight, prev, current *Token) outcome {
	var out outcome
	if f.load {
		loaded, err := s.opts.store.Load(wctx)
		if err != nil {
			out.err = fmt.Errorf("tokensource: loading the token store: %w", err)
			return out
		}
		out.loadOK = true
		out.fromStore = loaded != nil
		if loaded == nil {
			loaded = s.opts.initial
		} else {
			c := *loaded
			loaded = &c
		}
		out.candidate, current, prev = loaded, loaded, loaded
		if !f.forced && validateToken(loaded, s.now()) == nil {
			out.tok = loaded
			if !out.fromStore {
				// The login token must be in the Store before it is used:
				// a restart before the first refresh would otherwise find
				// no refresh token and require a new login.
				out.saveErr = s.save(ctx, loaded)
			}
			return out
		}
	}

	rc := s.callRefresher(ctx, f, prev, current, nil)
	tok, refused, err, late := rc.tok, rc.refused, rc.err, rc.late
	out.err, out.permanent, out.unchanged = err, rc.permanent, errors.Is(err, ErrUnchangedToken)
	if late && !s.reoccupy(f) {
		out.superseded = true
		return out
	}
	if refused != nil && refused.RefreshToken != "" && (current == nil || refused.RefreshToken != current.RefreshToken) {
		out.rotated = refused.RefreshToken
		if s.opts.store != nil {
			// Persist the rotated refresh token with the current token.
			out.saveErr = s.save(ctx, withRefreshToken(current, out.rotated))
		}
	}
	if err == nil {
		out.tok = tok
		out.refreshed = prev == nil || tok.AccessToken != prev.AccessToken
		if s.opts.store != nil {
			// Saved before any caller sees the token: with a rotating refresh
			// token, the Store must not fall behind what servers have seen.
			out.saveErr = s.save(ctx, tok)
		}
	}
	return out
}

// save stores t. It gets a timeout of its own, and ignores the cancellation
// of ctx (keeping its values), so neither a slow refresh nor Close can cut
// short the write of a rotated refresh token.
func (s *Source) save(ctx context.Context, t *Token) error {
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
	var c Token
	if t != nil {
		c = *t
	}
	c.RefreshToken = rt
	return &c
}

type refResult struct {
	tok *Token
	err error
}

// callRefresher calls the Refresher with current and checks its result; prev
// is the token being replaced. The returned error is the one every waiter
// receives. refused is a result the Source will not hand out (invalid, or
// the rejected token again), which may still carry a rotated refresh token.
//
// The refresh timeout holds even for a Refresher that ignores its context:
// when ctx ends first, the waiters are released with a timeout error,
// onTimeout runs (to give up a fleet lease), and callRefresher goes on
// waiting for the late result, which it reports with late set. A panic in
// the Refresher becomes the error of the refresh.
func (s *Source) callRefresher(ctx context.Context, f *flight, prev, current *Token, onTimeout func()) refCall {
	s.log.Debug("tokensource: refreshing token", "forced", f.forced, "background", f.background)
	s.emit(Event{Kind: RefreshStarted, Refresh: f.id, Time: s.now(), Forced: f.forced, Background: f.background, Generation: f.gen})

	ch := make(chan refResult, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				// Recovered rather than re-panicked in the callers (as
				// x/sync/singleflight does): the caller that started the
				// refresh may have left long ago, and a crash of the whole
				// process for a failed token request is out of proportion.
				// The stack is logged even without WithLogger: a panic is a
				// bug, and a discarded stack would leave nothing to fix it by.
				l := s.log
				if s.opts.logger == nil {
					l = slog.Default()
				}
				what := panicSummary(p)
				l.Error("tokensource: the Refresher panicked", "panic", what, "stack", string(debug.Stack()))
				ch <- refResult{err: fmt.Errorf("%w (%s)", ErrRefresherPanicked, what)}
			}
		}()
		t, err := s.refresher.Refresh(ctx, current)
		ch <- refResult{t, err}
	}()
	var r refResult
	late := false
	select {
	case r = <-ch:
	case <-ctx.Done():
		select {
		case r = <-ch:
		default:
			// Released now, at the timeout, whether or not the Refresher
			// is about to return: a cooperative one usually is, and its
			// (failed) result then follows at once.
			s.release(f, &timeoutError{after: s.opts.refreshTimeout, err: errNotReturned})
			if onTimeout != nil {
				onTimeout()
			}
			grace := time.NewTimer(ignoredContextGrace)
			select {
			case r = <-ch:
			case <-grace.C:
				s.log.Warn("tokensource: the Refresher ignores its context: still running after the refresh timeout; "+
					"its result will still be used if it arrives", "refresh_timeout", s.opts.refreshTimeout)
				r = <-ch
			}
			grace.Stop()
			late = true
		}
	}
	close(f.refDone)

	if r.err != nil {
		switch {
		case IsPermanent(r.err):
			return refCall{err: fmt.Errorf("%w: refresh failed: %w", ErrReauthRequired, r.err), permanent: true, late: late}
		case refreshTimedOut(ctx):
			return refCall{err: &timeoutError{after: s.opts.refreshTimeout, err: r.err}, late: late}
		case errors.Is(r.err, ErrRefresherPanicked):
			return refCall{err: r.err, late: late} // already says what failed, with the package's prefix
		}
		return refCall{err: fmt.Errorf("tokensource: refresh failed: %w", r.err), late: late}
	}
	if err := validateToken(r.tok, s.now()); err != nil {
		return refCall{refused: r.tok, err: fmt.Errorf("tokensource: refresh failed: %w", err), late: late}
	}
	if f.forced && prev != nil && r.tok.AccessToken == prev.AccessToken {
		return refCall{refused: r.tok, err: ErrUnchangedToken, late: late}
	}
	c := *r.tok // the Source's own copy: handed-out tokens must not change
	return refCall{tok: &c, late: late}
}

// refCall is the checked result of one Refresher call. err is the one every
// waiter receives; refused is a result the Source will not hand out
// (invalid, or the rejected token again), which may still carry a rotated
// refresh token; late reports a result that arrived after the refresh
// timeout had released the waiters.
type refCall struct {
	tok, refused *Token
	err          error
	permanent    bool
	late         bool
}

// panicSummary describes a Refresher's panic value without quoting it: a
// value of the caller's making (a string, an error from an HTTP client) may
// carry a token. Only the runtime's own errors, such as a nil dereference or
// an index out of range, are safe to quote.
func panicSummary(p any) string {
	if re, ok := p.(runtime.Error); ok {
		return re.Error()
	}
	return fmt.Sprintf("panic value of type %T", p)
}

// release hands err to the waiters of f before its refresh goroutine ends,
// and backs off: the refresh timeout has passed while the Refresher is still
// running. No other refresh starts until it returns (s.running stays f).
func (s *Source) release(f *flight, err error) {
	now := s.now()
	s.mu.Lock()
	if s.flight == f {
		s.flight = nil
	}
	f.released = true
	f.err = err
	s.failures++
	s.retryAt = now.Add(s.backoff(s.failures))
	s.lastErr = err
	st := s.cur.Load()
	s.installLocked(st.withFreshUntil(minTime(st.staleAt, maxTime(st.refreshAt, s.retryAt))))
	waiters, gen := f.waiters, st.gen
	s.failed.Add(1)
	s.mu.Unlock()
	close(f.done)

	s.log.Warn("tokensource: token refresh timed out", "refresh_timeout", s.opts.refreshTimeout, "waiters", waiters)
	s.emit(Event{Kind: RefreshFailed, Refresh: f.id, Time: now, Duration: s.opts.refreshTimeout, Err: err, Waiters: waiters,
		Forced: f.forced, Background: f.background, Generation: gen})
}

// reoccupy takes the flight slot back for the late result of f, so that it
// can be saved before anyone sees it, unless SetToken has installed a newer
// token meanwhile (or is saving one): then the late result is stale and
// reoccupy reports false.
func (s *Source) reoccupy(f *flight) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.flight != nil || s.cur.Load().gen != f.gen {
		return false
	}
	s.flight = f
	return true
}

// finish publishes the outcome of f, releases its waiters, then reports it.
func (s *Source) finish(f *flight, start time.Time, out outcome) {
	now := s.now()
	s.mu.Lock()
	if s.flight == f {
		s.flight = nil
	}
	s.running = nil
	s.inFlight.Store(false)
	st := s.cur.Load()
	if out.superseded {
		s.mu.Unlock()
		close(f.end)
		s.log.Debug("tokensource: late refresh result dropped: SetToken installed a newer token")
		return
	}
	if out.loadOK {
		s.loaded = true
		if out.err != nil && out.candidate != nil {
			// Keep the loaded token even though it is unusable: the next
			// refresh needs its RefreshToken.
			st = s.newState(out.candidate, st.gen+1, now)
			s.installLocked(st)
		}
	}
	switch {
	case out.err == nil:
		st = s.newState(out.tok, st.gen+1, now)
		s.installLocked(st)
		s.failures, s.lastErr, s.retryAt = 0, nil, time.Time{}
		s.rotated = ""
		if f.forced {
			s.lastForced = now
		}
		if !f.released {
			f.tok = out.tok
		}
	case out.permanent:
		s.reauthErr = out.err
		s.reauth.Store(true)
		// No more refreshes: serve the still-valid token (if any) from the
		// hot path until it goes stale.
		s.installLocked(st.withFreshUntil(st.staleAt))
		if !f.released {
			f.err = out.err
		}
	default:
		if out.rotated != "" {
			s.rotated = out.rotated
		}
		if !f.released { // release has already counted and backed off
			s.failures++
			s.retryAt = now.Add(s.backoff(s.failures))
			s.lastErr = out.err
			f.err = out.err
			if f.forced && out.unchanged {
				// The Refresher will hand back the same token for a while:
				// wait the rate limit's interval too before asking again.
				s.lastForced = now
			}
		}
		// A still-valid token is served from the hot path until the backoff
		// ends (then one more background attempt) or it goes stale.
		s.installLocked(st.withFreshUntil(minTime(st.staleAt, maxTime(st.refreshAt, s.retryAt))))
	}
	waiters, gen, retryIn := f.waiters, st.gen, s.retryAt.Sub(now)
	// Counted before the waiters are released, so that a caller holding the
	// result already sees it in Stats.
	if out.err == nil && out.refreshed {
		s.refreshes.Add(1)
	}
	if out.err == nil && out.adopted {
		s.adopted.Add(1)
	}
	if out.err != nil && !f.released {
		s.failed.Add(1)
	}
	if out.unchanged {
		s.unchanged.Add(1)
	}
	if out.saveErr != nil {
		s.storeFailures.Add(1)
	}
	released := f.released
	if released {
		waiters = 0 // the timeout already reported them, with its failure
	}
	s.mu.Unlock()
	if !released {
		close(f.done)
	}
	close(f.end)

	expiry := time.Time{}
	if out.tok != nil {
		expiry = out.tok.Expiry
	}
	if out.fromStore {
		s.log.Debug("tokensource: loaded token from store", "expiry", expiryString(out.candidate.Expiry))
		s.emit(Event{Kind: TokenLoaded, Refresh: f.id, Time: now, Expiry: out.candidate.Expiry, Generation: gen})
	}
	if out.saveErr != nil {
		s.log.Error("tokensource: saving the token failed; using it anyway", "error", out.saveErr)
		s.emit(Event{Kind: StoreFailed, Refresh: f.id, Time: now, Err: out.saveErr, Generation: gen})
	}
	ev := Event{Refresh: f.id, Time: now, Duration: now.Sub(start), Err: out.err, Waiters: waiters,
		Forced: f.forced, Background: f.background, Expiry: expiry, Generation: gen}
	switch {
	case out.err == nil && out.adopted:
		s.log.Debug("tokensource: adopted the token a peer committed", "expiry", expiryString(expiry),
			"duration", ev.Duration, "waiters", waiters)
		ev.Kind = TokenAdopted
		s.emit(ev)
	case out.err == nil && out.tok != nil && (out.refreshed || !out.loadOK):
		s.log.Debug("tokensource: token refreshed", "expiry", expiryString(expiry), "duration", ev.Duration,
			"waiters", waiters, "forced", f.forced, "background", f.background, "late", released, "changed", out.refreshed)
		ev.Kind = RefreshSucceeded
		s.emit(ev)
	case out.permanent:
		s.log.Error("tokensource: re-authentication required", "error", out.err, "waiters", waiters)
		ev.Kind = ReauthRequired
		s.emit(ev)
		if s.opts.onReauth != nil {
			s.opts.onReauth(out.err)
		}
	case out.unchanged:
		const msg = "tokensource: the refresh returned the access token the server had just rejected; " +
			"the Refresher probably caches tokens (FromOAuth2 around an oauth2.ReuseTokenSource, as " +
			"clientcredentials.Config.TokenSource and oauth2.Config.TokenSource return): use " +
			"tokensource.ClientCredentials or tokensource.OAuth2Refresher, which obtain a new token on every refresh"
		if s.unchangedWarned.CompareAndSwap(false, true) {
			s.log.Warn(msg, "retry_in", retryIn, "waiters", waiters)
		} else {
			s.log.Debug(msg, "retry_in", retryIn, "waiters", waiters)
		}
		ev.Kind = RefreshUnchanged
		s.emit(ev)
	case out.err != nil && !released:
		s.log.Warn("tokensource: token refresh failed", "error", out.err, "retry_in", retryIn,
			"waiters", waiters, "background", f.background)
		ev.Kind = RefreshFailed
		s.emit(ev)
	case out.err != nil:
		s.log.Debug("tokensource: late result of a timed-out refresh failed too", "error", out.err)
	}
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
