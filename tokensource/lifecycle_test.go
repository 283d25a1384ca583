package tokensource

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// Tests of the credential's whole life: durability of every token taken in,
// Close during a rotation, refresh timeouts that hold against Refreshers
// ignoring their context, and unchanged tokens.

// orderStore records whether Save completed before a token was handed out.
type orderStore struct {
	MemoryStore
	saved atomic.Int64
}

func (o *orderStore) Save(ctx context.Context, t *Token) error {
	err := o.MemoryStore.Save(ctx, t)
	if err == nil {
		o.saved.Add(1)
	}
	return err
}

// refuseRefresher fails the test when called: a restart must not need it.
func refuseRefresher(t *testing.T) *counter {
	return &counter{fn: func(context.Context, *Token) (*Token, error) {
		t.Error("Refresher called; the Store should have had a usable token")
		return nil, Permanent(errors.New("no refresh expected"))
	}}
}

// The login token from WithInitialToken is in an empty Store before it is
// first handed out, so a restart right after the login needs no new login.
// Today's bug: the store stayed empty until the first refresh.
func TestInitialTokenSavedBeforeHandedOut(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token.json")
	login := &Token{AccessToken: "login-access", RefreshToken: "login-refresh", Expiry: time.Now().Add(time.Hour)}

	first := New(refuseRefresher(t), WithInitialToken(login), WithStore(NewFileStore(path)))
	tok, err := first.Token(ctxBG)
	if err != nil || tok.AccessToken != "login-access" {
		t.Fatalf("Token = (%v, %v)", tok, err)
	}
	// Killed now, before any refresh: no Close.

	stored, err := NewFileStore(path).Load(ctxBG)
	if err != nil || stored == nil || stored.RefreshToken != "login-refresh" {
		t.Fatalf("store after the first Token = (%v, %v), want the login token", stored, err)
	}
	second := New(refuseRefresher(t), WithStore(NewFileStore(path))) // a restart: no WithInitialToken
	defer mustClose(t, second)
	if tok, err := second.Token(ctxBG); err != nil || tok.AccessToken != "login-access" {
		t.Fatalf("Token after restart = (%v, %v), want the login token without a login", tok, err)
	}
	mustClose(t, first)
}

// The same with a plain (non-coordinating) Store that only counts: the save
// happens before Token returns.
func TestInitialTokenSavedPlainStore(t *testing.T) {
	st := &orderStore{}
	login := &Token{AccessToken: "a", RefreshToken: "r", Expiry: time.Now().Add(time.Hour)}
	s := New(refuseRefresher(t), WithInitialToken(login), WithStore(plainStore{st}))
	defer mustClose(t, s)
	if _, err := s.Token(ctxBG); err != nil {
		t.Fatal(err)
	}
	if st.saved.Load() != 1 {
		t.Fatalf("%d saves before the token was handed out, want 1", st.saved.Load())
	}
}

// plainStore hides every method but Load and Save, so the Source sees a
// Store that does not coordinate.
type plainStore struct{ st Store }

func (p plainStore) Load(ctx context.Context) (*Token, error) { return p.st.Load(ctx) }
func (p plainStore) Save(ctx context.Context, t *Token) error { return p.st.Save(ctx, t) }

