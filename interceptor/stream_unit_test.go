package interceptor_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/testing/testpb"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// These tests drive the stream interceptor with scripted streams, to reach
// each way a rejection can surface (RecvMsg, SendMsg's io.EOF, Header,
// stream creation) deterministically.

var errRejected = status.Error(codes.Unauthenticated, "token rejected")

// tooLarge is a message value the fake stream refuses as too large.
const tooLarge = "too large"

// fakeStream is a scripted grpc.ClientStream.
type fakeStream struct {
	ctx    context.Context
	token  string      // the authorization header it was opened with
	header metadata.MD // nil: Header waits for the end and returns (nil, nil), like a trailers-only response
	dead   chan struct{}
	steps  chan step // what RecvMsg returns, in order; io.EOF once empty and dead
	// receiving gets a value each time RecvMsg starts waiting for a step.
	receiving chan struct{}
	// stalled, if set, makes SendMsg block (a server that stopped reading:
	// flow control) until the stream ends or its context is done.
	stalled bool

	mu        sync.Mutex
	sent      []string
	closeSent bool
	progress  chan struct{} // closed and replaced on every SendMsg and CloseSend
}

type step struct {
	value     string
	err       error
	waitClose bool // the server answers only after the client's CloseSend
}

func newFakeStream(ctx context.Context, header metadata.MD, steps ...step) *fakeStream {
	f := &fakeStream{ctx: ctx, header: header, dead: make(chan struct{}), steps: make(chan step, 16),
		receiving: make(chan struct{}, 16), progress: make(chan struct{})}
	if v := outgoing(ctx).Get("authorization"); len(v) == 1 {
		f.token = v[0]
	}
	for _, s := range steps {
		f.push(s)
	}
	return f
}

func outgoing(ctx context.Context) metadata.MD {
	md, _ := metadata.FromOutgoingContext(ctx)
	return md
}

// push scripts the next RecvMsg result.
func (f *fakeStream) push(s step) { f.steps <- s }

// kill scripts the stream's final status and ends it now, as a server's
// rejection does: SendMsg returns io.EOF and Header returns (nil, nil).
func (f *fakeStream) kill(err error) {
	f.push(step{err: err})
	f.end()
}

func (f *fakeStream) end() {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.dead:
	default:
		close(f.dead)
	}
}

func (f *fakeStream) Header() (metadata.MD, error) {
	if f.header != nil {
		return f.header, nil
	}
	<-f.dead
	return nil, nil
}

func (f *fakeStream) Trailer() metadata.MD     { return metadata.Pairs("token", f.token) }
func (f *fakeStream) Context() context.Context { return f.ctx }
func (f *fakeStream) sentValues() ([]string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.sent), f.closeSent
}

func (f *fakeStream) SendMsg(m any) error {
	if f.stalled {
		select {
		case <-f.dead:
		case <-f.ctx.Done():
		}
	}
	select {
	case <-f.dead:
		return io.EOF
	case <-f.ctx.Done():
		return io.EOF // as grpc-go reports a cancelled stream to a sender
	default:
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	v := m.(interface{ GetValue() string }).GetValue()
	switch {
	case f.closeSent: // as grpc-go does
		return status.Error(codes.Internal, "SendMsg called after CloseSend")
	case v == tooLarge: // as grpc-go does, after aborting the stream
		return status.Error(codes.ResourceExhausted, "message too large")
	}
	f.sent = append(f.sent, v)
	close(f.progress)
	f.progress = make(chan struct{})
	return nil
}

func (f *fakeStream) CloseSend() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closeSent = true
	close(f.progress)
	f.progress = make(chan struct{})
	return nil
}

// waitClosed waits until the client has called CloseSend.
func (f *fakeStream) waitClosed() error {
	for {
		f.mu.Lock()
		closed, progress := f.closeSent, f.progress
		f.mu.Unlock()
		if closed {
			return nil
		}
		select {
		case <-progress:
		case <-f.ctx.Done():
			return status.FromContextError(f.ctx.Err()).Err()
		}
	}
}

