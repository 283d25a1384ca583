package e2e_test

import (
	"context"
	"errors"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	authv1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/auth/v1"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// TestInsecureConnectionSendsNoToken: over a connection without transport
// security, and without AllowInsecure, every kind of call fails with
// Unauthenticated matching ErrInsecureTransport, the server sees no
// authorization header at all, and nothing is refreshed; calls without a
// token still go through. With AllowInsecure the same token is sent, which
// shows that the server would have counted it.
func TestInsecureConnectionSendsNoToken(t *testing.T) {
	r := newRig(t, rigConfig{plaintext: true, noWarmup: true, initialToken: true})
	ctx := r.ctx
	calls := map[string]func() error{
		"unary": func() error { return r.ping(ctx) },
		"server stream": func() error {
			s, err := r.echo.ServerStreamEcho(ctx, &echov1.ServerStreamEchoRequest{Message: "x", Count: 1})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		},
		"client stream": func() error {
			s, err := r.echo.ClientStreamEcho(ctx)
			if err != nil {
				return err
			}
			_ = s.Send(&echov1.ClientStreamEchoRequest{Message: "x"})
			_, err = s.CloseAndRecv()
			return err
		},
		"bidi stream": func() error {
			s, err := r.echo.BidiStreamEcho(ctx)
			if err != nil {
				return err
			}
			_ = s.Send(&echov1.BidiStreamEchoRequest{Message: "x"})
			_, err = s.Recv()
			return err
		},
	}
	for name, call := range calls {
		err := call()
		r.record(err)
		if status.Code(err) != codes.Unauthenticated || !errors.Is(err, interceptor.ErrInsecureTransport) {
			t.Errorf("%s: %s, want Unauthenticated matching ErrInsecureTransport", name, outcome(err))
		}
	}
	// A call that carries no token works on the same connection.
	auth := authv1.NewAuthServiceClient(r.conn)
	if _, err := auth.Login(ctx, &authv1.LoginRequest{User: testserver.DefaultUser, Password: testserver.DefaultPassword},
		interceptor.SkipAuth()); err != nil {
		t.Fatalf("SkipAuth call: %v", err)
	}

	c := r.srv.Counters()
	if c.RequestsWithToken != 0 {
		t.Errorf("the server saw %d requests with an authorization header, want 0", c.RequestsWithToken)
	}
	if c.RequestsWithoutToken != 1 || c.Logins != 1 {
		t.Errorf("the server saw %d requests without a token and %d logins, want 1 and 1 (the SkipAuth call)",
			c.RequestsWithoutToken, c.Logins)
	}
	if c.RefreshesOK+c.RefreshesFailed != 0 || r.events.count(tokensource.RefreshStarted) != 0 {
		t.Errorf("refreshes: server %d, Source %d; want none", c.RefreshesOK+c.RefreshesFailed, r.events.count(tokensource.RefreshStarted))
	}

	// The same Source and connection with AllowInsecure: the token is sent.
	optIn := r.dial(r.conn.Target(), interceptor.DialOptions(r.src, interceptor.AllowInsecure())...)
	if _, err := echov1.NewEchoServiceClient(optIn).Echo(ctx, &echov1.EchoRequest{Message: "x"}); err != nil {
		t.Fatalf("with AllowInsecure: %v", err)
	}
	if n := r.srv.Counters().RequestsWithToken; n != 1 {
		t.Errorf("with AllowInsecure the server saw %d requests with a token, want 1", n)
	}
	r.finish()
}

// TestRefreshTokenReuseRevokesFamily: two clients end up holding the same
// refresh token (a stolen copy, or a second process restored from an old
// backup). The first to refresh rotates it; when the second presents the
// consumed token, the test server's reuse detection revokes the whole
// family, end to end through Source and testserver.NewRefresher: both
// clients must log in again, and the first client's freshly rotated tokens
// are rejected too.
func TestRefreshTokenReuseRevokesFamily(t *testing.T) {
	// No minimum interval between forced refreshes, so that each client's
	// second forced refresh below is not skipped as too soon.
	noRateLimit := tokensource.WithMinRefreshInterval(0)
	a := newRig(t, rigConfig{srcOpts: []tokensource.Option{noRateLimit}})
	ctx := a.ctx

	stolen, err := a.src.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bSrc := tokensource.New(tokensource.RefresherFunc(func(ctx context.Context, cur *tokensource.Token) (*tokensource.Token, error) {
		return a.inner.Refresh(ctx, cur)
	}), tokensource.WithInitialToken(stolen), tokensource.WithClock(a.cliClock.Now), noRateLimit)
	defer func() { _ = bSrc.Close() }()
	bConn := a.dial(a.conn.Target(), interceptor.DialOptions(bSrc)...)
	b := echov1.NewEchoServiceClient(bConn)
	bPing := func() error {
		_, err := b.Echo(ctx, &echov1.EchoRequest{Message: "b"})
		a.record(err)
		return err
	}

	a.srv.ForceExpire()
	if err := a.ping(ctx); err != nil {
		t.Fatalf("client A after its refresh: %v", err)
	}
	if d := a.delta(); d.RefreshOK != 1 || d.RefreshFailed != 0 {
		t.Fatalf("server after A's refresh: %v", d)
	}

	err = bPing()
	if status.Code(err) != codes.Unauthenticated || !errors.Is(err, tokensource.ErrReauthRequired) {
		t.Fatalf("client B presenting the consumed refresh token: %s, want Unauthenticated matching ErrReauthRequired", outcome(err))
	}
	// A's new access token belongs to the revoked family: rejected, and its
	// refresh token too.
	err = a.ping(ctx)
	if status.Code(err) != codes.Unauthenticated || !errors.Is(err, tokensource.ErrReauthRequired) {
		t.Fatalf("client A after the family was revoked: %s, want Unauthenticated matching ErrReauthRequired", outcome(err))
	}
	if d := a.delta(); d.RefreshOK != 1 || d.RefreshFailed != 2 {
		t.Errorf("server: %v, want 1 refresh ok and 2 failed (B's reuse, A's revoked token)", d)
	}
	if !a.src.Stats().ReauthRequired || !bSrc.Stats().ReauthRequired {
		t.Errorf("re-authentication required: A %v, B %v; want both", a.src.Stats().ReauthRequired, bSrc.Stats().ReauthRequired)
	}

	// Logging in again (a new family) brings A back.
	a.relogin()
	if err := a.ping(ctx); err != nil {
		t.Errorf("client A after re-login: %v", err)
	}
	_ = bSrc.Close()
	a.finish()
}
