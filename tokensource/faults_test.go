package tokensource

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/testutil"
)

// Tests of the rules that keep a fleet working through faults: the storm
// guard of forced refreshes, consultations of the fleet's record when a
// forced refresh is held back, and the repair of a shared record that lost a
// token (a commit that failed, a record lost or rolled back). The real-store
// and real-process versions are in the stores' tests and e2e's fault
// campaign.

// Two separate revocations a moment apart are both refreshed: the second
// lands inside the minimum refresh interval after the first, but there is no
// storm.
func TestStormGuardRefreshesSeparateRevocations(t *testing.T) {
	clk := testutil.NewClock(testutil.Epoch)
	r := sequence(clk.Now, time.Hour)
	s := New(r, WithClock(clk.Now), WithMinRefreshInterval(time.Second))
	defer mustClose(t, s)
	t0, err := s.Token(ctxBG)
	if err != nil {
		t.Fatal(err)
	}
	t1, err := s.Refresh(ctxBG, t0) // the first revocation
	if err != nil || t1 == t0 {
		t.Fatalf("first forced Refresh = (%v, %v), want a new token", t1, err)
	}
	clk.Advance(300 * time.Millisecond)
	t2, err := s.Refresh(ctxBG, t1) // the second, 300 ms later
	if err != nil || t2 == t1 {
		t.Fatalf("second forced Refresh 300ms later = (%v, %v), want a new token, not the rejected one", t2, err)
	}
	if got := r.calls.Load(); got != 3 {
		t.Errorf("%d Refresher calls, want 3 (first token and two revocations)", got)
	}
	if got := s.Stats().RateLimited; got != 0 {
		t.Errorf("RateLimited = %d, want 0", got)
	}
}

// A server that rejects every fresh token still gets about one refresh per
// interval: after the burst of two, the storm guard refills at one per
// interval.
func TestStormGuardLimitsARejectingServer(t *testing.T) {
	clk := testutil.NewClock(testutil.Epoch)
	r := sequence(clk.Now, time.Hour)
	s := New(r, WithClock(clk.Now), WithMinRefreshInterval(time.Second))
	defer mustClose(t, s)
	cur, err := s.Token(ctxBG)
	if err != nil {
		t.Fatal(err)
	}
	const seconds = 10
	for range seconds * 100 { // a rejected call every 10 ms
		if cur, err = s.Refresh(ctxBG, cur); err != nil {
			t.Fatal(err)
		}
		clk.Advance(10 * time.Millisecond)
	}
	forced := r.calls.Load() - 1
	if forced > seconds+forcedBurst || forced < seconds {
		t.Errorf("%d forced refreshes in %d s of rejections, want between %d and %d", forced, seconds, seconds, seconds+forcedBurst)
	}
	t.Logf("%d forced refreshes, %d rate-limited, in %d s of rejections every 10 ms", forced, s.Stats().RateLimited, seconds)
}

// A forced refresh that only adopted a peer's token does not spend the storm
// guard: the token the peer committed before a revocation is rejected too,
// and the member that adopted it still refreshes.
func TestAdoptionDoesNotSpendTheStormGuard(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, st := loggedIn(t, time.Hour)
		srcs := fleet(t, 2, r, st)
		a, b := srcs[0], srcs[1]
		a0 := mustToken(t, a)
		a1, err := a.Refresh(ctxBG, a0) // a's forced refresh: at-1
		if err != nil || a1.AccessToken != "at-1" {
			t.Fatalf("a: Refresh = (%v, %v), want at-1", a1, err)
		}
		b1 := mustToken(t, b)
		if b1.AccessToken != "at-1" {
			t.Fatalf("b: Token = %v, want at-1", b1.AccessToken)
		}
		b2, err := b.Refresh(ctxBG, b1) // b's forced refresh: at-2
		if err != nil || b2.AccessToken != "at-2" {
			t.Fatalf("b: Refresh = (%v, %v), want at-2", b2, err)
		}
		a2, err := a.Refresh(ctxBG, a1) // a adopts at-2: no Refresher call
		if err != nil || a2.AccessToken != "at-2" {
			t.Fatalf("a: Refresh = (%v, %v), want at-2 adopted", a2, err)
		}
		a3, err := a.Refresh(ctxBG, a2) // at-2 is revoked too: a refreshes
		if err != nil || a3.AccessToken != "at-3" {
			t.Fatalf("a: Refresh of the adopted token = (%v, %v), want at-3 (adopting must not spend the storm guard)", a3, err)
		}
		if got := r.reused.Load(); got != 0 {
			t.Errorf("%d reused refresh tokens", got)
		}
	})
}

