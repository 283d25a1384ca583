package tokensource

import (
	"cmp"
	"context"
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
	refreshAt  time.Time // where the early-refresh window starts
	staleAt    time.Time // where tok counts as expired: it is no longer handed out
}

func (st *state) withFreshUntil(t time.Time) *state {
	c := *st
	c.freshUntil = t
	return &c
}

// flight is one refresh (or SetToken) in progress. done is closed when tok
// and err are final for the callers waiting on it (a channel, not a
// sync.Cond: see docs/design.md); that can be before the refresh goroutine
// has finished, when the refresh timeout releases the waiters of a Refresher
// that ignores its context. end is closed when the goroutine is done with it.
type flight struct {
	done chan struct{}
	end  chan struct{}
	tok  *Token
	err  error

	id         uint64 // Event.Refresh; 0 for SetToken
	waiters    int    // guarded by Source.mu
	released   bool   // done is closed; guarded by Source.mu
	forced     bool
	background bool
	// consult: the flight may only adopt a newer token from the fleet's
	// record (see runConsult); declined is its error when there is none.
	consult  bool
	declined error
	load     bool      // load the Store before refreshing
	gen      uint64    // generation of the token being replaced
	deadline time.Time // when the refresh timeout cuts the Refresher off
	// stopWaiting cancels the flight's work that has not reached the
	// authorization server yet (loading the Store, waiting for a peer's
	// lease); Close calls it. The Refresher's own context is not cancelled
	// by Close, only by the refresh timeout. nil for SetToken.
	stopWaiting context.CancelCauseFunc
	// refDone is closed when the Refresher call has returned (or was never
	// made), so that Close knows whether a result is on its way to the Store.
	refDone chan struct{}
	// attempts counts the flight's Refresher calls (refresh goroutine
	// only); attemptErr is the failure of the last one that is being tried
	// again, for waiters whose ctx ends (guarded by Source.mu).
	attempts   int
	attemptErr error
	// called is set before the flight's first Refresher call; refreshed,
	// set before done is closed, says that its token came from the
	// Refresher (see latejoin.go).
	called    atomic.Bool
	refreshed bool
}

// Source is a concurrency-safe cache of one token that shares a single
// refresh among all callers. Create it with New; the zero value is not
// usable. All methods may be called from any number of goroutines.
type Source struct {
	refresher Refresher
	opts      options
	log       *slog.Logger
	coord     Coordinator // the Store, when it coordinates a fleet; else nil
	restorer  Restorer    // coord, when it can put back a token its record lost; else nil

	cur atomic.Pointer[state]

	mu     sync.Mutex
	flight *flight // the refresh whose waiters are pending, or nil
	// running is the flight whose refresh goroutine is still at work. It
	// outlives flight when the refresh timeout has released the waiters of
	// a Refresher that ignores its context; no other refresh starts until
	// that Refresher returns.
	running   *flight
	lastID    uint64     // the ID of the last refresh started
	loaded    bool       // the Store has been loaded (or there is none)
	closed    bool       // Close was called
	failures  int        // consecutive failed refreshes, for the backoff
	retryAt   time.Time  // no refresh before this while failures > 0
	lastErr   error      // the last failure, handed out while backing off
	reauthErr error      // non-nil: re-authentication required
	guard     stormGuard // limits forced refreshes (WithMinRefreshInterval)
	// rotated is the refresh token of a result the Source refused (an
	// invalid access token): the Refresher may have consumed the previous
	// one, so the next refresh must present this one.
	rotated string
	// The Coordinator's last outage (see loadRecord): its error, until
	// when it is not asked again, and how many probes failed in a row.
	coordErr       error
	coordDownUntil time.Time
	coordFailures  int
	coordFailedAt  time.Time // the last failure, for mayHaveLost
	restoredAt     time.Time // the last restore that wrote, for graceDue
	// fleet is the current token with its version in the fleet's record,
	// seen the highest version of that record this Source has read, and
	// stopRepair ends the periodic check of the record (see repair.go).
	fleet      fleetToken
	seen       uint64
	stopRepair context.CancelFunc
	repairNow  chan struct{} // wakes the check for a pending commit; buffered

	closing chan struct{}  // closed by Close: releases every waiter
	wg      sync.WaitGroup // refresh goroutines

	unchangedWarned atomic.Bool // the ErrUnchangedToken warning was logged

	refreshes     atomic.Uint64
	failed        atomic.Uint64
	waited        atomic.Uint64
	rateLimited   atomic.Uint64
	storeFailures atomic.Uint64
	unchanged     atomic.Uint64
	adopted       atomic.Uint64
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
	log := cmp.Or(o.logger, slog.New(slog.DiscardHandler))
	s := &Source{refresher: r, opts: o, log: log, closing: make(chan struct{}), repairNow: make(chan struct{}, 1)}
	s.coord, _ = o.store.(Coordinator)
	s.restorer, _ = s.coord.(Restorer)
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
		// Round(0) drops a monotonic clock reading (time.Now().Add(ttl)
		// leaves one): by the monotonic clock, which stops while the machine
		// sleeps, a token would stay fresh for as long as it slept.
		exp := tok.Expiry.Round(0)
		life := exp.Sub(now)
		st.staleAt = exp.Add(-min(s.opts.leeway, life/leewayDivisor))
		st.refreshAt = st.staleAt.Add(-min(s.opts.early, life/earlyDivisor))
		st.freshUntil = st.refreshAt
	}
	return st
}

