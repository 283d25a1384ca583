package interceptor_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/testing/testpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

const (
	methodPing      = testpb.TestService_Ping_FullMethodName
	methodPingEmpty = testpb.TestService_PingEmpty_FullMethodName
	methodPingError = testpb.TestService_PingError_FullMethodName
	methodPingList  = testpb.TestService_PingList_FullMethodName
	methodStream    = testpb.TestService_PingStream_FullMethodName
	methodClient    = testpb.TestService_PingClientStream_FullMethodName
)

func TestAttachesBearerHeader(t *testing.T) {
	srv, creds := startServer(t, false)
	src := newSource(t, &rotatingRefresher{srv: srv})
	client := dial(t, srv, creds, dialOpts(src)...)
	ctx := withID(testCtx(t), t.Name())

	if _, err := client.Ping(ctx, &testpb.PingRequest{Value: "x"}); err != nil {
		t.Fatal(err)
	}
	calls := srv.callsFor(t.Name(), methodPing)
	if len(calls) != 1 {
		t.Fatalf("server saw %d attempts, want 1", len(calls))
	}
	if got := calls[0].auth; len(got) != 1 || got[0] != "Bearer tok-1" {
		t.Fatalf("authorization = %q, want exactly [\"Bearer tok-1\"]", got)
	}
}

func TestReplacesExistingHeader(t *testing.T) {
	srv, creds := startServer(t, false)
	src := newSource(t, &rotatingRefresher{srv: srv})
	client := dial(t, srv, creds, dialOpts(src)...)

	for name, ctx := range map[string]context.Context{
		"appended": metadata.AppendToOutgoingContext(testCtx(t), "authorization", "Bearer caller", "x-other", "kept"),
		"new":      metadata.NewOutgoingContext(testCtx(t), metadata.Pairs("Authorization", "Bearer caller", "x-other", "kept")),
		"both": metadata.AppendToOutgoingContext(
			metadata.NewOutgoingContext(testCtx(t), metadata.Pairs("authorization", "Bearer one")),
			"authorization", "Bearer two", "x-other", "kept"),
	} {
		t.Run(name, func(t *testing.T) {
			id := t.Name()
			if _, err := client.Ping(withID(ctx, id), &testpb.PingRequest{}); err != nil {
				t.Fatal(err)
			}
			calls := srv.callsFor(id, methodPing)
			if len(calls) != 1 {
				t.Fatalf("server saw %d attempts, want 1", len(calls))
			}
			if got := calls[0].auth; len(got) != 1 || got[0] != "Bearer tok-1" {
				t.Fatalf("authorization = %q, want exactly [\"Bearer tok-1\"]", got)
			}
			if got := calls[0].md.Get("x-other"); len(got) != 1 || got[0] != "kept" {
				t.Fatalf("x-other = %q, want [kept]", got)
			}
		})
	}
}

func TestCustomHeaderAndScheme(t *testing.T) {
	srv, creds := startServer(t, false)
	src := newSource(t, &rotatingRefresher{srv: srv})
	client := dial(t, srv, creds, dialOpts(src, interceptor.WithHeader("X-Api-Key"), interceptor.WithScheme(""))...)
	ctx := withID(testCtx(t), t.Name())

	// PingEmpty needs no token on this server, so the call succeeds and
	// shows what the interceptor sent.
	if _, err := client.PingEmpty(ctx, &testpb.PingEmptyRequest{}); err != nil {
		t.Fatal(err)
	}
	calls := srv.callsFor(t.Name(), methodPingEmpty)
	if len(calls) != 1 {
		t.Fatalf("server saw %d attempts, want 1", len(calls))
	}
	if got := calls[0].md.Get("x-api-key"); len(got) != 1 || got[0] != "tok-1" {
		t.Fatalf("x-api-key = %q, want [tok-1]", got)
	}
	if got := calls[0].auth; len(got) != 0 {
		t.Fatalf("authorization = %q, want none", got)
	}
}

