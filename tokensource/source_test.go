package tokensource

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/testutil"
)

var ctxBG = context.Background()

// expired returns a token that expired a minute before now.
func expired(now time.Time) *Token {
	return &Token{AccessToken: "old-access", RefreshToken: "old-refresh", Expiry: now.Add(-time.Minute)}
}

func TestConcurrentCallersShareOneRefresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 1000
		release := make(chan struct{})
		inner := sequence(time.Now, time.Hour)
		r := &counter{fn: func(ctx context.Context, cur *Token) (*Token, error) {
			<-release
			return inner.Refresh(ctx, cur)
		}}
		var evs events
		s := New(r, WithInitialToken(expired(time.Now())), WithObserver(evs.observe))
		defer mustClose(t, s)

		toks := make([]*Token, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() { toks[i], errs[i] = s.Token(ctxBG) })
		}
		synctest.Wait() // every caller is now blocked on the one refresh
		if got := s.Stats().Waiting; got != n {
			t.Fatalf("Stats().Waiting = %d while the refresh is blocked, want %d", got, n)
		}
		if got := r.calls.Load(); got != 1 {
			t.Fatalf("Refresher called %d times while %d callers wait, want 1", got, n)
		}
		close(release)
		wg.Wait()

		if got := r.calls.Load(); got != 1 {
			t.Errorf("Refresher called %d times, want 1", got)
		}
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("caller %d: %v", i, errs[i])
			}
			if toks[i] != toks[0] {
				t.Fatalf("caller %d got a different token than caller 0", i)
			}
		}
		if toks[0].AccessToken != "access-1" {
			t.Errorf("callers got %q, want access-1", toks[0].AccessToken)
		}
		if st := s.Stats(); st.Waiting != 0 || st.Waited != n || st.Refreshes != 1 {
			t.Errorf("Stats = %+v, want Waiting 0, Waited %d, Refreshes 1", st, n)
		}
		mustClose(t, s) // waits for the observer calls
		if ok := evs.of(RefreshSucceeded); len(ok) != 1 || ok[0].Waiters != n {
			t.Errorf("RefreshSucceeded events = %+v, want one with Waiters %d", ok, n)
		}
	})
}

// The same property without synctest's scheduler: real goroutines racing on a
// real clock.
func TestConcurrentCallersShareOneRefreshRealTime(t *testing.T) {
	const n = 1000
	r := sequence(time.Now, time.Hour)
	s := New(r, WithInitialToken(expired(time.Now())))
	defer mustClose(t, s)

	start := make(chan struct{})
	toks := make([]*Token, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			tok, err := s.Token(ctxBG)
			if err != nil {
				t.Error(err)
			}
			toks[i] = tok
		})
	}
	close(start)
	wg.Wait()
	if got := r.calls.Load(); got != 1 {
		t.Errorf("Refresher called %d times, want 1", got)
	}
	for i := range n {
		if toks[i] != toks[0] {
			t.Fatalf("caller %d got a different token than caller 0", i)
		}
	}
}

func TestStaleRefreshAfterCompletedRefresh(t *testing.T) {
	clk := testutil.NewClock(testutil.Epoch)
	r := sequence(clk.Now, time.Hour)
	// No rate limit: only the identity check may prevent the second refresh.
	s := New(r, WithClock(clk.Now), WithMinRefreshInterval(0))
	defer mustClose(t, s)

	t1, err := s.Token(ctxBG)
	if err != nil {
		t.Fatal(err)
	}
	t2, err := s.Refresh(ctxBG, t1) // t1 rejected: one refresh
	if err != nil {
		t.Fatal(err)
	}
	if t2 == t1 || r.calls.Load() != 2 {
		t.Fatalf("Refresh(current) did not refresh: calls=%d", r.calls.Load())
	}
	for range 5 {
		// Late rejections of t1 (RPCs that were in flight with it).
		got, err := s.Refresh(ctxBG, t1)
		if err != nil {
			t.Fatal(err)
		}
		if got != t2 {
			t.Fatalf("stale Refresh returned %v, want the current token", got)
		}
	}
	if got := r.calls.Load(); got != 2 {
		t.Errorf("Refresher called %d times, want 2 (no refresh for a stale token)", got)
	}
}

func TestConcurrentStaleRefreshes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		inner := sequence(time.Now, time.Hour)
		r := &counter{fn: func(ctx context.Context, cur *Token) (*Token, error) {
			if cur != nil && cur.AccessToken == "access-1" {
				<-release
			}
			return inner.Refresh(ctx, cur)
		}}
		s := New(r)
		defer mustClose(t, s)
		t1, err := s.Token(ctxBG)
		if err != nil {
			t.Fatal(err)
		}
		// 50 RPCs fail with t1 at once: one refresh for all of them.
		const n = 50
		wait := refreshAll(t, s, t1, n)
		synctest.Wait()
		close(release)
		got := wait()
		if c := r.calls.Load(); c != 2 {
			t.Errorf("Refresher called %d times, want 2 (initial + one shared refresh)", c)
		}
		for i := range n {
			if got[i] != got[0] || got[i] == t1 {
				t.Fatalf("caller %d got %v, want the one new token", i, got[i])
			}
		}
	})
}

type ctxKey struct{}

