package tokensource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// farFuture stands for "never" in the state's time fields, so that a token
// without expiry takes the same comparison on the hot path as any other.
var farFuture = time.Unix(1<<40, 0)

// state is an immutable snapshot of the current token and the instants at
// which its treatment changes. A new state is published (never modified) on
// every change, so Token can read it with a single atomic load.
type state struct {
	tok *Token
	gen uint64
	// freshUntil: before it, Token returns tok at once without a lock. It is
	// refreshAt, pushed back to staleAt while a background refresh runs (or
	// the Source cannot refresh) and to the end of a backoff; zero when tok is
	// unusable or the Source is closed.
	freshUntil time.Time
	// refreshAt is where the early-refresh window starts.
	refreshAt time.Time
	// staleAt is where tok starts to count as expired: from then on it is no
	// longer handed out.
	staleAt time.Time
}

func (st *state) withFreshUntil(t time.Time) *state {
	c := *st
	c.freshUntil = t
	return &c
}

// flight is one refresh (or SetToken) in progress. done is closed when tok
// and err are final; every caller waiting for the refresh selects on done and
// on its own ctx.Done(), which is why this is a broadcast channel rather than
// a sync.Cond (see the package documentation).
type flight struct {
	done chan struct{}
	tok  *Token
	err  error

	waiters    int // guarded by Source.mu
	forced     bool
	background bool
	load       bool                    // load the Store before refreshing
	cancel     context.CancelCauseFunc // nil for SetToken
}

// Source is a concurrency-safe cache of one token that shares a single
// refresh among all callers. Create it with New; the zero value is not
// usable. All methods may be called from any number of goroutines.
type Source struct {
	refresher Refresher
	opts      options
	log       *slog.Logger

	cur atomic.Pointer[state]

	mu         sync.Mutex
	flight     *flight   // the refresh in progress, or nil
	loaded     bool      // the Store has been loaded (or there is none)
	closed     bool      // Close was called
	failures   int       // consecutive failed refreshes, for the backoff
	retryAt    time.Time // no refresh before this while failures > 0
	lastErr    error     // the last failure, handed out while backing off
	reauthErr  error     // non-nil: re-authentication required
	lastForced time.Time // when the last forced refresh finished
	// rotated is the refresh token of a result the Source refused (an
	// invalid access token): the Refresher may have consumed the previous
	// one, so the next refresh must present this one.
	rotated string

	wg sync.WaitGroup // refresh goroutines

	refreshes     atomic.Uint64
	failed        atomic.Uint64
	waited        atomic.Uint64
	rateLimited   atomic.Uint64
	storeFailures atomic.Uint64
	waiting       atomic.Int64
	inFlight      atomic.Bool
	reauth        atomic.Bool
}

// New returns a Source that obtains tokens from r, configured by opts.
// New does no I/O: the Store (if any) is loaded and the first token obtained
// on the first call of Token or Refresh. New panics if r is nil.
func New(r Refresher, opts ...Option) *Source {
	if r == nil {
		panic("tokensource: New called with a nil Refresher")
	}
	o := defaultOptions()
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	l := o.logger
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	s := &Source{refresher: r, opts: o, log: l}
	st := &state{}
	if o.store == nil {
		s.loaded = true
		if o.initial != nil {
			st = s.newState(o.initial, 1, s.now())
		}
	}
	s.cur.Store(st)
	return s
}

func (s *Source) now() time.Time {
	if s.opts.clock != nil {
		return s.opts.clock()
	}
	return time.Now()
}

// newState computes the windows of tok, received at now. Its lifetime is
// counted from now, and the leeway and early window are capped by fractions
// of it, so that short-lived tokens still spend most of their life on the
// hot path.
func (s *Source) newState(tok *Token, gen uint64, now time.Time) *state {
	st := &state{tok: tok, gen: gen}
	switch {
	case validateToken(tok, now) != nil:
		// Unusable: all instants stay zero, so every call takes the slow path
		// and refreshes, passing tok (and its RefreshToken) to the Refresher.
	case tok.Expiry.IsZero():
		st.staleAt, st.refreshAt, st.freshUntil = farFuture, farFuture, farFuture
	default:
		// Round(0) drops a monotonic clock reading (a Refresher that sets
		// Expiry to time.Now().Add(ttl) leaves one, as does the oauth2
		// package), so that expiry is judged by the wall clock, as servers
		// and golang.org/x/oauth2 judge it. Compared by the monotonic clock,
		// which stops while the machine sleeps, a token would count as
		// fresh for as long as the machine had slept past its expiry.
		exp := tok.Expiry.Round(0)
		life := exp.Sub(now)
		st.staleAt = exp.Add(-min(s.opts.leeway, life/leewayDivisor))
		st.refreshAt = st.staleAt.Add(-min(s.opts.early, life/earlyDivisor))
		st.freshUntil = st.refreshAt
	}
	return st
}

