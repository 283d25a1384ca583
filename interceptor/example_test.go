package interceptor_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/retry"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/timeout"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	authv1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/auth/v1"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// Example connects to a server with NewClient. The token source logs in and
// refreshes through AuthService over the very connection it supplies tokens
// for; when the server stops accepting the token, the next call is
// refreshed and retried without the application noticing.
func Example() {
	ctx := context.Background()
	srv := testserver.New()
	ep, err := srv.Start(ctx, testserver.TLS())
	if err != nil {
		log.Fatal(err)
	}
	defer ep.Stop()

	conn, src, err := interceptor.NewClient(ep.Target(), func(cc grpc.ClientConnInterface) *tokensource.Source {
		return tokensource.New(testserver.NewRefresher(cc, testserver.DefaultUser, testserver.DefaultPassword))
	}, ep.DialOptions()...)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	defer src.Close() // before conn: Close lets a refresh in flight on conn finish

	echo := echov1.NewEchoServiceClient(conn)
	resp, err := echo.Echo(ctx, &echov1.EchoRequest{Message: "hello"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(resp.GetMessage())

	srv.ForceExpire() // every access token issued so far is rejected from now on
	resp, err = echo.Echo(ctx, &echov1.EchoRequest{Message: "still here"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(resp.GetMessage())

	c := srv.Counters()
	fmt.Println("logins:", c.Logins, "refreshes:", c.RefreshesOK)
	// Output:
	// hello
	// still here
	// logins: 1 refreshes: 1
}

// exampleClient starts a TLS test server and returns a connection to it:
// the dial options in chain first, then this package's, with a source that
// refreshes through AuthService on the same connection.
func exampleClient(chain []grpc.DialOption, opts ...interceptor.Option) (*testserver.Server, *grpc.ClientConn, func()) {
	srv := testserver.New()
	ep, err := srv.Start(context.Background(), testserver.TLS())
	if err != nil {
		log.Fatal(err)
	}
	var auth *testserver.Refresher
	src := tokensource.New(tokensource.RefresherFunc(func(ctx context.Context, cur *tokensource.Token) (*tokensource.Token, error) {
		return auth.Refresh(ctx, cur)
	}))
	dopts := append(append(ep.DialOptions(), chain...), interceptor.DialOptions(src, opts...)...)
	conn, err := grpc.NewClient(ep.Target(), dopts...)
	if err != nil {
		log.Fatal(err)
	}
	auth = testserver.NewRefresher(conn, testserver.DefaultUser, testserver.DefaultPassword)
	return srv, conn, func() {
		_ = conn.Close()
		_ = src.Close()
		ep.Stop()
	}
}

// ExampleSkipAuth makes one call without a token. The server, which wants
// one, rejects it, and the interceptor leaves the rejection alone.
func ExampleSkipAuth() {
	srv, conn, stop := exampleClient(nil)
	defer stop()
	echo := echov1.NewEchoServiceClient(conn)

	_, err := echo.Echo(context.Background(), &echov1.EchoRequest{Message: "hi"}, interceptor.SkipAuth())
	fmt.Println("without a token:", status.Code(err))
	_, err = echo.Echo(context.Background(), &echov1.EchoRequest{Message: "hi"})
	fmt.Println("with the token:", status.Code(err))
	fmt.Println("refreshes:", srv.Counters().RefreshesOK)
	// Output:
	// without a token: Unauthenticated
	// with the token: OK
	// refreshes: 0
}

// ExampleWithSkipMethods lets the application call the login RPC over the
// intercepted connection without a token.
func ExampleWithSkipMethods() {
	srv, conn, stop := exampleClient(nil, interceptor.WithSkipMethods(authv1.AuthService_Login_FullMethodName))
	defer stop()

	_, err := authv1.NewAuthServiceClient(conn).Login(context.Background(), &authv1.LoginRequest{
		User: testserver.DefaultUser, Password: testserver.DefaultPassword,
	})
	fmt.Println("login:", status.Code(err))
	fmt.Println("requests with a token:", srv.Counters().RequestsWithToken)
	// Output:
	// login: OK
	// requests with a token: 0
}

// Example_chain places the interceptors in a chain with go-grpc-middleware's
// logging, timeout and retry interceptors: logging outermost, then the
// timeout that bounds the whole call, then retry, then this package
// innermost (its dial options come last), so that every retry attempt
// carries the current token.
func Example_chain() {
	logger := slog.New(slog.DiscardHandler) // a real client would log somewhere
	chain := []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(
			logging.UnaryClientInterceptor(logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
				logger.Log(ctx, slog.Level(lvl), msg, fields...)
			})),
			timeout.UnaryClientInterceptor(5*time.Second),
			retry.UnaryClientInterceptor(retry.WithMax(3)),
		),
	}
	_, conn, stop := exampleClient(chain)
	defer stop()

	resp, err := echov1.NewEchoServiceClient(conn).Echo(context.Background(), &echov1.EchoRequest{Message: "hello"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(resp.GetMessage())
	// Output:
	// hello
}