func TestWaiterCancellation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		ctxs := make(chan context.Context, 1)
		r := &counter{fn: func(ctx context.Context, _ *Token) (*Token, error) {
			ctxs <- ctx
			<-release
			return &Token{AccessToken: "new", Expiry: time.Now().Add(time.Hour)}, nil
		}}
		s := New(r)
		defer mustClose(t, s)

		type result struct {
			tok *Token
			err error
		}
		call := func(ctx context.Context) chan result {
			ch := make(chan result, 1)
			go func() {
				tok, err := s.Token(ctx)
				ch <- result{tok, err}
			}()
			return ch
		}
		initCtx, cancelInit := context.WithCancel(context.WithValue(ctxBG, ctxKey{}, "trace-1"))
		initiator := call(initCtx)
		synctest.Wait() // the initiator started the refresh and waits
		waiterCtx, cancelWaiter := context.WithCancel(ctxBG)
		waiter := call(waiterCtx)
		deadlineCtx, cancelDeadline := context.WithTimeout(ctxBG, time.Second)
		defer cancelDeadline()
		deadline := call(deadlineCtx)
		patient := call(ctxBG)
		synctest.Wait()
		if got := s.Stats().Waiting; got != 4 {
			t.Fatalf("Waiting = %d, want 4", got)
		}

		cancelWaiter()
		synctest.Wait() // the cancelled waiter returns while the refresh is still blocked
		select {
		case res := <-waiter:
			if !errors.Is(res.err, context.Canceled) || res.tok != nil {
				t.Errorf("cancelled waiter got (%v, %v), want context.Canceled", res.tok, res.err)
			}
		default:
			t.Fatal("cancelled waiter did not return while the refresh was running")
		}

		time.Sleep(time.Second) // fake time: the deadline waiter's ctx expires
		synctest.Wait()
		select {
		case res := <-deadline:
			if !errors.Is(res.err, context.DeadlineExceeded) {
				t.Errorf("waiter past its deadline got %v, want context.DeadlineExceeded", res.err)
			}
		default:
			t.Fatal("waiter past its deadline did not return")
		}

		cancelInit()
		synctest.Wait()
		res := <-initiator
		if !errors.Is(res.err, context.Canceled) {
			t.Errorf("cancelled initiator got %v, want context.Canceled", res.err)
		}
		refreshCtx := <-ctxs
		if err := refreshCtx.Err(); err != nil {
			t.Fatalf("cancelling the initiator cancelled the refresh: %v", err)
		}
		if !InRefresh(refreshCtx) {
			t.Error("the Refresher's context is not marked for InRefresh")
		}
		if got := refreshCtx.Value(ctxKey{}); got != "trace-1" {
			t.Errorf("the Refresher's context lost the initiator's values: %v", got)
		}

		close(release)
		if res := <-patient; res.err != nil || res.tok.AccessToken != "new" {
			t.Errorf("remaining waiter got (%v, %v), want the new token", res.tok, res.err)
		}
		if r.calls.Load() != 1 {
			t.Errorf("Refresher called %d times, want 1", r.calls.Load())
		}
	})
}

func TestHungRefresherIsCutOffByTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := &counter{fn: func(ctx context.Context, _ *Token) (*Token, error) {
			<-ctx.Done() // a network call that never answers
			return nil, ctx.Err()
		}}
		s := New(r, WithRefreshTimeout(5*time.Second))
		defer mustClose(t, s)
		start := time.Now()
		_, err := s.Token(ctxBG)
		if !errors.Is(err, ErrRefreshTimeout) {
			t.Fatalf("Token = %v, want ErrRefreshTimeout", err)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("refresh timeout %v must not look like the caller's own deadline", err)
		}
		if elapsed := time.Since(start); elapsed != 5*time.Second {
			t.Errorf("refresh was cut off after %v (fake time), want 5s", elapsed)
		}
		if !strings.HasPrefix(err.Error(), "tokensource: refresh failed: timed out after 5s") {
			t.Errorf("error text %q", err)
		}
	})
}

func TestFailureReachesEveryWaiter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		errBoom := errors.New("auth server unavailable")
		release := make(chan struct{})
		r := &counter{fn: func(context.Context, *Token) (*Token, error) {
			<-release
			return nil, errBoom
		}}
		var evs events
		s := New(r, WithRefreshAttempts(1), WithObserver(evs.observe))
		defer mustClose(t, s)
		const n = 20
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				var tok *Token
				tok, errs[i] = s.Token(ctxBG)
				if tok != nil {
					t.Errorf("failed refresh returned a token")
				}
			})
		}
		synctest.Wait()
		close(release)
		wg.Wait()
		for i := range n {
			if !errors.Is(errs[i], errBoom) {
				t.Fatalf("waiter %d got %v, want %v", i, errs[i], errBoom)
			}
			if errs[i] != errs[0] {
				t.Fatalf("waiter %d got a different error value", i)
			}
		}
		if got, want := errs[0].Error(), "tokensource: refresh failed: auth server unavailable"; got != want {
			t.Errorf("error = %q, want %q", got, want)
		}
		// Within the backoff the next caller fails at once with the same
		// error and nothing calls the Refresher.
		if _, err := s.Token(ctxBG); err != errs[0] {
			t.Errorf("Token during backoff = %v, want the last error", err)
		}
		if r.calls.Load() != 1 {
			t.Errorf("Refresher called %d times, want 1", r.calls.Load())
		}
		mustClose(t, s)
		if f := evs.of(RefreshFailed); len(f) != 1 || f[0].Waiters != n || !errors.Is(f[0].Err, errBoom) {
			t.Errorf("RefreshFailed events = %+v", f)
		}
	})
}

