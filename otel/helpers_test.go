package tokenrefreshotel_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	tokenrefreshotel "github.com/tokenrefresh/grpc-tokenrefresh/otel"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// rig is an Observer on in-memory SDK providers: a ManualReader for the
// metrics and a SpanRecorder for the spans.
type rig struct {
	reader *sdkmetric.ManualReader
	spans  *tracetest.SpanRecorder
	obs    *tokenrefreshotel.Observer
	tp     *sdktrace.TracerProvider
	// events receives every event after the Observer has handled it, so
	// that a test can wait for the Source's slow path to be reported.
	events chan tokensource.Event
}

func newRig(t testing.TB, opts ...tokenrefreshotel.Option) *rig {
	t.Helper()
	r := &rig{
		reader: sdkmetric.NewManualReader(),
		spans:  tracetest.NewSpanRecorder(),
		events: make(chan tokensource.Event, 256),
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r.reader))
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(r.spans))
	t.Cleanup(func() {
		_ = mp.Shutdown(context.Background())
		_ = tp.Shutdown(context.Background())
	})
	obs, err := tokenrefreshotel.NewObserver(append([]tokenrefreshotel.Option{
		tokenrefreshotel.WithMeterProvider(mp), tokenrefreshotel.WithTracerProvider(tp),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	r.obs, r.tp = obs, tp
	return r
}

// observe is the function to give tokensource.WithObserver.
func (r *rig) observe(e tokensource.Event) {
	r.obs.Observe(e)
	r.record(e)
}

// record only records e for waitFor: for a Source that has the Observer
// from SourceOptions beside it (every observer receives every event).
func (r *rig) record(e tokensource.Event) { r.events <- e }

// waitFor returns the next event of kind k, skipping others; it fails the
// test if none arrives within the test's patience.
func (r *rig) waitFor(t testing.TB, k tokensource.EventKind) tokensource.Event {
	t.Helper()
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	for {
		select {
		case e := <-r.events:
			if e.Kind == k {
				return e
			}
		case <-timeout.C:
			t.Fatalf("no %v event", k)
		}
	}
}

func (r *rig) collect(t testing.TB) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	return rm
}

// find returns the metric called name; ok is false if nothing has been
// recorded on it yet (the SDK then leaves it out).
func find(rm metricdata.ResourceMetrics, name string) (m metricdata.Metrics, ok bool) {
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m, true
			}
		}
	}
	return metricdata.Metrics{}, false
}

// has reports whether set holds every one of want.
func has(set attribute.Set, want []attribute.KeyValue) bool {
	for _, kv := range want {
		if v, ok := set.Value(kv.Key); !ok || v != kv.Value {
			return false
		}
	}
	return true
}

// sum adds up the data points of the int64 sum (counter or up-down
// counter) or gauge called name whose attributes include attrs; 0 if none.
func (r *rig) sum(t testing.TB, name string, attrs ...attribute.KeyValue) int64 {
	t.Helper()
	var n int64
	m, ok := find(r.collect(t), name)
	if !ok {
		return 0
	}
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			if has(p.Attributes, attrs) {
				n += p.Value
			}
		}
	case metricdata.Gauge[int64]:
		for _, p := range d.DataPoints {
			if has(p.Attributes, attrs) {
				n += p.Value
			}
		}
	default:
		t.Fatalf("%s is a %T, not an int64 sum or gauge", name, d)
	}
	return n
}

// hist returns the count and sum of the histogram called name over the data
// points whose attributes include attrs.
func (r *rig) hist(t testing.TB, name string, attrs ...attribute.KeyValue) (uint64, float64) {
	t.Helper()
	m, ok := find(r.collect(t), name)
	if !ok {
		return 0, 0
	}
	d, ok := m.Data.(metricdata.Histogram[float64])
	if !ok {
		t.Fatalf("%s is not a float64 histogram", name)
	}
	var n uint64
	var s float64
	for _, p := range d.DataPoints {
		if has(p.Attributes, attrs) {
			n += p.Count
			s += p.Sum
		}
	}
	return n, s
}

