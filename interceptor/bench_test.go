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

// sharedMD is the header of sharedFloorInterceptor, built once.
var sharedMD = metadata.Pairs("authorization", "Bearer tok-1")

// sharedFloorInterceptor is the least any interceptor can allocate to add a
// header to a context without outgoing metadata: one context wrapping a
// prebuilt MD. (It would drop metadata the caller set, so it is a floor for
// the no-metadata case only.)
func sharedFloorInterceptor(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return invoker(metadata.NewOutgoingContext(ctx, sharedMD), method, req, reply, cc, opts...)
}

// copyFloorInterceptor is the least an interceptor can allocate to add a
// header to a context with outgoing metadata while making sure that the
// header is not already there: grpc-go's only public accessor copies the
// metadata.
func copyFloorInterceptor(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	md, _ := metadata.FromOutgoingContext(ctx)
	md["authorization"] = sharedMD["authorization"]
	return invoker(metadata.NewOutgoingContext(ctx, md), method, req, reply, cc, opts...)
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
		"floor":        floorInterceptor,
		"shared-floor": sharedFloorInterceptor,
		"copy-floor":   copyFloorInterceptor,
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
		for _, name := range []string{"floor", "shared-floor", "copy-floor", "interceptor", "standalone"} {
			if (name == "shared-floor" && ctxCase.name != "no-metadata") || (name == "copy-floor" && ctxCase.name == "no-metadata") {
				continue
			}
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

// The hot path allocates no more than attaching the metadata needs: with
// no caller metadata, what wrapping a prebuilt MD in a context costs (less
// than metadata.AppendToOutgoingContext); with caller metadata, what the
// copy needed to look for an existing header costs.
func TestHotPathAllocations(t *testing.T) {
	cases := unaryCases(t)
	allocs := func(ctx context.Context, ui grpc.UnaryClientInterceptor) float64 {
		return testing.AllocsPerRun(1000, func() { _ = ui(ctx, methodPing, nil, nil, nil, nopInvoker) })
	}
	for _, tc := range []struct {
		name, floor string
		ctx         context.Context
	}{
		{"no-metadata", "shared-floor", context.Background()},
		{"caller-metadata", "copy-floor", metadata.AppendToOutgoingContext(context.Background(), "x-request-id", "42")},
	} {
		floor, got := allocs(tc.ctx, cases[tc.floor]), allocs(tc.ctx, cases["interceptor"])
		if got > floor {
			t.Errorf("%s: interceptor: %v allocs per call, floor: %v", tc.name, got, floor)
		}
		// The per-call security option rides in the pooled option slice of
		// a unary call (one allocation of slack for the pool's misses).
		if standalone := allocs(tc.ctx, cases["standalone"]); standalone > floor+1 {
			t.Errorf("%s: standalone interceptor: %v allocs per call, floor: %v", tc.name, standalone, floor)
		}
		// Waiting for ready costs a call with a valid token nothing (the
		// option slice is the caller's, made once).
		waitForReady := []grpc.CallOption{grpc.WaitForReady(true)}
		wfr := testing.AllocsPerRun(1000, func() {
			_ = cases["interceptor"](tc.ctx, methodPing, nil, nil, nil, nopInvoker, waitForReady...)
		})
		if wfr > got {
			t.Errorf("%s: interceptor with grpc.WaitForReady(true): %v allocs per call, without: %v", tc.name, wfr, got)
		}
	}
}