func TestBackoff(t *testing.T) {
	clk := testutil.NewClock(testutil.Epoch)
	errBoom := errors.New("boom")
	var fail bool
	var mu sync.Mutex
	inner := sequence(clk.Now, time.Hour)
	r := &counter{fn: func(ctx context.Context, cur *Token) (*Token, error) {
		mu.Lock()
		defer mu.Unlock()
		if fail {
			return nil, errBoom
		}
		return inner.Refresh(ctx, cur)
	}}
	setFail := func(v bool) { mu.Lock(); fail = v; mu.Unlock() }
	const initial, maxWait = time.Second, 8 * time.Second
	s := New(r, WithRefreshAttempts(1), WithClock(clk.Now), WithBackoff(initial, maxWait))
	defer mustClose(t, s)

	setFail(true)
	calls := func() int64 { return r.calls.Load() }
	mustFail := func(wantCalls int64) {
		t.Helper()
		if _, err := s.Token(ctxBG); !errors.Is(err, errBoom) {
			t.Fatalf("Token = %v, want %v", err, errBoom)
		}
		if calls() != wantCalls {
			t.Fatalf("Refresher called %d times, want %d", calls(), wantCalls)
		}
	}
	mustFail(1) // failure 1: backoff in [0.5s, 1s]
	mustFail(1) // still backing off: fails fast, no call
	clk.Advance(initial)
	mustFail(2) // after the backoff the next call refreshes again; failure 2: [1s, 2s]
	clk.Advance(initial - time.Nanosecond)
	mustFail(2) // the backoff doubled
	clk.Advance(initial + time.Nanosecond)
	mustFail(3) // failure 3: [2s, 4s]
	for want := int64(4); want <= 8; want++ {
		clk.Advance(maxWait) // the cap: never longer than maxWait
		mustFail(want)
	}
	setFail(false)
	clk.Advance(maxWait)
	if _, err := s.Token(ctxBG); err != nil {
		t.Fatalf("Token after the backoff: %v", err)
	}
	// Success reset the backoff: the next failure waits at most initial.
	tok, _ := s.Token(ctxBG)
	setFail(true)
	before := calls()
	if _, err := s.Refresh(ctxBG, tok); !errors.Is(err, errBoom) {
		t.Fatalf("Refresh = %v", err)
	}
	// Without the reset this would be failure 9, backing off 4s or more.
	clk.Advance(initial)
	if _, err := s.Refresh(ctxBG, tok); !errors.Is(err, errBoom) || calls() != before+2 {
		t.Fatalf("after a reset backoff: err=%v, %d new calls, want a new attempt", err, calls()-before)
	}
}

func TestPermanentFailureRequiresReauth(t *testing.T) {
	clk := testutil.NewClock(testutil.Epoch)
	errRevoked := errors.New(`oauth2: "invalid_grant"`)
	var revoked bool
	var mu sync.Mutex
	inner := sequence(clk.Now, time.Hour)
	r := &counter{fn: func(ctx context.Context, cur *Token) (*Token, error) {
		mu.Lock()
		defer mu.Unlock()
		if revoked {
			return nil, Permanent(errRevoked)
		}
		return inner.Refresh(ctx, cur)
	}}
	setRevoked := func(v bool) { mu.Lock(); revoked = v; mu.Unlock() }
	hook := make(chan error, 10)
	var evs events
	s := New(r, WithClock(clk.Now), WithInitialToken(expired(clk.Now())),
		WithOnReauthRequired(func(err error) { hook <- err }), WithObserver(evs.observe))
	defer mustClose(t, s)

	setRevoked(true)
	_, err := s.Token(ctxBG)
	if !errors.Is(err, ErrReauthRequired) || !errors.Is(err, errRevoked) || !IsPermanent(err) {
		t.Fatalf("Token = %v, want ErrReauthRequired wrapping the Refresher's error", err)
	}
	if got := <-hook; !errors.Is(got, ErrReauthRequired) || !errors.Is(got, errRevoked) {
		t.Errorf("hook got %v", got)
	}
	// No further Refresher calls, however long we wait and however we ask.
	clk.Advance(24 * time.Hour)
	for range 3 {
		if _, err := s.Token(ctxBG); !errors.Is(err, ErrReauthRequired) {
			t.Fatalf("Token = %v, want ErrReauthRequired", err)
		}
		if _, err := s.Refresh(ctxBG, nil); !errors.Is(err, ErrReauthRequired) {
			t.Fatalf("Refresh = %v, want ErrReauthRequired", err)
		}
	}
	if got := r.calls.Load(); got != 1 {
		t.Errorf("Refresher called %d times in the reauth state, want 1", got)
	}
	if !s.Stats().ReauthRequired {
		t.Error("Stats().ReauthRequired = false")
	}
	select {
	case err := <-hook:
		t.Fatalf("hook fired twice for one entry: %v", err)
	default:
	}

	// The user logs in again.
	setRevoked(false)
	login := &Token{AccessToken: "login-access", RefreshToken: "login-refresh", Expiry: clk.Now().Add(time.Hour)}
	if err := s.SetToken(ctxBG, login); err != nil {
		t.Fatal(err)
	}
	if s.Stats().ReauthRequired {
		t.Error("SetToken did not leave the reauth state")
	}
	tok, err := s.Token(ctxBG)
	if err != nil || tok.AccessToken != "login-access" {
		t.Fatalf("Token after SetToken = (%v, %v)", tok, err)
	}
	if _, err := s.Refresh(ctxBG, tok); err != nil {
		t.Fatalf("refresh after SetToken: %v", err)
	}
	if got := r.calls.Load(); got != 2 {
		t.Errorf("Refresher called %d times, want 2", got)
	}

	// A second revocation is a second entry: the hook fires again, once.
	setRevoked(true)
	clk.Advance(2 * time.Hour)
	if _, err := s.Token(ctxBG); !errors.Is(err, ErrReauthRequired) {
		t.Fatalf("Token = %v", err)
	}
	mustClose(t, s)
	if len(hook) != 1 {
		t.Errorf("hook fired %d times for the second entry, want 1", len(hook))
	}
	if got := len(evs.of(ReauthRequired)); got != 2 {
		t.Errorf("%d ReauthRequired events, want 2", got)
	}
}

