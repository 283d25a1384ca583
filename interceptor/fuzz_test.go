package interceptor_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// FuzzStreamReplay drives a bidirectional stream through the stream
// interceptor with a fuzzed interleaving of SendMsg, CloseSend, a concurrent
// receiver and concurrent Header calls, against a server (on bufconn) that
// rejects the stream's first attempt with Unauthenticated at a fuzzed point:
// after a number of received messages, or at the client's CloseSend, and
// either before answering anything (replayable) or after echoing what it got
// (not replayable). Whatever the interleaving, the server's accepted attempt
// must receive exactly the messages SendMsg accepted, once each and in order,
// the caller must receive exactly their echoes, and a rejection that cannot
// be replayed must reach the caller as Unauthenticated after the responses
// that preceded it, with nothing sent twice. Every rejection causes exactly
// one refresh of the token source.
func FuzzStreamReplay(f *testing.F) {
	// ops: one byte per step; see replayDrive. rejectAt < 0: no rejection.
	// mode bit 0: the rejecting attempt echoes each message at once (so a
	// rejection after a message is not replayable); bit 1: accepted
	// attempts answer only at CloseSend; bit 2: a replay bound of two
	// messages.
	f.Add([]byte{0, 0, 0, 3, 4}, int8(-1), uint8(0))
	f.Add([]byte{0, 0, 0, 3, 4}, int8(0), uint8(0))
	f.Add([]byte{0, 0, 0, 3, 4}, int8(2), uint8(0))
	f.Add([]byte{4, 0, 0, 0, 3}, int8(1), uint8(0))
	f.Add([]byte{4, 5, 0, 5, 0, 0, 3}, int8(9), uint8(2))
	f.Add([]byte{5, 0, 1, 2, 3, 4}, int8(3), uint8(0))
	f.Add([]byte{0, 0, 0, 0, 0, 4, 3}, int8(2), uint8(1))
	f.Add([]byte{4, 0, 0, 0, 3}, int8(0), uint8(1))
	f.Add([]byte{0, 0, 0, 0, 0, 3, 4}, int8(4), uint8(4))
	f.Add([]byte{0x40, 0x44, 0x40, 0x45, 0x43}, int8(1), uint8(6))

	h := newReplayHarness(f)
	f.Fuzz(func(t *testing.T, ops []byte, rejectAt int8, mode uint8) {
		h.run(t, ops, rejectAt, mode)
	})
}

// replayMaxOps bounds the steps of one input, to keep iterations fast.
const replayMaxOps = 32

// replaySmallBound is the replay bound for mode bit 2: two messages
// ("m0", "m1", … up to "m9" encode to 4 bytes, plus 5 for the frame).
const replaySmallBound = 2 * (4 + 5)

type replayHarness struct {
	srv       *replayServer
	refreshes atomic.Int64
	clients   [2]echov1.EchoServiceClient // default bound, small bound
	nextID    atomic.Int64
}

func newReplayHarness(f *testing.F) *replayHarness {
	h := &replayHarness{srv: &replayServer{calls: map[string]*replayCall{}}}
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	echov1.RegisterEchoServiceServer(gs, h.srv)
	served := make(chan struct{})
	go func() { defer close(served); _ = gs.Serve(lis) }()

	var n atomic.Int64
	src := tokensource.New(tokensource.RefresherFunc(func(context.Context, *tokensource.Token) (*tokensource.Token, error) {
		h.refreshes.Add(1)
		return &tokensource.Token{AccessToken: "tok-" + strconv.FormatInt(n.Add(1), 10)}, nil
	}),
		tokensource.WithInitialToken(&tokensource.Token{AccessToken: "tok-0"}),
		// Every input's rejection must be able to refresh.
		tokensource.WithMinRefreshInterval(0))

	var conns []*grpc.ClientConn
	for i, bound := range []int{interceptor.DefaultMaxReplayBytes, replaySmallBound} {
		conn, err := grpc.NewClient("passthrough:///bufconn",
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
			grpc.WithChainStreamInterceptor(interceptor.StreamClientInterceptor(src,
				interceptor.AllowInsecure(), interceptor.WithMaxReplayBytes(bound))))
		if err != nil {
			f.Fatal(err)
		}
		conns = append(conns, conn)
		h.clients[i] = echov1.NewEchoServiceClient(conn)
	}
	f.Cleanup(func() {
		for _, c := range conns {
			_ = c.Close()
		}
		_ = src.Close()
		gs.Stop()
		<-served
	})
	return h
}

