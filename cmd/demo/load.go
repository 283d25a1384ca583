package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// callKind is one of the four RPC shapes the workers rotate through.
type callKind int

const (
	unary callKind = iota
	serverStream
	clientStream
	bidiStream
	numKinds
)

var kindNames = [numKinds]string{"unary", "server-stream", "client-stream", "bidi"}

// messagesPerStream is how many messages each streaming call sends or
// receives.
const messagesPerStream = 3

// failurePause is how long a worker waits after a failed call, so that an
// outage (a refresh that keeps failing, say) does not turn every worker into
// a busy loop of instant failures.
const failurePause = 10 * time.Millisecond

// errWrongAnswer marks a call that succeeded with a response the echo
// service would not give.
var errWrongAnswer = errors.New("unexpected response")

// counters are the totals the progress line reads while workers run.
type counters struct {
	ok, failed atomic.Int64
}

// workerResult is one caller's tally, merged after the load. A fleet
// worker process sends its merged tally to the demo as JSON.
type workerResult struct {
	OK     [numKinds]int64                  `json:"ok"`
	Failed [codes.Unauthenticated + 1]int64 `json:"failed"` // by code
	Wrong  int64                            `json:"wrong"`
	// Rejected counts the Unauthenticated failures that are the server's
	// rejection of a token, as opposed to the source's verdict that the
	// user must log in again (ErrReauthRequired, also Unauthenticated).
	Rejected  int64                             `json:"rejected"`
	SampleErr [codes.Unauthenticated + 1]string `json:"sample_err"`
	WrongErr  string                            `json:"wrong_err"`
	Latency   histogram                         `json:"latency"`
}

func (r *workerResult) merge(o *workerResult) {
	for i := range r.OK {
		r.OK[i] += o.OK[i]
	}
	for i := range r.Failed {
		r.Failed[i] += o.Failed[i]
		if r.SampleErr[i] == "" {
			r.SampleErr[i] = o.SampleErr[i]
		}
	}
	r.Wrong += o.Wrong
	r.Rejected += o.Rejected
	if r.WrongErr == "" {
		r.WrongErr = o.WrongErr
	}
	r.Latency.merge(&o.Latency)
}

// worker makes calls of every kind, in turn, until stop is closed. Each
// call has its own deadline and is not cancelled by stop, so the load ends
// without failing the calls in flight.
func worker(ctx context.Context, id int, client echov1.EchoServiceClient, timeout time.Duration, stop <-chan struct{}, total *counters, res *workerResult) {
	msg := fmt.Sprintf("worker-%d", id)
	callCtx := context.WithoutCancel(ctx)
	for n := id; ; n++ {
		select {
		case <-stop:
			return
		default:
		}
		kind := callKind(n % int(numKinds))
		start := time.Now()
		err := call(callCtx, client, kind, msg, timeout)
		res.Latency.record(time.Since(start))
		if err == nil {
			res.OK[kind]++
			total.ok.Add(1)
			continue
		}
		total.failed.Add(1)
		if errors.Is(err, errWrongAnswer) {
			res.Wrong++
			res.WrongErr = fmt.Sprintf("%s: %v", kindNames[kind], err)
		} else {
			c := min(status.Code(err), codes.Unauthenticated)
			res.Failed[c]++
			if c == codes.Unauthenticated && !errors.Is(err, tokensource.ErrReauthRequired) {
				res.Rejected++
			}
			if res.SampleErr[c] == "" {
				res.SampleErr[c] = fmt.Sprintf("%s: %v", kindNames[kind], err)
			}
		}
		select {
		case <-stop:
			return
		case <-time.After(failurePause):
		}
	}
}