func (f *fakeStream) RecvMsg(m any) error {
	f.receiving <- struct{}{}
	var s step
	select {
	case s = <-f.steps:
	case <-f.ctx.Done():
		return status.FromContextError(f.ctx.Err()).Err()
	}
	if s.waitClose {
		if err := f.waitClosed(); err != nil {
			return err
		}
	}
	if s.err != nil {
		f.steps <- s // an ended stream keeps reporting its status
		f.end()
		return s.err
	}
	// Encode and decode, as a codec would, so any proto.Message works.
	b, err := proto.Marshal(&testpb.PingStreamResponse{Value: s.value})
	if err != nil {
		return err
	}
	return proto.Unmarshal(b, m.(proto.Message))
}

// harness opens streams through the stream interceptor with a scripted
// streamer: attempt i returns streams[i] (or errs[i] if set).
type harness struct {
	t       *testing.T
	src     *fakeSource
	mu      sync.Mutex
	opened  []*fakeStream
	scripts []func(ctx context.Context) (*fakeStream, error)
}

func newHarness(t *testing.T) *harness {
	n := 0
	src := &fakeSource{cur: &tokensource.Token{AccessToken: "tok-0"}}
	src.next = func() (*tokensource.Token, error) {
		n++
		return &tokensource.Token{AccessToken: fmt.Sprint("tok-", n)}, nil
	}
	return &harness{t: t, src: src}
}

// then scripts the next attempt.
func (h *harness) then(header metadata.MD, steps ...step) *harness {
	h.scripts = append(h.scripts, func(ctx context.Context) (*fakeStream, error) {
		return newFakeStream(ctx, header, steps...), nil
	})
	return h
}

func (h *harness) thenFail(err error) *harness {
	h.scripts = append(h.scripts, func(context.Context) (*fakeStream, error) { return nil, err })
	return h
}

func (h *harness) streamer(ctx context.Context, _ *grpc.StreamDesc, _ *grpc.ClientConn, _ string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	i := len(h.opened)
	if i >= len(h.scripts) {
		h.t.Errorf("attempt %d was not scripted", i)
		return nil, status.Error(codes.Internal, "unscripted attempt")
	}
	f, err := h.scripts[i](ctx)
	h.opened = append(h.opened, f)
	if err != nil {
		return nil, err
	}
	return f, nil
}

func (h *harness) attempt(i int) *fakeStream {
	h.mu.Lock()
	defer h.mu.Unlock()
	if i >= len(h.opened) {
		h.t.Fatalf("attempt %d was never opened (%d were)", i, len(h.opened))
	}
	return h.opened[i]
}

func (h *harness) attempts() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.opened)
}

func (h *harness) open(opts ...interceptor.Option) grpc.ClientStream {
	h.t.Helper()
	si := interceptor.StreamClientInterceptor(h.src, append([]interceptor.Option{interceptor.AllowInsecure()}, opts...)...)
	desc := &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}
	cs, err := si(testCtx(h.t), desc, nil, methodStream, h.streamer)
	if err != nil {
		h.t.Fatalf("open: %v", err)
	}
	return cs
}

func send(t *testing.T, cs grpc.ClientStream, vs ...string) {
	t.Helper()
	for _, v := range vs {
		if err := cs.SendMsg(&testpb.PingStreamRequest{Value: v}); err != nil {
			t.Fatalf("SendMsg(%s) = %v", v, err)
		}
	}
}

func recv(t *testing.T, cs grpc.ClientStream) (string, error) {
	t.Helper()
	var resp testpb.PingStreamResponse
	err := cs.RecvMsg(&resp)
	return resp.GetValue(), err
}

func wantRecv(t *testing.T, cs grpc.ClientStream, want string) {
	t.Helper()
	got, err := recv(t, cs)
	if err != nil || got != want {
		t.Fatalf("RecvMsg = %q, %v; want %q", got, err, want)
	}
}

func wantSent(t *testing.T, f *fakeStream, want []string, closed bool) {
	t.Helper()
	got, c := f.sentValues()
	if !slices.Equal(got, want) || c != closed {
		t.Fatalf("stream received %q (CloseSend %v), want %q (CloseSend %v)", got, c, want, closed)
	}
}

func wantToken(t *testing.T, f *fakeStream, want string) {
	t.Helper()
	if f.token != "Bearer "+want {
		t.Fatalf("stream opened with %q, want Bearer %s", f.token, want)
	}
}