// Close during a rotation. The authorization server has answered (rotated the
// refresh token) after Close was called; Close waits for that answer, saves
// it, and only then returns. Waiters are released at once.
func TestCloseDrainsRotation(t *testing.T) {
	for _, tc := range []struct {
		name  string
		store func() Store
	}{
		{"plain", func() Store { return plainStore{NewMemoryStore()} }},
		{"coordinated", func() Store { return NewMemoryStore() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				st := tc.store()
				old := &Token{AccessToken: "old", RefreshToken: "rt-1", Expiry: time.Now().Add(-time.Minute)}
				if err := st.Save(ctxBG, old); err != nil {
					t.Fatal(err)
				}
				entered, answer := make(chan struct{}), make(chan struct{})
				r := &counter{fn: func(ctx context.Context, cur *Token) (*Token, error) {
					if cur.RefreshToken != "rt-1" {
						t.Errorf("Refresher got refresh token %q, want rt-1", cur.RefreshToken)
					}
					close(entered)
					<-answer // the server is slow; Close does not cancel this call
					if ctx.Err() != nil {
						t.Errorf("the Refresher's context was cancelled by Close: %v", context.Cause(ctx))
					}
					return &Token{AccessToken: "new", RefreshToken: "rt-2", Expiry: time.Now().Add(time.Hour)}, nil
				}}
				s := New(r, WithStore(st), WithRefreshTimeout(time.Minute))
				errc := make(chan error, 1)
				go func() {
					_, err := s.Token(ctxBG)
					errc <- err
				}()
				<-entered
				closed := make(chan struct{})
				go func() {
					mustClose(t, s)
					close(closed)
				}()
				if err := <-errc; !errors.Is(err, ErrClosed) {
					t.Errorf("waiter = %v, want ErrClosed at once", err)
				}
				synctest.Wait()
				select {
				case <-closed:
					t.Fatal("Close returned while the Refresher call was in flight")
				default:
				}
				close(answer)
				<-closed
				got, err := st.Load(ctxBG)
				if err != nil || got.RefreshToken != "rt-2" {
					t.Fatalf("store after Close = (%v, %v), want the rotated refresh token rt-2", got, err)
				}
			})
		})
	}
}

// Close waits for a Refresher that ignores its context no longer than the
// refresh timeout.
func TestCloseBoundedByRefreshTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		unblock := make(chan struct{})
		entered := make(chan struct{})
		st := NewMemoryStore()
		r := &counter{fn: func(context.Context, *Token) (*Token, error) {
			close(entered)
			<-unblock // ignores ctx
			return &Token{AccessToken: "late", RefreshToken: "rt-late", Expiry: time.Now().Add(time.Hour)}, nil
		}}
		s := New(r, WithStore(plainStore{st}), WithRefreshTimeout(5*time.Second))
		go func() { _, _ = s.Token(ctxBG) }()
		<-entered
		start := time.Now()
		mustClose(t, s)
		if d := time.Since(start); d != 5*time.Second {
			t.Errorf("Close took %v (fake clock), want the refresh timeout, 5s", d)
		}
		close(unblock)
		synctest.Wait() // the late result is saved by the refresh goroutine
		if got, _ := st.Load(ctxBG); got == nil || got.RefreshToken != "rt-late" {
			t.Errorf("store = %v, want the late result saved even after Close", got)
		}
	})
}

// The refresh timeout releases the waiters of a Refresher that ignores its
// context; no second Refresher call starts while it runs (callers fail fast);
// its late result is validated, installed and saved.
func TestRefreshTimeoutWithRefresherIgnoringContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		unblock := make(chan struct{})
		st := NewMemoryStore()
		r := &counter{fn: func(context.Context, *Token) (*Token, error) {
			<-unblock
			return &Token{AccessToken: "late", RefreshToken: "rt-late", Expiry: time.Now().Add(time.Hour)}, nil
		}}
		s := New(r, WithStore(plainStore{st}), WithRefreshTimeout(2*time.Second), WithBackoff(100*time.Millisecond, time.Second))
		defer mustClose(t, s)

		const waiters = 8
		var wg sync.WaitGroup
		errs := make(chan error, waiters)
		for range waiters {
			wg.Go(func() {
				_, err := s.Token(ctxBG) // context.Background: only the refresh timeout can release it
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if !errors.Is(err, ErrRefreshTimeout) {
				t.Errorf("waiter = %v, want ErrRefreshTimeout", err)
			}
		}
		// Past the backoff: still no second call, and callers fail fast.
		time.Sleep(10 * time.Second)
		if _, err := s.Token(ctxBG); !errors.Is(err, ErrRefreshTimeout) {
			t.Errorf("Token while the Refresher still runs = %v, want the timeout error at once", err)
		}
		if _, err := s.Refresh(ctxBG, nil); !errors.Is(err, ErrRefreshTimeout) {
			t.Errorf("Refresh while the Refresher still runs = %v, want the timeout error at once", err)
		}
		if n := r.calls.Load(); n != 1 {
			t.Errorf("%d Refresher calls, want 1 while the first still runs", n)
		}

		close(unblock)
		synctest.Wait()
		tok, err := s.Token(ctxBG)
		if err != nil || tok.AccessToken != "late" {
			t.Fatalf("Token after the late result = (%v, %v), want it installed", tok, err)
		}
		if got, _ := st.Load(ctxBG); got == nil || got.RefreshToken != "rt-late" {
			t.Errorf("store = %v, want the late result saved", got)
		}
		if n := r.calls.Load(); n != 1 {
			t.Errorf("%d Refresher calls, want 1", n)
		}
	})
}