// call makes one RPC of the given kind and checks the answer.
func call(ctx context.Context, client echov1.EchoServiceClient, kind callKind, msg string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch kind {
	case unary:
		resp, err := client.Echo(ctx, &echov1.EchoRequest{Message: msg})
		if err != nil {
			return err
		}
		if resp.GetMessage() != msg {
			return fmt.Errorf("%w: echo returned %q", errWrongAnswer, resp.GetMessage())
		}
		return nil
	case serverStream:
		stream, err := client.ServerStreamEcho(ctx, &echov1.ServerStreamEchoRequest{Message: msg, Count: messagesPerStream})
		if err != nil {
			return err
		}
		return receiveAll(stream, msg)
	case clientStream:
		stream, err := client.ClientStreamEcho(ctx)
		if err != nil {
			return err
		}
		for range messagesPerStream {
			if err := stream.Send(&echov1.ClientStreamEchoRequest{Message: msg}); err != nil {
				if errors.Is(err, io.EOF) {
					break // the stream has ended; CloseAndRecv reports how
				}
				return err
			}
		}
		resp, err := stream.CloseAndRecv()
		if err != nil {
			return err
		}
		if resp.GetCount() != messagesPerStream {
			return fmt.Errorf("%w: the server counted %d messages, want %d", errWrongAnswer, resp.GetCount(), messagesPerStream)
		}
		return nil
	case bidiStream:
		stream, err := client.BidiStreamEcho(ctx)
		if err != nil {
			return err
		}
		for i := range messagesPerStream {
			if err := stream.Send(&echov1.BidiStreamEchoRequest{Message: msg}); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			// After io.EOF from Send, Recv returns the stream's status.
			resp, err := stream.Recv()
			if err != nil {
				if errors.Is(err, io.EOF) {
					return fmt.Errorf("%w: the stream ended after %d of %d echoes", errWrongAnswer, i, messagesPerStream)
				}
				return err
			}
			if resp.GetMessage() != msg {
				return fmt.Errorf("%w: echo returned %q", errWrongAnswer, resp.GetMessage())
			}
		}
		if err := stream.CloseSend(); err != nil {
			return err
		}
		if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
			if err == nil {
				return fmt.Errorf("%w: an echo nobody asked for", errWrongAnswer)
			}
			return err
		}
		return nil
	}
	panic("unknown call kind")
}

func receiveAll(stream grpc.ServerStreamingClient[echov1.ServerStreamEchoResponse], msg string) error {
	for n := int32(0); ; n++ {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			if n != messagesPerStream {
				return fmt.Errorf("%w: %d messages, want %d", errWrongAnswer, n, messagesPerStream)
			}
			return nil
		}
		if err != nil {
			return err
		}
		if resp.GetMessage() != msg || resp.GetIndex() != n {
			return fmt.Errorf("%w: message %d is %q (index %d)", errWrongAnswer, n, resp.GetMessage(), resp.GetIndex())
		}
	}
}

// runLoad starts workers callers, calls tick every interval until duration
// has passed and until is closed (a nil until is not waited for), or until
// ctx is done, then stops the callers, waits for their calls in flight and
// returns their merged results, how long the load ran, and whether ctx
// ended it.
func runLoad(ctx context.Context, workers int, duration, callTimeout, interval time.Duration, until <-chan struct{}, client echov1.EchoServiceClient, total *counters, tick func(elapsed time.Duration)) (res workerResult, elapsed time.Duration, interrupted bool) {
	stop := make(chan struct{})
	results := make([]workerResult, workers)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range workers {
		wg.Go(func() { worker(ctx, i, client, callTimeout, stop, total, &results[i]) })
	}

	ticker := time.NewTicker(interval)
	deadline := time.NewTimer(duration)
	timeUp := false
loop:
	for {
		select {
		case <-ticker.C:
			tick(time.Since(start))
		case <-deadline.C:
			timeUp = true
			if until == nil {
				break loop
			}
		case <-until:
			until = nil // closed: never selected again
			if timeUp {
				break loop
			}
		case <-ctx.Done():
			interrupted = true
			break loop
		}
	}
	ticker.Stop()
	deadline.Stop()
	elapsed = time.Since(start)
	close(stop)
	wg.Wait()
	for i := range results {
		res.merge(&results[i])
	}
	return res, elapsed, interrupted
}