func TestStreamRejectedOnRecv(t *testing.T) {
	h := newHarness(t).
		then(nil, step{err: errRejected}).
		then(metadata.Pairs("k", "v"), step{value: "r1", waitClose: true}, step{err: io.EOF})
	cs := h.open()
	send(t, cs, "a", "b")
	if err := cs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	wantRecv(t, cs, "r1")
	if _, err := recv(t, cs); err != io.EOF {
		t.Fatalf("RecvMsg = %v, want io.EOF", err)
	}
	wantToken(t, h.attempt(0), "tok-0")
	wantToken(t, h.attempt(1), "tok-1")
	wantSent(t, h.attempt(1), []string{"a", "b"}, true)
	if md, err := cs.Header(); err != nil || md.Get("k")[0] != "v" {
		t.Fatalf("Header = %v, %v; want the new stream's", md, err)
	}
	if got := cs.Trailer().Get("token"); len(got) != 1 || got[0] != "Bearer tok-1" {
		t.Fatalf("Trailer = %v, want the new stream's", got)
	}
	if got := outgoing(cs.Context()).Get("authorization"); len(got) != 1 || got[0] != "Bearer tok-1" {
		t.Fatalf("Context carries %q, want the new stream's context", got)
	}
	if n := h.src.refreshes.Load(); n != 1 {
		t.Fatalf("Refresh calls = %d, want 1", n)
	}
}

func TestStreamRejectedOnSend(t *testing.T) {
	h := newHarness(t).
		then(nil).
		then(nil, step{value: "r"})
	cs := h.open()
	send(t, cs, "a")
	// The server ends the stream: the next SendMsg sees io.EOF, asks for
	// the status, reopens, replays, and reports success.
	h.attempt(0).kill(errRejected)
	send(t, cs, "b")
	send(t, cs, "c")
	wantSent(t, h.attempt(0), []string{"a"}, false)
	wantSent(t, h.attempt(1), []string{"a", "b", "c"}, false)
	wantRecv(t, cs, "r")
	if n := h.attempts(); n != 2 {
		t.Fatalf("attempts = %d, want 2", n)
	}
}

func TestStreamRejectedOnHeader(t *testing.T) {
	h := newHarness(t).
		then(nil).
		then(metadata.Pairs("k", "new"), step{value: "r"})
	cs := h.open()
	send(t, cs, "a")
	h.attempt(0).kill(errRejected) // a trailers-only answer
	md, err := cs.Header()
	if err != nil || len(md.Get("k")) != 1 || md.Get("k")[0] != "new" {
		t.Fatalf("Header = %v, %v; want the reopened stream's", md, err)
	}
	send(t, cs, "b")
	wantSent(t, h.attempt(1), []string{"a", "b"}, false)
	wantRecv(t, cs, "r")
}

// A stream that ends successfully before any header (trailers-only OK) is
// left alone.
func TestStreamHeaderOnEmptySuccess(t *testing.T) {
	h := newHarness(t).then(nil)
	cs := h.open()
	h.attempt(0).kill(io.EOF)
	if md, err := cs.Header(); md != nil || err != nil {
		t.Fatalf("Header = %v, %v; want nil, nil", md, err)
	}
	if _, err := recv(t, cs); err != io.EOF {
		t.Fatalf("RecvMsg = %v, want io.EOF", err)
	}
	if n := h.attempts(); n != 1 {
		t.Fatalf("attempts = %d, want 1", n)
	}
	if n := h.src.refreshes.Load(); n != 0 {
		t.Fatalf("Refresh calls = %d, want 0", n)
	}
}

// A response that arrives before the status when SendMsg probes the ended
// stream is delivered, and the stream is then not replayed.
func TestStreamProbeFindsResponse(t *testing.T) {
	h := newHarness(t).then(nil)
	cs := h.open()
	send(t, cs, "a")
	h.attempt(0).push(step{value: "late"})
	h.attempt(0).kill(errRejected)
	if err := cs.SendMsg(&testpb.PingStreamRequest{Value: "b"}); err != io.EOF {
		t.Fatalf("SendMsg = %v, want io.EOF", err)
	}
	wantRecv(t, cs, "late")
	_, err := recv(t, cs)
	wantCode(t, err, codes.Unauthenticated)
	if n := h.attempts(); n != 1 {
		t.Fatalf("attempts = %d, want 1", n)
	}
	// Refreshed for the calls to come.
	if n := h.src.refreshes.Load(); n != 1 {
		t.Fatalf("Refresh calls = %d, want 1", n)
	}
	if err := cs.SendMsg(&testpb.PingStreamRequest{Value: "c"}); err != io.EOF {
		t.Fatalf("SendMsg after the end = %v, want io.EOF", err)
	}
}