// A late result that is not a usable token is validated too, and SetToken
// during the wait wins over a late result.
func TestRefreshTimeoutLateResultValidatedAndSuperseded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		unblock := make(chan *Token)
		r := &counter{fn: func(context.Context, *Token) (*Token, error) { return <-unblock, nil }}
		st := NewMemoryStore()
		s := New(r, WithStore(plainStore{st}), WithRefreshTimeout(time.Second))
		defer mustClose(t, s)

		if _, err := s.Token(ctxBG); !errors.Is(err, ErrRefreshTimeout) {
			t.Fatalf("Token = %v, want ErrRefreshTimeout", err)
		}
		unblock <- &Token{AccessToken: "bad token"} // a space: not sendable
		synctest.Wait()
		if _, err := s.Token(ctxBG); err == nil {
			t.Fatal("an invalid late result was handed out")
		}

		time.Sleep(time.Minute) // past the backoff
		go func() { _, _ = s.Token(ctxBG) }()
		synctest.Wait()
		time.Sleep(2 * time.Second) // timed out again, Refresher still running
		if err := s.SetToken(ctxBG, &Token{AccessToken: "login", Expiry: time.Now().Add(time.Hour)}); err != nil {
			t.Fatalf("SetToken while a timed-out Refresher runs = %v, want it not to wait", err)
		}
		unblock <- &Token{AccessToken: "stale-late", Expiry: time.Now().Add(time.Hour)}
		synctest.Wait()
		if tok, err := s.Token(ctxBG); err != nil || tok.AccessToken != "login" {
			t.Errorf("Token = (%v, %v), want SetToken's token to win over the late result", tok, err)
		}
		if got, _ := st.Load(ctxBG); got == nil || got.AccessToken != "login" {
			t.Errorf("store = %v, want SetToken's token, not the late result", got)
		}
	})
}

// A forced refresh that hands back the rejected access token is a failed
// refresh with ErrUnchangedToken, an event, one warning naming the likely
// cause, and backoff; Stats counts no refresh for it.
func TestUnchangedToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cached := &Token{AccessToken: "cached", Expiry: time.Now().Add(time.Hour)}
		r := &counter{fn: func(context.Context, *Token) (*Token, error) {
			c := *cached // a ReuseTokenSource: the same token until it expires
			return &c, nil
		}}
		var logs bytes.Buffer
		var evs events
		s := New(r, WithObserver(evs.observe), WithMinRefreshInterval(0),
			WithBackoff(time.Second, time.Second),
			WithLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))))
		defer mustClose(t, s)

		tok, err := s.Token(ctxBG)
		if err != nil || tok.AccessToken != "cached" {
			t.Fatalf("Token = (%v, %v)", tok, err)
		}
		for i := range 2 {
			_, err := s.Refresh(ctxBG, tok)
			if !errors.Is(err, ErrUnchangedToken) {
				t.Fatalf("Refresh #%d of the rejected token = %v, want ErrUnchangedToken", i+1, err)
			}
			time.Sleep(2 * time.Second) // past the backoff
		}
		if n := len(evs.of(RefreshUnchanged)); n != 2 {
			t.Errorf("%d RefreshUnchanged events, want 2", n)
		}
		if n := strings.Count(logs.String(), "level=WARN"); n != 1 {
			t.Errorf("%d warnings, want exactly one:\n%s", n, logs.String())
		}
		if !strings.Contains(logs.String(), "ReuseTokenSource") {
			t.Errorf("the warning does not name the likely cause:\n%s", logs.String())
		}
		st := s.Stats()
		if st.Refreshes != 1 || st.Unchanged != 2 || st.Failures != 2 {
			t.Errorf("Stats = %+v, want 1 refresh (the first token), 2 unchanged, 2 failures", st)
		}
	})
}

