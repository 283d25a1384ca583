package redisstore

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/redistest"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// BenchmarkAdoptionLatency measures the time from a holder's Commit to the
// return of a peer's Wait (which then re-reads the record), over a unix
// socket, with polling off so that only pub/sub can wake the peer. It reports
// p50 and p99 in microseconds.
func BenchmarkAdoptionLatency(b *testing.B) {
	srv := redistest.Start(b)
	ctx := context.Background()
	holder := New(newClient(b, srv), "token")
	waiter := New(newClient(b, srv), "token", WithPollInterval(noPoll))
	admin := newClient(b, srv)

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

// BenchmarkTokenWithStore measures the hot path (a valid token, outside its
// early window) of a Source with a redisstore installed next to one without a
// store: a valid token must cost the same with coordination, no round trip and
// no allocation.
func BenchmarkTokenWithStore(b *testing.B) {
	srv := redistest.Start(b)
	ctx := context.Background()
	tok := secretToken()
	tok.Expiry = time.Now().Add(24 * time.Hour)
	never := tokensource.RefresherFunc(func(context.Context, *tokensource.Token) (*tokensource.Token, error) {
		b.Error("Refresher called on the hot path")
		return nil, errors.New("unexpected refresh")
	})
	for _, name := range []string{"none", "redisstore"} {
		source := func(b *testing.B) *tokensource.Source {
			b.Helper()
			var s *tokensource.Source
			if name == "redisstore" {
				st := New(newClient(b, srv), "token")
				if err := st.Save(ctx, tok); err != nil {
					b.Fatal(err)
				}
				s = tokensource.New(never, tokensource.WithStore(st))
			} else {
				s = tokensource.New(never, tokensource.WithInitialToken(tok))
			}
			b.Cleanup(func() { _ = s.Close() })
			if _, err := s.Token(ctx); err != nil { // loads from the store
				b.Fatal(err)
			}
			return s
		}
		b.Run("store="+name+"/serial", func(b *testing.B) {
			s := source(b)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Token(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("store="+name+"/parallel", func(b *testing.B) {
			s := source(b)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := s.Token(ctx); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