func TestStreamReplayBoundCrossedLater(t *testing.T) {
	h := newHarness(t).then(nil)
	// "a0".."a2" encode to 4 bytes, counted as 9: two fit in 20, three do not.
	cs := h.open(interceptor.WithMaxReplayBytes(20))
	send(t, cs, "a0", "a1", "a2")
	h.attempt(0).push(step{err: errRejected})
	_, err := recv(t, cs)
	wantCode(t, err, codes.Unauthenticated)
	if n := h.attempts(); n != 1 {
		t.Fatalf("attempts = %d, want 1 (not replayable)", n)
	}
	if n := h.src.refreshes.Load(); n != 1 {
		t.Fatalf("Refresh calls = %d, want 1 (for later calls)", n)
	}
}

func TestStreamReplayUsesClones(t *testing.T) {
	h := newHarness(t).then(nil, step{err: errRejected}).then(nil, step{value: "r", waitClose: true})
	cs := h.open()
	msg := &testpb.PingStreamRequest{Value: "original"}
	if err := cs.SendMsg(msg); err != nil {
		t.Fatal(err)
	}
	msg.Value = "mutated"
	if err := cs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	wantRecv(t, cs, "r")
	wantSent(t, h.attempt(1), []string{"original"}, true)
}

func TestStreamRejectedAtCreation(t *testing.T) {
	h := newHarness(t).
		thenFail(errRejected).
		then(nil, step{err: errRejected})
	cs := h.open()
	wantToken(t, h.attempt(1), "tok-1")
	send(t, cs, "a")
	// The retry is used up: a second rejection is returned, with no
	// further refresh (as for a unary call whose retry fails).
	_, err := recv(t, cs)
	wantCode(t, err, codes.Unauthenticated)
	if n := h.attempts(); n != 2 {
		t.Fatalf("attempts = %d, want 2", n)
	}
	if n := h.src.refreshes.Load(); n != 1 {
		t.Fatalf("Refresh calls = %d, want 1", n)
	}
}

func TestStreamCreationErrorNotRejection(t *testing.T) {
	h := newHarness(t).thenFail(status.Error(codes.Unavailable, "down"))
	si := interceptor.StreamClientInterceptor(h.src, interceptor.AllowInsecure())
	_, err := si(testCtx(t), &grpc.StreamDesc{ServerStreams: true}, nil, methodPingList, h.streamer)
	wantCode(t, err, codes.Unavailable)
	if n := h.src.refreshes.Load(); n != 0 {
		t.Fatalf("Refresh calls = %d, want 0", n)
	}
}

// After a response, a rejection ends the stream but refreshes the source,
// also on a stream that was already retried once (its new token may since
// have expired).
func TestStreamRejectedAfterResponse(t *testing.T) {
	h := newHarness(t).
		then(nil, step{err: errRejected}).
		then(nil, step{value: "r"}, step{err: errRejected})
	cs := h.open()
	send(t, cs, "a")
	wantRecv(t, cs, "r")
	_, err := recv(t, cs)
	wantCode(t, err, codes.Unauthenticated)
	if n := h.attempts(); n != 2 {
		t.Fatalf("attempts = %d, want 2", n)
	}
	if n := h.src.refreshes.Load(); n != 2 {
		t.Fatalf("Refresh calls = %d, want 2 (retry + for later calls)", n)
	}
	// RecvMsg keeps returning the same error.
	_, err2 := recv(t, cs)
	if err2 != err {
		t.Fatalf("second RecvMsg = %v, want %v", err2, err)
	}
}

