package tokensource

import (
	"context"
	"errors"
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
		r, login := newRotating(time.Hour)
		st := NewMemoryStore()
		if err := st.Save(ctxBG, login); err != nil {
			t.Fatal(err)
		}
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
		r, login := newRotating(time.Hour)
		st := NewMemoryStore()
		if err := st.Save(ctxBG, login); err != nil {
			t.Fatal(err)
		}
		srcs := fleet(t, 2, r, st)
		a, b := srcs[0], srcs[1]
		cur := mustToken(t, a)
		for range forcedBurst { // spend a's storm guard
			next, err := a.Refresh(ctxBG, cur)
			if err != nil || next == cur {
				t.Fatalf("a: Refresh = (%v, %v), want a new token", next, err)
			}
			cur = next
		}
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
		r, login := newRotating(time.Hour)
		st := NewMemoryStore()
		if err := st.Save(ctxBG, login); err != nil {
			t.Fatal(err)
		}
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

func mustToken(t *testing.T, s *Source) *Token {
	t.Helper()
	tok, err := s.Token(ctxBG)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
