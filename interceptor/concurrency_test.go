package interceptor_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/testing/testpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	grpcstatus "google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// 500 unary calls and 50 streams of every kind across a forced expiry:
// no call fails and the Refresher runs exactly once.
func TestConcurrentCallsAcrossExpiry(t *testing.T) {
	srv, creds := startServer(t, false)
	r := &rotatingRefresher{srv: srv}
	// No rate limit: sharing alone must hold the count at one.
	src := newSource(t, r, tokensource.WithMinRefreshInterval(0))
	client := dial(t, srv, creds, dialOpts(src)...)
	ctx := testCtx(t)

	const (
		unaryBefore = 100 // run before the expiry
		unaryAfter  = 400
		streams     = 50 // of each kind
	)
	var failed atomic.Int64
	fail := func(format string, args ...any) {
		failed.Add(1)
		t.Errorf(format, args...)
	}
	unary := func(i int) {
		v := fmt.Sprint(i)
		resp, err := client.Ping(ctx, &testpb.PingRequest{Value: v})
		if err != nil {
			fail("Ping %d: %v", i, err)
		} else if resp.GetValue() != v {
			fail("Ping %d: got %q", i, resp.GetValue())
		}
	}

	var wg sync.WaitGroup
	for i := range unaryBefore {
		wg.Go(func() { unary(i) })
	}
	wg.Wait()

	expire(srv)
	start := make(chan struct{})
	for i := range unaryAfter {
		wg.Go(func() { <-start; unary(unaryBefore + i) })
	}
	for i := range streams {
		wg.Go(func() {
			<-start
			if err := serverStream(ctx, client); err != nil {
				fail("server stream %d: %v", i, err)
			}
		})
		wg.Go(func() {
			<-start
			if err := clientStream(ctx, client, i); err != nil {
				fail("client stream %d: %v", i, err)
			}
		})
		wg.Go(func() {
			<-start
			if err := bidiStream(ctx, client, i); err != nil {
				fail("bidi stream %d: %v", i, err)
			}
		})
	}
	close(start)
	wg.Wait()

	if n := failed.Load(); n != 0 {
		t.Fatalf("%d calls failed", n)
	}
	if n := r.n.Load(); n != 2 {
		t.Fatalf("Refresher calls = %d, want 2 (initial + 1 for the expiry)", n)
	}
	if srv.rejections.Load() == 0 {
		t.Fatal("no call was rejected: the expiry was not exercised")
	}
	t.Logf("server rejections: %d", srv.rejections.Load())
}

func serverStream(ctx context.Context, client testpb.TestServiceClient) error {
	stream, err := client.PingList(ctx, &testpb.PingListRequest{Value: "s"})
	if err != nil {
		return err
	}
	for n := 0; ; n++ {
		resp, err := stream.Recv()
		if err == io.EOF {
			if n != testpb.ListResponseCount {
				return fmt.Errorf("%d messages, want %d", n, testpb.ListResponseCount)
			}
			return nil
		}
		if err != nil {
			return err
		}
		if resp.GetCounter() != int32(n) {
			return fmt.Errorf("message %d has counter %d", n, resp.GetCounter())
		}
	}
}