func TestStreamSourceHasNothingNewer(t *testing.T) {
	h := newHarness(t).then(nil, step{err: errRejected})
	h.src.next = nil // Refresh returns the current token
	cs := h.open()
	_, err := recv(t, cs)
	if !errors.Is(err, errRejected) || status.Code(err) != status.Code(errRejected) {
		t.Fatalf("RecvMsg = %v, want the server's rejection", err)
	}
	if n := h.attempts(); n != 1 {
		t.Fatalf("attempts = %d, want 1", n)
	}
}

func TestStreamRefreshFails(t *testing.T) {
	h := newHarness(t).then(nil, step{err: errRejected})
	h.src.next = func() (*tokensource.Token, error) {
		return nil, fmt.Errorf("tokensource: %w", tokensource.ErrReauthRequired)
	}
	cs := h.open()
	send(t, cs, "a")
	_, err := recv(t, cs)
	wantCode(t, err, codes.Unauthenticated)
	if !errors.Is(err, tokensource.ErrReauthRequired) {
		t.Fatalf("errors.Is(err, ErrReauthRequired) = false: %v", err)
	}
	if err := cs.SendMsg(&testpb.PingStreamRequest{Value: "b"}); err != io.EOF {
		t.Fatalf("SendMsg after the failure = %v, want io.EOF", err)
	}
}

// A sender and a receiver run concurrently while the stream is reopened:
// the new stream gets every message exactly once, in order.
func TestStreamConcurrentReopen(t *testing.T) {
	for range 20 {
		h := newHarness(t).then(nil).then(nil, step{value: "done", waitClose: true})
		cs := h.open()
		want := values("m", 200)
		sent := make(chan error, 1)
		go func() {
			for i, v := range want {
				if i == 50 {
					h.attempt(0).kill(errRejected)
				}
				if err := cs.SendMsg(&testpb.PingStreamRequest{Value: v}); err != nil {
					sent <- err
					return
				}
			}
			sent <- cs.CloseSend()
		}()
		recvd := make(chan error, 1)
		go func() {
			_, err := recv(t, cs) // blocks on attempt 0, then attempt 1
			recvd <- err
		}()
		if err := <-sent; err != nil {
			t.Fatalf("send: %v", err)
		}
		if err := <-recvd; err != nil {
			t.Fatalf("recv: %v", err)
		}
		wantSent(t, h.attempt(1), want, true)
	}
}

