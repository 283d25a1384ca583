package testserver_test

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	authv1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/auth/v1"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
)

func wantCode(t *testing.T, what string, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Errorf("%s: %v (code %v), want code %v", what, err, got, want)
	}
}

func TestLogin(t *testing.T) {
	clock := newFakeClock()
	srv := testserver.New(
		testserver.WithUser("alice", "wonderland"),
		testserver.WithAccessTokenTTL(30*time.Second),
		testserver.WithRefreshTokenTTL(time.Hour),
		testserver.WithClock(clock.Now),
	)
	_, c := start(t, srv)

	tok := login(t, c, "alice", "wonderland")
	if got, want := tok.GetExpireTime().AsTime(), clock.Now().Add(30*time.Second); !got.Equal(want) {
		t.Errorf("expire_time = %v, want %v", got, want)
	}
	if got, want := tok.GetRefreshExpireTime().AsTime(), clock.Now().Add(time.Hour); !got.Equal(want) {
		t.Errorf("refresh_expire_time = %v, want %v", got, want)
	}
	format := regexp.MustCompile(`^(at|rt)_[A-Z2-7]{26}$`) // base32: legal in an HTTP/2 header value
	if !format.MatchString(tok.GetAccessToken()) || !format.MatchString(tok.GetRefreshToken()) ||
		tok.GetAccessToken()[:3] != "at_" || tok.GetRefreshToken()[:3] != "rt_" {
		t.Errorf("tokens do not have the documented format at_<base32>, rt_<base32>")
	}
	if resp, err := c.echo.Echo(bearer(t.Context(), tok.GetAccessToken()), &echov1.EchoRequest{}); err != nil || resp.GetUser() != "alice" {
		t.Errorf("Echo = %v, %v; want user alice", resp, err)
	}

	for _, bad := range []*authv1.LoginRequest{
		{User: "alice", Password: "wrong"},
		{User: "nobody", Password: "wonderland"},
		// WithUser replaces the default user.
		{User: testserver.DefaultUser, Password: testserver.DefaultPassword},
		{},
	} {
		_, err := c.auth.Login(t.Context(), bad)
		wantCode(t, "Login("+bad.GetUser()+")", err, codes.Unauthenticated)
	}
	if got := srv.Counters(); got.Logins != 1 || got.LoginsFailed != 4 {
		t.Errorf("Counters() logins ok/failed = %d/%d, want 1/4", got.Logins, got.LoginsFailed)
	}
}

func TestExpiredAccessTokenIsRejected(t *testing.T) {
	clock := newFakeClock()
	srv := testserver.New(testserver.WithClock(clock.Now), testserver.WithAccessTokenTTL(time.Minute))
	_, c := start(t, srv)
	tok := login(t, c, testserver.DefaultUser, testserver.DefaultPassword)

	clock.Advance(time.Minute - time.Nanosecond)
	if err := echo(t.Context(), c, tok.GetAccessToken()); err != nil {
		t.Fatalf("Echo just before expiry: %v", err)
	}
	clock.Advance(time.Nanosecond)
	wantCode(t, "Echo at expiry", echo(t.Context(), c, tok.GetAccessToken()), codes.Unauthenticated)

	// The refresh token outlives the access token.
	next, err := refresh(t.Context(), c, tok.GetRefreshToken())
	if err != nil {
		t.Fatalf("Refresh after access token expiry: %v", err)
	}
	if err := echo(t.Context(), c, next.GetAccessToken()); err != nil {
		t.Errorf("Echo with refreshed token: %v", err)
	}
}

func TestForceExpire(t *testing.T) {
	srv := testserver.New()
	_, c := start(t, srv)
	old := login(t, c, testserver.DefaultUser, testserver.DefaultPassword)
	issued, err := srv.IssueToken("bob")
	if err != nil {
		t.Fatal(err)
	}

	srv.ForceExpire()
	wantCode(t, "Echo with logged-in token", echo(t.Context(), c, old.GetAccessToken()), codes.Unauthenticated)
	wantCode(t, "Echo with issued token", echo(t.Context(), c, issued.AccessToken), codes.Unauthenticated)

	next, err := refresh(t.Context(), c, old.GetRefreshToken())
	if err != nil {
		t.Fatalf("Refresh after ForceExpire: %v", err)
	}
	if err := echo(t.Context(), c, next.GetAccessToken()); err != nil {
		t.Errorf("Echo with a token issued after ForceExpire: %v", err)
	}
}

