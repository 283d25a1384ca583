package interceptor_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

func startTLSServer(t *testing.T) (*testserver.Server, *testserver.Endpoint) {
	t.Helper()
	srv := testserver.New()
	ep, err := srv.Start(context.Background(), testserver.TLS())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ep.Stop)
	return srv, ep
}

// TestNewClientCallFromNewSource: a call that newSource makes through the
// connection, before the source exists, fails with FailedPrecondition and
// ErrNoSource, sends nothing that needs a token, and does not panic. The
// connection works once NewClient has returned.
func TestNewClientCallFromNewSource(t *testing.T) {
	srv, ep := startTLSServer(t)
	ctx := testCtx(t)
	var early error
	conn, src, err := interceptor.NewClient(ep.Target(), func(cc grpc.ClientConnInterface) *tokensource.Source {
		_, early = echov1.NewEchoServiceClient(cc).Echo(ctx, &echov1.EchoRequest{Message: "too soon"})
		return tokensource.New(testserver.NewRefresher(cc, testserver.DefaultUser, testserver.DefaultPassword))
	}, ep.DialOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	defer src.Close()
	if status.Code(early) != codes.FailedPrecondition || !errors.Is(early, interceptor.ErrNoSource) {
		t.Fatalf("call from newSource = %v, want FailedPrecondition matching ErrNoSource", early)
	}
	if c := srv.Counters(); c.RequestsWithToken+c.RequestsWithoutToken != 0 {
		t.Errorf("server saw %d requests from the early call, want none", c.RequestsWithToken+c.RequestsWithoutToken)
	}
	if _, err := echov1.NewEchoServiceClient(conn).Echo(ctx, &echov1.EchoRequest{Message: "hi"}); err != nil {
		t.Fatalf("Echo after NewClient: %v", err)
	}
	if c := srv.Counters(); c.Logins != 1 {
		t.Errorf("logins = %d, want 1 (the Refresher on the same connection)", c.Logins)
	}
}

// TestNewClientNilSource: a nil source (untyped or a typed nil pointer) is
// an error, and the connection is closed rather than leaked (goleak checks
// its goroutines at the end of the package).
func TestNewClientNilSource(t *testing.T) {
	_, ep := startTLSServer(t)
	var cc grpc.ClientConnInterface
	conn, src, err := interceptor.NewClient(ep.Target(), func(c grpc.ClientConnInterface) *tokensource.Source {
		cc = c
		return nil
	}, ep.DialOptions()...)
	if err == nil || conn != nil || src != nil {
		t.Fatalf("NewClient with a nil source = (%v, %v, %v), want an error", conn, src, err)
	}
	if st := cc.(*grpc.ClientConn).GetState(); st != connectivity.Shutdown {
		t.Errorf("connection state = %v, want %v", st, connectivity.Shutdown)
	}
	if _, _, err := interceptor.NewClient[interceptor.TokenSource](ep.Target(), func(grpc.ClientConnInterface) interceptor.TokenSource {
		return nil
	}, ep.DialOptions()...); err == nil {
		t.Error("NewClient with a nil interface source: no error")
	}
	if _, _, err := interceptor.NewClient[*tokensource.Source](ep.Target(), nil, ep.DialOptions()...); err == nil {
		t.Error("NewClient with a nil newSource: no error")
	}
}

// TestNewClientDialError: when grpc.NewClient fails, newSource is not
// called.
func TestNewClientDialError(t *testing.T) {
	called := false
	_, _, err := interceptor.NewClient("127.0.0.1:1", func(grpc.ClientConnInterface) *tokensource.Source {
		called = true
		return tokensource.New(tokensource.RefresherFunc(func(context.Context, *tokensource.Token) (*tokensource.Token, error) {
			return nil, errors.New("unused")
		}))
	}) // no transport credentials: grpc.NewClient refuses
	if err == nil || called {
		t.Fatalf("NewClient without credentials = %v, newSource called %v; want an error and no call", err, called)
	}
}

// TestWithInterceptorOptions: options given among the dial options reach
// the interceptors (here WithSkipMethods: the skipped call asks the source
// for nothing and carries no token), and are harmless to grpc.NewClient.
func TestWithInterceptorOptions(t *testing.T) {
	srv, ep := startTLSServer(t)
	ctx := testCtx(t)
	var calls atomic.Int64
	conn, _, err := interceptor.NewClient(ep.Target(), func(grpc.ClientConnInterface) interceptor.TokenSource {
		return countingSource{&calls}
	}, append(ep.DialOptions(), interceptor.WithInterceptorOptions(interceptor.WithSkipMethods(echoMethod)))...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = echov1.NewEchoServiceClient(conn).Echo(ctx, &echov1.EchoRequest{Message: "hi"})
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("skipped Echo = %v, want Unauthenticated from the server (no token sent)", err)
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("source asked %d times for a skipped method, want 0", n)
	}
	if c := srv.Counters(); c.RequestsWithoutToken != 1 || c.RequestsWithToken != 0 {
		t.Errorf("server saw %d requests without and %d with a token, want 1 and 0", c.RequestsWithoutToken, c.RequestsWithToken)
	}

	// A stray WithInterceptorOptions in plain grpc.NewClient does nothing.
	plain, err := grpc.NewClient(ep.Target(), append(ep.DialOptions(), interceptor.WithInterceptorOptions(interceptor.AllowInsecure()))...)
	if err != nil {
		t.Fatalf("grpc.NewClient with WithInterceptorOptions: %v", err)
	}
	plain.Close()
}

// countingSource counts the tokens asked of it.
type countingSource struct{ n *atomic.Int64 }

func (s countingSource) Token(context.Context) (*tokensource.Token, error) {
	s.n.Add(1)
	return &tokensource.Token{AccessToken: "static"}, nil
}

func (s countingSource) Refresh(_ context.Context, stale *tokensource.Token) (*tokensource.Token, error) {
	return stale, nil
}
