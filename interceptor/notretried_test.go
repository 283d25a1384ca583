package interceptor_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/testing/testpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// limitedSource is a fakeSource that declares a forced-refresh rate limit,
// as *tokensource.Source does.
type limitedSource struct {
	*fakeSource
	interval time.Duration
}

func (s limitedSource) MinRefreshInterval() time.Duration { return s.interval }

// A server that rejects every token: once the storm guard's burst is spent,
// the next call is not retried, and says so, keeping the server's code and
// message.
func TestNotRetriedRateLimitedMessage(t *testing.T) {
	srv, creds := startServer(t, false)
	r := &rotatingRefresher{srv: srv}
	src := newSource(t, r, tokensource.WithMinRefreshInterval(time.Hour))
	client := dial(t, srv, creds, dialOpts(src)...)
	srv.setRejectAll(true)

	// The storm guard's burst: two calls are refreshed and retried.
	for range 2 {
		_, err := client.Ping(withID(testCtx(t), t.Name()), &testpb.PingRequest{})
		wantCode(t, err, codes.Unauthenticated)
		if strings.Contains(err.Error(), "not retried") {
			t.Errorf("retried call's error = %v, want the server's own", err)
		}
	}
	_, err := client.Ping(withID(testCtx(t), t.Name()), &testpb.PingRequest{})
	wantCode(t, err, codes.Unauthenticated)
	const want = "token not accepted; not retried: forced refresh rate-limited (WithMinRefreshInterval 1h0m0s)"
	if got := status.Convert(err).Message(); got != want {
		t.Errorf("message = %q, want %q", got, want)
	}
	if n := len(srv.callsFor(t.Name(), methodPing)); n != 5 {
		t.Errorf("server saw %d attempts, want 5 (two retried calls, then none)", n)
	}
}

// The same through NewClient, whose interceptors reach the source only
// once newSource has returned it.
func TestNotRetriedRateLimitedMessageNewClient(t *testing.T) {
	srv, ep := startTLSServer(t)
	conn, src, err := interceptor.NewClient(ep.Target(), func(cc grpc.ClientConnInterface) *tokensource.Source {
		return tokensource.New(testserver.NewRefresher(cc, testserver.DefaultUser, testserver.DefaultPassword),
			tokensource.WithMinRefreshInterval(time.Hour))
	}, ep.DialOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	defer src.Close()
	client := echov1.NewEchoServiceClient(conn)
	ctx := testCtx(t)
	srv.SetRejectAccessTokens(true)
	for range 3 { // past the storm guard's burst of two
		_, err = client.Echo(ctx, &echov1.EchoRequest{Message: "hi"})
	}
	wantCode(t, err, codes.Unauthenticated)
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "; not retried: forced refresh rate-limited (WithMinRefreshInterval 1h0m0s)") {
		t.Errorf("message = %q, want it to say the forced refresh was rate-limited", msg)
	}
}

// Where the rejection is not retried because the source handed back the
// rejected token, the error keeps the rejection's code, extends its message
// with the reason, and still matches the rejection with errors.Is: for a
// unary call and at stream creation, with a source that declares its rate
// limit and with one that does not.
func TestNotRetriedMessage(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  func(*fakeSource) interceptor.TokenSource
		want string
	}{
		{"rate-limited", func(f *fakeSource) interceptor.TokenSource { return limitedSource{f, time.Second} },
			"rpc error: code = Unauthenticated desc = token rejected; not retried: forced refresh rate-limited (WithMinRefreshInterval 1s)"},
		{"no limit", func(f *fakeSource) interceptor.TokenSource { return limitedSource{f, 0} },
			"rpc error: code = Unauthenticated desc = token rejected; not retried: the token source has no newer token"},
		{"any source", func(f *fakeSource) interceptor.TokenSource { return f },
			"rpc error: code = Unauthenticated desc = token rejected; not retried: the token source has no newer token"},
	} {
		check := func(t *testing.T, err error) {
			t.Helper()
			wantCode(t, err, codes.Unauthenticated)
			if err == nil || err.Error() != tc.want {
				t.Errorf("err = %v, want %s", err, tc.want)
			}
			if !errors.Is(err, errRejected) {
				t.Errorf("errors.Is(err, the rejection) = false")
			}
		}
		t.Run(tc.name+"/unary", func(t *testing.T) {
			f := &fakeSource{cur: &tokensource.Token{AccessToken: "tok-0"}} // Refresh hands back cur
			ui := interceptor.UnaryClientInterceptor(tc.src(f), interceptor.AllowInsecure())
			invoker := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
				return errRejected
			}
			check(t, ui(testCtx(t), methodPing, nil, nil, nil, invoker))
		})
		t.Run(tc.name+"/stream creation", func(t *testing.T) {
			h := newHarness(t).thenFail(errRejected)
			h.src.next = nil // Refresh hands back the current token
			si := interceptor.StreamClientInterceptor(tc.src(h.src), interceptor.AllowInsecure())
			_, err := si(testCtx(t), &grpc.StreamDesc{ServerStreams: true}, nil, methodPingList, h.streamer)
			check(t, err)
			if n := h.attempts(); n != 1 {
				t.Errorf("attempts = %d, want 1", n)
			}
		})
	}
}

// A rejected call whose forced refresh meets a Source backing off after a
// failed refresh fails at once with Unavailable, saying so.
func TestNotRetriedWhileBackingOffSaysSo(t *testing.T) {
	srv, creds := startServer(t, false)
	r := &rotatingRefresher{srv: srv}
	var fail atomic.Bool
	failing := tokensource.RefresherFunc(func(ctx context.Context, cur *tokensource.Token) (*tokensource.Token, error) {
		if fail.Load() {
			return nil, errors.New("token endpoint unavailable")
		}
		return r.Refresh(ctx, cur)
	})
	src := tokensource.New(failing, tokensource.WithBackoff(time.Hour, time.Hour))
	t.Cleanup(func() { src.Close() })
	client := dial(t, srv, creds, dialOpts(src)...)
	if _, err := client.Ping(withID(testCtx(t), t.Name()), &testpb.PingRequest{}); err != nil {
		t.Fatal(err)
	}
	srv.setRejectAll(true)
	fail.Store(true)
	_, err := client.Ping(withID(testCtx(t), t.Name()), &testpb.PingRequest{})
	wantCode(t, err, codes.Unavailable)
	_, err = client.Ping(withID(testCtx(t), t.Name()), &testpb.PingRequest{})
	wantCode(t, err, codes.Unavailable)
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "forced refresh not attempted: backing off after a failed refresh") ||
		!strings.Contains(msg, "token endpoint unavailable") {
		t.Errorf("message = %q, want it to say the source is backing off, with the last refresh error", msg)
	}
}
