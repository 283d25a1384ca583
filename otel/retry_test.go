package tokenrefreshotel_test

import (
	"io"
	"slices"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	tokenrefreshotel "github.com/tokenrefresh/grpc-tokenrefresh/otel"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// echoRig is the bundled test server over bufconn (with TLS, so that the
// interceptors send tokens without AllowInsecure), a real Source logging in
// to its AuthService, and an EchoService client behind the interceptors
// with the Observer's retry option.
type echoRig struct {
	*rig
	srv  *testserver.Server
	src  *tokensource.Source
	echo echov1.EchoServiceClient
}

func newEchoRig(t *testing.T, hooks bool) *echoRig {
	t.Helper()
	rg := newRig(t)
	srv := testserver.New(testserver.WithAccessTokenTTL(time.Hour))
	ep, err := srv.Start(testCtx(t), testserver.Bufconn(), testserver.TLS())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ep.Stop)
	dial := func(opts ...grpc.DialOption) *grpc.ClientConn {
		conn, err := ep.NewClient(opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return conn
	}
	auth := dial()
	opts := []tokensource.Option{tokensource.WithObserver(rg.observe),
		// No rate limit: the test forces two refreshes in quick succession.
		tokensource.WithMinRefreshInterval(0)}
	if hooks {
		opts = append(opts, tokensource.WithRefreshHooks(rg.obs.Hooks()))
	}
	src := newSource(t, testserver.NewRefresher(auth, testserver.DefaultUser, testserver.DefaultPassword), opts...)
	conn := dial(interceptor.DialOptions(src, rg.obs.InterceptorOption())...)
	return &echoRig{rig: rg, srv: srv, src: src, echo: echov1.NewEchoServiceClient(conn)}
}

// wantRetried checks that span s says it was retried and links to the
// refresh span ref, and only to it: with the hooks, as the refresh it
// waited on too.
func wantRetried(t *testing.T, s sdktrace.ReadOnlySpan, ref trace.SpanContext, hooks bool) {
	t.Helper()
	wantAttr(t, s, tokenrefreshotel.RetriedKey.Bool(true))
	if !hasEvent(s, "tokenrefresh.retry") {
		t.Errorf("span %s has no tokenrefresh.retry event", s.Name())
	}
	want := []string{tokenrefreshotel.LinkRefresh}
	if hooks {
		want = []string{tokenrefreshotel.LinkWaited, tokenrefreshotel.LinkRefresh}
	}
	if got := linksTo(s, ref); len(s.Links()) != len(want) || !slices.Equal(got, want) {
		t.Fatalf("span %s links %v, want %v to the refresh span %v", s.Name(), s.Links(), want, ref)
	}
}

func TestRetriedCallsCountedAndLinked(t *testing.T) {
	for _, hooks := range []bool{false, true} {
		name := "events"
		if hooks {
			name = "hooks"
		}
		t.Run(name, func(t *testing.T) { testRetriedCallsCountedAndLinked(t, hooks) })
	}
}

func testRetriedCallsCountedAndLinked(t *testing.T, hooks bool) {
	r := newEchoRig(t, hooks)
	tracer := r.tp.Tracer("test")
	ctx := testCtx(t)

	// A first call logs in (an expiry refresh) and is not retried.
	cctx, span := tracer.Start(ctx, "first")
	if _, err := r.echo.Echo(cctx, &echov1.EchoRequest{Message: "hi"}); err != nil {
		t.Fatal(err)
	}
	span.End()
	r.waitFor(t, tokensource.RefreshSucceeded)
	if _, ok := attr(r.ended(t, "first"), tokenrefreshotel.RetriedKey); ok {
		t.Errorf("a call that was not retried is marked retried")
	}

	// The server forgets every access token: the next call is rejected,
	// waits for a forced refresh, and is retried once.
	r.srv.ForceExpire()
	cctx, span = tracer.Start(ctx, "unary")
	if _, err := r.echo.Echo(cctx, &echov1.EchoRequest{Message: "hi"}); err != nil {
		t.Fatal(err)
	}
	span.End()
	r.waitFor(t, tokensource.RefreshSucceeded)

	// And a stream, rejected when it opens, is reopened once.
	r.srv.ForceExpire()
	cctx, span = tracer.Start(ctx, "stream")
	stream, err := r.echo.ServerStreamEcho(cctx, &echov1.ServerStreamEchoRequest{Message: "hi", Count: 2})
	if err != nil {
		t.Fatal(err)
	}
	for n := 0; ; n++ {
		if _, err := stream.Recv(); err == io.EOF {
			if n != 2 {
				t.Fatalf("received %d messages, want 2", n)
			}
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	span.End()
	r.waitFor(t, tokensource.RefreshSucceeded)

	c := r.srv.Counters()
	if c.Logins != 1 || c.RefreshesOK != 2 {
		t.Fatalf("server saw %d logins and %d refreshes, want 1 and 2", c.Logins, c.RefreshesOK)
	}
	status := semconv.RPCResponseStatusCodeKey.String("UNAUTHENTICATED")
	for _, tc := range []struct {
		method string
		want   int64
	}{
		{"tokenrefresh.echo.v1.EchoService/Echo", 1},
		{"tokenrefresh.echo.v1.EchoService/ServerStreamEcho", 1},
	} {
		got := r.sum(t, tokenrefreshotel.MetricRPCRetries, semconv.RPCMethod(tc.method), status, semconv.RPCSystemNameGRPC)
		if got != tc.want {
			t.Errorf("%s{%s} = %d, want %d", tokenrefreshotel.MetricRPCRetries, tc.method, got, tc.want)
		}
	}
	if got := r.sum(t, tokenrefreshotel.MetricRefreshes, success, forced); got != 2 {
		t.Errorf("%s{success, forced} = %d, want 2", tokenrefreshotel.MetricRefreshes, got)
	}

	refreshes := r.refreshSpans()
	if len(refreshes) != 3 {
		t.Fatalf("refresh spans = %d, want 3", len(refreshes))
	}
	for i, trig := range []attribute.KeyValue{expiry, forced, forced} {
		wantAttr(t, refreshes[i], trig)
	}
	// Each retried call links to the refresh it waited for.
	wantRetried(t, r.ended(t, "unary"), refreshes[1].SpanContext(), hooks)
	wantRetried(t, r.ended(t, "stream"), refreshes[2].SpanContext(), hooks)
	if hooks {
		// Each refresh is in the trace of the call that started it.
		for i, name := range []string{"first", "unary", "stream"} {
			if got, want := refreshes[i].Parent(), r.ended(t, name).SpanContext(); !got.Equal(want) {
				t.Errorf("refresh %d's parent = %v, want the span of %s", i, got.SpanID(), name)
			}
		}
	}
}