func TestRevokeAll(t *testing.T) {
	srv := testserver.New()
	_, c := start(t, srv)
	a := login(t, c, testserver.DefaultUser, testserver.DefaultPassword)
	b, err := srv.IssueToken("bob")
	if err != nil {
		t.Fatal(err)
	}

	srv.RevokeAll()
	wantCode(t, "Echo with revoked token", echo(t.Context(), c, a.GetAccessToken()), codes.Unauthenticated)
	wantCode(t, "Echo with revoked issued token", echo(t.Context(), c, b.AccessToken), codes.Unauthenticated)
	_, err = refresh(t.Context(), c, a.GetRefreshToken())
	wantCode(t, "Refresh with revoked token", err, codes.Unauthenticated)
	_, err = refresh(t.Context(), c, b.RefreshToken)
	wantCode(t, "Refresh with revoked issued token", err, codes.Unauthenticated)

	again := login(t, c, testserver.DefaultUser, testserver.DefaultPassword)
	if err := echo(t.Context(), c, again.GetAccessToken()); err != nil {
		t.Errorf("Echo after logging in again: %v", err)
	}
}

func TestSetRejectAccessTokens(t *testing.T) {
	srv := testserver.New()
	_, c := start(t, srv)
	tok := login(t, c, testserver.DefaultUser, testserver.DefaultPassword)

	srv.SetRejectAccessTokens(true)
	wantCode(t, "Echo while rejecting", echo(t.Context(), c, tok.GetAccessToken()), codes.Unauthenticated)
	next, err := refresh(t.Context(), c, tok.GetRefreshToken())
	if err != nil {
		t.Fatalf("Refresh while rejecting access tokens: %v", err)
	}
	wantCode(t, "Echo with a fresh token while rejecting", echo(t.Context(), c, next.GetAccessToken()), codes.Unauthenticated)

	srv.SetRejectAccessTokens(false)
	for _, tk := range []string{tok.GetAccessToken(), next.GetAccessToken()} {
		if err := echo(t.Context(), c, tk); err != nil {
			t.Errorf("Echo after SetRejectAccessTokens(false): %v", err)
		}
	}
}

func TestRevokeRPC(t *testing.T) {
	for _, which := range []string{"access", "refresh"} {
		t.Run("by "+which+" token", func(t *testing.T) {
			srv := testserver.New()
			_, c := start(t, srv)
			first := login(t, c, testserver.DefaultUser, testserver.DefaultPassword)
			// Revoking any member revokes the family, including tokens issued
			// after it by rotation.
			cur, err := refresh(t.Context(), c, first.GetRefreshToken())
			if err != nil {
				t.Fatal(err)
			}
			other := login(t, c, testserver.DefaultUser, testserver.DefaultPassword)

			victim := first.GetAccessToken()
			if which == "refresh" {
				victim = first.GetRefreshToken()
			}
			if _, err := c.auth.Revoke(t.Context(), &authv1.RevokeRequest{Token: victim}); err != nil {
				t.Fatalf("Revoke: %v", err)
			}
			wantCode(t, "Echo with the revoked family's first token", echo(t.Context(), c, first.GetAccessToken()), codes.Unauthenticated)
			wantCode(t, "Echo with the revoked family's newest token", echo(t.Context(), c, cur.GetAccessToken()), codes.Unauthenticated)
			_, err = refresh(t.Context(), c, cur.GetRefreshToken())
			wantCode(t, "Refresh in the revoked family", err, codes.Unauthenticated)
			if err := echo(t.Context(), c, other.GetAccessToken()); err != nil {
				t.Errorf("Echo in another family: %v", err)
			}
		})
	}

	t.Run("unknown and empty", func(t *testing.T) {
		srv := testserver.New()
		_, c := start(t, srv)
		if _, err := c.auth.Revoke(t.Context(), &authv1.RevokeRequest{Token: "rt_UNKNOWN"}); err != nil {
			t.Errorf("Revoke(unknown) = %v, want success", err)
		}
		_, err := c.auth.Revoke(t.Context(), &authv1.RevokeRequest{})
		wantCode(t, "Revoke(empty)", err, codes.InvalidArgument)
		if got := srv.Counters().Revokes; got != 1 {
			t.Errorf("Counters().Revokes = %d, want 1", got)
		}
	})

	t.Run("RevokeToken", func(t *testing.T) {
		srv := testserver.New()
		_, c := start(t, srv)
		tok, err := srv.IssueToken("bob")
		if err != nil {
			t.Fatal(err)
		}
		if !srv.RevokeToken(tok.RefreshToken) {
			t.Error("RevokeToken(issued) = false, want true")
		}
		if srv.RevokeToken("rt_UNKNOWN") {
			t.Error("RevokeToken(unknown) = true, want false")
		}
		wantCode(t, "Echo after RevokeToken", echo(t.Context(), c, tok.AccessToken), codes.Unauthenticated)
	})
}

