package testserver_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

func TestRefresherLogsInThenRotates(t *testing.T) {
	clock := newFakeClock()
	srv := testserver.New(testserver.WithClock(clock.Now), testserver.WithAccessTokenTTL(time.Minute))
	_, c := start(t, srv)
	r := testserver.NewRefresher(c.conn, testserver.DefaultUser, testserver.DefaultPassword)

	first, err := r.Refresh(t.Context(), nil)
	if err != nil {
		t.Fatalf("Refresh(nil): %v", err)
	}
	if first.AccessToken == "" || first.RefreshToken == "" || !first.Expiry.Equal(clock.Now().Add(time.Minute)) {
		t.Fatalf("Refresh(nil) = %v, want both tokens and the server's expiry", first)
	}
	if got := srv.Counters(); got.Logins != 1 || got.RefreshesOK != 0 {
		t.Fatalf("after the first call: %d logins, %d refreshes; want 1, 0", got.Logins, got.RefreshesOK)
	}

	second, err := r.Refresh(t.Context(), first)
	if err != nil {
		t.Fatalf("Refresh(first): %v", err)
	}
	if second.RefreshToken == first.RefreshToken || second.AccessToken == first.AccessToken {
		t.Fatal("Refresh(first) did not rotate the tokens")
	}
	if got := srv.Counters(); got.Logins != 1 || got.RefreshesOK != 1 {
		t.Fatalf("after the second call: %d logins, %d refreshes; want 1, 1", got.Logins, got.RefreshesOK)
	}
	if err := echo(t.Context(), c, second.AccessToken); err != nil {
		t.Errorf("Echo with the rotated token: %v", err)
	}

	// A token without a refresh token means "log in again".
	if _, err := r.Refresh(t.Context(), &tokensource.Token{AccessToken: second.AccessToken}); err != nil {
		t.Errorf("Refresh(no refresh token): %v", err)
	}
	if got := srv.Counters().Logins; got != 2 {
		t.Errorf("Counters().Logins = %d, want 2", got)
	}
}

func TestRefresherErrors(t *testing.T) {
	srv := testserver.New()
	_, c := start(t, srv)
	r := testserver.NewRefresher(c.conn, testserver.DefaultUser, testserver.DefaultPassword)
	tok, err := r.Refresh(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}

	check := func(what string, err error, code codes.Code, permanent bool) {
		t.Helper()
		wantCode(t, what, err, code)
		if tokensource.IsPermanent(err) != permanent {
			t.Errorf("%s: IsPermanent = %v, want %v", what, !permanent, permanent)
		}
		if err != nil && (strings.Contains(err.Error(), tok.AccessToken) || strings.Contains(err.Error(), tok.RefreshToken)) {
			t.Errorf("%s: the error contains a token", what)
		}
	}

	srv.FailNextRefreshes(1, codes.Unavailable)
	_, err = r.Refresh(t.Context(), tok)
	check("Refresh during an outage", err, codes.Unavailable, false)

	srv.RevokeAll()
	_, err = r.Refresh(t.Context(), tok)
	check("Refresh with a revoked token", err, codes.Unauthenticated, true)

	srv.FailNextRefreshes(1, codes.PermissionDenied)
	_, err = r.Refresh(t.Context(), tok)
	check("Refresh answered PermissionDenied", err, codes.PermissionDenied, true)

	bad := testserver.NewRefresher(c.conn, testserver.DefaultUser, "wrong")
	_, err = bad.Refresh(t.Context(), nil)
	check("Login with a wrong password", err, codes.Unauthenticated, true)

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err = r.Refresh(ctx, nil)
	check("Login on a cancelled context", err, codes.Canceled, false)
}