// A forced refresh that the storm guard holds back looks at the fleet's
// record first, and hands back a token a peer committed instead of the
// rejected one.
func TestRateLimitedRefreshAdoptsCommittedToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, st := loggedIn(t, time.Hour)
		srcs := fleet(t, 2, r, st)
		a, b := srcs[0], srcs[1]
		cur := spendStormGuard(t, a, mustToken(t, a))
		if held, err := a.Refresh(ctxBG, cur); err != nil || held != cur {
			t.Fatalf("a: rate-limited Refresh = (%v, %v), want the rejected token back (nothing newer exists)", held, err)
		}
		bt := mustToken(t, b)
		committed, err := b.Refresh(ctxBG, bt) // a peer refreshes after a revocation
		if err != nil {
			t.Fatal(err)
		}
		calls := r.calls.Load()
		got, err := a.Refresh(ctxBG, cur)
		if err != nil || got.AccessToken != committed.AccessToken {
			t.Fatalf("a: rate-limited Refresh = (%v, %v), want %s, the token the peer committed", got, err, committed.AccessToken)
		}
		if r.calls.Load() != calls {
			t.Errorf("a rate-limited refresh called the Refresher")
		}
		if a.Stats().RateLimited != 2 {
			t.Errorf("RateLimited = %d, want 2", a.Stats().RateLimited)
		}
	})
}

// A forced refresh while the Source backs off after a failure adopts a token
// a peer committed meanwhile instead of failing.
func TestBackingOffRefreshAdoptsCommittedToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, st := loggedIn(t, time.Hour)
		var failing atomic.Bool
		flaky := RefresherFunc(func(ctx context.Context, cur *Token) (*Token, error) {
			if failing.Load() {
				return nil, errors.New("token endpoint: 503")
			}
			return r.Refresh(ctx, cur)
		})
		a := New(flaky, WithStore(st), WithRefreshAttempts(1), WithBackoff(time.Minute, time.Minute))
		defer mustClose(t, a)
		b := New(r, WithStore(st))
		defer mustClose(t, b)
		cur := mustToken(t, a)
		failing.Store(true)
		if _, err := a.Refresh(ctxBG, cur); err == nil {
			t.Fatal("a: Refresh with a failing Refresher succeeded")
		}
		if _, err := a.Refresh(ctxBG, cur); err == nil {
			t.Fatal("a: Refresh while backing off succeeded with nothing newer in the record")
		}
		committed, err := b.Refresh(ctxBG, mustToken(t, b))
		if err != nil {
			t.Fatal(err)
		}
		got, err := a.Refresh(ctxBG, cur)
		if err != nil || got.AccessToken != committed.AccessToken {
			t.Fatalf("a: Refresh while backing off = (%v, %v), want %s, the token the peer committed", got, err, committed.AccessToken)
		}
	})
}

// spendStormGuard makes forcedBurst forced refreshes of s from cur, each
// of which must get a new token, and returns the last.
func spendStormGuard(t *testing.T, s *Source, cur *Token) *Token {
	t.Helper()
	for range forcedBurst {
		next, err := s.Refresh(ctxBG, cur)
		if err != nil || next == cur {
			t.Fatalf("forced Refresh = (%v, %v), want a new token", next, err)
		}
		cur = next
	}
	return cur
}