func TestRefreshRotates(t *testing.T) {
	srv := testserver.New()
	_, c := start(t, srv)
	first := login(t, c, testserver.DefaultUser, testserver.DefaultPassword)
	second, err := refresh(t.Context(), c, first.GetRefreshToken())
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	if second.GetAccessToken() == first.GetAccessToken() || second.GetRefreshToken() == first.GetRefreshToken() {
		t.Fatal("Refresh returned a token of the previous pair")
	}
	third, err := refresh(t.Context(), c, second.GetRefreshToken())
	if err != nil {
		t.Fatalf("second Refresh: %v", err)
	}
	// Rotation leaves earlier access tokens valid until they expire.
	for i, tok := range []*authv1.TokenPair{first, second, third} {
		if err := echo(t.Context(), c, tok.GetAccessToken()); err != nil {
			t.Errorf("Echo with access token #%d: %v", i, err)
		}
	}
	if got := srv.Counters(); got.Logins != 1 || got.RefreshesOK != 2 || got.RefreshesFailed != 0 {
		t.Errorf("Counters() = %+v, want 1 login, 2 refreshes ok, none failed", got)
	}
}

func TestReusedRefreshTokenRevokesFamily(t *testing.T) {
	srv := testserver.New()
	_, c := start(t, srv)
	first := login(t, c, testserver.DefaultUser, testserver.DefaultPassword)
	bystander := login(t, c, testserver.DefaultUser, testserver.DefaultPassword)
	second, err := refresh(t.Context(), c, first.GetRefreshToken())
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}

	_, err = refresh(t.Context(), c, first.GetRefreshToken())
	wantCode(t, "Refresh with a used refresh token", err, codes.Unauthenticated)

	wantCode(t, "Echo with the sibling access token", echo(t.Context(), c, second.GetAccessToken()), codes.Unauthenticated)
	wantCode(t, "Echo with the original access token", echo(t.Context(), c, first.GetAccessToken()), codes.Unauthenticated)
	_, err = refresh(t.Context(), c, second.GetRefreshToken())
	wantCode(t, "Refresh with the sibling refresh token", err, codes.Unauthenticated)
	if err := echo(t.Context(), c, bystander.GetAccessToken()); err != nil {
		t.Errorf("Echo in another family: %v", err)
	}
	if got := srv.Counters(); got.RefreshesOK != 1 || got.RefreshesFailed != 2 {
		t.Errorf("Counters() refreshes ok/failed = %d/%d, want 1/2", got.RefreshesOK, got.RefreshesFailed)
	}
}

// TestConcurrentReuse presents one refresh token from many goroutines at
// once: exactly one wins, and because the others are reuses, the winner's
// family is revoked as well.
func TestConcurrentReuse(t *testing.T) {
	srv := testserver.New()
	_, c := start(t, srv)
	tok := login(t, c, testserver.DefaultUser, testserver.DefaultPassword)

	const n = 16
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		winners []*authv1.TokenPair
		losers  int
	)
	for range n {
		wg.Go(func() {
			p, err := refresh(t.Context(), c, tok.GetRefreshToken())
			mu.Lock()
			defer mu.Unlock()
			switch status.Code(err) {
			case codes.OK:
				winners = append(winners, p)
			case codes.Unauthenticated:
				losers++
			default:
				t.Errorf("Refresh: %v", err)
			}
		})
	}
	wg.Wait()
	if len(winners) != 1 || losers != n-1 {
		t.Fatalf("%d refreshes succeeded and %d were rejected, want 1 and %d", len(winners), losers, n-1)
	}
	wantCode(t, "Echo with the winner's token", echo(t.Context(), c, winners[0].GetAccessToken()), codes.Unauthenticated)
}

