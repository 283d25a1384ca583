package interceptor_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// End-to-end tests against the bundled test server: its AuthService issues
// and rotates the tokens, and the Refresher reaches it through the same
// intercepted connection the application uses.

const (
	echoMethod       = "/tokenrefresh.echo.v1.EchoService/Echo"
	echoServerMethod = "/tokenrefresh.echo.v1.EchoService/ServerStreamEcho"
)

type e2e struct {
	srv  *testserver.Server
	ep   *testserver.Endpoint
	src  *tokensource.Source
	echo echov1.EchoServiceClient
}

// startE2E starts the test server (TLS unless startOpts say otherwise) and a
// client whose Source refreshes through the intercepted connection itself,
// wired with NewClient.
func startE2E(t *testing.T, srvOpts []testserver.Option, startOpts []testserver.StartOption, srcOpts []tokensource.Option, opts ...interceptor.Option) *e2e {
	t.Helper()
	srv := testserver.New(srvOpts...)
	if startOpts == nil {
		startOpts = []testserver.StartOption{testserver.TLS()}
	}
	ep, err := srv.Start(context.Background(), startOpts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ep.Stop)

	conn, src, err := interceptor.NewClient(ep.Target(), func(cc grpc.ClientConnInterface) *tokensource.Source {
		return tokensource.New(testserver.NewRefresher(cc, testserver.DefaultUser, testserver.DefaultPassword), srcOpts...)
	}, append(ep.DialOptions(), interceptor.WithInterceptorOptions(opts...))...)
	if err != nil {
		t.Fatal(err)
	}
	// Cleanups run last-in first-out: conn, then the source, then ep. conn
	// goes first, unlike in a program (see NewClient), so that a refresh a
	// test left hanging at the server fails at once instead of being
	// drained for the refresh timeout.
	t.Cleanup(func() { _ = src.Close() })
	t.Cleanup(func() { _ = conn.Close() })
	return &e2e{srv: srv, ep: ep, src: src, echo: echov1.NewEchoServiceClient(conn)}
}

func (e *e2e) ping(ctx context.Context) error {
	_, err := e.echo.Echo(ctx, &echov1.EchoRequest{Message: "hi"})
	return err
}

func TestE2EConcurrentCallsAcrossForceExpire(t *testing.T) {
	// No rate limit: sharing alone must hold the count at one.
	e := startE2E(t, nil, nil, []tokensource.Option{tokensource.WithMinRefreshInterval(0)})
	ctx := testCtx(t)

	var failed atomic.Int64
	fail := func(format string, args ...any) {
		failed.Add(1)
		t.Errorf(format, args...)
	}
	var wg sync.WaitGroup
	unary := func(i int) {
		msg := fmt.Sprint(i)
		resp, err := e.echo.Echo(ctx, &echov1.EchoRequest{Message: msg})
		if err != nil {
			fail("Echo %d: %v", i, err)
		} else if resp.GetMessage() != msg {
			fail("Echo %d: got %q", i, resp.GetMessage())
		}
	}
	for i := range 100 {
		wg.Go(func() { unary(i) })
	}
	wg.Wait()
	before := e.srv.Counters()

	e.srv.ForceExpire()
	start := make(chan struct{})
	for i := range 400 {
		wg.Go(func() { <-start; unary(100 + i) })
	}
	for i := range 50 {
		wg.Go(func() {
			<-start
			if err := e2eServerStream(ctx, e.echo, i); err != nil {
				fail("server stream %d: %v", i, err)
			}
		})
		wg.Go(func() {
			<-start
			if err := e2eClientStream(ctx, e.echo, i); err != nil {
				fail("client stream %d: %v", i, err)
			}
		})
		wg.Go(func() {
			<-start
			if err := e2eBidi(ctx, e.echo, i); err != nil {
				fail("bidi stream %d: %v", i, err)
			}
		})
	}
	close(start)
	wg.Wait()

	after := e.srv.Counters()
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d calls failed", n)
	}
	if after.Logins != 1 {
		t.Fatalf("logins = %d, want 1", after.Logins)
	}
	if n := after.RefreshesOK - before.RefreshesOK; n != 1 {
		t.Fatalf("refreshes on the server = %d, want 1", n)
	}
	if after.Unauthenticated == before.Unauthenticated {
		t.Fatal("no call was rejected: the expiry was not exercised")
	}
	t.Logf("rejections across the expiry: %d", after.Unauthenticated-before.Unauthenticated)
}