// refreshSpans returns the ended refresh spans, in the order they ended.
func (r *rig) refreshSpans() []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range r.spans.Ended() {
		if s.Name() == tokenrefreshotel.SpanRefresh {
			out = append(out, s)
		}
	}
	return out
}

// attr returns the value of key on span s.
func attr(s sdktrace.ReadOnlySpan, key attribute.Key) (attribute.Value, bool) {
	for _, kv := range s.Attributes() {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

func wantAttr(t testing.TB, s sdktrace.ReadOnlySpan, kv attribute.KeyValue) {
	t.Helper()
	if v, ok := attr(s, kv.Key); !ok || v != kv.Value {
		t.Errorf("span %s: %s = %v (set: %v), want %v", s.Name(), kv.Key, v.String(), ok, kv.Value.String())
	}
}

// refresher mints "tok-1", "tok-2", ... valid for life by clock, counting
// its calls. fail, if set, decides the error of the n-th call (1-based);
// gate, if set, makes every call wait for a value (or close) first, after
// telling entered.
type refresher struct {
	clock   func() time.Time
	life    time.Duration
	n       atomic.Int64
	fail    func(n int64) error
	gate    chan struct{}
	entered chan struct{}
	same    bool // hand back the current token (a caching Refresher)
	// deaf makes the gate ignore ctx, as a Refresher that ignores its
	// context does.
	deaf bool
}

func (r *refresher) Refresh(ctx context.Context, cur *tokensource.Token) (*tokensource.Token, error) {
	n := r.n.Add(1)
	if r.entered != nil {
		r.entered <- struct{}{}
	}
	if r.gate != nil && r.deaf {
		<-r.gate
	} else if r.gate != nil {
		select {
		case <-r.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if r.fail != nil {
		if err := r.fail(n); err != nil {
			return nil, err
		}
	}
	if r.same && cur != nil {
		c := *cur
		return &c, nil
	}
	now := time.Now
	if r.clock != nil {
		now = r.clock
	}
	return &tokensource.Token{AccessToken: fmt.Sprint("tok-", n), RefreshToken: fmt.Sprint("rt-", n),
		Expiry: now().Add(r.life)}, nil
}

func newSource(t testing.TB, r tokensource.Refresher, opts ...tokensource.Option) *tokensource.Source {
	t.Helper()
	src := tokensource.New(r, opts...)
	t.Cleanup(func() { _ = src.Close() })
	return src
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// hasEvent reports whether span s has an event called name.
func hasEvent(s sdktrace.ReadOnlySpan, name string) bool {
	for _, e := range s.Events() {
		if e.Name == name {
			return true
		}
	}
	return false
}

// tryRetry makes one call through an interceptor with the Observer's retry
// option that the "server" rejects once, so that it is retried.
func (r *rig) tryRetry(t testing.TB) {
	t.Helper()
	src := newSource(t, &refresher{life: time.Hour})
	ui := interceptor.UnaryClientInterceptor(src, interceptor.AllowInsecure(), r.obs.InterceptorOption())
	attempts := 0
	invoker := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
		attempts++
		if attempts == 1 {
			return status.Error(codes.Unauthenticated, "token rejected")
		}
		return nil
	}
	if err := ui(testCtx(t), "/svc/Method", nil, nil, nil, invoker); err != nil {
		t.Fatal(err)
	}
	if attempts != 2 {
		t.Fatalf("attempts = %d, want 2", attempts)
	}
}

// ended returns the ended span called name.
func (r *rig) ended(t *testing.T, name string) sdktrace.ReadOnlySpan {
	t.Helper()
	for _, s := range r.spans.Ended() {
		if s.Name() == name {
			return s
		}
	}
	t.Fatalf("no ended span %q", name)
	return nil
}