func TestExpiredRefreshTokenIsRejected(t *testing.T) {
	clock := newFakeClock()
	srv := testserver.New(testserver.WithClock(clock.Now), testserver.WithRefreshTokenTTL(time.Hour))
	_, c := start(t, srv)
	tok := login(t, c, testserver.DefaultUser, testserver.DefaultPassword)
	clock.Advance(time.Hour)
	_, err := refresh(t.Context(), c, tok.GetRefreshToken())
	wantCode(t, "Refresh with an expired refresh token", err, codes.Unauthenticated)
	_, err = refresh(t.Context(), c, "")
	wantCode(t, "Refresh with no refresh token", err, codes.InvalidArgument)
	_, err = refresh(t.Context(), c, "rt_UNKNOWN")
	wantCode(t, "Refresh with an unknown refresh token", err, codes.Unauthenticated)
}

func TestIssueToken(t *testing.T) {
	srv := testserver.New()
	_, c := start(t, srv)
	if _, err := srv.IssueToken(""); err == nil {
		t.Error("IssueToken(\"\") succeeded, want an error")
	}
	tok, err := srv.IssueToken("carol")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.echo.Echo(bearer(t.Context(), tok.AccessToken), &echov1.EchoRequest{Message: "m"})
	if err != nil || resp.GetUser() != "carol" {
		t.Errorf("Echo = %v, %v; want user carol", resp, err)
	}
	if tok.Expiry.IsZero() {
		t.Error("IssueToken returned a token without an expiry")
	}
	if got := srv.Counters().Logins; got != 0 {
		t.Errorf("Counters().Logins = %d after IssueToken, want 0", got)
	}
}