func e2eServerStream(ctx context.Context, c echov1.EchoServiceClient, i int) error {
	msg := fmt.Sprint("s", i)
	stream, err := c.ServerStreamEcho(ctx, &echov1.ServerStreamEchoRequest{Message: msg, Count: 5})
	if err != nil {
		return err
	}
	for n := 0; ; n++ {
		resp, err := stream.Recv()
		if err == io.EOF {
			if n != 5 {
				return fmt.Errorf("%d messages, want 5", n)
			}
			return nil
		}
		if err != nil {
			return err
		}
		if resp.GetMessage() != msg || resp.GetIndex() != int32(n) {
			return fmt.Errorf("message %d = %v", n, resp)
		}
	}
}

func e2eClientStream(ctx context.Context, c echov1.EchoServiceClient, i int) error {
	stream, err := c.ClientStreamEcho(ctx)
	if err != nil {
		return err
	}
	want := values(fmt.Sprint(i, "-"), 3)
	for _, v := range want {
		if err := stream.Send(&echov1.ClientStreamEchoRequest{Message: v}); err != nil {
			return fmt.Errorf("Send: %w", err)
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return err
	}
	if !slices.Equal(resp.GetMessages(), want) {
		return fmt.Errorf("server received %q, want %q", resp.GetMessages(), want)
	}
	return nil
}

func e2eBidi(ctx context.Context, c echov1.EchoServiceClient, i int) error {
	stream, err := c.BidiStreamEcho(ctx)
	if err != nil {
		return err
	}
	want := values(fmt.Sprint(i, "-"), 3)
	var got []string
	for _, v := range want {
		if err := stream.Send(&echov1.BidiStreamEchoRequest{Message: v}); err != nil {
			return fmt.Errorf("Send: %w", err)
		}
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		got = append(got, resp.GetMessage())
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	if _, err := stream.Recv(); err != io.EOF {
		return fmt.Errorf("Recv after CloseSend: %v, want io.EOF", err)
	}
	if !slices.Equal(got, want) {
		return fmt.Errorf("echoes %q, want %q", got, want)
	}
	return nil
}

func TestE2EStaleRejection(t *testing.T) {
	// No rate limit: only the stale-token check may explain "no refresh".
	e := startE2E(t, nil, nil, []tokensource.Option{tokensource.WithMinRefreshInterval(0)})
	ctx := testCtx(t)
	stale, err := e.src.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e.srv.ForceExpire()
	if err := e.ping(ctx); err != nil { // refreshes
		t.Fatal(err)
	}
	before := e.srv.Counters()

	// A call that picked up the old token just before the refresh.
	client := dialLike(t, e, &staleOnce{Source: e.src, stale: stale})
	if _, err := client.Echo(ctx, &echov1.EchoRequest{}); err != nil {
		t.Fatal(err)
	}
	after := e.srv.Counters()
	if n := after.RPCs[echoMethod] - before.RPCs[echoMethod]; n != 2 {
		t.Fatalf("Echo attempts = %d, want 2 (rejected, retried)", n)
	}
	if n := after.RefreshesOK - before.RefreshesOK; n != 0 {
		t.Fatalf("refreshes = %d, want 0", n)
	}
}

// dialLike opens a second connection to e's server with src.
func dialLike(t *testing.T, e *e2e, src interceptor.TokenSource) echov1.EchoServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(e.ep.Target(), append(e.ep.DialOptions(), interceptor.DialOptions(src)...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return echov1.NewEchoServiceClient(conn)
}

func TestE2EServerRejectingEveryToken(t *testing.T) {
	e := startE2E(t, nil, nil, nil)
	ctx := testCtx(t)
	if err := e.ping(ctx); err != nil {
		t.Fatal(err)
	}
	e.srv.SetRejectAccessTokens(true)
	before := e.srv.Counters()
	err := e.ping(ctx)
	wantCode(t, err, codes.Unauthenticated)
	after := e.srv.Counters()
	if n := after.RPCs[echoMethod] - before.RPCs[echoMethod]; n != 2 {
		t.Fatalf("Echo attempts = %d, want 2 (exactly one retry)", n)
	}
	if n := after.RefreshesOK - before.RefreshesOK; n != 1 {
		t.Fatalf("refreshes = %d, want 1", n)
	}
}

func TestE2EStreamsReplayed(t *testing.T) {
	e := startE2E(t, nil, nil, []tokensource.Option{tokensource.WithMinRefreshInterval(0)})
	ctx := testCtx(t)
	if err := e.ping(ctx); err != nil {
		t.Fatal(err)
	}
	t.Run("client stream", func(t *testing.T) {
		e.srv.ForceExpire()
		if err := e2eClientStream(ctx, e.echo, 1); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("bidi", func(t *testing.T) {
		e.srv.ForceExpire()
		stream, err := e.echo.BidiStreamEcho(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := values("b", 10)
		for _, v := range want {
			if err := stream.Send(&echov1.BidiStreamEchoRequest{Message: v}); err != nil {
				t.Fatal(err)
			}
		}
		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}
		var got []string
		for {
			resp, err := stream.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, resp.GetMessage())
		}
		if !slices.Equal(got, want) {
			t.Fatalf("echoes %q, want %q", got, want)
		}
	})
	if c := e.srv.Counters(); c.RefreshesOK != 2 {
		t.Fatalf("refreshes = %d, want 2 (one per expiry)", c.RefreshesOK)
	}
}

func TestE2EServerStreamRejectedAfterFirstMessage(t *testing.T) {
	e := startE2E(t, nil, nil, nil)
	ctx := testCtx(t)
	if err := e.ping(ctx); err != nil {
		t.Fatal(err)
	}
	before := e.srv.Counters()
	stream, err := e.echo.ServerStreamEcho(ctx, &echov1.ServerStreamEchoRequest{
		Message: "m", Count: 5, FailAfter: 1, FailCode: int32(codes.Unauthenticated),
	})
	if err != nil {
		t.Fatal(err)
	}
	var got []int32
	for {
		resp, err := stream.Recv()
		if err != nil {
			wantCode(t, err, codes.Unauthenticated)
			break
		}
		got = append(got, resp.GetIndex())
	}
	if !slices.Equal(got, []int32{0}) {
		t.Fatalf("received indexes %v, want [0]", got)
	}
	after := e.srv.Counters()
	if n := after.RPCs[echoServerMethod] - before.RPCs[echoServerMethod]; n != 1 {
		t.Fatalf("attempts = %d, want 1 (no replay after a response)", n)
	}
	if n := after.RefreshesOK - before.RefreshesOK; n != 1 {
		t.Fatalf("refreshes = %d, want 1 (for later calls)", n)
	}
}

func TestE2EWaiterDeadline(t *testing.T) {
	e := startE2E(t, nil, nil, nil)
	ctx := testCtx(t)
	if err := e.ping(ctx); err != nil {
		t.Fatal(err)
	}
	e.srv.SetRefreshLatency(time.Hour) // ended by src.Close at cleanup
	e.srv.ForceExpire()

	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	begin := time.Now()
	err := e.ping(short)
	wantCode(t, err, codes.DeadlineExceeded)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("errors.Is(err, context.DeadlineExceeded) = false: %v", err)
	}
	if d := time.Since(begin); d > 5*time.Second { // only a hang breaks this
		t.Fatalf("returned after %v", d)
	}
}

func TestE2EInsecureConnection(t *testing.T) {
	e := startE2E(t, nil, []testserver.StartOption{}, nil) // plain TCP
	err := e.ping(testCtx(t))
	wantCode(t, err, codes.Unauthenticated)
	if !errors.Is(err, interceptor.ErrInsecureTransport) {
		t.Fatalf("errors.Is(err, ErrInsecureTransport) = false: %v", err)
	}
	c := e.srv.Counters()
	if c.RequestsWithToken != 0 {
		t.Fatalf("%d requests carried a token", c.RequestsWithToken)
	}
	if c.RPCs[echoMethod] != 0 {
		t.Fatalf("Echo reached the server %d times", c.RPCs[echoMethod])
	}
	if c.RefreshesOK != 0 {
		t.Fatalf("refreshes = %d, want 0", c.RefreshesOK)
	}
}
