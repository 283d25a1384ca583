package interceptor_test

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/testing/testpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// retryLog records what WithRetryObserver's function is told.
type retryLog struct {
	mu    sync.Mutex
	calls []retryCall
}

type retryCall struct {
	ctx       context.Context
	method    string
	rejection error
}

func (l *retryLog) observe(ctx context.Context, method string, rejection error) {
	l.mu.Lock()
	l.calls = append(l.calls, retryCall{ctx, method, rejection})
	l.mu.Unlock()
}

func (l *retryLog) snapshot() []retryCall {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]retryCall(nil), l.calls...)
}

// want fails the test unless exactly n retries of method were observed,
// each for a server's Unauthenticated rejection.
func (l *retryLog) want(t *testing.T, n int, method string) []retryCall {
	t.Helper()
	calls := l.snapshot()
	if len(calls) != n {
		t.Fatalf("retry observer called %d times, want %d", len(calls), n)
	}
	for _, c := range calls {
		if c.method != method {
			t.Errorf("method = %q, want %q", c.method, method)
		}
		if code := status.Code(c.rejection); code != codes.Unauthenticated {
			t.Errorf("status.Code(rejection) = %v, want Unauthenticated (%v)", code, c.rejection)
		}
	}
	return calls
}

type ctxKey struct{}

func TestRetryObserverUnary(t *testing.T) {
	srv, creds := startServer(t, false)
	r := &rotatingRefresher{srv: srv}
	src := newSource(t, r)
	var log retryLog
	client := dial(t, srv, creds, dialOpts(src, interceptor.WithRetryObserver(log.observe))...)
	ctx := context.WithValue(withID(testCtx(t), t.Name()), ctxKey{}, "caller")

	if _, err := client.Ping(ctx, &testpb.PingRequest{}); err != nil {
		t.Fatal(err)
	}
	log.want(t, 0, methodPing) // an accepted token is not a retry

	srv.accept("expired-for-everyone") // tok-1 is no longer accepted
	if _, err := client.Ping(ctx, &testpb.PingRequest{}); err != nil {
		t.Fatal(err)
	}
	if n := len(srv.callsFor(t.Name(), methodPing)); n != 3 {
		t.Fatalf("server saw %d attempts, want 3 (one call, one call retried once)", n)
	}
	c := log.want(t, 1, methodPing)[0]
	if v, _ := c.ctx.Value(ctxKey{}).(string); v != "caller" {
		t.Errorf("observer's ctx lacks the caller's values")
	}
	// The caller's context without the token header: f never sees a token.
	if v := outgoing(c.ctx).Get("authorization"); len(v) != 0 {
		t.Errorf("observer's ctx carries an authorization header")
	}
	if v := outgoing(c.ctx).Get(mdTestID); len(v) != 1 || v[0] != t.Name() {
		t.Errorf("observer's ctx lost the caller's metadata: %v", v)
	}
}

// Rejections that are not retried are not reported: the retry is used up,
// the source has nothing newer (its rate limit), or the refresh failed.
func TestRetryObserverOnlyForRetries(t *testing.T) {
	t.Run("rejecting every token", func(t *testing.T) {
		srv, creds := startServer(t, false)
		r := &rotatingRefresher{srv: srv}
		src := newSource(t, r, tokensource.WithMinRefreshInterval(time.Hour))
		var log retryLog
		client := dial(t, srv, creds, dialOpts(src, interceptor.WithRetryObserver(log.observe))...)
		srv.setRejectAll(true)

		// Rejected, refreshed, retried, rejected again: one retry each, for
		// the storm guard's burst of two.
		for i := range 2 {
			_, err := client.Ping(withID(testCtx(t), t.Name()), &testpb.PingRequest{})
			wantCode(t, err, codes.Unauthenticated)
			log.want(t, i+1, methodPing)
		}
		// Past the storm guard the source returns the same token: no retry.
		_, err := client.Ping(withID(testCtx(t), t.Name()), &testpb.PingRequest{})
		wantCode(t, err, codes.Unauthenticated)
		log.want(t, 2, methodPing)
		if n := len(srv.callsFor(t.Name(), methodPing)); n != 5 {
			t.Fatalf("server saw %d attempts, want 5", n)
		}
	})
	t.Run("refresh fails", func(t *testing.T) {
		src := &fakeSource{cur: &tokensource.Token{AccessToken: "tok-0"}}
		src.next = func() (*tokensource.Token, error) { return nil, errors.New("identity provider down") }
		var log retryLog
		ui := interceptor.UnaryClientInterceptor(src, interceptor.AllowInsecure(), interceptor.WithRetryObserver(log.observe))
		invoker := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
			return errRejected
		}
		err := ui(testCtx(t), methodPing, nil, nil, nil, invoker)
		wantCode(t, err, codes.Unavailable)
		if n := src.refreshes.Load(); n != 1 {
			t.Fatalf("Refresh calls = %d, want 1", n)
		}
		log.want(t, 0, methodPing)
	})
}

