package redisstore

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

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

// timedStore is a Store that records how long the last LoadRecord and Save
// took.
type timedStore struct {
	*Store
	load, save atomic.Int64 // nanoseconds
}

func (s *timedStore) LoadRecord(ctx context.Context) (tokensource.Record, error) {
	t0 := time.Now()
	defer func() { s.load.Store(int64(time.Since(t0))) }()
	return s.Store.LoadRecord(ctx)
}

func (s *timedStore) Save(ctx context.Context, t *tokensource.Token) error {
	t0 := time.Now()
	defer func() { s.save.Store(int64(time.Since(t0))) }()
	return s.Store.Save(ctx, t)
}

// BenchmarkRefreshRedisDown measures what a Token call that needs a refresh
// costs a Source with WithUncoordinatedRefresh while its Redis is down (a
// redis-server killed: its socket refuses connections). Each iteration
// starts a client and a Source and makes three such calls:
//
//   - first: the first refresh since Redis went down. The Source does not
//     know yet, so it asks with the client's whole dial and retry budget.
//     This is what every refresh attempt cost before the Source remembered
//     an outage of its Coordinator.
//   - backoff: the next refresh, within the backoff period after the failed
//     look: the Coordinator is not asked again.
//   - probe: a refresh after that period: one look, bounded to 1 s.
//
// For each it reports the Token call (first-ms, backoff-ms, probe-ms) and,
// within it, the Coordinator's LoadRecord (…-load-ms, 0 when not asked) and
// the best-effort Save of the new token (…-save-ms), which the caller waits
// for too. The Refresher answers at once. client=go-redis-defaults is a
// client with go-redis's default dial and retry settings, as an application
// would have; client=one-dial is the tests' (one dial attempt per command).
// A backoff of an hour and a clock the benchmark moves on make "within" and
// "after" the backoff period certain.
func BenchmarkRefreshRedisDown(b *testing.B) {
	srv := redistest.Start(b)
	srv.Stop()
	for _, client := range []struct {
		name string
		opts redis.Options
	}{
		{"go-redis-defaults", redis.Options{Network: "unix", Addr: srv.Socket}},
		{"one-dial", *clientOptions(srv)},
	} {
		b.Run("client="+client.name, func(b *testing.B) {
			ctx := context.Background()
			var total [3]struct{ call, load, save time.Duration }
			iterations := 0
			for b.Loop() {
				var skew atomic.Int64
				now := func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
				// Each token expires before the next call: every call
				// refreshes. The Coordinator is not asked again for at least
				// half the backoff, 30 minutes.
				r := tokensource.RefresherFunc(func(context.Context, *tokensource.Token) (*tokensource.Token, error) {
					t := secretToken()
					t.Expiry = now().Add(time.Minute)
					return t, nil
				})
				opts := client.opts
				c := redis.NewClient(&opts)
				st := &timedStore{Store: New(c, "token")}
				src := tokensource.New(r, tokensource.WithStore(st), tokensource.WithUncoordinatedRefresh(),
					tokensource.WithBackoff(time.Hour, time.Hour), tokensource.WithClock(now))
				for i, advance := range []time.Duration{0, 2 * time.Minute, 2 * time.Hour} {
					skew.Add(int64(advance))
					st.load.Store(0)
					st.save.Store(0)
					t0 := time.Now()
					if _, err := src.Token(ctx); err != nil {
						b.Fatalf("call %d: Token with Redis down and WithUncoordinatedRefresh: %v", i, err)
					}
					total[i].call += time.Since(t0)
					total[i].load += time.Duration(st.load.Load())
					total[i].save += time.Duration(st.save.Load())
				}
				_ = src.Close()
				_ = c.Close()
				iterations++
			}
			b.StopTimer()
			awaitPoolDialers(b)
			ms := func(d time.Duration) float64 { return d.Seconds() * 1000 / float64(iterations) }
			for i, name := range []string{"first", "backoff", "probe"} {
				b.ReportMetric(ms(total[i].call), name+"-ms")
				b.ReportMetric(ms(total[i].load), name+"-load-ms")
				b.ReportMetric(ms(total[i].save), name+"-save-ms")
			}
		})
	}
}

// awaitPoolDialers waits until the background dialers of the closed go-redis
// clients have exited, for the leak check at the end of the run: a client
// whose dials keep failing starts one that retries every second, and it
// notices the Close only when it wakes.
func awaitPoolDialers(tb testing.TB) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if !bytes.Contains(buf[:n], []byte("(*ConnPool).tryDial")) {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatal("a go-redis dialer outlived its client's Close by 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// BenchmarkLeaseCycle measures one refresh's work at the Store, over a unix
// socket: TryLease and a Commit of a new token (the lease renewal does not
// run within so short a cycle). It is the slow path, once per token
// lifetime for the whole fleet.
func BenchmarkLeaseCycle(b *testing.B) {
	srv := redistest.Start(b)
	ctx := context.Background()
	s := New(newClient(b, srv), "token")
	if err := s.Save(ctx, secretToken()); err != nil {
		b.Fatal(err)
	}
	tok := secretToken()
	for b.Loop() {
		l, err := s.TryLease(ctx)
		if err != nil || l == nil {
			b.Fatalf("TryLease: %v, %v", l, err)
		}
		if err := l.Commit(ctx, tok); err != nil {
			b.Fatal(err)
		}
	}
}
