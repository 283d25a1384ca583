package bench_test

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

const parkedWaiters = 10_000

// errReleased ends the blocked refresh once the memory is measured, so the
// parked calls return at once (with this error) instead of making RPCs.
var errReleased = errors.New("bench: released")

// blockedSource returns a Source whose token has expired and whose refresh
// blocks until release is called, so every call waits for it.
func blockedSource() (src *tokensource.Source, release func()) {
	unblock := make(chan struct{})
	r := tokensource.RefresherFunc(func(ctx context.Context, _ *tokensource.Token) (*tokensource.Token, error) {
		select {
		case <-unblock:
			return nil, errReleased
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	})
	expired := &tokensource.Token{AccessToken: "at_stale", RefreshToken: "rt", Expiry: time.Now().Add(-time.Minute)}
	src = tokensource.New(r, tokensource.WithInitialToken(expired))
	return src, sync.OnceFunc(func() { close(unblock) })
}

// waitFor polls cond until it holds: there is no event for "a caller has
// started waiting", only the Waiting counter.
func waitFor(b *testing.B, what string, cond func() bool) {
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// waiterMemory accumulates the per-waiter memory over iterations.
type waiterMemory struct {
	iterations   int
	heap, stacks int64
}

// measure parks parkedWaiters calls with park, which returns once they are
// all blocked and a function that unblocks them and waits until they have
// returned. It records the growth of the live heap and of stack memory.
func (w *waiterMemory) measure(park func() (unpark func())) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	unpark := park()
	runtime.GC()
	runtime.ReadMemStats(&after)
	unpark()
	w.iterations++
	w.heap += int64(after.HeapAlloc) - int64(before.HeapAlloc)
	w.stacks += int64(after.StackInuse) - int64(before.StackInuse)
}

func (w *waiterMemory) report(b *testing.B) {
	n := float64(w.iterations * parkedWaiters)
	b.ReportMetric(float64(w.heap)/n, "heap-B/waiter")
	b.ReportMetric(float64(w.stacks)/n, "stack-B/waiter")
	b.ReportMetric(float64(w.heap+w.stacks)/n, "B/waiter")
}

// BenchmarkWaiterMemory reports the memory each call holds while it waits
// for a refresh. ns/op is the time to park and release 10,000 calls (with
// two GCs) and means little. See the package documentation for what is
// counted.
func BenchmarkWaiterMemory(b *testing.B) {
	b.Run("path=goroutine", func(b *testing.B) {
		var w waiterMemory
		for b.Loop() {
			w.measure(func() func() {
				block := make(chan struct{})
				var started, done sync.WaitGroup
				started.Add(parkedWaiters)
				for range parkedWaiters {
					done.Go(func() {
						started.Done()
						<-block
					})
				}
				started.Wait()
				return func() { close(block); done.Wait() }
			})
		}
		w.report(b)
	})

	b.Run("path=interceptor", func(b *testing.B) {
		noop := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }
		method := echov1.EchoService_Echo_FullMethodName
		var w waiterMemory
		for b.Loop() {
			w.measure(func() func() {
				src, release := blockedSource()
				call := interceptor.UnaryClientInterceptor(src, interceptor.AllowInsecure())
				var done sync.WaitGroup
				var failed atomic.Int64
				for range parkedWaiters {
					done.Go(func() {
						if err := call(context.Background(), method, nil, nil, nil, noop); !errors.Is(err, errReleased) {
							failed.Add(1)
						}
					})
				}
				waitFor(b, "the calls to wait", func() bool { return src.Stats().Waiting == parkedWaiters })
				return func() {
					release()
					done.Wait()
					src.Close()
					if n := failed.Load(); n > 0 {
						b.Fatalf("%d calls did not wait for the refresh", n)
					}
				}
			})
		}
		w.report(b)
	})

	b.Run("path=grpc", func(b *testing.B) {
		_, ep := startServer(b)
		req := &echov1.EchoRequest{Message: "wait"}
		var w waiterMemory
		for b.Loop() {
			src, release := blockedSource()
			conn := newClient(b, ep, interceptor.DialOptions(src)...)
			client := echov1.NewEchoServiceClient(conn)
			w.measure(func() func() {
				var done sync.WaitGroup
				var failed atomic.Int64
				for range parkedWaiters {
					done.Go(func() {
						if _, err := client.Echo(context.Background(), req); !errors.Is(err, errReleased) {
							failed.Add(1)
						}
					})
				}
				waitFor(b, "the calls to wait", func() bool { return src.Stats().Waiting == parkedWaiters })
				return func() {
					release()
					done.Wait()
					if n := failed.Load(); n > 0 {
						b.Fatalf("%d calls did not wait for the refresh", n)
					}
				}
			})
			conn.Close()
			src.Close()
		}
		w.report(b)
	})
}