func mustToken(t *testing.T, s *Source) *Token {
	t.Helper()
	tok, err := s.Token(ctxBG)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// A rate-limited refresh does not adopt a token older than the one the
// Source holds: this member's commit of at-2 failed (pending), and the
// record still holds at-1, whose refresh token at-2's refresh spent.
// Adopting it would drop the only copy of the newest refresh token.
func TestRateLimitedRefreshKeepsANewerPendingToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, st, _ := outageFleet(t, 0)
		var calls atomic.Int64
		a := New(RefresherFunc(func(ctx context.Context, cur *Token) (*Token, error) {
			tok, err := r.Refresh(ctx, cur)
			if calls.Add(1) == forcedBurst {
				st.down.Store(true) // the last refresh's commit fails
			}
			return tok, err
		}), WithStore(st), WithEarlyRefresh(0))
		defer mustClose(t, a)
		cur := spendStormGuard(t, a, mustToken(t, a)) // at-1 committed, at-2 pending
		st.down.Store(false)
		got, err := a.Refresh(ctxBG, cur) // rate-limited: a consultation of the record, which holds at-1
		if err != nil || got.AccessToken != cur.AccessToken {
			t.Fatalf("a: rate-limited Refresh = (%v, %v), want %s back, not the older token in the record", got, err, cur.AccessToken)
		}
		time.Sleep(2 * time.Second) // the storm guard refills
		next, err := a.Refresh(ctxBG, got)
		if err != nil || next.AccessToken != "at-3" {
			t.Fatalf("a: Refresh = (%v, %v), want at-3", next, err)
		}
		if got := r.reused.Load(); got != 0 {
			t.Errorf("%d refresh tokens presented twice", got)
		}
	})
}

// A rate-limited refresh while a Refresher that outlived the refresh
// timeout still runs does not let a second Refresher call start before it
// returns: both would present the same refresh token.
func TestRateLimitedRefreshWhileATimedOutRefresherRuns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, st := loggedIn(t, time.Minute)
		release := make(chan struct{})
		var calls atomic.Int64
		a := New(RefresherFunc(func(ctx context.Context, cur *Token) (*Token, error) {
			if calls.Add(1) == forcedBurst+1 {
				<-release // hangs, ignoring its context
			}
			return r.Refresh(ctx, cur)
		}), WithStore(st), WithMinRefreshInterval(time.Hour), WithRefreshTimeout(5*time.Second))
		defer mustClose(t, a)
		cur := spendStormGuard(t, a, mustToken(t, a))
		time.Sleep(40 * time.Second) // cur's early window (it is stale at 54 s)
		mustToken(t, a)              // the background refresh, whose Refresher hangs
		time.Sleep(6 * time.Second)  // past its refresh timeout
		if got, err := a.Refresh(ctxBG, cur); err != nil || got != cur {
			t.Fatalf("a: rate-limited Refresh = (%v, %v), want the current token back", got, err)
		}
		time.Sleep(10 * time.Second) // cur is stale
		if _, err := a.Token(ctxBG); err == nil {
			t.Error("a: Token succeeded while the timed-out Refresher still runs, want its failure")
		}
		if got := calls.Load(); got != forcedBurst+1 {
			t.Errorf("%d Refresher calls, want %d: a second one started while the timed-out one ran", got, forcedBurst+1)
		}
		close(release)
		synctest.Wait()
		if got := r.reused.Load(); got != 0 {
			t.Errorf("%d refresh tokens presented twice", got)
		}
	})
}

// The backoff after a Coordinator failure is capped at a second, and never
// longer than WithBackoff's maximum.
func TestCoordinatorBackoffCapped(t *testing.T) {
	for _, maxWait := range []time.Duration{100 * time.Millisecond, 600 * time.Millisecond, time.Minute} {
		s := New(sequence(time.Now, time.Hour), WithBackoff(maxWait/2, maxWait))
		limit := min(maxWait, coordinatorRetry)
		for n := 1; n <= 10; n++ {
			for range 100 {
				if d := s.coordBackoff(n); d > limit || d <= 0 {
					t.Fatalf("WithBackoff(%v, %v): coordBackoff(%d) = %v, want in (0, %v]", maxWait/2, maxWait, n, d, limit)
				}
			}
		}
		mustClose(t, s)
	}
}

// A caller that needs a token while a consultation is in flight (its token
// went stale meanwhile) does not get the consultation's answer, which may be
// that stale token: it waits for the consultation and then for a refresh.
func TestDemandDoesNotJoinAConsultation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, st, srcs := outageFleet(t, 1, WithMinRefreshInterval(time.Hour))
		a := srcs[0]
		cur := spendStormGuard(t, a, mustToken(t, a))
		time.Sleep(53*time.Second + 500*time.Millisecond) // cur is stale at 54 s
		st.slow.Store(int64(800 * time.Millisecond))
		consulted := make(chan *Token)
		go func() {
			tok, _ := a.Refresh(ctxBG, cur) // rate-limited: a consultation, slow to read the record
			consulted <- tok
		}()
		time.Sleep(600 * time.Millisecond) // cur is stale now
		tok, err := a.Token(ctxBG)
		if err != nil || tok.AccessToken == cur.AccessToken {
			t.Errorf("a: Token = (%v, %v), want a fresh token, not the stale %s", tok, err, cur.AccessToken)
		}
		if got := <-consulted; got != cur {
			t.Errorf("a: rate-limited Refresh = %v, want the rejected token back", got)
		}
		if got := r.reused.Load(); got != 0 {
			t.Errorf("%d refresh tokens presented twice", got)
		}
	})
}

