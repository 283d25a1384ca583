package interceptor_test

import (
	"errors"
	"testing"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/testing/testpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// Without AllowInsecure, no token is sent over a connection without
// transport security: the call fails with an error naming the cause,
// nothing is refreshed, and the server sees no authorization header.
func TestInsecureConnectionRefused(t *testing.T) {
	srv, creds := startServer(t, true)
	srv.accept("tok-1")
	for name, install := range map[string]func(src interceptor.TokenSource) []grpc.DialOption{
		"DialOptions": func(src interceptor.TokenSource) []grpc.DialOption { return dialOpts(src) },
		"standalone interceptors": func(src interceptor.TokenSource) []grpc.DialOption {
			return []grpc.DialOption{
				grpc.WithChainUnaryInterceptor(interceptor.UnaryClientInterceptor(src)),
				grpc.WithChainStreamInterceptor(interceptor.StreamClientInterceptor(src)),
			}
		},
	} {
		t.Run(name, func(t *testing.T) {
			src := &fakeSource{cur: &tokensource.Token{AccessToken: "tok-1"}}
			src.next = func() (*tokensource.Token, error) { return &tokensource.Token{AccessToken: "tok-2"}, nil }
			client := dial(t, srv, creds, install(src)...)
			ctx := withID(testCtx(t), t.Name())

			_, err := client.Ping(ctx, &testpb.PingRequest{})
			checkInsecure(t, err)

			stream, err := client.PingList(ctx, &testpb.PingListRequest{})
			if err == nil {
				_, err = stream.Recv()
			}
			checkInsecure(t, err)

			bidi, err := client.PingStream(ctx)
			if err == nil {
				_, err = bidi.Recv()
			}
			checkInsecure(t, err)

			// Calls without a token still work on such a connection.
			if _, err := client.PingEmpty(ctx, &testpb.PingEmptyRequest{}, interceptor.SkipAuth()); err != nil {
				t.Fatalf("SkipAuth call: %v", err)
			}

			if n := src.refreshes.Load(); n != 0 {
				t.Fatalf("Refresh calls = %d, want 0", n)
			}
			// The recorder works (it saw the SkipAuth call), so the loop
			// below cannot pass by seeing nothing.
			if n := len(srv.callsFor(t.Name(), methodPingEmpty)); n != 1 {
				t.Fatalf("server recorded %d SkipAuth calls, want 1", n)
			}
			for _, c := range srv.allCalls() {
				if c.testID == t.Name() && (len(c.auth) != 0 || c.method != methodPingEmpty) {
					t.Fatalf("server saw %s with authorization %q", c.method, c.auth)
				}
			}
		})
	}
}

func checkInsecure(t *testing.T, err error) {
	t.Helper()
	wantCode(t, err, codes.Unauthenticated)
	if !errors.Is(err, interceptor.ErrInsecureTransport) {
		t.Fatalf("errors.Is(err, ErrInsecureTransport) = false: %v", err)
	}
}

func TestAllowInsecure(t *testing.T) {
	srv, creds := startServer(t, true)
	src := newSource(t, &rotatingRefresher{srv: srv})
	client := dial(t, srv, creds, dialOpts(src, interceptor.AllowInsecure())...)
	ctx := withID(testCtx(t), t.Name())

	expire(srv) // and the refresh path works too
	if _, err := client.Ping(ctx, &testpb.PingRequest{}); err != nil {
		t.Fatal(err)
	}
	calls := srv.callsFor(t.Name(), methodPing)
	if len(calls) != 2 || calls[1].auth[0] != "Bearer tok-2" {
		t.Fatalf("attempts = %+v, want 2 ending with tok-2", calls)
	}
}

// An empty source on an insecure connection: the first call needs a token
// before the transport can tell that the connection is insecure, so the
// Refresher runs once to obtain it; the refusal itself never triggers a
// refresh, however many calls are refused, and no token reaches the server.
func TestInsecureConnectionEmptySourceRefreshesNoMore(t *testing.T) {
	srv, creds := startServer(t, true)
	r := &rotatingRefresher{srv: srv}
	// No rate limit, so a refresh caused by a refusal could not hide.
	src := tokensource.New(r, tokensource.WithMinRefreshInterval(0))
	t.Cleanup(func() { _ = src.Close() })
	client := dial(t, srv, creds, dialOpts(src)...)
	ctx := withID(testCtx(t), t.Name())

	for range 3 {
		_, err := client.Ping(ctx, &testpb.PingRequest{})
		checkInsecure(t, err)
	}
	stream, err := client.PingList(ctx, &testpb.PingListRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	checkInsecure(t, err)

	if n := r.n.Load(); n != 1 {
		t.Fatalf("Refresher calls = %d, want 1 (the first token only)", n)
	}
	for _, c := range srv.allCalls() {
		if c.testID == t.Name() {
			t.Fatalf("server saw %s (authorization %q)", c.method, c.auth)
		}
	}
}
