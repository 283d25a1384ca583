package bench_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// BenchmarkUnaryRPC measures one unary RPC, over bufconn with TLS, to a
// server that checks the token, for each way of attaching the token.
func BenchmarkUnaryRPC(b *testing.B) {
	srv, ep := startServer(b, testserver.WithAccessTokenTTL(24*time.Hour))
	tok, err := srv.IssueToken(testserver.DefaultUser)
	if err != nil {
		b.Fatal(err)
	}
	var floor floorRef
	impls := []struct {
		name string
		dial func(b *testing.B) (conn *grpc.ClientConn, refreshes func() int64)
	}{
		{"floor", func(b *testing.B) (*grpc.ClientConn, func() int64) {
			return newClient(b, ep, grpc.WithChainUnaryInterceptor(constantHeader("Bearer "+tok.AccessToken))),
				func() int64 { return 0 }
		}},
		{"tokenrefresh", func(b *testing.B) (*grpc.ClientConn, func() int64) {
			src, r := hotSource(b, tok)
			return newClient(b, ep, interceptor.DialOptions(src)...), r.calls.Load
		}},
		// The same interceptors bound by NewClient: one more atomic load
		// per call, to find the source.
		{"tokenrefresh-NewClient", func(b *testing.B) (*grpc.ClientConn, func() int64) {
			var r *countingRefresher
			conn, _, err := interceptor.NewClient(ep.Target(), func(grpc.ClientConnInterface) *tokensource.Source {
				var src *tokensource.Source
				src, r = hotSource(b, tok)
				return src
			}, ep.DialOptions()...)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { conn.Close() })
			return conn, r.calls.Load
		}},
		{"oauth", func(b *testing.B) (*grpc.ClientConn, func() int64) {
			creds, calls := oauthCreds(tok)
			return newClient(b, ep, grpc.WithPerRPCCredentials(creds)), calls.Load
		}},
	}
	for _, impl := range impls {
		b.Run("impl="+impl.name, func(b *testing.B) {
			conn, refreshes := impl.dial(b)
			client := echov1.NewEchoServiceClient(conn)
			ctx := context.Background()
			req := &echov1.EchoRequest{Message: "ping"}
			if _, err := client.Echo(ctx, req); err != nil { // connect outside the timing
				b.Fatal(err)
			}
			before := srv.Counters().Unauthenticated
			for b.Loop() {
				if _, err := client.Echo(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
			if n := refreshes(); n != 0 {
				b.Fatalf("%d refreshes with a valid token", n)
			}
			if n := srv.Counters().Unauthenticated - before; n != 0 {
				b.Fatalf("the server rejected %d calls", n)
			}
			floor.report(b, impl.name == "floor")
		})
	}
}

// BenchmarkAttach measures the attaching step alone. For the interceptors
// the invoker does nothing. The tokenrefresh interceptor is configured as
// DialOptions installs it (the transport-security check it adds to the
// connection runs in the transport, so it is in BenchmarkUnaryRPC, not
// here); tokenrefresh-standalone is UnaryClientInterceptor used on its own,
// which adds that check as a per-call option. For oauth the step is the
// credentials' GetRequestMetadata, called as grpc-go's transport calls it.
func BenchmarkAttach(b *testing.B) {
	tok := longLived("at_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG")
	noop := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }
	method := echov1.EchoService_Echo_FullMethodName
	var floor floorRef

	runInterceptor := func(b *testing.B, i grpc.UnaryClientInterceptor, refreshes func() int64) {
		ctx := context.Background()
		for b.Loop() {
			if err := i(ctx, method, nil, nil, nil, noop); err != nil {
				b.Fatal(err)
			}
		}
		if n := refreshes(); n != 0 {
			b.Fatalf("%d refreshes with a valid token", n)
		}
	}
	b.Run("impl=floor", func(b *testing.B) {
		runInterceptor(b, constantHeader("Bearer "+tok.AccessToken), func() int64 { return 0 })
		floor.report(b, true)
	})
	b.Run("impl=tokenrefresh", func(b *testing.B) {
		src, r := hotSource(b, tok)
		runInterceptor(b, interceptor.UnaryClientInterceptor(src, interceptor.AllowInsecure()), r.calls.Load)
		floor.report(b, false)
	})
	b.Run("impl=tokenrefresh-standalone", func(b *testing.B) {
		src, r := hotSource(b, tok)
		runInterceptor(b, interceptor.UnaryClientInterceptor(src), r.calls.Load)
		floor.report(b, false)
	})
	b.Run("impl=oauth", func(b *testing.B) {
		creds, calls := oauthCreds(tok)
		ctx := credentials.NewContextWithRequestInfo(context.Background(), credentials.RequestInfo{
			Method:   method,
			AuthInfo: credentials.TLSInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}},
		})
		const audience = "https://localhost/tokenrefresh.echo.v1.EchoService"
		for b.Loop() {
			if _, err := creds.GetRequestMetadata(ctx, audience); err != nil {
				b.Fatal(err)
			}
		}
		if n := calls.Load(); n != 0 {
			b.Fatalf("%d refreshes with a valid token", n)
		}
		floor.report(b, false)
	})
}
