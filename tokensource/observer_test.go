package tokensource

import (
	"cmp"
	"context"
	"errors"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/testutil"
)

// Observers given with several WithObserver options (an adapter's and the
// application's, say) each receive every event (the order across observers
// is not fixed: events of the refresh goroutine and of a caller may
// interleave); the re-authentication shortcut sits among them and fires
// once per entry.
func TestSeveralObserversEachReceiveEveryEvent(t *testing.T) {
	clk := testutil.NewClock(testutil.Epoch)
	errRevoked := errors.New("refresh token revoked")
	inner := sequence(clk.Now, time.Hour)
	revoked := false
	r := RefresherFunc(func(ctx context.Context, cur *Token) (*Token, error) {
		if revoked {
			return nil, Permanent(errRevoked)
		}
		return inner.Refresh(ctx, cur)
	})
	var first, second events
	var reauth []error
	s := New(r, WithClock(clk.Now), WithInitialToken(expired(clk.Now())),
		WithObserver(first.observe), WithObserver(nil),
		WithOnReauthRequired(func(err error) { reauth = append(reauth, err) }),
		WithObserver(second.observe))

	tok, err := s.Token(ctxBG) // a refresh
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Refresh(ctxBG, tok); err != nil { // a forced refresh
		t.Fatal(err)
	}
	if _, err := s.Refresh(ctxBG, tok); err != nil { // stale: the newer token, no refresh
		t.Fatal(err)
	}
	cur, _ := s.Token(ctxBG)
	if _, err := s.Refresh(ctxBG, cur); err != nil { // the storm guard's second forced refresh
		t.Fatal(err)
	}
	cur, _ = s.Token(ctxBG)
	if _, err := s.Refresh(ctxBG, cur); err != nil { // rate-limited
		t.Fatal(err)
	}
	revoked = true
	clk.Advance(2 * time.Hour)
	if _, err := s.Token(ctxBG); !errors.Is(err, ErrReauthRequired) {
		t.Fatalf("Token = %v, want ErrReauthRequired", err)
	}
	if err := s.SetToken(ctxBG, &Token{AccessToken: "login", Expiry: clk.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}

	// Close waits for the refresh goroutines, which call the observers.
	mustClose(t, s)

	// Events of one refresh may reach the observers after the caller has
	// moved on, so only the multiset is fixed, not the order.
	want := []EventKind{RefreshStarted, RefreshStarted, RefreshStarted, RefreshStarted, RefreshSucceeded,
		RefreshSucceeded, RefreshSucceeded, ReauthRequired, TokenSet, RefreshRateLimited}
	first.mu.Lock()
	second.mu.Lock()
	defer first.mu.Unlock()
	defer second.mu.Unlock()
	for _, evs := range [][]Event{first.evs, second.evs} {
		slices.SortStableFunc(evs, func(a, b Event) int { return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Refresh, b.Refresh)) })
	}
	var got []EventKind
	for _, ev := range first.evs {
		got = append(got, ev.Kind)
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("first observer got %v, want %v", got, want)
	}
	if !reflect.DeepEqual(first.evs, second.evs) {
		t.Errorf("the observers got different events:\nfirst  %v\nsecond %v", first.evs, second.evs)
	}
	if len(reauth) != 1 || !errors.Is(reauth[0], ErrReauthRequired) || !errors.Is(reauth[0], errRevoked) {
		t.Errorf("WithOnReauthRequired got %v, want one error matching ErrReauthRequired and the Refresher's", reauth)
	}
}