// TestOwnGRPCServer plugs the server into a grpc.Server the test runs, with
// an EchoService of its own, and proves that rejected calls never reach the
// handler.
func TestOwnGRPCServer(t *testing.T) {
	srv := testserver.New()
	gs := grpc.NewServer(srv.ServerOptions()...)
	handler := &countingEcho{}
	echov1.RegisterEchoServiceServer(gs, handler)
	authv1.RegisterAuthServiceServer(gs, authv1.UnimplementedAuthServiceServer{})
	lis, err := (&net.ListenConfig{}).Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	defer func() {
		gs.Stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := clients{conn: conn, auth: authv1.NewAuthServiceClient(conn), echo: echov1.NewEchoServiceClient(conn)}

	tok, err := srv.IssueToken("dave")
	if err != nil {
		t.Fatal(err)
	}
	if err := echo(t.Context(), c, tok.AccessToken); err != nil {
		t.Fatalf("Echo with a valid token: %v", err)
	}
	srv.ForceExpire()
	wantCode(t, "unary call with an expired token", echo(t.Context(), c, tok.AccessToken), codes.Unauthenticated)
	s, err := c.echo.BidiStreamEcho(bearer(t.Context(), tok.AccessToken))
	if err == nil {
		_, err = s.Recv()
	}
	wantCode(t, "stream with an expired token", err, codes.Unauthenticated)
	// AuthService is exempt: its (unimplemented) handler is reached without a token.
	_, err = c.auth.Login(t.Context(), &authv1.LoginRequest{})
	wantCode(t, "Login on the stub AuthService", err, codes.Unimplemented)

	if got := handler.calls.Load(); got != 1 {
		t.Errorf("handler ran %d times, want 1 (rejected calls must not reach it)", got)
	}
}

type countingEcho struct {
	echov1.UnimplementedEchoServiceServer
	calls atomic.Int64
}

func (e *countingEcho) Echo(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	e.calls.Add(1)
	return &echov1.EchoResponse{Message: req.GetMessage()}, nil
}

func (e *countingEcho) BidiStreamEcho(grpc.BidiStreamingServer[echov1.BidiStreamEchoRequest, echov1.BidiStreamEchoResponse]) error {
	e.calls.Add(1)
	return nil
}

// TestNoTokenInLogsOrErrors drives every outcome with debug logging on and
// checks that no token value leaks into a log line or an error.
func TestNoTokenInLogsOrErrors(t *testing.T) {
	var (
		mu  sync.Mutex
		buf bytes.Buffer
	)
	logger := slog.New(slog.NewTextHandler(&lockedWriter{mu: &mu, w: &buf}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv := testserver.New(testserver.WithLogger(logger))
	_, c := start(t, srv)

	var secrets, errs []string
	note := func(err error) {
		if err != nil {
			errs = append(errs, err.Error())
		}
	}
	tok := login(t, c, testserver.DefaultUser, testserver.DefaultPassword)
	secrets = append(secrets, tok.GetAccessToken(), tok.GetRefreshToken())
	next, err := refresh(t.Context(), c, tok.GetRefreshToken())
	note(err)
	secrets = append(secrets, next.GetAccessToken(), next.GetRefreshToken())
	_, err = refresh(t.Context(), c, tok.GetRefreshToken()) // reuse
	note(err)
	note(echo(t.Context(), c, next.GetAccessToken())) // revoked
	note(echo(t.Context(), c, "at_NOTISSUEDSECRET"))  // unknown
	secrets = append(secrets, "at_NOTISSUEDSECRET")
	_, err = c.auth.Revoke(t.Context(), &authv1.RevokeRequest{Token: tok.GetAccessToken()})
	note(err)
	_, err = c.auth.Login(t.Context(), &authv1.LoginRequest{User: testserver.DefaultUser, Password: "hunter2"})
	note(err)
	secrets = append(secrets, "hunter2")

	mu.Lock()
	logs := buf.String()
	mu.Unlock()
	if !strings.Contains(logs, "reuse") {
		t.Errorf("logs do not mention the reuse:\n%s", logs)
	}
	if len(errs) != 4 {
		t.Errorf("got %d errors, want 4: %q", len(errs), errs)
	}
	for _, s := range secrets {
		if strings.Contains(logs, s) {
			t.Errorf("a secret appears in the logs:\n%s", logs)
		}
		for _, e := range errs {
			if strings.Contains(e, s) {
				t.Errorf("a secret appears in the error %q", e)
			}
		}
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestConcurrentUse drives logins, refresh chains, echoes and the runtime
// controls from many goroutines, for the race detector, and checks that the
// counters add up.
func TestConcurrentUse(t *testing.T) {
	srv := testserver.New()
	_, c := start(t, srv)
	const workers, rounds = 8, 10
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			resp, err := c.auth.Login(t.Context(), &authv1.LoginRequest{User: testserver.DefaultUser, Password: testserver.DefaultPassword})
			if err != nil {
				t.Errorf("Login: %v", err)
				return
			}
			tok := resp.GetToken()
			for range rounds {
				if err := echo(t.Context(), c, tok.GetAccessToken()); err != nil {
					t.Errorf("Echo: %v", err)
				}
				if tok, err = refresh(t.Context(), c, tok.GetRefreshToken()); err != nil {
					t.Errorf("Refresh: %v", err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for range rounds {
			srv.SetRefreshLatency(0)
			srv.FailNextRefreshes(0, codes.Unavailable)
			srv.SetAccessTokenTTL(time.Minute)
			_ = srv.Counters()
		}
	})
	wg.Wait()
	got := srv.Counters()
	if got.Logins != workers || got.RefreshesOK != workers*rounds || got.RefreshesFailed != 0 {
		t.Errorf("Counters() = %+v, want %d logins and %d refreshes", got, workers, workers*rounds)
	}
	if got.RPCs[echov1.EchoService_Echo_FullMethodName] != workers*rounds {
		t.Errorf("Counters().RPCs[Echo] = %d, want %d", got.RPCs[echov1.EchoService_Echo_FullMethodName], workers*rounds)
	}

	srv.ResetCounters()
	if got := srv.Counters(); got.Logins != 0 || got.RefreshesOK != 0 || len(got.RPCs) != 0 {
		t.Errorf("Counters() after ResetCounters = %+v, want zeros", got)
	}
}