// installLocked publishes st (which the caller has just allocated); s.mu
// must be held.
func (s *Source) installLocked(st *state) {
	if s.closed {
		st.freshUntil = time.Time{}
	}
	s.cur.Store(st)
}

// Token returns a valid token: the current one when it has not entered its
// early-refresh window, at once and without locking or allocating. Inside
// the early window it still returns the current token at once and starts one
// background refresh. When there is no valid token it waits for the one
// shared refresh (starting it if needed) and returns its result, or an error
// if ctx ends first (matching ctx.Err() with errors.Is), if the refresh
// failed (the same error for every waiter), while the Source backs off after
// a failure (the last error, at once), in the re-authentication-required
// state (an error matching ErrReauthRequired, at once), or after Close
// (ErrClosed).
//
// The returned token must not be modified; pass it back to Refresh if a
// server rejects it.
func (s *Source) Token(ctx context.Context) (*Token, error) {
	st := s.cur.Load()
	if s.now().Before(st.freshUntil) {
		return st.tok, nil
	}
	return s.tokenSlow(ctx)
}

func (s *Source) tokenSlow(ctx context.Context) (*Token, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	st, now := s.cur.Load(), s.now()
	if now.Before(st.staleAt) {
		// Still valid: either inside the early window, or another caller
		// installed a new token since the hot path looked.
		if !now.Before(st.refreshAt) && s.flight == nil && s.reauthErr == nil && !s.backingOffLocked(now) {
			s.startLocked(ctx, st, false, true)
		}
		s.mu.Unlock()
		return st.tok, nil
	}
	return s.acquireLocked(ctx, false)
}

// Refresh reports that a server rejected stale, which must be a token this
// Source returned (it is compared by identity). If the Source has moved on
// to a newer valid token, Refresh returns that token at once without
// refreshing. If stale is still the current token (or stale is nil), Refresh
// waits for one shared refresh, joining the one in progress if there is one,
// and returns its result. A forced refresh is rate-limited: if the previous
// forced refresh finished less than the minimum refresh interval ago
// (WithMinRefreshInterval), Refresh returns the current token unchanged so a
// server that rejects every token cannot drive a refresh storm. Errors are
// as for Token; in the re-authentication-required state Refresh of the
// current token fails at once with an error matching ErrReauthRequired.
func (s *Source) Refresh(ctx context.Context, stale *Token) (*Token, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	st, now := s.cur.Load(), s.now()
	valid := now.Before(st.staleAt)
	if stale != nil && stale != st.tok {
		if valid {
			s.mu.Unlock()
			return st.tok, nil
		}
		return s.acquireLocked(ctx, false)
	}
	if s.reauthErr == nil && s.flight == nil && valid && s.opts.minRefreshInterval > 0 &&
		!s.lastForced.IsZero() && now.Sub(s.lastForced) < s.opts.minRefreshInterval {
		gen := st.gen
		s.mu.Unlock()
		s.rateLimited.Add(1)
		s.log.Debug("tokensource: forced refresh rate-limited", "min_interval", s.opts.minRefreshInterval)
		s.emit(Event{Kind: RefreshRateLimited, Time: now, Forced: true, Generation: gen})
		return st.tok, nil
	}
	return s.acquireLocked(ctx, valid)
}