// usable reports whether tok, received now, would be handed out: valid and
// not yet inside its expiry leeway.
func (s *Source) usable(tok *Token, now time.Time) bool {
	return tok != nil && now.Before(s.newState(tok, 0, now).staleAt)
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
	return s.untilReady(ctx, s.tokenSlow)
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
		if !now.Before(st.refreshAt) && s.flight == nil && s.running == nil && s.reauthErr == nil && !s.backingOffLocked(now) {
			s.startLocked(ctx, st, early, nil)
		}
		s.mu.Unlock()
		return st.tok, nil
	}
	return s.waitUnlock(ctx, demand)
}

// Refresh reports that a server rejected stale, which must be a token this
// Source returned (it is compared by identity). If the Source has moved on
// to a newer valid token, Refresh returns that token at once without
// refreshing. If stale is still the current token (or stale is nil), Refresh
// waits for one shared refresh, joining the one in progress if there is one,
// and returns its result.
//
// Forced refreshes are limited by a storm guard (WithMinRefreshInterval): a
// burst of two, then one per interval. Past it, Refresh of a still-valid
// current token returns that token unchanged, so that a server rejecting
// every token cannot cause a refresh storm; with a Coordinator it first
// looks at the fleet's shared record and returns a newer token a peer
// committed, if there is one. The same look happens for a forced refresh
// while the Source backs off after a failure. If the Refresher hands back the
// rejected access token, the refresh fails with an error matching
// ErrUnchangedToken. Other errors are as for Token; in the
// re-authentication-required state Refresh of the current token fails at
// once with an error matching ErrReauthRequired.
func (s *Source) Refresh(ctx context.Context, stale *Token) (*Token, error) {
	return s.untilReady(ctx, func(ctx context.Context) (*Token, error) { return s.forceRefresh(ctx, stale, true) })
}

// forceRefresh is one try of Refresh; late says whether a rejection that
// joins a refresh begun before it refreshes once more after it (see
// latejoin.go).
func (s *Source) forceRefresh(ctx context.Context, stale *Token, late bool) (*Token, error) {
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
		return s.waitUnlock(ctx, demand)
	}
	if s.reauthErr == nil && s.flight == nil && valid && !s.guard.allows(now, s.opts.minRefreshInterval) {
		return s.rateLimitedUnlock(ctx, st, now)
	}
	if valid && late && joinedLate(s.flight) {
		return s.refreshAfterUnlock(ctx)
	}
	if valid {
		return s.waitUnlock(ctx, rejection)
	}
	return s.waitUnlock(ctx, demand)
}

// joinLocked returns the refresh to wait for: the one in flight, or a new
// one unless the Source is in the reauth state, backing off, or still
// waiting for a Refresher the refresh timeout gave up on (then the error to
// fail with at once). s.mu must be held; joinLocked keeps it, and counts
// the caller among the flight's waiters.
func (s *Source) joinLocked(ctx context.Context, why trigger) (*flight, error) {
	if err := s.reauthErr; err != nil {
		return nil, err
	}
	if refreshingSource(ctx) == s {
		return nil, ErrSelfWait
	}
	f := s.flight
	if f != nil && f.consult && why != rejection {
		// A consultation answers a rejection of a token that was valid;
		// it may decline with that token, stale by now. Wait for it to
		// end, then for a refresh.
		return nil, &notYet{wake: f.end, last: s.lastErr}
	}
	if f == nil {
		if s.running != nil {
			// No second call while a timed-out Refresher runs (it could
			// present the same refresh token twice): fail fast, or wait
			// for its end.
			if waitsForReady(ctx) {
				return nil, &notYet{wake: s.running.end, last: s.lastErr}
			}
			return nil, s.lastErr
		}
		if now := s.now(); s.backingOffLocked(now) {
			switch {
			case waitsForReady(ctx):
				return nil, &notYet{at: s.retryAt, last: s.lastErr}
			case why != rejection:
				return nil, s.lastErr
			}
			// A rejected call learns why it is not retried, unless a peer
			// has committed a newer token meanwhile.
			err := fmt.Errorf("tokensource: forced refresh not attempted: backing off after a failed refresh, next attempt in %v: %w",
				s.retryAt.Sub(now).Round(time.Millisecond), s.lastErr)
			if s.coord == nil {
				return nil, err
			}
			f = s.startLocked(ctx, s.cur.Load(), consultation, err)
			f.waiters++
			return f, nil
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("tokensource: not starting a token refresh: %w", err)
		}
		f = s.startLocked(ctx, s.cur.Load(), why, nil)
	}
	f.waiters++
	return f, nil
}

