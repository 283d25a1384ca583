package bench_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

const (
	outageCallers  = 200
	outageDeadline = 5 * time.Second
	// outagePause is how long a caller waits after a failed call before its
	// next one, as the demo's callers do, so that calls failing at once do
	// not spin.
	outagePause = 10 * time.Millisecond
	// outageSettle is how long the callers go on after the Source's first
	// new token, so that the calls it released complete.
	outageSettle = 100 * time.Millisecond
)

// endpointOutage makes the test server's token endpoint fail with
// Unavailable for length from the first Refresh request after arm.
type endpointOutage struct {
	length time.Duration
	mu     sync.Mutex
	armed  bool
	until  time.Time
}

func (o *endpointOutage) arm() {
	o.mu.Lock()
	o.armed = true
	o.mu.Unlock()
}

func (o *endpointOutage) fail(context.Context, string) error {
	now := time.Now()
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.armed {
		o.armed, o.until = false, now.Add(o.length)
	}
	if now.Before(o.until) {
		return status.Error(codes.Unavailable, "bench: the token endpoint is down")
	}
	return nil
}

// BenchmarkIdPOutage: 200 callers make unary calls, each with a 5 s
// deadline, one after another, while the token has expired and the token
// endpoint is down for 0.2 s, 0.5 s or 2 s from the first refresh request.
// It reports the calls that failed and the calls made per outage (failed/op,
// calls/op) and the 99th percentile and maximum of the calls' latencies
// (p99-ms, max-ms), from the expiry until the calls that the first new token
// released have completed. refresh=today makes one token request per refresh
// (WithRefreshAttempts(1)): a failed request fails every waiting call, and
// calls fail fast during the backoff that follows. refresh=attempts has the
// library's defaults (DefaultRefreshAttempts requests per refresh, with
// WithBackoff's default waits between them).
func BenchmarkIdPOutage(b *testing.B) {
	for _, outage := range []time.Duration{200 * time.Millisecond, 500 * time.Millisecond, 2 * time.Second} {
		for _, v := range []struct {
			name string
			opts []tokensource.Option
		}{
			{"today", []tokensource.Option{tokensource.WithRefreshAttempts(1)}},
			{"attempts", nil},
		} {
			b.Run(fmt.Sprintf("outage=%v/refresh=%s", outage, v.name), func(b *testing.B) {
				benchmarkOutage(b, outage, v.opts)
			})
		}
	}
}

func benchmarkOutage(b *testing.B, length time.Duration, opts []tokensource.Option) {
	o := &endpointOutage{length: length}
	srv, ep := startServer(b, testserver.WithAccessTokenTTL(24*time.Hour), testserver.WithRefreshFailureFunc(o.fail))
	req := &echov1.EchoRequest{Message: "outage"}
	var (
		iterations    int
		failed, calls int64
		latencies     []time.Duration
	)
	for b.Loop() {
		b.StopTimer()
		tok, err := srv.IssueToken(testserver.DefaultUser)
		if err != nil {
			b.Fatal(err)
		}
		// The server accepts the token; the Source holds it as expired, so
		// every caller waits for the refresh that meets the outage.
		tok.Expiry = time.Now().Add(-time.Second)
		recovered := make(chan struct{})
		var once sync.Once
		observe := func(ev tokensource.Event) {
			if ev.Kind == tokensource.RefreshSucceeded {
				once.Do(func() { close(recovered) })
			}
		}
		var refresher *testserver.Refresher
		r := tokensource.RefresherFunc(func(ctx context.Context, cur *tokensource.Token) (*tokensource.Token, error) {
			return refresher.Refresh(ctx, cur)
		})
		src := tokensource.New(r, append(slices.Clip(opts), tokensource.WithInitialToken(tok), tokensource.WithObserver(observe))...)
		conn, err := ep.NewClient(interceptor.DialOptions(src)...)
		if err != nil {
			b.Fatal(err)
		}
		refresher = testserver.NewRefresher(conn, testserver.DefaultUser, testserver.DefaultPassword)
		client := echov1.NewEchoServiceClient(conn)

		o.arm()
		start, stop := make(chan struct{}), make(chan struct{})
		type tally struct {
			failed int64
			lat    []time.Duration
		}
		tallies := make([]tally, outageCallers)
		var wg sync.WaitGroup
		for i := range tallies {
			t := &tallies[i]
			wg.Go(func() {
				<-start
				for {
					select {
					case <-stop:
						return
					default:
					}
					ctx, cancel := context.WithTimeout(context.Background(), outageDeadline)
					t0 := time.Now()
					_, err := client.Echo(ctx, req)
					t.lat = append(t.lat, time.Since(t0))
					cancel()
					if err == nil {
						continue
					}
					t.failed++
					select {
					case <-stop:
						return
					case <-time.After(outagePause):
					}
				}
			})
		}
		b.StartTimer()
		close(start)
		<-recovered
		time.Sleep(outageSettle) // the released calls complete; the callers go on meanwhile
		close(stop)
		wg.Wait()
		b.StopTimer()

		conn.Close()
		src.Close()
		iterations++
		for _, t := range tallies {
			failed += t.failed
			calls += int64(len(t.lat))
			latencies = append(latencies, t.lat...)
		}
		b.StartTimer()
	}
	slices.Sort(latencies)
	n := float64(iterations)
	b.ReportMetric(float64(failed)/n, "failed/op")
	b.ReportMetric(float64(calls)/n, "calls/op")
	b.ReportMetric(float64(latencies[int(0.99*float64(len(latencies)-1))].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(latencies[len(latencies)-1].Microseconds())/1000, "max-ms")
}