func TestInvalidOptionsPanic(t *testing.T) {
	src := &fakeSource{cur: &tokensource.Token{AccessToken: "t"}}
	for _, opt := range []interceptor.Option{
		interceptor.WithHeader(""),
		interceptor.WithHeader("grpc-token"),
		interceptor.WithHeader(":path"),
		interceptor.WithHeader("user-agent"),
		interceptor.WithHeader("token-bin"),
		interceptor.WithHeader("bad header"),
		interceptor.WithScheme("Bear er"),
		interceptor.WithScheme("Bearer\n"),
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("option %v: no panic", opt)
				}
			}()
			interceptor.DialOptions(src, opt)
		}()
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("nil TokenSource: no panic")
			}
		}()
		interceptor.UnaryClientInterceptor(nil)
	}()
}

func TestSkipAuthAndSkipMethods(t *testing.T) {
	srv, creds := startServer(t, false)
	src := &fakeSource{cur: &tokensource.Token{AccessToken: "tok-1"}}
	srv.accept("tok-1")
	client := dial(t, srv, creds, dialOpts(src, interceptor.WithSkipMethods(methodPingEmpty))...)
	ctx := withID(testCtx(t), t.Name())

	// A skipped method: no token, and it works (the server does not ask).
	if _, err := client.PingEmpty(ctx, &testpb.PingEmptyRequest{}); err != nil {
		t.Fatal(err)
	}
	// SkipAuth on a method that needs a token: no token, no refresh, and
	// the server's Unauthenticated comes back as is.
	_, err := client.Ping(ctx, &testpb.PingRequest{}, interceptor.SkipAuth())
	wantCode(t, err, codes.Unauthenticated)
	// SkipAuth on a stream.
	stream, err := client.PingList(ctx, &testpb.PingListRequest{}, interceptor.SkipAuth())
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	wantCode(t, err, codes.Unauthenticated)

	for _, c := range srv.allCalls() {
		if c.testID == t.Name() && len(c.auth) != 0 {
			t.Errorf("%s carried authorization %q", c.method, c.auth)
		}
	}
	if n := len(srv.callsFor(t.Name(), methodPing)); n != 1 {
		t.Errorf("Ping attempts = %d, want 1 (no retry)", n)
	}
	if n := src.tokens.Load(); n != 0 {
		t.Errorf("Token calls = %d, want 0", n)
	}
	if n := src.refreshes.Load(); n != 0 {
		t.Errorf("Refresh calls = %d, want 0", n)
	}
}

func TestRefreshAndRetryOnce(t *testing.T) {
	srv, creds := startServer(t, false)
	r := &rotatingRefresher{srv: srv}
	src := newSource(t, r)
	client := dial(t, srv, creds, dialOpts(src)...)
	ctx := withID(testCtx(t), t.Name())

	srv.accept("expired-for-everyone") // tok-1 is no longer accepted
	if _, err := client.Ping(ctx, &testpb.PingRequest{Value: "v"}); err != nil {
		t.Fatal(err)
	}
	calls := srv.callsFor(t.Name(), methodPing)
	if len(calls) != 2 {
		t.Fatalf("server saw %d attempts, want 2", len(calls))
	}
	if calls[0].auth[0] != "Bearer tok-1" || calls[1].auth[0] != "Bearer tok-2" {
		t.Fatalf("attempts carried %q then %q, want tok-1 then tok-2", calls[0].auth, calls[1].auth)
	}
	if n := r.n.Load(); n != 2 {
		t.Fatalf("Refresher calls = %d, want 2 (initial + 1)", n)
	}
}

// A call rejected with a token the source has already replaced is retried
// with the new token and causes no refresh.
func TestStaleRejectionRetriesWithoutRefresh(t *testing.T) {
	srv, creds := startServer(t, false)
	r := &rotatingRefresher{srv: srv}
	// No rate limit: only the stale-token check may explain "no refresh".
	src := newSource(t, r, tokensource.WithMinRefreshInterval(0))
	stale, _ := src.Token(context.Background()) // tok-1
	if _, err := src.Refresh(context.Background(), stale); err != nil {
		t.Fatal(err)
	}
	// The server accepts tok-2 only; the interceptor gets tok-1 once.
	client := dial(t, srv, creds, dialOpts(&staleOnce{Source: src, stale: stale})...)
	ctx := withID(testCtx(t), t.Name())
	before := r.n.Load()

	if _, err := client.Ping(ctx, &testpb.PingRequest{}); err != nil {
		t.Fatal(err)
	}
	calls := srv.callsFor(t.Name(), methodPing)
	if len(calls) != 2 || calls[0].auth[0] != "Bearer tok-1" || calls[1].auth[0] != "Bearer tok-2" {
		t.Fatalf("attempts = %+v, want tok-1 rejected then tok-2", calls)
	}
	if n := r.n.Load() - before; n != 0 {
		t.Fatalf("Refresher calls = %d, want 0", n)
	}
}

