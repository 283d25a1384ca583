package redisstore

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/redistest"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// rotatingServer is an authorization server with rotating refresh tokens and
// reuse detection: presenting a refresh token twice revokes the family, as
// the servers of issue 10 do.
type rotatingServer struct {
	mu      sync.Mutex
	rt      string // the one refresh token it accepts
	n       int    // refreshes granted
	reuses  int    // presentations of a spent refresh token
	revoked bool
}

func (a *rotatingServer) Refresh(_ context.Context, cur *tokensource.Token) (*tokensource.Token, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if cur == nil || cur.RefreshToken != a.rt || a.revoked {
		a.reuses++
		a.revoked = true
		return nil, tokensource.Permanent(errors.New("invalid_grant: refresh token reused; family revoked"))
	}
	a.n++
	n := strconv.Itoa(a.n)
	a.rt = "refresh-SECRET-r" + n
	return &tokensource.Token{AccessToken: "access-SECRET-r" + n, RefreshToken: a.rt, Expiry: time.Now().Add(time.Hour)}, nil
}

func (a *rotatingServer) counts() (refreshes, reuses int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.n, a.reuses
}

// TestSourcesShareOneRefresh runs two Sources, each with its own client and
// Store as on two hosts, against one rotating-refresh-token server: every
// expiry and every rejection costs one Refresher call for both together, and
// no refresh token is presented twice.
func TestSourcesShareOneRefresh(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	auth := &rotatingServer{rt: "refresh-SECRET-r0"}
	// The fleet's stored token has expired: the first calls must refresh.
	seed := &tokensource.Token{AccessToken: "access-SECRET-r0", RefreshToken: "refresh-SECRET-r0", Expiry: time.Now().Add(-time.Minute)}
	if err := member(t, srv, "token").Save(ctx, seed); err != nil {
		t.Fatal(err)
	}

	const members, callers, rounds = 2, 16, 3
	var srcs []*tokensource.Source
	for range members {
		src := tokensource.New(auth,
			tokensource.WithStore(member(t, srv, "token", WithPollInterval(50*time.Millisecond))),
			tokensource.WithMinRefreshInterval(0))
		t.Cleanup(func() { _ = src.Close() })
		srcs = append(srcs, src)
	}

	// all has every caller of every member ask at once, with fn, and
	// returns the access tokens they got.
	all := func(fn func(src *tokensource.Source) (*tokensource.Token, error)) map[string]int {
		var mu sync.Mutex
		got := map[string]int{}
		var wg sync.WaitGroup
		for _, src := range srcs {
			for range callers {
				wg.Go(func() {
					tok, err := fn(src)
					if err != nil {
						t.Errorf("caller: %v", err)
						return
					}
					mu.Lock()
					got[tok.AccessToken]++
					mu.Unlock()
				})
			}
		}
		wg.Wait()
		return got
	}

	got := all(func(src *tokensource.Source) (*tokensource.Token, error) { return src.Token(ctx) })
	if n, reuses := auth.counts(); n != 1 || reuses != 0 || len(got) != 1 {
		t.Fatalf("expiry: %d refreshes, %d reuses, tokens %v; want 1 refresh, 0 reuses, one token", n, reuses, got)
	}
	for r := range rounds {
		// The server rejects the current token: every caller of every
		// member reports the token it was given (a Source tells a stale
		// rejection from a fresh one by the identity of its own *Token).
		cur := map[*tokensource.Source]*tokensource.Token{}
		for _, src := range srcs {
			tok, err := src.Token(ctx)
			if err != nil {
				t.Fatal(err)
			}
			cur[src] = tok
		}
		got = all(func(src *tokensource.Source) (*tokensource.Token, error) { return src.Refresh(ctx, cur[src]) })
		if n, reuses := auth.counts(); n != 2+r || reuses != 0 || len(got) != 1 {
			t.Fatalf("rejection %d: %d refreshes, %d reuses, tokens %v; want %d refreshes, 0 reuses, one token",
				r+1, n, reuses, got, 2+r)
		}
	}
}

// TestSourceRedisDown: with Redis down a member with a valid token goes on,
// and one whose token expired fails with ErrCoordinatorUnavailable instead of
// refreshing without the lease.
func TestSourceRedisDown(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	auth := &rotatingServer{rt: "refresh-SECRET-r0"}
	valid := &tokensource.Token{AccessToken: "access-SECRET-v", RefreshToken: "refresh-SECRET-r0", Expiry: time.Now().Add(time.Hour)}
	if err := member(t, srv, "token").Save(ctx, valid); err != nil {
		t.Fatal(err)
	}
	healthy := tokensource.New(auth, tokensource.WithStore(member(t, srv, "token")))
	t.Cleanup(func() { _ = healthy.Close() })
	if _, err := healthy.Token(ctx); err != nil { // loads the shared token
		t.Fatal(err)
	}

	srv.Stop()
	for range 3 {
		tok, err := healthy.Token(ctx)
		if err != nil || tok.AccessToken != valid.AccessToken {
			t.Fatalf("Token with Redis down and a valid token = %v, %v; want the valid token", tok, err)
		}
	}
	expired := tokensource.New(auth,
		tokensource.WithStore(member(t, srv, "token")),
		tokensource.WithInitialToken(&tokensource.Token{AccessToken: "access-SECRET-x", RefreshToken: "refresh-SECRET-r0", Expiry: time.Now().Add(-time.Minute)}))
	t.Cleanup(func() { _ = expired.Close() })
	_, err := expired.Token(ctx)
	if !isUnavailable(err) {
		t.Fatalf("Token with Redis down and no valid token = %v; want ErrCoordinatorUnavailable", err)
	}
	noSecrets(t, err)
	if n, _ := auth.counts(); n != 0 {
		t.Fatalf("%d refreshes without the lease; want 0", n)
	}
}