// acquireLocked returns the result of a refresh: the one in flight, or a new
// one unless the Source is in the reauth state or backing off. s.mu must be
// held; acquireLocked releases it.
func (s *Source) acquireLocked(ctx context.Context, forced bool) (*Token, error) {
	if err := s.reauthErr; err != nil {
		s.mu.Unlock()
		return nil, err
	}
	if refreshingSource(ctx) == s {
		s.mu.Unlock()
		return nil, errSelfWait
	}
	f := s.flight
	if f == nil {
		now := s.now()
		if s.backingOffLocked(now) {
			err := s.lastErr
			s.mu.Unlock()
			return nil, err
		}
		if err := ctx.Err(); err != nil {
			s.mu.Unlock()
			return nil, fmt.Errorf("tokensource: not starting a token refresh: %w", err)
		}
		f = s.startLocked(ctx, s.cur.Load(), forced, false)
	}
	f.waiters++
	s.mu.Unlock()

	s.waited.Add(1)
	s.waiting.Add(1)
	defer s.waiting.Add(-1)
	select {
	case <-f.done:
		return f.tok, f.err
	default:
	}
	select {
	case <-f.done:
		return f.tok, f.err
	case <-ctx.Done():
		return nil, fmt.Errorf("tokensource: waiting for a token refresh: %w", ctx.Err())
	}
}

func (s *Source) backingOffLocked(now time.Time) bool {
	return s.lastErr != nil && now.Before(s.retryAt)
}

// startLocked starts a refresh goroutine. Its context keeps the values of
// the initiator's ctx (trace IDs, credentials for the Refresher's own RPCs)
// but not its cancellation, carries the refresh marker for InRefresh, and
// is cancelled by the refresh timeout or by Close. s.mu must be held.
func (s *Source) startLocked(ctx context.Context, st *state, forced, background bool) *flight {
	rctx := withRefreshMarker(context.WithoutCancel(ctx), s)
	rctx, cancel := context.WithCancelCause(rctx)
	f := &flight{
		done:       make(chan struct{}),
		forced:     forced,
		background: background,
		load:       !s.loaded,
		cancel:     cancel,
	}
	s.flight = f
	s.inFlight.Store(true)
	if background {
		// Keep serving the valid token from the hot path while it refreshes.
		s.installLocked(st.withFreshUntil(st.staleAt))
	}
	current := st.tok
	if s.rotated != "" {
		current = withRefreshToken(current, s.rotated)
	}
	s.wg.Go(func() { s.run(rctx, f, current) })
	return f
}

// outcome is what a refresh goroutine produced.
type outcome struct {
	tok       *Token
	err       error
	permanent bool   // err is a Permanent failure of the Refresher
	refreshed bool   // tok came from the Refresher
	loadOK    bool   // the Store was loaded successfully
	candidate *Token // the token the load produced (from the Store or WithInitialToken)
	fromStore bool   // candidate came from the Store
	saveErr   error
	rotated   string // the refresh token of a refused result
}

func (s *Source) run(ctx context.Context, f *flight, current *Token) {
	defer f.cancel(nil)
	ctx, cancel := context.WithTimeoutCause(ctx, s.opts.refreshTimeout, ErrRefreshTimeout)
	defer cancel()
	start := s.now()
	var out outcome
	if f.load {
		loaded, err := s.opts.store.Load(ctx)
		if err != nil {
			out.err = fmt.Errorf("tokensource: loading the token store: %w", err)
			s.finish(f, start, out)
			return
		}
		out.loadOK = true
		out.fromStore = loaded != nil
		if loaded == nil {
			loaded = s.opts.initial
		} else {
			c := *loaded
			loaded = &c
		}
		out.candidate, current = loaded, loaded
		if !f.forced && validateToken(loaded, s.now()) == nil {
			out.tok = loaded
			s.finish(f, start, out)
			return
		}
	}

	s.log.Debug("tokensource: refreshing token", "forced", f.forced, "background", f.background)
	s.emit(Event{Kind: RefreshStarted, Time: start, Forced: f.forced, Background: f.background, Generation: s.cur.Load().gen})
	var refused *Token
	out.tok, refused, out.err, out.permanent = s.callRefresher(ctx, current)
	if refused != nil && refused.RefreshToken != "" && (current == nil || refused.RefreshToken != current.RefreshToken) {
		out.rotated = refused.RefreshToken
		if s.opts.store != nil {
			// Persist the rotated refresh token with the current token.
			out.saveErr = s.save(ctx, withRefreshToken(current, out.rotated))
		}
	}
	if out.err == nil {
		out.refreshed = true
		if s.opts.store != nil {
			// Saved before any caller sees the token: with a rotating refresh
			// token, the Store must not fall behind what servers have seen.
			out.saveErr = s.save(ctx, out.tok)
		}
	}
	s.finish(f, start, out)
}

