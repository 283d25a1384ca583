package bench_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/oauth"
	"google.golang.org/grpc/metadata"

	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// startServer serves the test server over bufconn with TLS until the
// benchmark ends.
func startServer(tb testing.TB, opts ...testserver.Option) (*testserver.Server, *testserver.Endpoint) {
	tb.Helper()
	srv := testserver.New(opts...)
	ep, err := srv.Start(context.Background(), testserver.Bufconn(), testserver.TLS())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(ep.Stop)
	return srv, ep
}

// newClient connects to ep until the benchmark ends.
func newClient(tb testing.TB, ep *testserver.Endpoint, opts ...grpc.DialOption) *grpc.ClientConn {
	tb.Helper()
	conn, err := ep.NewClient(opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

// countingRefresher counts its calls and delegates to f.
type countingRefresher struct {
	calls atomic.Int64
	f     func(ctx context.Context, current *tokensource.Token) (*tokensource.Token, error)
}

func (r *countingRefresher) Refresh(ctx context.Context, current *tokensource.Token) (*tokensource.Token, error) {
	r.calls.Add(1)
	return r.f(ctx, current)
}

var errNoRefresh = errors.New("bench: the hot path must not refresh")

// hotSource returns a Source holding tok (valid for the whole benchmark) and
// its refresher, which fails: the benchmark checks it was never called.
func hotSource(tb testing.TB, tok *tokensource.Token) (*tokensource.Source, *countingRefresher) {
	r := &countingRefresher{f: func(context.Context, *tokensource.Token) (*tokensource.Token, error) {
		return nil, errNoRefresh
	}}
	src := tokensource.New(r, tokensource.WithInitialToken(tok))
	tb.Cleanup(func() { src.Close() })
	return src, r
}

// oauthCreds is the alternative grpc-go offers: per-RPC credentials over an
// oauth2.ReuseTokenSource that holds tok. Its underlying source fails, and
// counts its calls, so a benchmark can check it was never needed.
func oauthCreds(tok *tokensource.Token) (oauth.TokenSource, *atomic.Int64) {
	var calls atomic.Int64
	ts := oauth2.ReuseTokenSource(
		&oauth2.Token{AccessToken: tok.AccessToken, TokenType: "Bearer", Expiry: tok.Expiry},
		failingOAuth2{calls: &calls})
	return oauth.TokenSource{TokenSource: ts}, &calls
}

type failingOAuth2 struct{ calls *atomic.Int64 }

func (f failingOAuth2) Token() (*oauth2.Token, error) {
	f.calls.Add(1)
	return nil, errNoRefresh
}

// constantHeader is the floor: the least an interceptor that sends a bearer
// token can do.
func constantHeader(value string) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return invoker(metadata.AppendToOutgoingContext(ctx, "authorization", value), method, req, reply, cc, opts...)
	}
}

// floorRef collects the floor's time per call across the runs of one
// benchmark (-count runs each sub-benchmark several times in a row), so the
// other implementations can report their ratio to its median.
type floorRef struct {
	mu      sync.Mutex
	samples []float64
}

// report records b's time per call if b is the floor, then reports x-floor,
// b's time per call over the floor's median so far (1 for the floor itself,
// nothing if the floor did not run, as with -bench selecting one impl).
func (f *floorRef) report(b *testing.B, isFloor bool) {
	if b.N == 0 {
		return
	}
	perCall := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	f.mu.Lock()
	defer f.mu.Unlock()
	if isFloor {
		f.samples = append(f.samples, perCall)
	}
	if len(f.samples) == 0 {
		return
	}
	b.ReportMetric(perCall/median(f.samples), "x-floor")
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

// longLived returns a token that stays valid, and outside any early-refresh
// window, for far longer than a benchmark runs.
func longLived(access string) *tokensource.Token {
	return &tokensource.Token{AccessToken: access, RefreshToken: "rt_unused", Expiry: time.Now().Add(24 * time.Hour)}
}