// replayServer answers BidiStreamEcho as each input's replayCall says.
type replayServer struct {
	echov1.UnimplementedEchoServiceServer
	mu    sync.Mutex
	calls map[string]*replayCall // by the x-fuzz-id header
}

type replayCall struct {
	rejectAt  int  // the first attempt fails after this many messages (or at CloseSend); -1: never
	echoFirst bool // the first attempt echoes each message at once
	echoAtEnd bool // accepted attempts answer only after CloseSend
	attempts  []*replayAttempt
}

type replayAttempt struct {
	token    string
	received []string
	eof      bool
	echoed   int
	rejected bool
}

var errReplayRejected = status.Error(codes.Unauthenticated, "fuzz: token rejected")

func (s *replayServer) BidiStreamEcho(stream grpc.BidiStreamingServer[echov1.BidiStreamEchoRequest, echov1.BidiStreamEchoResponse]) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	s.mu.Lock()
	call := s.calls[first(md.Get("x-fuzz-id"))]
	if call == nil {
		s.mu.Unlock()
		return status.Error(codes.NotFound, "fuzz: unknown call")
	}
	a := &replayAttempt{token: first(md.Get("authorization"))}
	call.attempts = append(call.attempts, a)
	rejecting := len(call.attempts) == 1 && call.rejectAt >= 0
	echoNow := (rejecting && call.echoFirst) || (!rejecting && !call.echoAtEnd)
	s.mu.Unlock()

	reject := func() error {
		s.mu.Lock()
		a.rejected = true
		s.mu.Unlock()
		return errReplayRejected
	}
	echo := func(i int, m string) error {
		if err := stream.Send(&echov1.BidiStreamEchoResponse{Message: m, Index: int32(i)}); err != nil {
			return err
		}
		s.mu.Lock()
		a.echoed++
		s.mu.Unlock()
		return nil
	}
	for {
		s.mu.Lock()
		n := len(a.received)
		s.mu.Unlock()
		if rejecting && n == call.rejectAt {
			return reject()
		}
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			s.mu.Lock()
			a.eof = true
			got := slices.Clone(a.received)
			s.mu.Unlock()
			if rejecting {
				return reject()
			}
			if !echoNow {
				for i, m := range got {
					if err := echo(i, m); err != nil {
						return err
					}
				}
			}
			return nil
		}
		if err != nil {
			return err
		}
		s.mu.Lock()
		a.received = append(a.received, req.GetMessage())
		s.mu.Unlock()
		if echoNow {
			if err := echo(n, req.GetMessage()); err != nil {
				return err
			}
		}
	}
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// replayRun is what the client did and saw in one input.
type replayRun struct {
	sent         []string // messages SendMsg accepted, in order
	sendAttempts int
	sendEnded    bool // SendMsg returned io.EOF
	got          []string
	recvErr      error
}