func TestEarlyWindowNeverBlocks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		errBoom := errors.New("boom")
		results := make(chan error, 2)
		results <- errBoom // first background refresh fails
		results <- nil     // second succeeds
		inner := sequence(time.Now, time.Hour)
		r := &counter{fn: func(ctx context.Context, cur *Token) (*Token, error) {
			<-release
			if err := <-results; err != nil {
				return nil, err
			}
			return inner.Refresh(ctx, cur)
		}}
		var evs events
		first := &Token{AccessToken: "first", RefreshToken: "r", Expiry: time.Now().Add(time.Hour)}
		s := New(r, WithRefreshAttempts(1), WithInitialToken(first), WithObserver(evs.observe), WithBackoff(time.Second, time.Second))
		defer mustClose(t, s)
		tok0, _ := s.Token(ctxBG)

		// Enter the early window: 1h - 10s leeway - 225s early window.
		time.Sleep(time.Hour - 10*time.Second - 225*time.Second)
		for range 100 {
			tok, err := s.Token(ctxBG) // a blocked call would deadlock the bubble
			if err != nil || tok != tok0 {
				t.Fatalf("Token in the early window = (%v, %v), want the current token", tok, err)
			}
		}
		synctest.Wait()
		if got := r.calls.Load(); got != 1 {
			t.Fatalf("%d background refreshes, want 1", got)
		}
		if !s.Stats().InFlight {
			t.Fatal("no refresh in flight")
		}
		// While it runs, the token is served from the lock-free hot path.
		if st := s.cur.Load(); !st.freshUntil.Equal(st.staleAt) {
			t.Errorf("hot path ends at %v during the background refresh, want the stale time %v", st.freshUntil, st.staleAt)
		}

		// The background refresh fails: callers never see it.
		release <- struct{}{}
		synctest.Wait()
		for range 10 {
			if tok, err := s.Token(ctxBG); err != nil || tok != tok0 {
				t.Fatalf("Token after a failed background refresh = (%v, %v)", tok, err)
			}
		}
		if got := s.Stats().Failures; got != 1 {
			t.Fatalf("Failures = %d, want 1", got)
		}
		if st := s.cur.Load(); !st.freshUntil.After(time.Now()) {
			t.Errorf("after the failure the hot path ends at %v, want the end of the backoff", st.freshUntil)
		}
		if f := evs.of(RefreshFailed); len(f) != 1 || !f[0].Background || f[0].Waiters != 0 {
			t.Errorf("RefreshFailed events = %+v, want one background event without waiters", f)
		}

		// After the backoff the next call starts another background refresh.
		time.Sleep(time.Second)
		if tok, err := s.Token(ctxBG); err != nil || tok != tok0 {
			t.Fatalf("Token = (%v, %v)", tok, err)
		}
		synctest.Wait()
		if got := r.calls.Load(); got != 2 {
			t.Fatalf("%d refreshes after the backoff, want 2", got)
		}
		close(release)
		synctest.Wait()
		tok, err := s.Token(ctxBG)
		if err != nil || tok == tok0 || tok.AccessToken != "access-1" {
			t.Fatalf("Token after a successful background refresh = (%v, %v)", tok, err)
		}
		if got := s.Stats().Waited; got != 0 {
			t.Errorf("%d callers waited in the early window, want 0", got)
		}
	})
}

func TestPermanentFailureInEarlyWindowKeepsValidToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := &counter{fn: func(context.Context, *Token) (*Token, error) {
			return nil, Permanent(errors.New("revoked"))
		}}
		first := &Token{AccessToken: "first", Expiry: time.Now().Add(time.Hour)}
		s := New(r, WithInitialToken(first))
		defer mustClose(t, s)
		time.Sleep(time.Hour - 10*time.Second - time.Minute) // inside the early window
		if tok, err := s.Token(ctxBG); err != nil || tok.AccessToken != "first" {
			t.Fatalf("Token = (%v, %v)", tok, err)
		}
		synctest.Wait()
		if !s.Stats().ReauthRequired {
			t.Fatal("not in the reauth state")
		}
		if tok, err := s.Token(ctxBG); err != nil || tok.AccessToken != "first" {
			t.Fatalf("the still-valid token must be served: (%v, %v)", tok, err)
		}
		time.Sleep(time.Minute) // now stale
		if _, err := s.Token(ctxBG); !errors.Is(err, ErrReauthRequired) {
			t.Fatalf("Token = %v, want ErrReauthRequired", err)
		}
		if r.calls.Load() != 1 {
			t.Errorf("Refresher called %d times, want 1", r.calls.Load())
		}
	})
}

