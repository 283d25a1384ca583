package oauth2server_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/zitadel/oidc/v3/pkg/oidc"

	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// checkChild asserts that the restarted process worked without a login:
// every call succeeded, it refreshed at least want times with the refresh
// token it found in the Store, and the server saw no reuse.
func checkChild(t *testing.T, a *authServer, fam string, rep childReport, want int) {
	t.Helper()
	c := a.store.counts()
	head, revoked := a.store.head(fam)
	t.Logf("restarted process | %d calls, %d failed, %d refreshes, reauth %v, loaded from store %d; server: %d reuse detections, %d refused grants, family revoked %v",
		rep.Calls, rep.Failed, rep.Refreshes, rep.Reauth, rep.TokenLoaded, c.reuseDetected, c.refused, revoked)
	if rep.Failed != 0 || rep.Reauth {
		t.Errorf("the restarted process failed %d of %d calls (reauth required: %v): %q", rep.Failed, rep.Calls, rep.Reauth, rep.Errors)
	}
	if rep.Refreshes < uint64(want) {
		t.Errorf("the restarted process refreshed %d times, want ≥ %d", rep.Refreshes, want)
	}
	if c.reuseDetected != 0 || revoked || head == "" {
		t.Errorf("server: %d reuse detections, family revoked %v; want none", c.reuseDetected, revoked)
	}
}

// A restart soon after login: the first process is given the login's token,
// makes one call and stops before any refresh; a new process on the same
// FileStore, with no login, must carry on and refresh with the login's refresh
// token.
func TestRestartSoonAfterLogin(t *testing.T) {
	a := startAuthServer(t)
	r := startResourceServer(t, a)
	ctx := a.httpContext(context.Background())
	login := a.loginUser(t, ctx)
	fam := a.store.familyOf(login.RefreshToken)
	path := filepath.Join(t.TempDir(), "token.json")

	first := tokensource.New(tokensource.OAuth2Refresher(a.appConfig()),
		tokensource.WithInitialToken(login), tokensource.WithStore(tokensource.NewFileStore(path)))
	if _, err := dial(t, r.addr, a.clientTLS(), first).Echo(ctx, &echov1.EchoRequest{Message: "after login"}); err != nil {
		t.Fatal(err)
	}
	_ = first.Close()
	if n := first.Stats().Refreshes; n != 0 {
		t.Fatalf("the first process refreshed %d times; the test needs a restart before the first refresh", n)
	}
	if c := a.store.counts(); c.refreshGrants != 0 {
		t.Fatalf("%d refresh grants before the restart, want 0", c.refreshGrants)
	}

	rep := runChild(t, a, r, path, 1)
	checkChild(t, a, fam, rep, 1)
	if grants := a.store.issuances(oidc.GrantTypeRefreshToken, appClient); len(grants) != int(rep.Refreshes) {
		t.Errorf("server made %d refresh grants, the restarted process %d refreshes", len(grants), rep.Refreshes)
	}
}

// Close during a rotation: the server has rotated the refresh token and its
// answer is still on the way when the service shuts down. Close must wait for
// that answer and save the rotated refresh token, so that the restarted
// process presents the new one; presenting the consumed one would revoke the
// whole family.
func TestCloseDuringRotation(t *testing.T) {
	a := startAuthServer(t)
	r := startResourceServer(t, a)
	ctx := a.httpContext(context.Background())
	login := a.loginUser(t, ctx)
	fam := a.store.familyOf(login.RefreshToken)
	path := filepath.Join(t.TempDir(), "token.json")

	// No minimum interval between forced refreshes: the test forces two in
	// a row.
	src := tokensource.New(tokensource.OAuth2Refresher(a.appConfig()), tokensource.WithMinRefreshInterval(0),
		tokensource.WithInitialToken(login), tokensource.WithStore(tokensource.NewFileStore(path)))
	echo := dial(t, r.addr, a.clientTLS(), src)
	if _, err := echo.Echo(ctx, &echov1.EchoRequest{Message: "before shutdown"}); err != nil {
		t.Fatal(err)
	}
	// One rotation first, so that the Store holds a refreshed token (and
	// not only what the login gave) whatever the Source saves at login.
	tok, err := src.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tok, err = src.Refresh(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if _, err := echo.Echo(ctx, &echov1.EchoRequest{Message: "after the first rotation"}); err != nil {
		t.Fatal(err)
	}
	consumed, _ := a.store.head(fam)

	// A forced refresh (as after a rejection) whose answer the server holds
	// back after rotating.
	held := a.holdNextRefresh()
	refreshed := make(chan error, 1)
	go func() {
		_, err := src.Refresh(ctx, tok)
		refreshed <- err
	}()
	select {
	case <-held.rotated:
	case <-time.After(hangGuard):
		t.Fatal("the refresh did not reach the server")
	}
	rotated, _ := a.store.head(fam)

	closed := make(chan struct{})
	go func() {
		_ = src.Close()
		close(closed)
	}()
	// Close releases the waiter at once, while the refresh goes on.
	select {
	case err := <-refreshed:
		if !errors.Is(err, tokensource.ErrClosed) {
			t.Errorf("the waiting caller got %v, want ErrClosed", err)
		}
	case <-time.After(hangGuard):
		t.Fatal("Close did not release the waiting caller")
	}
	close(held.release) // the server's answer arrives during shutdown
	select {
	case <-closed:
	case <-time.After(hangGuard):
		t.Fatal("Close did not return")
	}

	saved, err := tokensource.NewFileStore(path).Load(ctx)
	switch {
	case err != nil:
		t.Errorf("loading the store after Close: %v", err)
	case saved == nil || saved.RefreshToken != rotated:
		t.Errorf("the store does not hold the refresh token rotated during Close (holds the consumed one: %v)",
			saved != nil && saved.RefreshToken == consumed)
	}

	rep := runChild(t, a, r, path, 1)
	checkChild(t, a, fam, rep, 1)
}