// staleOnce hands out a stale token on its first Token call, as if the call
// had picked it up just before another call's refresh completed.
type staleOnce struct {
	*tokensource.Source
	stale *tokensource.Token
	once  sync.Once
}

func (s *staleOnce) Token(ctx context.Context) (*tokensource.Token, error) {
	tok := (*tokensource.Token)(nil)
	s.once.Do(func() { tok = s.stale })
	if tok != nil {
		return tok, nil
	}
	return s.Source.Token(ctx)
}

func TestServerRejectingEveryToken(t *testing.T) {
	srv, creds := startServer(t, false)
	r := &rotatingRefresher{srv: srv}
	src := newSource(t, r)
	client := dial(t, srv, creds, dialOpts(src)...)
	srv.setRejectAll(true)

	t.Run("unary", func(t *testing.T) {
		before := r.n.Load()
		_, err := client.Ping(withID(testCtx(t), t.Name()), &testpb.PingRequest{})
		wantCode(t, err, codes.Unauthenticated)
		if n := len(srv.callsFor(t.Name(), methodPing)); n != 2 {
			t.Fatalf("server saw %d attempts, want 2 (one retry)", n)
		}
		if n := r.n.Load() - before; n != 1 {
			t.Fatalf("Refresher calls = %d, want 1", n)
		}
	})
	t.Run("unary within the source's rate limit", func(t *testing.T) {
		// The storm guard allows a second forced refresh at once (two
		// separate revocations), then refuses a third so soon and returns
		// the same token: a retry could not help, so there is none.
		_, err := client.Ping(withID(testCtx(t), t.Name()+"/burst"), &testpb.PingRequest{})
		wantCode(t, err, codes.Unauthenticated)
		if n := len(srv.callsFor(t.Name()+"/burst", methodPing)); n != 2 {
			t.Fatalf("server saw %d attempts of the burst's second call, want 2 (one retry)", n)
		}
		before := r.n.Load()
		_, err = client.Ping(withID(testCtx(t), t.Name()), &testpb.PingRequest{})
		wantCode(t, err, codes.Unauthenticated)
		if n := len(srv.callsFor(t.Name(), methodPing)); n != 1 {
			t.Fatalf("server saw %d attempts, want 1", n)
		}
		if n := r.n.Load() - before; n != 0 {
			t.Fatalf("Refresher calls = %d, want 0", n)
		}
	})
}

