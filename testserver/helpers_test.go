package testserver_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/testutil"
	authv1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/auth/v1"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
)

func TestMain(m *testing.M) {
	testutil.Main(m)
}

// clients are the generated clients over one connection.
type clients struct {
	conn *grpc.ClientConn
	auth authv1.AuthServiceClient
	echo echov1.EchoServiceClient
}

// start serves srv with opts and connects to it. Both are closed when the
// test ends (connection first, so the endpoint can stop at once).
func start(t *testing.T, srv *testserver.Server, opts ...testserver.StartOption) (*testserver.Endpoint, clients) {
	t.Helper()
	ep, err := srv.Start(t.Context(), opts...)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(ep.Stop)
	conn, err := ep.NewClient()
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return ep, clients{conn: conn, auth: authv1.NewAuthServiceClient(conn), echo: echov1.NewEchoServiceClient(conn)}
}

// bearer returns ctx carrying "authorization: Bearer token".
func bearer(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

func login(t *testing.T, c clients, user, password string) *authv1.TokenPair {
	t.Helper()
	resp, err := c.auth.Login(t.Context(), &authv1.LoginRequest{User: user, Password: password})
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	return resp.GetToken()
}

func refresh(ctx context.Context, c clients, refreshToken string) (*authv1.TokenPair, error) {
	resp, err := c.auth.Refresh(ctx, &authv1.RefreshRequest{RefreshToken: refreshToken})
	return resp.GetToken(), err
}

func echo(ctx context.Context, c clients, token string) error {
	_, err := c.echo.Echo(bearer(ctx, token), &echov1.EchoRequest{Message: "ping"})
	return err
}

// newFakeClock is the clock of the tests that move time by hand.
func newFakeClock() *testutil.Clock {
	return testutil.NewClock(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC))
}
