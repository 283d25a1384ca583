package interceptor_test

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/testing/testpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

func values(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return out
}

// checkReplayed asserts that exactly one authenticated stream of test id
// reached the handler and that it received want, in order, then CloseSend.
func checkReplayed(t *testing.T, srv *testServer, id string, want []string) {
	t.Helper()
	streams := srv.streamsFor(id)
	if len(streams) != 1 {
		t.Fatalf("%d authenticated streams reached the handler, want 1", len(streams))
	}
	got, eof := streams[0].snapshot()
	if !slices.Equal(got, want) {
		t.Fatalf("handler received %q, want %q", got, want)
	}
	if !eof {
		t.Fatal("handler did not see CloseSend")
	}
}

// expire makes the server reject the client's current token, as when it
// expires early or is revoked.
func expire(srv *testServer) { srv.accept("nobody-has-this-token") }

func TestClientStreamReplayedAfterRejection(t *testing.T) {
	srv, creds := startServer(t, false)
	r := &rotatingRefresher{srv: srv}
	src := newSource(t, r)
	client := dial(t, srv, creds, dialOpts(src)...)
	expire(srv)
	ctx := withID(testCtx(t), t.Name())

	stream, err := client.PingClientStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := values("m", 20)
	for _, v := range want {
		msg := &testpb.PingClientStreamRequest{Value: v}
		if err := stream.Send(msg); err != nil {
			t.Fatalf("Send: %v", err)
		}
		msg.Value = "mutated after Send" // must not change what is replayed
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetCounter() != int32(len(want)) {
		t.Fatalf("server counted %d messages, want %d", resp.GetCounter(), len(want))
	}
	checkReplayed(t, srv, t.Name(), want)
	if n := len(srv.callsFor(t.Name(), methodClient)); n != 2 {
		t.Fatalf("attempts = %d, want 2", n)
	}
	if n := r.n.Load(); n != 2 {
		t.Fatalf("Refresher calls = %d, want 2 (initial + 1)", n)
	}
}

// The server reads the whole stream and only then rejects the token (at
// the client's CloseSend): the stream is reopened and everything, CloseSend
// included, is replayed.
func TestClientStreamRejectedAfterReading(t *testing.T) {
	srv, creds := startServer(t, false)
	r := &rotatingRefresher{srv: srv}
	src := newSource(t, r)
	client := dial(t, srv, creds, dialOpts(src)...)
	ctx := metadata.AppendToOutgoingContext(withID(testCtx(t), t.Name()), mdRejectEOF, t.Name())

	stream, err := client.PingClientStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := values("m", 5)
	for _, v := range want {
		if err := stream.Send(&testpb.PingClientStreamRequest{Value: v}); err != nil {
			t.Fatalf("Send: %v", err)
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetCounter() != int32(len(want)) {
		t.Fatalf("server counted %d messages, want %d", resp.GetCounter(), len(want))
	}
	streams := srv.streamsFor(t.Name())
	if len(streams) != 2 {
		t.Fatalf("%d streams reached the handler, want 2", len(streams))
	}
	for i, s := range streams {
		got, eof := s.snapshot()
		if !slices.Equal(got, want) || !eof {
			t.Fatalf("stream %d received %q (CloseSend %v), want %q and CloseSend", i, got, eof, want)
		}
	}
	if n := r.n.Load(); n != 2 {
		t.Fatalf("Refresher calls = %d, want 2 (initial + 1)", n)
	}
}

func TestBidiReplayedAfterRejection(t *testing.T) {
	srv, creds := startServer(t, false)
	r := &rotatingRefresher{srv: srv}
	src := newSource(t, r, tokensource.WithMinRefreshInterval(0))
	client := dial(t, srv, creds, dialOpts(src)...)

	t.Run("send then receive", func(t *testing.T) {
		expire(srv)
		stream, err := client.PingStream(withID(testCtx(t), t.Name()))
		if err != nil {
			t.Fatal(err)
		}
		want := values("b", 5)
		for _, v := range want {
			if err := stream.Send(&testpb.PingStreamRequest{Value: v}); err != nil {
				t.Fatalf("Send: %v", err)
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
				t.Fatalf("Recv: %v", err)
			}
			got = append(got, resp.GetValue())
		}
		if !slices.Equal(got, want) {
			t.Fatalf("echoes = %q, want %q", got, want)
		}
		checkReplayed(t, srv, t.Name(), want)
	})

	t.Run("header first, concurrent send and receive", func(t *testing.T) {
		expire(srv)
		stream, err := client.PingStream(withID(testCtx(t), t.Name()))
		if err != nil {
			t.Fatal(err)
		}
		want := values("c", 50)
		if err := stream.Send(&testpb.PingStreamRequest{Value: want[0]}); err != nil {
			t.Fatal(err)
		}
		// The rejection is trailers-only: Header sees the stream end,
		// reopens it and returns the new stream's header.
		if _, err := stream.Header(); err != nil {
			t.Fatal(err)
		}
		sent := make(chan error, 1)
		go func() {
			defer close(sent)
			for _, v := range want[1:] {
				if err := stream.Send(&testpb.PingStreamRequest{Value: v}); err != nil {
					sent <- err
					return
				}
			}
			sent <- stream.CloseSend()
		}()
		var got []string
		for {
			resp, err := stream.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("Recv: %v", err)
			}
			got = append(got, resp.GetValue())
		}
		if err := <-sent; err != nil {
			t.Fatalf("Send: %v", err)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("echoes = %q, want %q", got, want)
		}
		checkReplayed(t, srv, t.Name(), want)
	})
	if n := r.n.Load(); n != 3 {
		t.Fatalf("Refresher calls = %d, want 3 (initial + 1 per subtest)", n)
	}
}

func TestServerStreamReplayedAfterRejection(t *testing.T) {
	srv, creds := startServer(t, false)
	r := &rotatingRefresher{srv: srv}
	src := newSource(t, r)
	client := dial(t, srv, creds, dialOpts(src)...)
	expire(srv)

	stream, err := client.PingList(withID(testCtx(t), t.Name()), &testpb.PingListRequest{Value: "L"})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		if resp.GetCounter() != int32(n) || resp.GetValue() != "L" {
			t.Fatalf("message %d = %v", n, resp)
		}
		n++
	}
	if n != testpb.ListResponseCount {
		t.Fatalf("received %d messages, want %d", n, testpb.ListResponseCount)
	}
	if n := len(srv.callsFor(t.Name(), methodPingList)); n != 2 {
		t.Fatalf("attempts = %d, want 2", n)
	}
}

// After the first response message, a rejection is returned as it is (the
// stream is not replayed, nothing is duplicated) and the source is still
// refreshed, so the next call succeeds without a rejection.
func TestServerStreamRejectedAfterFirstMessage(t *testing.T) {
	srv, creds := startServer(t, false)
	r := &rotatingRefresher{srv: srv}
	src := newSource(t, r)
	client := dial(t, srv, creds, dialOpts(src)...)
	ctx := metadata.AppendToOutgoingContext(withID(testCtx(t), t.Name()), mdFailAfter, "1")

	stream, err := client.PingList(ctx, &testpb.PingListRequest{Value: "L"})
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
		got = append(got, resp.GetCounter())
	}
	if !slices.Equal(got, []int32{0}) {
		t.Fatalf("received counters %v, want [0]", got)
	}
	if n := len(srv.callsFor(t.Name(), methodPingList)); n != 1 {
		t.Fatalf("attempts = %d, want 1 (no replay after a response)", n)
	}
	if n := r.n.Load(); n != 2 {
		t.Fatalf("Refresher calls = %d, want 2 (initial + refresh for later calls)", n)
	}
	rejections := srv.rejections.Load()
	if _, err := client.Ping(withID(testCtx(t), t.Name()), &testpb.PingRequest{}); err != nil {
		t.Fatal(err)
	}
	if n := srv.rejections.Load() - rejections; n != 0 {
		t.Fatalf("next call was rejected %d times, want 0", n)
	}
}