func TestServerRejectingEveryTokenStreams(t *testing.T) {
	srv, creds := startServer(t, false)
	r := &rotatingRefresher{srv: srv}
	// No rate limit, so that every call may refresh once.
	src := newSource(t, r, tokensource.WithMinRefreshInterval(0))
	client := dial(t, srv, creds, dialOpts(src)...)
	srv.setRejectAll(true)

	check := func(t *testing.T, method string, err error, before int64) {
		t.Helper()
		wantCode(t, err, codes.Unauthenticated)
		if n := len(srv.callsFor(t.Name(), method)); n != 2 {
			t.Fatalf("server saw %d attempts, want 2 (one retry)", n)
		}
		if n := r.n.Load() - before; n != 1 {
			t.Fatalf("Refresher calls = %d, want 1", n)
		}
	}
	t.Run("server stream", func(t *testing.T) {
		before := r.n.Load()
		stream, err := client.PingList(withID(testCtx(t), t.Name()), &testpb.PingListRequest{Value: "x"})
		if err != nil {
			t.Fatal(err)
		}
		_, err = stream.Recv()
		check(t, methodPingList, err, before)
	})
	t.Run("client stream", func(t *testing.T) {
		before := r.n.Load()
		stream, err := client.PingClientStream(withID(testCtx(t), t.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			if err := stream.Send(&testpb.PingClientStreamRequest{Value: fmt.Sprint(i)}); err != nil {
				break
			}
		}
		_, err = stream.CloseAndRecv()
		check(t, methodClient, err, before)
	})
	t.Run("bidi", func(t *testing.T) {
		before := r.n.Load()
		stream, err := client.PingStream(withID(testCtx(t), t.Name()))
		if err != nil {
			t.Fatal(err)
		}
		_ = stream.Send(&testpb.PingStreamRequest{Value: "a"})
		_, err = stream.Recv()
		check(t, methodStream, err, before)
	})
}

func TestTokenRejectedPredicate(t *testing.T) {
	srv, creds := startServer(t, false)

	t.Run("widen", func(t *testing.T) {
		src := &fakeSource{cur: &tokensource.Token{AccessToken: "tok-1"}}
		src.next = func() (*tokensource.Token, error) {
			srv.accept("tok-2")
			return &tokensource.Token{AccessToken: "tok-2"}, nil
		}
		srv.accept("tok-1")
		client := dial(t, srv, creds, dialOpts(src, interceptor.WithTokenRejected(
			func(_ context.Context, method string, err error) bool {
				return method == methodPingError && status.Code(err) == codes.PermissionDenied
			}))...)
		_, err := client.PingError(withID(testCtx(t), t.Name()),
			&testpb.PingErrorRequest{ErrorCodeReturned: uint32(codes.PermissionDenied)})
		wantCode(t, err, codes.PermissionDenied)
		if n := len(srv.callsFor(t.Name(), methodPingError)); n != 2 {
			t.Fatalf("attempts = %d, want 2", n)
		}
		if n := src.refreshes.Load(); n != 1 {
			t.Fatalf("Refresh calls = %d, want 1", n)
		}
	})
	t.Run("veto", func(t *testing.T) {
		src := &fakeSource{cur: &tokensource.Token{AccessToken: "tok-1"}}
		srv.accept("tok-1")
		client := dial(t, srv, creds, dialOpts(src, interceptor.WithTokenRejected(
			func(_ context.Context, method string, err error) bool {
				return method != methodPingError && status.Code(err) == codes.Unauthenticated
			}))...)
		_, err := client.PingError(withID(testCtx(t), t.Name()),
			&testpb.PingErrorRequest{ErrorCodeReturned: uint32(codes.Unauthenticated)})
		wantCode(t, err, codes.Unauthenticated)
		if n := len(srv.callsFor(t.Name(), methodPingError)); n != 1 {
			t.Fatalf("attempts = %d, want 1", n)
		}
		if n := src.refreshes.Load(); n != 0 {
			t.Fatalf("Refresh calls = %d, want 0", n)
		}
	})
}

func TestStandaloneInterceptorsKeepCallerCredentials(t *testing.T) {
	srv, creds := startServer(t, false)
	src := newSource(t, &rotatingRefresher{srv: srv})
	client := dial(t, srv, creds,
		grpc.WithChainUnaryInterceptor(interceptor.UnaryClientInterceptor(src)),
		grpc.WithChainStreamInterceptor(interceptor.StreamClientInterceptor(src)))
	ctx := withID(testCtx(t), t.Name())

	opts := []grpc.CallOption{grpc.PerRPCCredentials(extraCreds{}), grpc.WaitForReady(true)}
	if _, err := client.Ping(ctx, &testpb.PingRequest{}, opts...); err != nil {
		t.Fatal(err)
	}
	if _, ok := opts[1].(grpc.FailFastCallOption); !ok {
		t.Fatalf("the caller's options slice was modified: %T", opts[1])
	}
	calls := srv.callsFor(t.Name(), methodPing)
	if len(calls) != 1 {
		t.Fatalf("attempts = %d, want 1", len(calls))
	}
	if got := calls[0].md.Get("x-extra"); len(got) != 1 {
		t.Fatalf("the caller's per-RPC credentials were dropped: x-extra = %q", got)
	}
	if got := calls[0].auth; len(got) != 1 || got[0] != "Bearer tok-1" {
		t.Fatalf("authorization = %q", got)
	}
}

type extraCreds struct{}

func (extraCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"x-extra": "1"}, nil
}
func (extraCreds) RequireTransportSecurity() bool { return false }