// waitUnlock joins the shared refresh (see joinLocked), unlocks s.mu, which
// the caller holds, and waits for that refresh within ctx.
func (s *Source) waitUnlock(ctx context.Context, why trigger) (*Token, error) {
	f, err := s.joinLocked(ctx, why)
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return s.await(ctx, f)
}

// await waits for f within ctx; the caller is counted among its waiters.
func (s *Source) await(ctx context.Context, f *flight) (*Token, error) {
	if h := s.opts.hooks.Wait; h != nil && f.id != 0 { // SetToken's flight has no ID
		h(ctx, f.id)
	}
	s.waited.Add(1)
	s.waiting.Add(1)
	defer s.waiting.Add(-1)
	select {
	case <-f.done:
		return s.outcome(ctx, f)
	default:
	}
	select {
	case <-f.done:
		return s.outcome(ctx, f)
	case <-s.closing:
		return nil, ErrClosed
	case <-ctx.Done():
		s.mu.Lock()
		last := f.attemptErr
		s.mu.Unlock()
		return nil, waitEnded(ctx, last)
	}
}

// notYet is the answer to a caller that waits for ready (WaitForReady)
// while the Source backs off: try again at at, or, while a Refresher the
// refresh timeout gave up on still runs, when wake is closed. Any caller
// that needs a token while a consultation runs gets it too (wake: the
// consultation's end).
type notYet struct {
	at   time.Time
	wake <-chan struct{}
	last error
}

func (e *notYet) Error() string { return "tokensource: backing off" } // never returned

// untilReady calls op, and calls it again after each backoff it meets for a
// ctx that waits for ready (WaitForReady), until op has an answer or ctx
// ends (an error matching ctx.Err() and the last refresh error).
func (s *Source) untilReady(ctx context.Context, op func(context.Context) (*Token, error)) (*Token, error) {
	for {
		tok, err := op(ctx)
		ny, ok := err.(*notYet)
		if !ok {
			return tok, err
		}
		// At least a millisecond: the Source's clock (WithClock) may not be
		// the one the timer runs on.
		t := time.NewTimer(max(ny.at.Sub(s.now()), time.Millisecond))
		if ny.wake != nil {
			t.Stop()
		}
		select {
		case <-t.C:
		case <-ny.wake:
		case <-s.closing:
			t.Stop()
			return nil, ErrClosed
		case <-ctx.Done():
			t.Stop()
			return nil, waitEnded(ctx, ny.last)
		}
	}
}

// outcome is f's result for a waiter with ctx. A caller that waits for
// ready (WaitForReady) is not failed by a refresh that fails transiently:
// it waits for the next one (see untilReady), or, when it wakes only after
// a later refresh has installed a token (a loaded machine can schedule it
// that late), takes that token at once.
func (s *Source) outcome(ctx context.Context, f *flight) (*Token, error) {
	if f.err == nil || !waitsForReady(ctx) {
		return f.tok, f.err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.reauthErr != nil || s.closed:
		return f.tok, f.err
	case s.cur.Load().gen != f.gen:
		return nil, &notYet{last: f.err}
	case s.lastErr == nil:
		return f.tok, f.err
	}
	return nil, &notYet{at: s.retryAt, last: f.err}
}

// waitEnded is the error of a caller whose ctx ended while it waited for a
// token: it matches ctx.Err(), and, when the refresh it waited on had failed
// (an attempt, or the last refresh during a backoff), says why and matches
// that failure too, so that an outage shows in the caller's log.
func waitEnded(ctx context.Context, last error) error {
	if last == nil {
		return fmt.Errorf("tokensource: waiting for a token refresh: %w", ctx.Err())
	}
	return fmt.Errorf("tokensource: waiting for a token refresh: %w (last refresh error: %w)", ctx.Err(), last)
}

func (s *Source) backingOffLocked(now time.Time) bool {
	return s.lastErr != nil && now.Before(s.retryAt)
}

