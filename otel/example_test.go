package tokenrefreshotel_test

import (
	"context"
	"fmt"
	"log"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	tokenrefreshotel "github.com/tokenrefresh/grpc-tokenrefresh/otel"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// login stands in for a real Refresher (tokensource.OAuth2Refresher, say).
var login = tokensource.RefresherFunc(func(context.Context, *tokensource.Token) (*tokensource.Token, error) {
	return &tokensource.Token{AccessToken: "access", Expiry: time.Now().Add(time.Hour)}, nil
})

// The Observer goes to the Source as options (its observer and refresh
// hooks) and to the interceptors as an option; ObserveStats adds the live
// gauges.
func ExampleNewObserver() {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() { _ = mp.Shutdown(context.Background()) }()

	obs, err := tokenrefreshotel.NewObserver(tokenrefreshotel.WithMeterProvider(mp))
	if err != nil {
		log.Fatal(err)
	}
	src := tokensource.New(login, obs.SourceOptions()...)
	defer func() { _ = src.Close() }()
	reg, err := obs.ObserveStats(src)
	if err != nil {
		log.Fatal(err)
	}
	defer func() { _ = reg.Unregister() }()

	conn, err := grpc.NewClient("localhost:443", append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()), // TLS in real life
	}, interceptor.DialOptions(src, interceptor.AllowInsecure(), obs.InterceptorOption())...)...)
	if err != nil {
		log.Fatal(err)
	}
	defer func() { _ = conn.Close() }()

	if _, err := src.Token(context.Background()); err != nil {
		log.Fatal(err)
	}
	// The observer runs after the callers are released; Close waits for it.
	_ = src.Close()

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		log.Fatal(err)
	}
	for _, m := range rm.ScopeMetrics[0].Metrics {
		if s, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == tokenrefreshotel.MetricRefreshes {
			p := s.DataPoints[0]
			outcome, _ := p.Attributes.Value(tokenrefreshotel.OutcomeKey)
			trigger, _ := p.Attributes.Value(tokenrefreshotel.TriggerKey)
			fmt.Printf("%s{outcome=%s, trigger=%s} %d\n", m.Name, outcome.AsString(), trigger.AsString(), p.Value)
		}
	}
	// Output:
	// tokenrefresh.refreshes{outcome=success, trigger=expiry} 1
}

// With OpenTelemetry's Prometheus exporter the instruments become Prometheus
// metrics: dots turn into underscores, counters get _total and units a
// suffix (_seconds).
func ExampleObserver_prometheus() {
	registry := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(registry), otelprom.WithoutTargetInfo(),
		otelprom.WithoutScopeInfo())
	if err != nil {
		log.Fatal(err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	defer func() { _ = mp.Shutdown(context.Background()) }()
	obs, err := tokenrefreshotel.NewObserver(tokenrefreshotel.WithMeterProvider(mp))
	if err != nil {
		log.Fatal(err)
	}
	ended := make(chan struct{}, 1)
	src := tokensource.New(login, tokensource.WithObserver(func(e tokensource.Event) {
		obs.Observe(e)
		if e.Kind == tokensource.RefreshSucceeded {
			ended <- struct{}{}
		}
	}))
	defer func() { _ = src.Close() }()
	if _, err := src.Token(context.Background()); err != nil {
		log.Fatal(err)
	}
	<-ended

	// What promhttp.HandlerFor(registry, ...) would serve on /metrics.
	families, err := registry.Gather()
	if err != nil {
		log.Fatal(err)
	}
	var text strings.Builder
	for _, mf := range families {
		if _, err := expfmt.MetricFamilyToText(&text, mf); err != nil {
			log.Fatal(err)
		}
	}
	for _, line := range strings.Split(text.String(), "\n") {
		if strings.HasPrefix(line, "tokenrefresh_refreshes_total") ||
			strings.HasPrefix(line, "tokenrefresh_refresh_duration_seconds_count") ||
			strings.HasPrefix(line, "# TYPE tokenrefresh_") {
			fmt.Println(line)
		}
	}
	// Output:
	// # TYPE tokenrefresh_callers_waited_total counter
	// # TYPE tokenrefresh_refresh_duration_seconds histogram
	// tokenrefresh_refresh_duration_seconds_count{tokenrefresh_outcome="success",tokenrefresh_trigger="expiry"} 1
	// # TYPE tokenrefresh_refreshes_total counter
	// tokenrefresh_refreshes_total{tokenrefresh_outcome="success",tokenrefresh_trigger="expiry"} 1
}

// With SourceOptions a refresh is in the trace of the caller that started
// it, the Refresher's own calls (through otelgrpc, say) nest under the
// refresh span, and every caller that waited on the refresh links to it.
func ExampleObserver_SourceOptions() {
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	obs, err := tokenrefreshotel.NewObserver(tokenrefreshotel.WithTracerProvider(tp))
	if err != nil {
		log.Fatal(err)
	}
	refresher := tokensource.RefresherFunc(func(ctx context.Context, cur *tokensource.Token) (*tokensource.Token, error) {
		// A span started from ctx here (an RPC to the authorization
		// server) is a child of the refresh span.
		_, child := tp.Tracer("auth-client").Start(ctx, "auth.Refresh")
		defer child.End()
		return login.Refresh(ctx, cur)
	})
	src := tokensource.New(refresher, obs.SourceOptions()...)

	ctx, caller := tp.Tracer("app").Start(context.Background(), "handle-request")
	if _, err := src.Token(ctx); err != nil { // no token yet: waits for the first refresh
		log.Fatal(err)
	}
	caller.End()
	_ = src.Close() // waits for the observer

	byName := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range spans.Ended() {
		byName[s.Name()] = s
	}
	refresh, call := byName[tokenrefreshotel.SpanRefresh], byName["handle-request"]
	fmt.Println("refresh span's parent is the caller:", refresh.Parent().Equal(call.SpanContext()))
	fmt.Println("Refresher's span is under the refresh:", byName["auth.Refresh"].Parent().Equal(refresh.SpanContext()))
	fmt.Println("caller links to the refresh:", len(call.Links()) == 1 && call.Links()[0].SpanContext.Equal(refresh.SpanContext()))
	// Output:
	// refresh span's parent is the caller: true
	// Refresher's span is under the refresh: true
	// caller links to the refresh: true
}