func TestInvalidTokensAreRefused(t *testing.T) {
	const secret = "s3cr3t-Value"
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		name string
		tok  *Token
		want string
	}{
		{"nil", nil, "nil"},
		{"empty", &Token{RefreshToken: secret}, "empty"},
		{"expired", &Token{AccessToken: secret, Expiry: now.Add(-time.Second)}, "expired"},
		{"expires now", &Token{AccessToken: secret, Expiry: now}, "expired"},
		{"space", &Token{AccessToken: secret + " x"}, "offset 12"},
		{"newline", &Token{AccessToken: secret + "\r\nx-injected: 1"}, "offset 12"},
		{"tab", &Token{AccessToken: "\t" + secret}, "offset 0"},
		{"DEL", &Token{AccessToken: secret + "\x7f"}, "outside visible ASCII"},
		{"NUL", &Token{AccessToken: secret + "\x00"}, "outside visible ASCII"},
		{"non-ASCII", &Token{AccessToken: secret + "é"}, "outside visible ASCII"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clk := testutil.NewClock(now)
			store := NewMemoryStore()
			r := &counter{fn: func(context.Context, *Token) (*Token, error) { return tc.tok, nil }}
			s := New(r, WithClock(clk.Now), WithStore(store))
			defer mustClose(t, s)
			tok, err := s.Token(ctxBG)
			if !errors.Is(err, ErrInvalidToken) || tok != nil {
				t.Fatalf("Token = (%v, %v), want ErrInvalidToken", tok, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error %q contains the token", err)
			}
			// A refused result's rotated refresh token is kept (the
			// Refresher may have consumed the previous one), but its access
			// token is never stored.
			if st, _ := store.Load(ctxBG); st != nil && (st.AccessToken != "" || tc.tok == nil || st.RefreshToken != tc.tok.RefreshToken) {
				t.Errorf("an invalid token was saved: %v", st)
			}
			if g := s.Stats().Generation; g != 0 {
				t.Errorf("an invalid token was installed (generation %d)", g)
			}
			if err := s.SetToken(ctxBG, tc.tok); !errors.Is(err, ErrInvalidToken) || strings.Contains(err.Error(), secret) {
				t.Errorf("SetToken = %v, want ErrInvalidToken without the token", err)
			}
		})
	}
}

func TestValidTokenCharacters(t *testing.T) {
	// Every visible ASCII character is accepted, including those of JWTs and
	// RFC 6750 b64token.
	var b strings.Builder
	for c := byte(0x21); c <= 0x7e; c++ {
		b.WriteByte(c)
	}
	if err := validateToken(&Token{AccessToken: b.String()}, time.Now()); err != nil {
		t.Fatal(err)
	}
}

func TestForcedRefreshIsRateLimited(t *testing.T) {
	clk := testutil.NewClock(testutil.Epoch)
	r := sequence(clk.Now, time.Hour)
	var evs events
	s := New(r, WithClock(clk.Now), WithMinRefreshInterval(time.Second), WithObserver(evs.observe))
	defer mustClose(t, s)
	t0, err := s.Token(ctxBG)
	if err != nil {
		t.Fatal(err)
	}
	// A server that rejects every token: each RPC calls Refresh with the
	// token it was given.
	cur := t0
	for range 20 {
		next, err := s.Refresh(ctxBG, cur)
		if err != nil {
			t.Fatal(err)
		}
		cur = next
		clk.Advance(10 * time.Millisecond)
	}
	if got := r.calls.Load(); got != 3 {
		t.Errorf("Refresher called %d times within the interval, want 3 (initial + a burst of 2 forced)", got)
	}
	if got := s.Stats().RateLimited; got != 18 {
		t.Errorf("RateLimited = %d, want 18", got)
	}
	clk.Advance(time.Second)
	if next, err := s.Refresh(ctxBG, cur); err != nil || next == cur {
		t.Fatalf("Refresh after the interval = (%v, %v), want a new token", next, err)
	}
	if got := r.calls.Load(); got != 4 {
		t.Errorf("Refresher called %d times after the interval, want 4", got)
	}
	mustClose(t, s)
	if got := len(evs.of(RefreshRateLimited)); got != 18 {
		t.Errorf("%d RefreshRateLimited events, want 18", got)
	}
	// Each flight reports after its waiters are released, so a loaded
	// machine may deliver the first flight's event after the next ones'.
	f := evs.of(RefreshSucceeded)
	slices.SortFunc(f, func(a, b Event) int { return cmp.Compare(a.Refresh, b.Refresh) })
	if len(f) != 4 || f[0].Forced || !f[1].Forced || !f[2].Forced {
		t.Errorf("RefreshSucceeded events = %+v", f)
	}
}

func TestExpiryWindows(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		name        string
		life        time.Duration
		opts        []Option
		leeway      time.Duration
		earlyWindow time.Duration
	}{
		{"one hour uses the defaults", time.Hour, nil, 10 * time.Second, 225 * time.Second},
		{"five minutes caps the early window", 5 * time.Minute, nil, 10 * time.Second, 75 * time.Second},
		{"two seconds", 2 * time.Second, nil, 200 * time.Millisecond, 500 * time.Millisecond},
		{"100ms soak token", 100 * time.Millisecond, nil, 10 * time.Millisecond, 25 * time.Millisecond},
		{"options are capped too", 10 * time.Second, []Option{WithExpiryLeeway(time.Minute), WithEarlyRefresh(time.Hour)},
			time.Second, 2500 * time.Millisecond},
		{"small options apply", time.Hour, []Option{WithExpiryLeeway(time.Second), WithEarlyRefresh(time.Minute)},
			time.Second, time.Minute},
		{"no early window", time.Hour, []Option{WithEarlyRefresh(0)}, 10 * time.Second, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := New(&counter{}, tc.opts...)
			exp := now.Add(tc.life)
			st := s.newState(&Token{AccessToken: "a", Expiry: exp}, 1, now)
			if got := exp.Sub(st.staleAt); got != tc.leeway {
				t.Errorf("leeway = %v, want %v", got, tc.leeway)
			}
			if got := st.staleAt.Sub(st.refreshAt); got != tc.earlyWindow {
				t.Errorf("early window = %v, want %v", got, tc.earlyWindow)
			}
			if !st.freshUntil.Equal(st.refreshAt) {
				t.Errorf("freshUntil = %v, want refreshAt %v", st.freshUntil, st.refreshAt)
			}
		})
	}
}