func clientStream(ctx context.Context, client testpb.TestServiceClient, i int) error {
	stream, err := client.PingClientStream(ctx)
	if err != nil {
		return err
	}
	for j := range 3 {
		if err := stream.Send(&testpb.PingClientStreamRequest{Value: fmt.Sprint(i, j)}); err != nil {
			return fmt.Errorf("Send: %w", err)
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return err
	}
	if resp.GetCounter() != 3 {
		return fmt.Errorf("server counted %d messages, want 3", resp.GetCounter())
	}
	return nil
}

func bidiStream(ctx context.Context, client testpb.TestServiceClient, i int) error {
	stream, err := client.PingStream(ctx)
	if err != nil {
		return err
	}
	want := values(fmt.Sprintf("%d-", i), 3)
	var got []string
	for _, v := range want {
		if err := stream.Send(&testpb.PingStreamRequest{Value: v}); err != nil {
			return fmt.Errorf("Send: %w", err)
		}
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		got = append(got, resp.GetValue())
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

// A Refresher that makes RPCs through the very connection it refreshes
// for: its calls pass through untouched, so there is no deadlock and no
// recursion.
func TestRefresherOverSameConnection(t *testing.T) {
	srv, creds := startServer(t, false)
	var client testpb.TestServiceClient
	var refresherCalls atomic.Int64
	src := tokensource.New(tokensource.RefresherFunc(func(ctx context.Context, _ *tokensource.Token) (*tokensource.Token, error) {
		n := refresherCalls.Add(1)
		// The refresh context keeps the values of the call that started
		// it, outgoing metadata included; tag the refresher's own calls.
		ctx = metadata.NewOutgoingContext(ctx, metadata.Pairs(mdTestID, "refresher"))
		// PingEmpty plays the auth service's Refresh: no token needed.
		if _, err := client.PingEmpty(ctx, &testpb.PingEmptyRequest{}); err != nil {
			return nil, err
		}
		// A call that does need a token fails plainly: no wait for the
		// refresh in progress, no refresh of its own.
		_, err := client.Ping(ctx, &testpb.PingRequest{})
		if grpcstatus.Code(err) != codes.Unauthenticated {
			return nil, fmt.Errorf("protected call from the refresher: %v, want Unauthenticated", err)
		}
		tok := &tokensource.Token{AccessToken: fmt.Sprintf("tok-%d", n)}
		srv.accept(tok.AccessToken)
		return tok, nil
	}))
	t.Cleanup(func() { _ = src.Close() })
	client = dial(t, srv, creds, dialOpts(src)...)

	// No initial token: the first call makes the source refresh.
	if _, err := client.Ping(withID(testCtx(t), t.Name()), &testpb.PingRequest{}); err != nil {
		t.Fatal(err)
	}
	expire(srv)
	if _, err := client.Ping(withID(testCtx(t), t.Name()), &testpb.PingRequest{}); err != nil {
		t.Fatal(err)
	}
	if n := refresherCalls.Load(); n != 2 {
		t.Fatalf("Refresher calls = %d, want 2", n)
	}
	for _, c := range srv.allCalls() {
		if c.testID == "refresher" && len(c.auth) != 0 {
			t.Fatalf("the refresher's %s carried a token", c.method)
		}
	}
	if n := len(srv.callsFor("refresher", methodPing)); n != 2 {
		t.Fatalf("refresher's Ping attempts = %d, want 2 (one per refresh, no retry)", n)
	}
}

// A caller waiting for a refresh gives up at its own deadline, promptly,
// with DeadlineExceeded; the refresh carries on for the others.
func TestWaiterDeadline(t *testing.T) {
	srv, creds := startServer(t, false)
	r := &rotatingRefresher{srv: srv, block: make(chan struct{})}
	src := tokensource.New(r) // no token yet: every call waits for the refresh
	t.Cleanup(func() { _ = src.Close() })
	client := dial(t, srv, creds, dialOpts(src)...)

	patient := make(chan error, 1)
	go func() {
		_, err := client.Ping(withID(testCtx(t), t.Name()), &testpb.PingRequest{})
		patient <- err
	}()

	for name, call := range map[string]func(context.Context) error{
		"unary": func(ctx context.Context) error {
			_, err := client.Ping(ctx, &testpb.PingRequest{})
			return err
		},
		"stream": func(ctx context.Context) error {
			_, err := client.PingStream(ctx)
			return err
		},
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			begin := time.Now()
			err := call(ctx)
			wantCode(t, err, codes.DeadlineExceeded)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("errors.Is(err, context.DeadlineExceeded) = false: %v", err)
			}
			// A generous bound that only a hang would break.
			if d := time.Since(begin); d > 5*time.Second {
				t.Errorf("returned after %v", d)
			}
		})
	}
	t.Run("cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			_, err := client.Ping(ctx, &testpb.PingRequest{})
			done <- err
		}()
		cancel()
		err := <-done
		wantCode(t, err, codes.Canceled)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("errors.Is(err, context.Canceled) = false: %v", err)
		}
	})

	close(r.block)
	if err := <-patient; err != nil {
		t.Fatalf("the patient caller failed: %v", err)
	}
	if n := r.n.Load(); n != 1 {
		t.Fatalf("Refresher calls = %d, want 1", n)
	}
}