func TestReplayBoundExceeded(t *testing.T) {
	srv, creds := startServer(t, false)
	r := &rotatingRefresher{srv: srv}
	src := newSource(t, r)
	client := dial(t, srv, creds, dialOpts(src, interceptor.WithMaxReplayBytes(40))...)
	expire(srv)

	stream, err := client.PingClientStream(withID(testCtx(t), t.Name()))
	if err != nil {
		t.Fatal(err)
	}
	// The first message alone exceeds the bound, so whenever the rejection
	// arrives the stream is no longer replayable. (Crossing the bound
	// later is covered with a scripted stream in stream_unit_test.go.)
	for _, v := range []string{strings.Repeat("x", 40), "a", "b"} {
		if err := stream.Send(&testpb.PingClientStreamRequest{Value: v}); err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("Send: %v, want nil or io.EOF", err)
			}
			break
		}
	}
	_, err = stream.CloseAndRecv()
	wantCode(t, err, codes.Unauthenticated)
	if n := len(srv.callsFor(t.Name(), methodClient)); n != 1 {
		t.Fatalf("attempts = %d, want 1 (not replayable)", n)
	}
	if n := r.n.Load(); n != 2 {
		t.Fatalf("Refresher calls = %d, want 2 (initial + refresh for later calls)", n)
	}
	// The source was refreshed: the next stream goes through at once.
	rejections := srv.rejections.Load()
	stream, err = client.PingClientStream(withID(testCtx(t), t.Name()+"/next"))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&testpb.PingClientStreamRequest{Value: "x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.CloseAndRecv(); err != nil {
		t.Fatal(err)
	}
	if n := srv.rejections.Load() - rejections; n != 0 {
		t.Fatalf("next stream was rejected %d times, want 0", n)
	}
}

func TestReplayDisabled(t *testing.T) {
	srv, creds := startServer(t, false)
	src := newSource(t, &rotatingRefresher{srv: srv})
	client := dial(t, srv, creds, dialOpts(src, interceptor.WithMaxReplayBytes(0))...)
	expire(srv)

	stream, err := client.PingList(withID(testCtx(t), t.Name()), &testpb.PingListRequest{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	wantCode(t, err, codes.Unauthenticated)
	if n := len(srv.callsFor(t.Name(), methodPingList)); n != 1 {
		t.Fatalf("attempts = %d, want 1", n)
	}
}

// Errors never carry token text.
func TestErrorsCarryNoToken(t *testing.T) {
	srv, creds := startServer(t, false)
	const secret = "tok-very-secret"
	src := &fakeSource{cur: &tokensource.Token{AccessToken: secret}}
	client := dial(t, srv, creds, dialOpts(src)...)
	_, err := client.Ping(withID(testCtx(t), t.Name()), &testpb.PingRequest{})
	wantCode(t, err, codes.Unauthenticated)
	if strings.Contains(err.Error(), secret) || strings.Contains(fmt.Sprintf("%+v", err), secret) {
		t.Fatalf("error reveals the token: %v", err)
	}
}