func TestErrorMapping(t *testing.T) {
	srv, creds := startServer(t, false)
	srv.accept("tok-1")
	cause := errors.New("token endpoint unreachable")
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name   string
		ctx    context.Context
		err    error
		code   codes.Code
		wantIs []error
	}{
		{"reauth", context.Background(), fmt.Errorf("tokensource: %w: %w", tokensource.ErrReauthRequired, cause),
			codes.Unauthenticated, []error{tokensource.ErrReauthRequired, cause}},
		{"transient", context.Background(), fmt.Errorf("tokensource: refresh failed: %w", cause),
			codes.Unavailable, []error{cause}},
		{"closed", context.Background(), tokensource.ErrClosed, codes.Unavailable, []error{tokensource.ErrClosed}},
		{"invalid", context.Background(), fmt.Errorf("x: %w", tokensource.ErrInvalidToken),
			codes.Unavailable, []error{tokensource.ErrInvalidToken}},
		{"refresh timeout is not the caller's deadline", context.Background(),
			fmt.Errorf("tokensource: refresh: %w", context.DeadlineExceeded), codes.Unavailable,
			[]error{context.DeadlineExceeded}},
		{"caller cancelled", cancelled, fmt.Errorf("tokensource: waiting: %w", context.Canceled),
			codes.Canceled, []error{context.Canceled}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := &fakeSource{tokenErr: tc.err}
			client := dial(t, srv, creds, dialOpts(src)...)
			ctx := withID(tc.ctx, t.Name())

			_, uerr := client.Ping(ctx, &testpb.PingRequest{})
			_, serr := client.PingList(ctx, &testpb.PingListRequest{})
			for _, err := range []error{uerr, serr} {
				wantCode(t, err, tc.code)
				for _, target := range tc.wantIs {
					if !errors.Is(err, target) {
						t.Errorf("errors.Is(%v, %v) = false", err, target)
					}
				}
			}
			if n := len(srv.callsFor(t.Name(), methodPing)) + len(srv.callsFor(t.Name(), methodPingList)); n != 0 {
				t.Fatalf("%d calls reached the server without a token", n)
			}
		})
	}
}

// A custom TokenSource that returns an unusable token: the call fails with
// Unavailable wrapping ErrInvalidToken, and nothing reaches the server.
func TestUnusableTokenNeverSent(t *testing.T) {
	srv, creds := startServer(t, false)
	const secret = "s3cr3t"
	for name, tok := range map[string]*tokensource.Token{
		"nil":       nil,
		"empty":     {AccessToken: ""},
		"space":     {AccessToken: secret + " x"},
		"newline":   {AccessToken: secret + "\nx"},
		"non-ascii": {AccessToken: secret + "é"},
	} {
		t.Run(name, func(t *testing.T) {
			client := dial(t, srv, creds, dialOpts(&fakeSource{cur: tok})...)
			_, err := client.Ping(withID(testCtx(t), t.Name()), &testpb.PingRequest{})
			wantCode(t, err, codes.Unavailable)
			if !errors.Is(err, tokensource.ErrInvalidToken) {
				t.Errorf("errors.Is(err, ErrInvalidToken) = false: %v", err)
			}
			if msg := err.Error(); tok != nil && strings.Contains(msg, secret) {
				t.Errorf("error reveals the token: %q", msg)
			}
			if n := len(srv.callsFor(t.Name(), methodPing)); n != 0 {
				t.Fatalf("%d calls reached the server", n)
			}
		})
	}
}

func TestLoggerNeverSeesTokens(t *testing.T) {
	srv, creds := startServer(t, false)
	src := newSource(t, &rotatingRefresher{srv: srv})
	var buf syncBuffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	client := dial(t, srv, creds, dialOpts(src, interceptor.WithLogger(logger))...)
	expire(srv)
	if _, err := client.Ping(withID(testCtx(t), t.Name()), &testpb.PingRequest{}); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if !strings.Contains(out, "retrying with a new token") {
		t.Fatalf("no record of the retry in %q", out)
	}
	if strings.Contains(out, "tok-") {
		t.Fatalf("the log reveals a token: %q", out)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