// startLocked starts a refresh goroutine for why; declined is what a
// consultation answers when no peer has a newer token (nil: the current
// token). Its context keeps the values of the initiator's ctx (trace IDs,
// credentials for the Refresher's own RPCs), or those the hooks derive from
// them (WithRefreshHooks), but not its cancellation, carries the refresh
// marker for InRefresh, and ends at the refresh timeout. s.mu must be held.
func (s *Source) startLocked(ctx context.Context, st *state, why trigger, declined error) *flight {
	s.lastID++
	f := &flight{
		done:       make(chan struct{}),
		end:        make(chan struct{}),
		refDone:    make(chan struct{}),
		id:         s.lastID,
		forced:     why == rejection || why == consultation,
		background: why == early,
		consult:    why == consultation,
		declined:   declined,
		load:       !s.loaded && why != consultation,
		gen:        st.gen,
	}
	rctx, cancel := context.WithTimeoutCause(withRefreshMarker(s.refreshContext(ctx, f), s),
		s.opts.refreshTimeout, ErrRefreshTimeout)
	wctx, stopWaiting := context.WithCancelCause(rctx)
	f.deadline, _ = rctx.Deadline()
	f.stopWaiting = stopWaiting
	s.flight, s.running = f, f
	s.inFlight.Store(true)
	if why == early {
		// Keep serving the valid token from the hot path while it refreshes.
		s.installLocked(st.withFreshUntil(st.staleAt))
	}
	current := st.tok
	if s.rotated != "" {
		current = withRefreshToken(current, s.rotated)
	}
	s.wg.Go(func() {
		if h := s.opts.hooks.End; h != nil {
			defer h(f.id)
		}
		defer cancel()
		defer stopWaiting(nil)
		s.run(rctx, wctx, f, st.tok, current)
	})
	return f
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
// and then replaces its result; a Refresher that the refresh timeout already
// gave up on is not waited for, and its late result is discarded. With a
// Store, t is saved before it is handed out; if that save fails, t is
// installed anyway (calls can proceed) and SetToken returns the save error,
// so the caller knows t is not persisted. After Close it returns ErrClosed.
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
		case <-f.end:
		case <-s.closing:
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
	f := &flight{done: make(chan struct{}), end: make(chan struct{})}
	s.flight = f
	s.loaded = true // t is newer than anything the Store holds
	s.mu.Unlock()

	res, start := result{kind: set, tok: &c, saveErr: s.save(ctx, &c)}, s.now()
	ev, released, retryIn := s.apply(f, res)
	s.report(f, start, res, ev, released, retryIn)
	if res.saveErr != nil {
		return fmt.Errorf("tokensource: SetToken: token installed but not saved: %w", res.saveErr)
	}
	return nil
}

// Close stops the Source. It returns once nothing it started can still
// change the Store, or once the refresh timeout has passed:
//
//   - Callers waiting for a token are released at once with ErrClosed, and
//     Token, Refresh and SetToken return ErrClosed from then on.
//   - Work that has not reached the authorization server yet (loading the
//     Store, waiting for a peer's refresh) is abandoned.
//   - A Refresher call in flight is not cancelled: it may already have been
//     answered with a rotated refresh token. Close waits for it, bounded by
//     the refresh timeout (after which the Refresher's context is
//     cancelled), and for the save of its result to the Store, so a
//     rotation answered during shutdown survives a restart.
//   - A Refresher that ignores its context past the refresh timeout is not
//     waited for; its goroutine's late result is still saved when it
//     arrives.
//
// Close also waits for the observer and hook calls of the refresh, so
// neither a Refresher, an observer nor a hook may call Close. Close is
// idempotent and always returns nil.
func (s *Source) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.closing)
		c := *s.cur.Load()
		s.installLocked(&c)
		if f := s.flight; f != nil && f.stopWaiting != nil {
			f.stopWaiting(ErrClosed)
		}
		if s.stopRepair != nil {
			s.stopRepair()
		}
	}
	r := s.running
	s.mu.Unlock()

	idle := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(idle)
	}()
	if r == nil {
		<-idle
		return nil
	}
	timer := time.NewTimer(time.Until(r.deadline))
	defer timer.Stop()
	select {
	case <-idle:
		return nil
	case <-r.refDone:
	case <-timer.C:
		select {
		case <-r.refDone:
		default:
			s.log.Warn("tokensource: Close is not waiting for a Refresher that ignores its context past the refresh timeout; its result will still be saved if it arrives",
				"refresh_timeout", s.opts.refreshTimeout)
			return nil
		}
	}
	<-idle // a result may be on its way to the Store: the save has a timeout of its own
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
		Unchanged:      s.unchanged.Load(),
		Adopted:        s.adopted.Load(),
		InFlight:       s.inFlight.Load(),
		ReauthRequired: s.reauth.Load(),
		Generation:     s.cur.Load().gen,
	}
}