// A sender waiting for a reopen gives up when the caller's context ends.
func TestStreamSendWaitHonoursContext(t *testing.T) {
	entered, block := make(chan struct{}), make(chan struct{})
	h := newHarness(t).then(nil, step{err: errRejected}).then(nil)
	h.src.next = func() (*tokensource.Token, error) {
		close(entered)
		<-block
		return &tokensource.Token{AccessToken: "tok-1"}, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	si := interceptor.StreamClientInterceptor(h.src, interceptor.AllowInsecure())
	cs, err := si(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, nil, methodStream, h.streamer)
	if err != nil {
		t.Fatal(err)
	}
	recvd := make(chan error, 1)
	go func() { _, err := recv(t, cs); recvd <- err }() // starts the reopen, blocks in Refresh
	<-entered
	cancel()
	err = cs.SendMsg(&testpb.PingStreamRequest{Value: "a"})
	wantCode(t, err, codes.Canceled)
	close(block)
	wantCode(t, <-recvd, codes.Canceled)
}

func TestStreamSendAfterCloseSendNotReplayed(t *testing.T) {
	h := newHarness(t).
		then(nil, step{err: errRejected}).
		then(nil, step{value: "r", waitClose: true})
	cs := h.open()
	send(t, cs, "a")
	if err := cs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	err := cs.SendMsg(&testpb.PingStreamRequest{Value: "b"})
	wantCode(t, err, codes.Internal)
	wantRecv(t, cs, "r")
	wantSent(t, h.attempt(1), []string{"a"}, true)
}

func TestStreamClientAbortEndsReplay(t *testing.T) {
	h := newHarness(t).then(nil, step{err: errRejected})
	cs := h.open()
	send(t, cs, "a")
	err := cs.SendMsg(&testpb.PingStreamRequest{Value: tooLarge})
	wantCode(t, err, codes.ResourceExhausted)
	_, err = recv(t, cs)
	wantCode(t, err, codes.Unauthenticated)
	if n := h.attempts(); n != 1 {
		t.Fatalf("attempts = %d, want 1 (a refused message is never replayed)", n)
	}
}

// A SendMsg that meets the end of the stream while a RecvMsg is under way
// reports success only if the message really is replayed. Here the receiver
// gets a response first, so the stream is not reopened: SendMsg must return
// io.EOF (as grpc-go does), not nil for a message that was dropped.
func TestStreamSendDuringRecvNotReplayed(t *testing.T) {
	synctest.Test(t, testStreamSendDuringRecvNotReplayed)
}

func testStreamSendDuringRecvNotReplayed(t *testing.T) {
	h := newHarness(t).then(nil)
	cs := h.open()
	send(t, cs, "a")
	f := h.attempt(0)
	received := make(chan string, 1)
	go func() {
		v, err := recv(t, cs)
		if err != nil {
			t.Errorf("RecvMsg = %v", err)
		}
		received <- v
	}()
	<-f.receiving // the receiver holds the stream's receive side
	f.end()       // the server ended the stream; its status is still to be read
	sent := make(chan error, 1)
	go func() { sent <- cs.SendMsg(&testpb.PingStreamRequest{Value: "b"}) }()
	synctest.Wait()          // SendMsg met the end of the stream while the receiver is busy
	f.push(step{value: "r"}) // a response arrives before the status
	if v := <-received; v != "r" {
		t.Fatalf("RecvMsg = %q, want r", v)
	}
	f.push(step{err: errRejected})
	if err := <-sent; err != io.EOF {
		t.Fatalf("SendMsg = %v, want io.EOF (the message was neither sent nor replayed)", err)
	}
	_, err := recv(t, cs)
	wantCode(t, err, codes.Unauthenticated)
	if n := h.attempts(); n != 1 {
		t.Fatalf("attempts = %d, want 1 (no reopen after a response)", n)
	}
}

// The same race when the receiver does reopen the stream: SendMsg reports
// success, and the message reaches the new stream exactly once, in order.
func TestStreamSendDuringRecvReplayed(t *testing.T) {
	synctest.Test(t, testStreamSendDuringRecvReplayed)
}

func testStreamSendDuringRecvReplayed(t *testing.T) {
	h := newHarness(t).then(nil).then(nil, step{value: "r", waitClose: true})
	cs := h.open()
	send(t, cs, "a")
	f := h.attempt(0)
	received := make(chan string, 1)
	go func() {
		v, err := recv(t, cs)
		if err != nil {
			t.Errorf("RecvMsg = %v", err)
		}
		received <- v
	}()
	<-f.receiving
	f.end()
	sent := make(chan error, 1)
	go func() { sent <- cs.SendMsg(&testpb.PingStreamRequest{Value: "b"}) }()
	synctest.Wait()
	f.push(step{err: errRejected})
	if err := <-sent; err != nil {
		t.Fatalf("SendMsg = %v, want nil (the message is replayed)", err)
	}
	send(t, cs, "c")
	if err := cs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if v := <-received; v != "r" {
		t.Fatalf("RecvMsg = %q, want r", v)
	}
	wantSent(t, h.attempt(1), []string{"a", "b", "c"}, true)
}

// jsonCodec stands for any codec other than protocol buffers; the fake
// streams never call it.
type jsonCodec struct{}

func (jsonCodec) Marshal(any) ([]byte, error) { return nil, errors.New("unused") }
func (jsonCodec) Unmarshal([]byte, any) error { return errors.New("unused") }
func (jsonCodec) Name() string                { return "json" }

// protoNamedCodec is a replacement protocol buffers codec (vtprotobuf's,
// say): same wire format.
type protoNamedCodec struct{ jsonCodec }

func (protoNamedCodec) Name() string { return "proto" }

// Replay relies on the protocol buffers wire format (a probe must be able to
// capture a response it was not asked for). With another codec the stream
// is not reopened: the rejection is returned as is and the source is
// refreshed for later calls.
func TestStreamReplayOnlyWithProtoCodec(t *testing.T) {
	for _, tc := range []struct {
		name     string
		opt      grpc.CallOption
		replayed bool
	}{
		{"default", nil, true},
		{"content subtype proto", grpc.CallContentSubtype("proto"), true},
		{"forced proto codec", grpc.ForceCodec(protoNamedCodec{}), true},
		{"content subtype json", grpc.CallContentSubtype("json"), false},
		{"forced json codec", grpc.ForceCodec(jsonCodec{}), false},
		{"forced codec wins over subtype", grpc.ForceCodec(jsonCodec{}), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t).
				then(nil, step{err: errRejected}).
				then(nil, step{value: "r", waitClose: true})
			si := interceptor.StreamClientInterceptor(h.src, interceptor.AllowInsecure())
			var opts []grpc.CallOption
			if tc.opt != nil {
				opts = append(opts, tc.opt)
			}
			if tc.name == "forced codec wins over subtype" {
				opts = append(opts, grpc.CallContentSubtype("proto"))
			}
			cs, err := si(testCtx(t), &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, nil, methodStream, h.streamer, opts...)
			if err != nil {
				t.Fatal(err)
			}
			send(t, cs, "a")
			if err := cs.CloseSend(); err != nil {
				t.Fatal(err)
			}
			v, err := recv(t, cs)
			if tc.replayed {
				if err != nil || v != "r" {
					t.Fatalf("RecvMsg = %q, %v; want the reopened stream's r", v, err)
				}
				wantSent(t, h.attempt(1), []string{"a"}, true)
				return
			}
			wantCode(t, err, codes.Unauthenticated)
			if n := h.attempts(); n != 1 {
				t.Fatalf("attempts = %d, want 1 (not replayable with this codec)", n)
			}
			if n := h.src.refreshes.Load(); n != 1 {
				t.Fatalf("Refresh calls = %d, want 1 (for later calls)", n)
			}
		})
	}
}