func TestNeverExpiringTokenIsNeverRefreshed(t *testing.T) {
	clk := testutil.NewClock(testutil.Epoch)
	r := &counter{fn: func(context.Context, *Token) (*Token, error) {
		return &Token{AccessToken: "forever"}, nil
	}}
	s := New(r, WithClock(clk.Now))
	defer mustClose(t, s)
	for range 3 {
		if tok, err := s.Token(ctxBG); err != nil || tok.AccessToken != "forever" {
			t.Fatalf("Token = (%v, %v)", tok, err)
		}
		clk.Advance(100 * 365 * 24 * time.Hour)
	}
	if got := r.calls.Load(); got != 1 {
		t.Errorf("Refresher called %d times, want 1", got)
	}
}

func TestShortLivedTokensRefreshOnTime(t *testing.T) {
	// 100 ms tokens: each is served until its early window, then replaced
	// in the background without callers waiting.
	synctest.Test(t, func(t *testing.T) {
		r := sequence(time.Now, 100*time.Millisecond)
		s := New(r)
		defer mustClose(t, s)
		seen := map[string]bool{}
		for range 100 {
			tok, err := s.Token(ctxBG)
			if err != nil {
				t.Fatal(err)
			}
			if !time.Now().Before(tok.Expiry) {
				t.Fatalf("handed out an expired token")
			}
			seen[tok.AccessToken] = true
			time.Sleep(10 * time.Millisecond)
			synctest.Wait()
		}
		// 1 s of fake time with 100 ms tokens refreshed 35 ms early.
		if len(seen) < 10 {
			t.Errorf("saw %d distinct tokens in 1s of 100ms tokens", len(seen))
		}
		if got := s.Stats().Waited; got != 1 {
			t.Errorf("%d callers waited, want only the first", got)
		}
	})
}

func TestClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := &counter{fn: func(ctx context.Context, _ *Token) (*Token, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}}
		s := New(r)
		errc := make(chan error, 1)
		go func() {
			_, err := s.Token(ctxBG)
			errc <- err
		}()
		synctest.Wait()
		mustClose(t, s) // releases the waiter at once, waits for the Refresher until the refresh timeout cancels it
		if err := <-errc; !errors.Is(err, ErrClosed) {
			t.Errorf("waiter got %v, want ErrClosed", err)
		}
		if _, err := s.Token(ctxBG); !errors.Is(err, ErrClosed) {
			t.Errorf("Token after Close = %v", err)
		}
		if _, err := s.Refresh(ctxBG, nil); !errors.Is(err, ErrClosed) {
			t.Errorf("Refresh after Close = %v", err)
		}
		if err := s.SetToken(ctxBG, &Token{AccessToken: "x"}); !errors.Is(err, ErrClosed) {
			t.Errorf("SetToken after Close = %v", err)
		}
		mustClose(t, s) // idempotent
	})
}

func TestCloseWithValidToken(t *testing.T) {
	s := New(&counter{}, WithInitialToken(&Token{AccessToken: "a"}))
	if _, err := s.Token(ctxBG); err != nil {
		t.Fatal(err)
	}
	mustClose(t, s)
	if _, err := s.Token(ctxBG); !errors.Is(err, ErrClosed) {
		t.Errorf("Token after Close = %v, want ErrClosed even from the hot path", err)
	}
}

func TestRefresherSeesCurrentToken(t *testing.T) {
	clk := testutil.NewClock(testutil.Epoch)
	var seen []string
	var mu sync.Mutex
	inner := sequence(clk.Now, time.Hour)
	r := &counter{fn: func(ctx context.Context, cur *Token) (*Token, error) {
		mu.Lock()
		if cur == nil {
			seen = append(seen, "<nil>")
		} else {
			seen = append(seen, cur.RefreshToken)
		}
		mu.Unlock()
		return inner.Refresh(ctx, cur)
	}}
	initial := &Token{RefreshToken: "login-refresh"} // no access token yet
	s := New(r, WithClock(clk.Now), WithInitialToken(initial))
	defer mustClose(t, s)
	tok, err := s.Token(ctxBG)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Refresh(ctxBG, tok); err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(seen), "[login-refresh refresh-1]"; got != want {
		t.Errorf("Refresher saw refresh tokens %v, want %v", got, want)
	}
}

func TestRefresherCallingBackDoesNotDeadlock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var s *Source
		var inner error
		r := &counter{fn: func(ctx context.Context, _ *Token) (*Token, error) {
			// A misconfigured interceptor on the Refresher's own RPC asks
			// the same Source for a token.
			_, inner = s.Token(ctx)
			return &Token{AccessToken: "a", Expiry: time.Now().Add(time.Hour)}, nil
		}}
		s = New(r)
		defer mustClose(t, s)
		if _, err := s.Token(ctxBG); err != nil {
			t.Fatal(err)
		}
		if !errors.Is(inner, ErrSelfWait) {
			t.Errorf("nested Token = %v, want ErrSelfWait", inner)
		}
	})
}

func TestSetTokenWaitsForRefreshInProgress(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		r := &counter{fn: func(context.Context, *Token) (*Token, error) {
			<-release
			return &Token{AccessToken: "refreshed", Expiry: time.Now().Add(time.Hour)}, nil
		}}
		store := NewMemoryStore()
		s := New(r, WithStore(store))
		defer mustClose(t, s)
		go func() { _, _ = s.Token(ctxBG) }()
		synctest.Wait()
		done := make(chan error, 1)
		login := &Token{AccessToken: "login", Expiry: time.Now().Add(time.Hour)}
		go func() { done <- s.SetToken(ctxBG, login) }()
		synctest.Wait()
		select {
		case err := <-done:
			t.Fatalf("SetToken returned (%v) while a refresh was in progress", err)
		default:
		}
		close(release)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if tok, _ := s.Token(ctxBG); tok.AccessToken != "login" {
			t.Errorf("Token = %v, want the SetToken token", tok.AccessToken)
		}
		if st, _ := store.Load(ctxBG); st.AccessToken != "login" {
			t.Errorf("store holds %q, want the SetToken token", st.AccessToken)
		}
		login.AccessToken = "mutated"
		if tok, _ := s.Token(ctxBG); tok.AccessToken != "login" {
			t.Error("SetToken did not copy the token")
		}
	})
}

