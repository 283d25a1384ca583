package tokenrefreshotel_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	tokenrefreshotel "github.com/tokenrefresh/grpc-tokenrefresh/otel"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// hotSource returns a Source holding a valid token, outside its early
// window for the whole benchmark, with obs (if not nil) as its observer and
// the extra options.
func hotSource(tb testing.TB, obs func(tokensource.Event), extra ...tokensource.Option) *tokensource.Source {
	tb.Helper()
	opts := []tokensource.Option{tokensource.WithInitialToken(&tokensource.Token{
		AccessToken: "tok", Expiry: time.Now().Add(24 * time.Hour)})}
	if obs != nil {
		opts = append(opts, tokensource.WithObserver(obs))
	}
	opts = append(opts, extra...)
	return newSource(tb, &refresher{life: time.Hour}, opts...)
}

// countingObserver wraps the Observer of rg and counts the events it sees.
func countingObserver(rg *rig, n *atomic.Int64) func(tokensource.Event) {
	return func(e tokensource.Event) {
		n.Add(1)
		rg.obs.Observe(e)
	}
}

// BenchmarkSourceToken measures Source.Token on its hot path (a valid
// token) without an observer and with the OpenTelemetry Observer (its
// events and its refresh hooks, as SourceOptions installs them) on the SDK's
// providers. Events fire only on the slow path, so both should cost the
// same and allocate nothing; events/op reports how many the loop caused.
func BenchmarkSourceToken(b *testing.B) {
	for _, withObserver := range []bool{false, true} {
		name := "without-observer"
		if withObserver {
			name = "with-observer"
		}
		b.Run(name, func(b *testing.B) {
			var events atomic.Int64
			var obs func(tokensource.Event)
			var extra []tokensource.Option
			if withObserver {
				rg := newRig(b)
				obs = countingObserver(rg, &events)
				extra = append(extra, tokensource.WithRefreshHooks(rg.obs.Hooks()))
			}
			src := hotSource(b, obs, extra...)
			ctx := context.Background()
			if _, err := src.Token(ctx); err != nil {
				b.Fatal(err)
			}
			before := events.Load()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := src.Token(ctx); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(events.Load()-before)/float64(b.N), "events/op")
		})
	}
}

func nopInvoker(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
	return nil
}

// BenchmarkUnaryInterceptor measures the unary interceptor's hot path with
// and without the Observer's retry option: the hook is called only for a
// retried call.
func BenchmarkUnaryInterceptor(b *testing.B) {
	for _, withObserver := range []bool{false, true} {
		name := "without-observer"
		if withObserver {
			name = "with-observer"
		}
		b.Run(name, func(b *testing.B) {
			opts := []interceptor.Option{interceptor.AllowInsecure()}
			var obs func(tokensource.Event)
			if withObserver {
				rg := newRig(b)
				obs = rg.obs.Observe
				opts = append(opts, rg.obs.InterceptorOption())
			}
			ui := interceptor.UnaryClientInterceptor(hotSource(b, obs), opts...)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if err := ui(ctx, "/svc/Method", nil, nil, nil, nopInvoker); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkObserveRefresh measures what the Observer adds to one refresh
// (the slow path): the RefreshStarted and RefreshSucceeded events, with a
// span, a counter, a histogram and the waiters counter recorded on the SDK.
func BenchmarkObserveRefresh(b *testing.B) {
	// A TracerProvider without span processors records spans and drops
	// them at End: the SDK's cost without an exporter's memory.
	tp := sdktrace.NewTracerProvider()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	b.Cleanup(func() {
		_ = tp.Shutdown(context.Background())
		_ = mp.Shutdown(context.Background())
	})
	obs, err := tokenrefreshotel.NewObserver(tokenrefreshotel.WithTracerProvider(tp), tokenrefreshotel.WithMeterProvider(mp))
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	start := tokensource.Event{Kind: tokensource.RefreshStarted, Time: now, Generation: 1}
	end := tokensource.Event{Kind: tokensource.RefreshSucceeded, Time: now.Add(40 * time.Millisecond),
		Duration: 40 * time.Millisecond, Waiters: 3, Generation: 2, Expiry: now.Add(time.Hour)}
	b.Run("events", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			obs.Observe(start)
			obs.Observe(end)
		}
	})
	// With the hooks, as SourceOptions installs them: the span starts
	// under the initiator's span, which also waits on the refresh (a link
	// and an event on a recording span).
	b.Run("hooks", func(b *testing.B) {
		h := obs.Hooks()
		caller, span := tp.Tracer("bench").Start(context.Background(), "caller")
		defer span.End()
		var id uint64
		b.ReportAllocs()
		for b.Loop() {
			id++
			start.Refresh, end.Refresh = id, id
			h.Context(caller, tokensource.RefreshInfo{ID: id, Time: now, Generation: 1})
			obs.Observe(start)
			h.Wait(caller, id)
			obs.Observe(end)
			h.End(id)
		}
	})
}

// The hot paths allocate exactly as much with the adapter installed as
// without it: nothing for Source.Token, the same for the interceptor.
func TestHotPathUnchanged(t *testing.T) {
	rg := newRig(t)
	var events atomic.Int64
	src := hotSource(t, countingObserver(rg, &events), tokensource.WithRefreshHooks(rg.obs.Hooks()))
	ctx := context.Background()
	if _, err := src.Token(ctx); err != nil {
		t.Fatal(err)
	}
	before := events.Load()
	if a := testing.AllocsPerRun(1000, func() { _, _ = src.Token(ctx) }); a != 0 {
		t.Errorf("Source.Token with the Observer: %v allocs per call, want 0", a)
	}
	if n := events.Load() - before; n != 0 {
		t.Errorf("hot path fired %d events", n)
	}

	plain := interceptor.UnaryClientInterceptor(hotSource(t, nil), interceptor.AllowInsecure())
	observed := interceptor.UnaryClientInterceptor(src, interceptor.AllowInsecure(), rg.obs.InterceptorOption())
	allocs := func(ui grpc.UnaryClientInterceptor) float64 {
		return testing.AllocsPerRun(1000, func() { _ = ui(ctx, "/svc/Method", nil, nil, nil, nopInvoker) })
	}
	if p, o := allocs(plain), allocs(observed); o != p {
		t.Errorf("interceptor: %v allocs per call with the Observer, %v without", o, p)
	}
}