// Each of the stream's retry sites reports its retry once.
func TestRetryObserverStreams(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    func(t *testing.T) *harness
		run  func(t *testing.T, h *harness, cs grpc.ClientStream)
	}{
		{"at creation", func(t *testing.T) *harness {
			return newHarness(t).thenFail(errRejected).then(nil, step{value: "r"})
		}, func(t *testing.T, _ *harness, cs grpc.ClientStream) {
			wantRecv(t, cs, "r")
		}},
		{"on RecvMsg", func(t *testing.T) *harness {
			return newHarness(t).then(nil, step{err: errRejected}).then(nil, step{value: "r"})
		}, func(t *testing.T, _ *harness, cs grpc.ClientStream) {
			send(t, cs, "a")
			wantRecv(t, cs, "r")
		}},
		{"on SendMsg", func(t *testing.T) *harness {
			return newHarness(t).then(nil).then(nil, step{value: "r"})
		}, func(t *testing.T, h *harness, cs grpc.ClientStream) {
			send(t, cs, "a")
			h.attempt(0).kill(errRejected)
			send(t, cs, "b")
			wantRecv(t, cs, "r")
		}},
		{"on Header", func(t *testing.T) *harness {
			return newHarness(t).then(nil).then(metadata.Pairs("k", "v"), step{value: "r"})
		}, func(t *testing.T, h *harness, cs grpc.ClientStream) {
			send(t, cs, "a")
			h.attempt(0).kill(errRejected)
			if md, err := cs.Header(); err != nil || md == nil {
				t.Fatalf("Header = %v, %v", md, err)
			}
			wantRecv(t, cs, "r")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.h(t)
			var log retryLog
			ctx := context.WithValue(testCtx(t), ctxKey{}, "caller")
			si := interceptor.StreamClientInterceptor(h.src, interceptor.AllowInsecure(), interceptor.WithRetryObserver(log.observe))
			cs, err := si(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, nil, methodStream, h.streamer)
			if err != nil {
				t.Fatal(err)
			}
			tc.run(t, h, cs)
			if n := h.attempts(); n != 2 {
				t.Fatalf("attempts = %d, want 2", n)
			}
			c := log.want(t, 1, methodStream)[0]
			if v, _ := c.ctx.Value(ctxKey{}).(string); v != "caller" {
				t.Errorf("observer's ctx lacks the caller's values")
			}
		})
	}
	t.Run("after a response", func(t *testing.T) {
		// The stream is not reopened (the source is refreshed for later
		// calls): that is no retry.
		h := newHarness(t).then(nil, step{value: "r"}, step{err: errRejected})
		var log retryLog
		cs := h.open(interceptor.WithRetryObserver(log.observe))
		wantRecv(t, cs, "r")
		_, err := recv(t, cs)
		wantCode(t, err, codes.Unauthenticated)
		if n := h.src.refreshes.Load(); n != 1 {
			t.Fatalf("Refresh calls = %d, want 1", n)
		}
		log.want(t, 0, methodStream)
	})
	t.Run("stream ends normally", func(t *testing.T) {
		h := newHarness(t).then(nil, step{value: "r"}, step{err: io.EOF})
		var log retryLog
		cs := h.open(interceptor.WithRetryObserver(log.observe))
		wantRecv(t, cs, "r")
		if _, err := recv(t, cs); err != io.EOF {
			t.Fatalf("RecvMsg = %v, want io.EOF", err)
		}
		log.want(t, 0, methodStream)
	})
}

// Several observers are all called, in the order given; nil is ignored.
func TestRetryObserverChained(t *testing.T) {
	var (
		mu    sync.Mutex
		order []string
	)
	named := func(name string) func(context.Context, string, error) {
		return func(context.Context, string, error) {
			mu.Lock()
			order = append(order, name)
			mu.Unlock()
		}
	}
	src := &fakeSource{cur: &tokensource.Token{AccessToken: "tok-0"}}
	src.next = func() (*tokensource.Token, error) { return &tokensource.Token{AccessToken: "tok-1"}, nil }
	ui := interceptor.UnaryClientInterceptor(src, interceptor.AllowInsecure(),
		interceptor.WithRetryObserver(named("first")), interceptor.WithRetryObserver(nil),
		interceptor.WithRetryObserver(named("second")))
	attempts := 0
	invoker := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
		attempts++
		if attempts == 1 {
			return errRejected
		}
		return nil
	}
	if err := ui(testCtx(t), methodPing, nil, nil, nil, invoker); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(order) != 2 || order[0] != "first" || order[1] != "second" {
		t.Fatalf("observers called %q, want [first second]", order)
	}
}