func TestTokenHotPathDoesNotAllocate(t *testing.T) {
	s := New(&counter{}, WithInitialToken(&Token{AccessToken: "a", Expiry: time.Now().Add(time.Hour)}))
	defer mustClose(t, s)
	allocs := testing.AllocsPerRun(1000, func() {
		if _, err := s.Token(ctxBG); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Token allocates %v times per call on the hot path, want 0", allocs)
	}
}

func TestNewPanicsOnNilRefresher(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("New(nil) did not panic")
		}
	}()
	New(nil)
}

func TestCancelledCallerStartsNoRefresh(t *testing.T) {
	r := sequence(time.Now, time.Hour)
	s := New(r)
	defer mustClose(t, s)
	ctx, cancel := context.WithCancel(ctxBG)
	cancel()
	if _, err := s.Token(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Token = %v, want context.Canceled", err)
	}
	if r.calls.Load() != 0 {
		t.Error("a caller whose ctx was already done started a refresh")
	}
}

func TestEventKindString(t *testing.T) {
	if got := RefreshSucceeded.String(); got != "RefreshSucceeded" {
		t.Errorf("String = %q", got)
	}
	if got := EventKind(99).String(); got != "EventKind(99)" {
		t.Errorf("String = %q", got)
	}
}

func TestObserverEvents(t *testing.T) {
	clk := testutil.NewClock(testutil.Epoch)
	var evs events
	r := sequence(clk.Now, time.Hour)
	s := New(r, WithClock(clk.Now), WithObserver(evs.observe))
	if _, err := s.Token(ctxBG); err != nil {
		t.Fatal(err)
	}
	mustClose(t, s)
	if got, want := fmt.Sprint(evs.kinds()), "[RefreshStarted RefreshSucceeded]"; got != want {
		t.Fatalf("events %v, want %v", got, want)
	}
	ok := evs.of(RefreshSucceeded)[0]
	if ok.Waiters != 1 || ok.Forced || ok.Background || ok.Err != nil || ok.Generation != 1 ||
		!ok.Expiry.Equal(clk.Now().Add(time.Hour)) {
		t.Errorf("RefreshSucceeded = %+v", ok)
	}
}

// Stats is consistent with what callers observe: a caller that received a
// refreshed token (or a refresh failure) already sees it counted.
func TestStatsCountBeforeHandingOut(t *testing.T) {
	errBoom := errors.New("boom")
	var fail bool
	inner := sequence(time.Now, time.Hour)
	r := &counter{fn: func(ctx context.Context, cur *Token) (*Token, error) {
		if fail {
			return nil, errBoom
		}
		return inner.Refresh(ctx, cur)
	}}
	// No rate limit and a negligible backoff: every Refresh of the current
	// token runs the Refresher.
	clk := testutil.NewClock(time.Now())
	s := New(r, WithClock(clk.Now), WithMinRefreshInterval(0), WithBackoff(time.Nanosecond, time.Nanosecond))
	defer mustClose(t, s)
	tok, err := s.Token(ctxBG)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2000 {
		next, err := s.Refresh(ctxBG, tok)
		if err != nil {
			t.Fatal(err)
		}
		tok = next
		if got, want := s.Stats().Refreshes, uint64(i+2); got != want {
			t.Fatalf("after refresh %d: Stats().Refreshes = %d, want %d", i+2, got, want)
		}
	}
	fail = true // the Refresher runs only while this goroutine waits for it
	for i := range 200 {
		clk.Advance(time.Microsecond) // past the 1ns backoff
		if _, err := s.Refresh(ctxBG, tok); !errors.Is(err, errBoom) {
			t.Fatalf("Refresh = %v, want %v", err, errBoom)
		}
		if got, want := s.Stats().Failures, uint64(i+1); got != want {
			t.Fatalf("after failure %d: Stats().Failures = %d, want %d", i+1, got, want)
		}
	}
}

// Expiry instants are compared by the wall clock: a token whose Expiry
// carries a monotonic clock reading (time.Now().Add(ttl)) must not be judged
// by that reading, which stops while the machine sleeps.
func TestExpiryJudgedByWallClock(t *testing.T) {
	s := New(&counter{})
	defer mustClose(t, s)
	now := time.Now()
	st := s.newState(&Token{AccessToken: "a", Expiry: now.Add(time.Hour)}, 1, now)
	for name, at := range map[string]time.Time{"staleAt": st.staleAt, "refreshAt": st.refreshAt, "freshUntil": st.freshUntil} {
		if at != at.Round(0) {
			t.Errorf("%s = %v carries a monotonic clock reading", name, at)
		}
	}
	if got := st.tok.Expiry.Sub(st.staleAt); got != DefaultExpiryLeeway {
		t.Errorf("leeway = %v, want %v", got, DefaultExpiryLeeway)
	}
}