// Two revocations in a row, and a member that slept through the first: its
// rejected token is older than the fleet's record, whose token the second
// revocation rejected too, and a peer is refreshing it. The member waits for
// the peer's commit instead of adopting the record's token, which its retry
// would send to be rejected again, with no retry left.
func TestRejectedOlderTokenWaitsForAPeerRefreshing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rv := secondRevocation(t)
		got := make(chan *Token, 1)
		go func() {
			tok, err := rv.m.Refresh(ctxBG, rv.old)
			if err != nil {
				t.Errorf("m: Refresh of its rejected at-0 = %v", err)
			}
			got <- tok
		}()
		synctest.Wait()
		a2 := rv.finish()
		mt := <-got
		if a2 == nil || mt == nil {
			return
		}
		if mt.AccessToken != a2.AccessToken {
			t.Errorf("m: Refresh of its rejected at-0 = %s, want %s, the token the peer was refreshing to (at-1 was rejected too)", mt.AccessToken, a2.AccessToken)
		}
		if got := rv.r.calls.Load(); got != 2 {
			t.Errorf("%d Refresher calls, want 2 (one per revocation)", got)
		}
		if got := rv.r.reused.Load(); got != 0 {
			t.Errorf("%d reused refresh tokens", got)
		}
	})
}

// The look for a peer is brief: a peer holding the lease may only be
// refreshing early, or be paused, while the record's token is valid (only
// this member's older token was rejected). The member adopts the record's
// token after peerLook instead of waiting out the peer's lease.
func TestRejectedOlderTokenLooksForAPeerBriefly(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rv := secondRevocation(t) // and a's authorization server hangs
		defer rv.finish()
		ctx, cancel := context.WithTimeout(ctxBG, 5*time.Second)
		defer cancel()
		start := time.Now()
		got, err := rv.m.Refresh(ctx, rv.old)
		if err != nil || got.AccessToken != rv.a1.AccessToken {
			t.Errorf("m: Refresh of its rejected at-0 while a peer hangs = (%v, %v), want %s, the record's token", got, err, rv.a1.AccessToken)
		}
		if waited := time.Since(start); waited != peerLook {
			t.Errorf("m waited %v for the peer, want peerLook (%v)", waited, peerLook)
		}
	})
}

// twoRevocations is a fleet of two in the middle of a second revocation: m
// still holds at-0 (old: it slept through the first), a refreshed to a1 at
// the first and is now at the authorization server for the second, under
// the lease, until finish lets it through and returns its new token.
type twoRevocations struct {
	r       *rotating
	m       *Source
	old, a1 *Token
	finish  func() *Token
}

// secondRevocation sets up twoRevocations inside a synctest bubble.
func secondRevocation(t *testing.T) twoRevocations {
	t.Helper()
	r, st := loggedIn(t, time.Hour)
	var hold atomic.Bool
	entered, release := make(chan struct{}), make(chan struct{})
	gated := RefresherFunc(func(ctx context.Context, cur *Token) (*Token, error) {
		if hold.Load() {
			entered <- struct{}{}
			<-release
		}
		return r.Refresh(ctx, cur)
	})
	srcs := fleet(t, 2, gated, st)
	a, m := srcs[0], srcs[1]
	old := mustToken(t, m)
	a1, err := a.Refresh(ctxBG, mustToken(t, a))
	if err != nil || a1.AccessToken != "at-1" {
		t.Fatalf("a: Refresh after the first revocation = (%v, %v), want at-1", a1, err)
	}
	hold.Store(true)
	peer := make(chan *Token, 1)
	go func() {
		tok, err := a.Refresh(ctxBG, a1)
		if err != nil {
			t.Errorf("a: Refresh after the second revocation = %v", err)
		}
		peer <- tok
	}()
	<-entered
	return twoRevocations{r: r, m: m, old: old, a1: a1, finish: sync.OnceValue(func() *Token {
		close(release)
		return <-peer
	})}
}
