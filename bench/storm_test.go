package bench_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

const (
	stormCalls     = 10_000
	refreshLatency = 50 * time.Millisecond
)

// gate holds n goroutines, already started, until release; release returns
// once they have all finished, and how long that took. Starting 10,000
// goroutines takes a while on two cores, so it happens before the clock
// starts.
type gate struct {
	start chan struct{}
	wg    sync.WaitGroup
	errs  atomic.Int64
}

func newGate(n int, call func() error) *gate {
	g := &gate{start: make(chan struct{})}
	for range n {
		g.wg.Go(func() {
			<-g.start
			if err := call(); err != nil {
				g.errs.Add(1)
			}
		})
	}
	return g
}

func (g *gate) release() time.Duration {
	t0 := time.Now()
	close(g.start)
	g.wg.Wait()
	return time.Since(t0)
}

// stormMetrics accumulates the per-iteration figures of a storm benchmark.
type stormMetrics struct {
	iterations     int
	refresherCalls int64
	storm, ideal   time.Duration
	baseline       time.Duration // rpc=bufconn-tls only
	rejected       int64         // rpc=bufconn-tls only
}

func (m *stormMetrics) report(b *testing.B, withBaseline bool) {
	n := float64(m.iterations)
	b.ReportMetric(float64(m.refresherCalls)/n, "refresher-calls/op")
	b.ReportMetric(m.storm.Seconds()/m.ideal.Seconds(), "x-ideal")
	if withBaseline {
		b.ReportMetric(float64(m.baseline.Milliseconds())/n, "baseline-ms/op")
		b.ReportMetric(float64(m.rejected)/n, "rejected/op")
	}
}

// BenchmarkRefreshStorm starts 10,000 concurrent calls that all need a new
// token while the refresh takes 50 ms. See the package documentation for
// what "one RPC" is in each variant.
func BenchmarkRefreshStorm(b *testing.B) {
	b.Run("rpc=none", benchmarkStormNoRPC)
	b.Run("rpc=bufconn-tls", benchmarkStormBufconn)
}

// benchmarkStormNoRPC: the Source's token has expired, so every call blocks
// in Token until the one refresh, then calls an invoker that does nothing.
func benchmarkStormNoRPC(b *testing.B) {
	noop := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }
	method := echov1.EchoService_Echo_FullMethodName
	ctx := context.Background()
	var m stormMetrics
	for b.Loop() {
		b.StopTimer()
		r := &countingRefresher{f: func(ctx context.Context, _ *tokensource.Token) (*tokensource.Token, error) {
			t := time.NewTimer(refreshLatency)
			defer t.Stop()
			select {
			case <-t.C:
				return longLived("at_fresh"), nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}}
		expired := &tokensource.Token{AccessToken: "at_stale", RefreshToken: "rt", Expiry: time.Now().Add(-time.Minute)}
		src := tokensource.New(r, tokensource.WithInitialToken(expired))
		call := interceptor.UnaryClientInterceptor(src, interceptor.AllowInsecure())
		g := newGate(stormCalls, func() error { return call(ctx, method, nil, nil, nil, noop) })

		b.StartTimer()
		elapsed := g.release()
		b.StopTimer()

		// One call with the valid token is the "one RPC" of the ideal.
		t0 := time.Now()
		err := call(ctx, method, nil, nil, nil, noop)
		one := time.Since(t0)
		src.Close()
		if n := g.errs.Load(); n > 0 || err != nil {
			b.Fatalf("%d of %d calls failed (after the storm: %v)", n, stormCalls, err)
		}
		m.iterations++
		m.refresherCalls += r.calls.Load()
		m.storm += elapsed
		m.ideal += refreshLatency + one
		b.StartTimer()
	}
	m.report(b, false)
}

// benchmarkStormBufconn: real RPCs to the test server, which has expired
// every token issued so far while the client still holds its token as
// valid. Every call is rejected, waits for the one refresh (a Refresh RPC
// on the same connection that the server delays by 50 ms) and is retried.
func benchmarkStormBufconn(b *testing.B) {
	srv, ep := startServer(b,
		testserver.WithAccessTokenTTL(24*time.Hour),
		testserver.WithRefreshLatency(refreshLatency))
	ctx := context.Background()
	req := &echov1.EchoRequest{Message: "storm"}
	var m stormMetrics
	for b.Loop() {
		b.StopTimer()
		tok, err := srv.IssueToken(testserver.DefaultUser)
		if err != nil {
			b.Fatal(err)
		}
		var refresher *testserver.Refresher
		r := &countingRefresher{f: func(ctx context.Context, cur *tokensource.Token) (*tokensource.Token, error) {
			return refresher.Refresh(ctx, cur)
		}}
		src := tokensource.New(r, tokensource.WithInitialToken(tok))
		conn, err := ep.NewClient(interceptor.DialOptions(src)...)
		if err != nil {
			b.Fatal(err)
		}
		refresher = testserver.NewRefresher(conn, testserver.DefaultUser, testserver.DefaultPassword)
		client := echov1.NewEchoServiceClient(conn)
		call := func() error { _, err := client.Echo(ctx, req); return err }

		// The baseline: the same 10,000 concurrent calls with a valid token.
		g := newGate(stormCalls, call)
		baseline := g.release()
		if n := g.errs.Load(); n > 0 {
			b.Fatalf("baseline: %d of %d calls failed", n, stormCalls)
		}

		srv.ForceExpire()
		before := srv.Counters().Unauthenticated
		g = newGate(stormCalls, call)
		b.StartTimer()
		elapsed := g.release()
		b.StopTimer()

		rejected := srv.Counters().Unauthenticated - before
		conn.Close()
		src.Close()
		if n := g.errs.Load(); n > 0 {
			b.Fatalf("storm: %d of %d calls failed", n, stormCalls)
		}
		m.iterations++
		m.refresherCalls += r.calls.Load()
		m.storm += elapsed
		m.ideal += refreshLatency + baseline
		m.baseline += baseline
		m.rejected += rejected
		b.StartTimer()
	}
	m.report(b, true)
}