// save stores t. It gets a timeout of its own, and ignores the cancellation
// of ctx (keeping its values), so neither a slow refresh nor a caller that
// gives up can cut short the write of a rotated refresh token.
func (s *Source) save(ctx context.Context, t *Token) error {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.refreshTimeout)
	defer cancel()
	return s.opts.store.Save(sctx, t)
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

// callRefresher calls the Refresher and checks its result. The returned
// error is the one every waiter receives.
func (s *Source) callRefresher(ctx context.Context, current *Token) (tok, refused *Token, err error, permanent bool) {
	t, err := s.refresher.Refresh(ctx, current)
	if err != nil {
		switch {
		case IsPermanent(err):
			return nil, nil, fmt.Errorf("%w: refresh failed: %w", ErrReauthRequired, err), true
		case ctx.Err() != nil && errors.Is(context.Cause(ctx), ErrClosed):
			return nil, nil, fmt.Errorf("%w: refresh cancelled: %v", ErrClosed, err), false
		case refreshTimedOut(ctx):
			return nil, nil, &timeoutError{after: s.opts.refreshTimeout, err: err}, false
		}
		return nil, nil, fmt.Errorf("tokensource: refresh failed: %w", err), false
	}
	if err := validateToken(t, s.now()); err != nil {
		return nil, t, fmt.Errorf("tokensource: refresh failed: %w", err), false
	}
	c := *t // the Source's own copy: handed-out tokens must not change
	return &c, nil, nil, false
}

// finish publishes the outcome of f, releases its waiters, then reports it.
func (s *Source) finish(f *flight, start time.Time, out outcome) {
	now := s.now()
	s.mu.Lock()
	s.flight = nil
	s.inFlight.Store(false)
	st := s.cur.Load()
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
		f.tok = out.tok
	case out.permanent:
		s.reauthErr = out.err
		s.reauth.Store(true)
		// No more refreshes: serve the still-valid token (if any) from the
		// hot path until it goes stale.
		s.installLocked(st.withFreshUntil(st.staleAt))
		f.err = out.err
	default:
		s.failures++
		s.retryAt = now.Add(s.backoff(s.failures))
		s.lastErr = out.err
		if out.rotated != "" {
			s.rotated = out.rotated
		}
		// A still-valid token is served from the hot path until the backoff
		// ends (then one more background attempt) or it goes stale.
		s.installLocked(st.withFreshUntil(minTime(st.staleAt, maxTime(st.refreshAt, s.retryAt))))
		f.err = out.err
	}
	waiters, gen, retryIn := f.waiters, st.gen, s.retryAt.Sub(now)
	// Counted before the waiters are released, so that a caller holding the
	// result already sees it in Stats.
	if out.err == nil && out.refreshed {
		s.refreshes.Add(1)
	}
	if out.err != nil {
		s.failed.Add(1)
	}
	if out.saveErr != nil {
		s.storeFailures.Add(1)
	}
	s.mu.Unlock()
	close(f.done)

	expiry := time.Time{}
	if out.tok != nil {
		expiry = out.tok.Expiry
	}
	if out.fromStore {
		s.log.Debug("tokensource: loaded token from store", "expiry", expiryString(out.candidate.Expiry))
		s.emit(Event{Kind: TokenLoaded, Time: now, Expiry: out.candidate.Expiry, Generation: gen})
	}
	if out.saveErr != nil {
		s.log.Error("tokensource: saving the refreshed token failed; using it anyway", "error", out.saveErr)
		s.emit(Event{Kind: StoreFailed, Time: now, Err: out.saveErr, Generation: gen})
	}
	ev := Event{Time: now, Duration: now.Sub(start), Err: out.err, Waiters: waiters,
		Forced: f.forced, Background: f.background, Expiry: expiry, Generation: gen}
	switch {
	case out.err == nil && out.refreshed:
		s.log.Debug("tokensource: token refreshed", "expiry", expiryString(expiry), "duration", ev.Duration,
			"waiters", waiters, "forced", f.forced, "background", f.background)
		ev.Kind = RefreshSucceeded
		s.emit(ev)
	case out.permanent:
		s.log.Error("tokensource: re-authentication required", "error", out.err, "waiters", waiters)
		ev.Kind = ReauthRequired
		s.emit(ev)
		if s.opts.onReauth != nil {
			s.opts.onReauth(out.err)
		}
	case out.err != nil:
		s.log.Warn("tokensource: token refresh failed", "error", out.err, "retry_in", retryIn,
			"waiters", waiters, "background", f.background)
		ev.Kind = RefreshFailed
		s.emit(ev)
	}
}

