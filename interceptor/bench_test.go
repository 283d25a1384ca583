package interceptor_test

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// floorInterceptor is the least a token interceptor can do: append a
// constant header. The interceptor's hot path (a valid token) is measured
// against it.
func floorInterceptor(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return invoker(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer tok-1"), method, req, reply, cc, opts...)
}

func nopInvoker(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
	return nil
}

func validSource(tb testing.TB) *tokensource.Source {
	src := tokensource.New(tokensource.RefresherFunc(func(context.Context, *tokensource.Token) (*tokensource.Token, error) {
		return &tokensource.Token{AccessToken: "tok-1"}, nil
	}))
	tb.Cleanup(func() { _ = src.Close() })
	if _, err := src.Token(context.Background()); err != nil {
		tb.Fatal(err)
	}
	return src
}

func unaryCases(tb testing.TB) map[string]grpc.UnaryClientInterceptor {
	src := validSource(tb)
	return map[string]grpc.UnaryClientInterceptor{
		"floor": floorInterceptor,
		// The hot path as installed by DialOptions, whose transport
		// security check sits on the connection (AllowInsecure has the
		// same per-call path).
		"interceptor": interceptor.UnaryClientInterceptor(src, interceptor.AllowInsecure()),
		// Installed alone, the check rides along as a per-call option.
		"standalone": interceptor.UnaryClientInterceptor(src),
	}
}

func BenchmarkUnary(b *testing.B) {
	for _, ctxCase := range []struct {
		name string
		ctx  context.Context
	}{
		{"no-metadata", context.Background()},
		{"caller-metadata", metadata.AppendToOutgoingContext(context.Background(), "x-request-id", "42")},
	} {
		for _, name := range []string{"floor", "interceptor", "standalone"} {
			ui := unaryCases(b)[name]
			b.Run(ctxCase.name+"/"+name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if err := ui(ctxCase.ctx, methodPing, nil, nil, nil, nopInvoker); err != nil {
						b.Fatal(err)
					}
				}
			})
			if name == "interceptor" {
				b.Run(ctxCase.name+"/"+name+"-parallel", func(b *testing.B) {
					b.ReportAllocs()
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							_ = ui(ctxCase.ctx, methodPing, nil, nil, nil, nopInvoker)
						}
					})
				})
			}
		}
	}
}

// The hot path allocates no more than attaching the metadata needs.
func TestHotPathAllocations(t *testing.T) {
	cases := unaryCases(t)
	ctx := context.Background()
	allocs := func(ui grpc.UnaryClientInterceptor) float64 {
		return testing.AllocsPerRun(1000, func() { _ = ui(ctx, methodPing, nil, nil, nil, nopInvoker) })
	}
	floor, got := allocs(cases["floor"]), allocs(cases["interceptor"])
	if got > floor {
		t.Fatalf("interceptor: %v allocs per call, floor: %v", got, floor)
	}
	// The per-call security option costs one slice.
	if standalone := allocs(cases["standalone"]); standalone > floor+1 {
		t.Fatalf("standalone interceptor: %v allocs per call, floor: %v", standalone, floor)
	}
}