func (h *replayHarness) run(t *testing.T, ops []byte, rejectAt int8, mode uint8) {
	id := strconv.FormatInt(h.nextID.Add(1), 10)
	call := &replayCall{rejectAt: int(rejectAt), echoFirst: mode&1 != 0, echoAtEnd: mode&2 != 0}
	if call.rejectAt < 0 {
		call.rejectAt = -1
	}
	small := mode&4 != 0
	h.srv.mu.Lock()
	h.srv.calls[id] = call
	h.srv.mu.Unlock()
	defer func() {
		h.srv.mu.Lock()
		delete(h.srv.calls, id)
		h.srv.mu.Unlock()
	}()
	client := h.clients[0]
	if small {
		client = h.clients[1]
	}
	refreshesBefore := h.refreshes.Load()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "x-fuzz-id", id)
	stream, err := client.BidiStreamEcho(ctx)
	if err != nil {
		t.Fatalf("opening the stream: %v", err)
	}
	run := h.drive(t, stream, ops)

	h.srv.mu.Lock()
	attempts := slices.Clone(call.attempts)
	h.srv.mu.Unlock()
	refreshes := h.refreshes.Load() - refreshesBefore
	describe := func() string {
		s := fmt.Sprintf("ops %v rejectAt %d mode %d: sent %q (attempts %d, io.EOF %v), received %q then %v; server attempts:",
			ops, rejectAt, mode, run.sent, run.sendAttempts, run.sendEnded, run.got, run.recvErr)
		for _, a := range attempts {
			s += fmt.Sprintf(" {token %q received %q eof %v echoed %d rejected %v}", a.token, a.received, a.eof, a.echoed, a.rejected)
		}
		return s + fmt.Sprintf("; refreshes %d", refreshes)
	}
	if len(attempts) == 0 || len(attempts) > 2 {
		t.Fatalf("%d attempts reached the server; %s", len(attempts), describe())
	}
	a0 := attempts[0]
	if !isPrefix(a0.received, run.sent) {
		t.Fatalf("the first attempt received what was never sent, or out of order; %s", describe())
	}
	wantRefreshes := int64(0)
	if call.rejectAt >= 0 {
		wantRefreshes = 1
	}
	if refreshes != wantRefreshes {
		t.Fatalf("%d refreshes, want %d; %s", refreshes, wantRefreshes, describe())
	}

	switch {
	case call.rejectAt < 0: // never rejected
		if len(attempts) != 1 || run.recvErr != io.EOF || run.sendEnded ||
			!slices.Equal(a0.received, run.sent) || !a0.eof || !slices.Equal(run.got, run.sent) {
			t.Fatalf("a stream that was not rejected did not carry every message once; %s", describe())
		}
	case !a0.rejected:
		t.Fatalf("the server did not reject the first attempt; %s", describe())
	case a0.echoed > 0: // rejected after responses: returned as is, not replayed
		if len(attempts) != 1 || status.Code(run.recvErr) != codes.Unauthenticated ||
			!slices.Equal(run.got, a0.received[:a0.echoed]) {
			t.Fatalf("a rejection after %d responses must reach the caller after them, without a replay; %s", a0.echoed, describe())
		}
	case len(attempts) == 2: // replayed
		a1 := attempts[1]
		if run.recvErr != io.EOF || run.sendEnded || !slices.Equal(a1.received, run.sent) || !a1.eof ||
			!slices.Equal(run.got, run.sent) || a1.token == a0.token || a1.rejected {
			t.Fatalf("the replayed stream did not carry every message once, in order, with a new token; %s", describe())
		}
	default: // rejected, not replayed
		if !small || run.sendAttempts <= 2 {
			t.Fatalf("a rejection before any response was not replayed; %s", describe())
		}
		if status.Code(run.recvErr) != codes.Unauthenticated || len(run.got) != 0 {
			t.Fatalf("a rejection past the replay bound must reach the caller as Unauthenticated; %s", describe())
		}
	}
}

// drive performs ops on stream and finishes it: CloseSend if not done, then
// receive to the end. Each op byte: low bits 0-2 send the next message, 3
// CloseSend, 4 start the receiver, 5 call Header on a goroutine of its own;
// bit 6 yields the processor after the step.
func (h *replayHarness) drive(t *testing.T, stream grpc.BidiStreamingClient[echov1.BidiStreamEchoRequest, echov1.BidiStreamEchoResponse], ops []byte) *replayRun {
	run := &replayRun{}
	var (
		closed    bool
		recvDone  chan struct{}
		headerers sync.WaitGroup
	)
	startReceiver := func() {
		if recvDone != nil {
			return
		}
		recvDone = make(chan struct{})
		go func() {
			defer close(recvDone)
			for {
				resp, err := stream.Recv()
				if err != nil {
					run.recvErr = err
					return
				}
				run.got = append(run.got, resp.GetMessage())
			}
		}()
	}
	if len(ops) > replayMaxOps {
		ops = ops[:replayMaxOps]
	}
	for _, op := range ops {
		switch (op & 0x3f) % 6 {
		case 0, 1, 2:
			if closed || run.sendEnded {
				break
			}
			m := "m" + strconv.Itoa(run.sendAttempts)
			run.sendAttempts++
			switch err := stream.Send(&echov1.BidiStreamEchoRequest{Message: m}); {
			case err == nil:
				run.sent = append(run.sent, m)
			case err == io.EOF:
				run.sendEnded = true
			default:
				t.Fatalf("SendMsg(%s) = %v", m, err)
			}
		case 3:
			if !closed {
				closed = true
				if err := stream.CloseSend(); err != nil {
					t.Fatalf("CloseSend = %v", err)
				}
			}
		case 4:
			startReceiver()
		case 5:
			headerers.Go(func() { _, _ = stream.Header() })
		}
		if op&0x40 != 0 {
			runtime.Gosched()
		}
	}
	if !closed {
		if err := stream.CloseSend(); err != nil {
			t.Fatalf("CloseSend = %v", err)
		}
	}
	startReceiver()
	<-recvDone
	headerers.Wait()
	return run
}

func isPrefix(p, s []string) bool {
	return len(p) <= len(s) && slices.Equal(p, s[:len(p)])
}