// backoff returns the wait after the n-th consecutive failure: the initial
// backoff doubled n-1 times, capped, then jittered into [d/2, d] so that
// many processes failing together do not retry in lockstep.
func (s *Source) backoff(n int) time.Duration {
	d := s.opts.backoffInitial
	for i := 1; i < n && d < s.opts.backoffMax; i++ {
		d *= 2
	}
	d = min(d, s.opts.backoffMax)
	return d/2 + rand.N(d-d/2+1)
}

// SetToken installs t as the current token, typically after the user logged
// in again, and leaves the re-authentication-required state and any backoff.
// t is validated first (an error matching ErrInvalidToken; nothing changes)
// and copied. If a refresh is in progress SetToken waits for it (or for ctx)
// and then replaces its result. With a Store, t is saved before it is handed
// out; if that save fails, t is installed anyway (calls can proceed) and
// SetToken returns the save error, so the caller knows t is not persisted.
// After Close it returns ErrClosed.
func (s *Source) SetToken(ctx context.Context, t *Token) error {
	if err := validateToken(t, s.now()); err != nil {
		return fmt.Errorf("tokensource: SetToken: %w", err)
	}
	c := *t
	s.mu.Lock()
	for s.flight != nil && !s.closed {
		f := s.flight
		s.mu.Unlock()
		select {
		case <-f.done:
		case <-ctx.Done():
			return fmt.Errorf("tokensource: SetToken: waiting for the refresh in progress: %w", ctx.Err())
		}
		s.mu.Lock()
	}
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	// Occupy the flight slot so no refresh starts while t is saved, and
	// callers that need a token wait for t.
	f := &flight{done: make(chan struct{})}
	s.flight = f
	s.loaded = true // t is newer than anything the Store holds
	s.mu.Unlock()

	var saveErr error
	if s.opts.store != nil {
		saveErr = s.save(ctx, &c)
	}

	now := s.now()
	s.mu.Lock()
	s.flight = nil
	st := s.newState(&c, s.cur.Load().gen+1, now)
	s.installLocked(st)
	s.reauthErr, s.lastErr, s.failures = nil, nil, 0
	s.rotated = ""
	s.retryAt, s.lastForced = time.Time{}, time.Time{}
	s.reauth.Store(false)
	f.tok = &c
	if saveErr != nil {
		s.storeFailures.Add(1)
	}
	s.mu.Unlock()
	close(f.done)

	s.log.Debug("tokensource: token set", "expiry", expiryString(c.Expiry))
	s.emit(Event{Kind: TokenSet, Time: now, Expiry: c.Expiry, Generation: st.gen})
	if saveErr != nil {
		s.log.Error("tokensource: saving the token from SetToken failed; using it anyway", "error", saveErr)
		s.emit(Event{Kind: StoreFailed, Time: now, Err: saveErr, Generation: st.gen})
		return fmt.Errorf("tokensource: SetToken: token installed but not saved: %w", saveErr)
	}
	return nil
}

// Close stops the Source: it cancels a refresh in progress (its waiters get
// an error matching ErrClosed unless the Refresher still succeeds) and waits
// for the refresh goroutine, including its observer and hook calls, to
// return. A Refresher must therefore return when its context is cancelled,
// and neither it nor an observer or hook may call Close.
// Afterwards Token, Refresh and SetToken return ErrClosed. Close is
// idempotent and always returns nil.
func (s *Source) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		c := *s.cur.Load()
		s.installLocked(&c)
		if f := s.flight; f != nil && f.cancel != nil {
			f.cancel(ErrClosed)
		}
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// Stats returns a snapshot of the Source's counters. It takes no lock.
func (s *Source) Stats() Stats {
	return Stats{
		Refreshes:      s.refreshes.Load(),
		Failures:       s.failed.Load(),
		Waiting:        s.waiting.Load(),
		Waited:         s.waited.Load(),
		RateLimited:    s.rateLimited.Load(),
		StoreFailures:  s.storeFailures.Load(),
		InFlight:       s.inFlight.Load(),
		ReauthRequired: s.reauth.Load(),
		Generation:     s.cur.Load().gen,
	}
}

func (s *Source) emit(e Event) {
	if s.opts.observer != nil {
		s.opts.observer(e)
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
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