// A refresh runs on a context that keeps the values of the call that
// started it, outgoing metadata included. An authorization header the
// caller put there (and the interceptor replaced for the call itself) must
// not ride along on the Refresher's own RPCs; a header the Refresher sets
// itself must arrive as set.
func TestRefresherCallsDoNotInheritCallerHeader(t *testing.T) {
	srv, creds := startServer(t, false)
	var client testpb.TestServiceClient
	var n atomic.Int64
	src := tokensource.New(tokensource.RefresherFunc(func(ctx context.Context, _ *tokensource.Token) (*tokensource.Token, error) {
		// Appended, so the inherited metadata stays as it is.
		plain := metadata.AppendToOutgoingContext(ctx, "x-from", "refresher-plain")
		if _, err := client.PingEmpty(plain, &testpb.PingEmptyRequest{}); err != nil {
			return nil, err
		}
		own := metadata.AppendToOutgoingContext(ctx, "x-from", "refresher-own", "authorization", "Basic client")
		if _, err := client.PingEmpty(own, &testpb.PingEmptyRequest{}); err != nil {
			return nil, err
		}
		tok := &tokensource.Token{AccessToken: fmt.Sprintf("tok-%d", n.Add(1))}
		srv.accept(tok.AccessToken)
		return tok, nil
	}), tokensource.WithMinRefreshInterval(0))
	t.Cleanup(func() { _ = src.Close() })
	client = dial(t, srv, creds, dialOpts(src)...)

	callerCtx := func() context.Context {
		return metadata.AppendToOutgoingContext(withID(testCtx(t), t.Name()), "authorization", "Bearer caller-set")
	}
	// The first call starts the initial refresh (Token).
	if _, err := client.Ping(callerCtx(), &testpb.PingRequest{}); err != nil {
		t.Fatal(err)
	}
	// A rejected call starts a forced refresh (Refresh).
	expire(srv)
	if _, err := client.Ping(callerCtx(), &testpb.PingRequest{}); err != nil {
		t.Fatal(err)
	}
	// A rejected stream is reopened after a forced refresh.
	expire(srv)
	if err := serverStream(callerCtx(), client); err != nil {
		t.Fatal(err)
	}
	if got := n.Load(); got != 3 {
		t.Fatalf("Refresher calls = %d, want 3", got)
	}

	var plain, own int
	for _, c := range srv.allCalls() {
		switch from := c.md.Get("x-from"); {
		case len(from) == 0 && c.testID == t.Name():
			// The caller's own attempts carry the source's token only.
			if len(c.auth) != 1 || !strings.HasPrefix(c.auth[0], "Bearer tok-") {
				t.Errorf("the caller's %s carried authorization %q, want one source token", c.method, c.auth)
			}
		case len(from) == 1 && from[0] == "refresher-plain":
			plain++
			if len(c.auth) != 0 {
				t.Errorf("the Refresher's call inherited authorization %q from the caller", c.auth)
			}
		case len(from) == 1 && from[0] == "refresher-own":
			own++
			if len(c.auth) != 1 || c.auth[0] != "Basic client" {
				t.Errorf("the Refresher's own header arrived as %q, want [\"Basic client\"]", c.auth)
			}
		}
	}
	if plain != 3 || own != 3 {
		t.Fatalf("saw %d plain and %d own Refresher calls, want 3 each", plain, own)
	}
}
