package redisstore

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/redistest"
)

// BenchmarkAdoptionLatency measures the time from a holder's Commit to the
// return of a peer's Wait (which then re-reads the record), over a unix
// socket, with polling off so that only pub/sub can wake the peer. It reports
// p50 and p99 in microseconds.
func BenchmarkAdoptionLatency(b *testing.B) {
	srv := redistest.Start(b)
	ctx := context.Background()
	holder := New(srv.Client(), "token")
	waiter := New(srv.Client(), "token", WithPollInterval(noPoll))
	admin := srv.Client()

	lat := make([]time.Duration, 0, b.N)
	for b.Loop() {
		b.StopTimer()
		l, err := holder.TryLease(ctx)
		if err != nil || l == nil {
			b.Fatalf("TryLease: %v, %v", l, err)
		}
		done := make(chan time.Time, 1)
		go func() {
			if err := waiter.Wait(ctx, l.Record().Version); err != nil {
				b.Error(err)
			}
			done <- time.Now()
		}()
		for {
			m, err := admin.PubSubNumSub(ctx, waiter.channel).Result()
			if err != nil {
				b.Fatal(err)
			}
			if m[waiter.channel] == 1 {
				break
			}
			time.Sleep(time.Millisecond)
		}
		b.StartTimer()
		start := time.Now()
		if err := l.Commit(ctx, secretToken()); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, (<-done).Sub(start))
		b.StopTimer()
		for { // the subscription ends with the last waiter
			m, _ := admin.PubSubNumSub(ctx, waiter.channel).Result()
			if m[waiter.channel] == 0 {
				break
			}
			time.Sleep(time.Millisecond)
		}
		b.StartTimer()
	}
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) }
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
}