// A forced refresh that arrives while the early window's background
// refresh is at the Refresher waits for it (no second Refresher call beside
// it), and then, since that refresh began before the rejection and may have
// brought back a token the same revocation hit, the rejected callers share
// one more refresh: two Refresher calls in all, never at once, and every
// caller gets the second's token.
func TestForcedRefreshJoinsBackgroundRefresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		inner := sequence(time.Now, time.Hour)
		var running atomic.Int32
		r := &counter{fn: func(ctx context.Context, cur *Token) (*Token, error) {
			if running.Add(1) > 1 {
				t.Error("two Refresher calls at once")
			}
			defer running.Add(-1)
			<-release
			return inner.Refresh(ctx, cur)
		}}
		first := &Token{AccessToken: "first", Expiry: time.Now().Add(time.Hour)}
		var evs events
		s := New(r, WithInitialToken(first), WithObserver(evs.observe))
		defer mustClose(t, s)
		time.Sleep(time.Hour - 10*time.Second - time.Minute) // inside the early window
		cur, err := s.Token(ctxBG)                           // starts the background refresh
		if err != nil || cur.AccessToken != "first" {
			t.Fatalf("Token = (%v, %v)", cur, err)
		}
		synctest.Wait()
		const n = 10
		wait := refreshAll(t, s, cur, n)
		synctest.Wait()
		if c := r.calls.Load(); c != 1 {
			t.Fatalf("Refresher called %d times, want 1 (the forced refreshes join the background one)", c)
		}
		close(release)
		got := wait()
		for i := range n {
			if got[i] == nil || got[i].AccessToken != "access-2" {
				t.Fatalf("Refresh %d = %v, want the token of the refresh after the background one", i, got[i])
			}
		}
		if tok, _ := s.Token(ctxBG); tok != got[0] {
			t.Errorf("Token = %v after the refresh, want %v", tok, got[0])
		}
		if c := r.calls.Load(); c != 2 {
			t.Errorf("Refresher called %d times, want 2", c)
		}
		mustClose(t, s)
		ok := evs.of(RefreshSucceeded)
		// Events are reported after the waiters are released, so in either
		// order; the callers the forced refresh finishes before take its
		// token as a stale rejection's answer: at least one waits for it.
		slices.SortFunc(ok, func(a, b Event) int { return cmp.Compare(a.Refresh, b.Refresh) })
		if len(ok) != 2 || !ok[0].Background || ok[0].Waiters != n || !ok[1].Forced || ok[1].Waiters < 1 {
			t.Errorf("RefreshSucceeded events = %+v, want the background refresh with %d waiters and one forced refresh after it", ok, n)
		}
	})
}

// Rejections that join the background refresh before it has called the
// Refresher take its token: that call is made after they arrived, so after
// whatever revoked the rejected token. One Refresher call.
func TestForcedRefreshJoinsBackgroundRefreshBeforeItsCall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		gate := make(chan struct{})
		r := &counter{fn: sequence(time.Now, time.Hour).Refresh}
		first := &Token{AccessToken: "first", Expiry: time.Now().Add(time.Hour)}
		var evs events
		s := New(r, WithInitialToken(first), WithObserver(func(e Event) {
			if e.Kind == RefreshStarted && e.Background {
				<-gate // holds the background refresh before its Refresher call
			}
			evs.observe(e)
		}))
		defer mustClose(t, s)
		time.Sleep(time.Hour - 10*time.Second - time.Minute) // inside the early window
		cur, err := s.Token(ctxBG)                           // starts the background refresh
		if err != nil || cur.AccessToken != "first" {
			t.Fatalf("Token = (%v, %v)", cur, err)
		}
		const n = 10
		wait := refreshAll(t, s, cur, n)
		synctest.Wait()
		close(gate)
		got := wait()
		for i := range n {
			if got[i] == nil || got[i].AccessToken != "access-1" {
				t.Fatalf("Refresh %d = %v, want the background refresh's token", i, got[i])
			}
		}
		if c := r.calls.Load(); c != 1 {
			t.Errorf("Refresher called %d times, want 1", c)
		}
		mustClose(t, s)
		if ok := evs.of(RefreshSucceeded); len(ok) != 1 || !ok[0].Background || ok[0].Waiters != n {
			t.Errorf("RefreshSucceeded events = %+v, want one background refresh with %d waiters", ok, n)
		}
	})
}

// A forced refresh that meets the backoff after a failed refresh says why
// it was not attempted: the Source is backing off, and when it tries again;
// the error still matches the refresh's failure.
func TestBackoffErrorSaysWhy(t *testing.T) {
	clk := testutil.NewClock(testutil.Epoch)
	errBoom := errors.New("boom")
	r := &counter{fn: func(context.Context, *Token) (*Token, error) { return nil, errBoom }}
	s := New(r, WithRefreshAttempts(1), WithClock(clk.Now), WithBackoff(time.Second, time.Second),
		WithInitialToken(&Token{AccessToken: "valid", Expiry: clk.Now().Add(time.Hour)}))
	defer mustClose(t, s)
	tok, err := s.Token(ctxBG)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Refresh(ctxBG, tok); !errors.Is(err, errBoom) || strings.Contains(err.Error(), "backing off") {
		t.Fatalf("first Refresh = %v, want the refresh's own failure", err)
	}
	_, err = s.Refresh(ctxBG, tok)
	if !errors.Is(err, errBoom) || !strings.Contains(err.Error(), "forced refresh not attempted: backing off after a failed refresh, next attempt in ") {
		t.Fatalf("Refresh while backing off = %v, want it to say so and wrap %v", err, errBoom)
	}
	if n := r.calls.Load(); n != 1 {
		t.Errorf("%d Refresher calls, want 1: the backoff fails fast", n)
	}
}

// refreshAll starts n concurrent Refresh(ctxBG, stale) calls on s, as n
// rejected calls would; wait waits for them all and returns their tokens
// (an error fails the test).
func refreshAll(t *testing.T, s *Source, stale *Token, n int) (wait func() []*Token) {
	t.Helper()
	got := make([]*Token, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var err error
			if got[i], err = s.Refresh(ctxBG, stale); err != nil {
				t.Error(err)
			}
		})
	}
	return func() []*Token {
		wg.Wait()
		return got
	}
}