// An unchanged token is not a refresh: a background refresh that returns the
// same token is not counted as one.
func TestStatsCountOnlyChangedTokens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cached := &Token{AccessToken: "same", Expiry: time.Now().Add(time.Hour)}
		r := &counter{fn: func(context.Context, *Token) (*Token, error) { c := *cached; return &c, nil }}
		s := New(r, WithEarlyRefresh(10*time.Minute))
		defer mustClose(t, s)
		if _, err := s.Token(ctxBG); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Minute) // into the early window
		if _, err := s.Token(ctxBG); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if r.calls.Load() != 2 {
			t.Fatalf("%d Refresher calls, want 2 (initial + early)", r.calls.Load())
		}
		if got := s.Stats().Refreshes; got != 1 {
			t.Errorf("Stats.Refreshes = %d, want 1: the early refresh returned the same token", got)
		}
	})
}

// A panicking Refresher fails the refresh for every waiter; the process
// survives and the next refresh may succeed.
func TestRefresherPanic(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var n atomic.Int64
		r := RefresherFunc(func(context.Context, *Token) (*Token, error) {
			if n.Add(1) == 1 {
				panic("identity provider client bug")
			}
			return &Token{AccessToken: "ok", Expiry: time.Now().Add(time.Hour)}, nil
		})
		s := New(r, WithBackoff(time.Second, time.Second))
		defer mustClose(t, s)
		_, err := s.Token(ctxBG)
		if !errors.Is(err, ErrRefresherPanicked) {
			t.Fatalf("Token = %v, want the panic as an error", err)
		}
		// One prefix, and the value's type but never the value: a panic
		// value of the caller's making may hold a token.
		if want := "tokensource: the Refresher panicked (panic value of type string)"; err.Error() != want {
			t.Errorf("error = %q, want %q", err, want)
		}
		time.Sleep(2 * time.Second) // past the backoff (fake clock)
		if tok, err := s.Token(ctxBG); err != nil || tok.AccessToken != "ok" {
			t.Fatalf("Token after the backoff = (%v, %v)", tok, err)
		}
	})
}

// TestRefresherPanicRuntimeError: a runtime error is quoted (the runtime
// writes it, not the caller), and the stack reaches the Source's logger.
func TestRefresherPanicRuntimeError(t *testing.T) {
	var logged bytes.Buffer // read after Close, which waits for the refresh goroutine
	l := slog.New(slog.NewTextHandler(&logged, nil))
	xs := make([]int, 1)
	i := 3
	r := RefresherFunc(func(context.Context, *Token) (*Token, error) {
		return nil, fmt.Errorf("unreachable %d", xs[i]) // index out of range [3] with length 1
	})
	s := New(r, WithLogger(l))
	_, err := s.Token(ctxBG)
	mustClose(t, s)
	if !errors.Is(err, ErrRefresherPanicked) || !strings.Contains(err.Error(), "index out of range [3] with length 1") {
		t.Fatalf("Token = %v, want ErrRefresherPanicked naming the runtime error", err)
	}
	if out := logged.String(); !strings.Contains(out, "the Refresher panicked") || !strings.Contains(out, "TestRefresherPanicRuntimeError") {
		t.Errorf("log = %q, want the panic with its stack", out)
	}
}