// Once the caller has seen the server's header, or holds the stream's
// context, a rejection is returned as is (grpc-go's own retries stop at the
// same points) and the source is refreshed for later calls.
func TestStreamNotReopenedAfterHeaderOrContext(t *testing.T) {
	for name, observe := range map[string]func(t *testing.T, cs grpc.ClientStream){
		"Header": func(t *testing.T, cs grpc.ClientStream) {
			if md, err := cs.Header(); err != nil || len(md.Get("k")) != 1 {
				t.Fatalf("Header = %v, %v", md, err)
			}
		},
		"Context": func(t *testing.T, cs grpc.ClientStream) {
			if cs.Context() == nil {
				t.Fatal("Context = nil")
			}
		},
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t).then(metadata.Pairs("k", "v"))
			cs := h.open()
			send(t, cs, "a")
			observe(t, cs)
			h.attempt(0).push(step{err: errRejected})
			_, err := recv(t, cs)
			wantCode(t, err, codes.Unauthenticated)
			if n := h.attempts(); n != 1 {
				t.Fatalf("attempts = %d, want 1", n)
			}
			if n := h.src.refreshes.Load(); n != 1 {
				t.Fatalf("Refresh calls = %d, want 1 (for later calls)", n)
			}
		})
	}
}

// A caller that abandons a stream by cancelling its context leaves nothing
// behind: not the receiver, not a sender waiting for the replay, not the
// replay itself, stuck on a reopened stream whose server stopped reading.
func TestStreamAbandonedDuringReplay(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	h := newHarness(t).then(nil, step{err: errRejected})
	reopened := make(chan *fakeStream, 1)
	h.scripts = append(h.scripts, func(ctx context.Context) (*fakeStream, error) {
		f := newFakeStream(ctx, nil)
		f.stalled = true
		reopened <- f
		return f, nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	si := interceptor.StreamClientInterceptor(h.src, interceptor.AllowInsecure())
	cs, err := si(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, nil, methodStream, h.streamer)
	if err != nil {
		t.Fatal(err)
	}
	send(t, cs, "a", "b")
	recvd := make(chan error, 1)
	go func() { _, err := recv(t, cs); recvd <- err }()
	<-(<-reopened).receiving // the receiver reopened the stream and waits on it; the replay stalls
	sent := make(chan error, 1)
	go func() { sent <- cs.SendMsg(&testpb.PingStreamRequest{Value: "c"}) }() // waits for the replay
	cancel()
	wantCode(t, <-recvd, codes.Canceled)
	if err := <-sent; err == nil {
		t.Fatal("SendMsg on an abandoned stream succeeded")
	}
}
