package tokensource

import (
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/testutil"
)

// BenchmarkToken measures the hot path (a valid token, outside its early
// window) of Source.Token next to oauth2.ReuseTokenSource, the usual
// alternative, serially and from parallel goroutines.
func BenchmarkToken(b *testing.B) {
	exp := time.Now().Add(24 * time.Hour)
	benchHotPath(b, "Source", func(b *testing.B) (*Source, *counter) {
		r := &counter{}
		s := New(r, WithInitialToken(&Token{AccessToken: "a", Expiry: exp}))
		b.Cleanup(func() { _ = s.Close() })
		return s, r
	})
	// The clock read both sources need, for scale.
	b.Run("baseline/time.Now", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = time.Now()
		}
	})
	reuse := func() oauth2.TokenSource {
		t := &oauth2.Token{AccessToken: "a", Expiry: exp}
		return oauth2.ReuseTokenSource(t, oauth2.StaticTokenSource(t))
	}
	b.Run("oauth2.ReuseTokenSource/serial", func(b *testing.B) {
		ts := reuse()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := ts.Token(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("oauth2.ReuseTokenSource/parallel", func(b *testing.B) {
		ts := reuse()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := ts.Token(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkRefreshStale measures Refresh with a token the Source has
// already replaced: the path every RPC that raced a refresh takes.
func BenchmarkRefreshStale(b *testing.B) {
	s := New(sequence(time.Now, time.Hour))
	defer s.Close()
	old, err := s.Token(ctxBG)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := s.Refresh(ctxBG, old); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Refresh(ctxBG, old); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkSharedRefresh measures a full refresh shared by a burst of
// callers that all find the token expired, and reports how many Refresher
// calls each burst caused (it must be 1).
func BenchmarkSharedRefresh(b *testing.B) {
	const callers = 64
	clk := testutil.NewClock(testutil.Epoch)
	r := sequence(clk.Now, time.Hour)
	s := New(r, WithClock(clk.Now))
	defer s.Close()
	b.ReportAllocs()
	for b.Loop() {
		clk.Advance(2 * time.Hour) // the current token expires
		start := make(chan struct{})
		var wg sync.WaitGroup
		for range callers {
			wg.Go(func() {
				<-start
				if _, err := s.Token(ctxBG); err != nil {
					b.Error(err)
				}
			})
		}
		close(start)
		wg.Wait()
	}
	b.ReportMetric(float64(r.calls.Load())/float64(b.N), "refreshes/burst")
}

// BenchmarkTokenWithStore measures the hot path (a valid token, outside its
// early window) of a Source with a coordinating Store installed next to one
// without a store: a valid token must cost the same with coordination, no I/O
// and no allocation. (redisstore's benchmarks have the Redis case.)
func BenchmarkTokenWithStore(b *testing.B) {
	tok := Token{AccessToken: "a", RefreshToken: "r", Expiry: time.Now().Add(24 * time.Hour)}
	stores := []struct {
		name  string
		store func(b *testing.B) Store
	}{
		{"none", func(*testing.B) Store { return nil }},
		{"MemoryStore", func(*testing.B) Store { return NewMemoryStore() }},
		{"FileStore", func(b *testing.B) Store { return NewFileStore(filepath.Join(b.TempDir(), "token.json")) }},
	}
	for _, st := range stores {
		source := func(b *testing.B) (*Source, *counter) {
			b.Helper()
			r := &counter{}
			var s *Source
			if store := st.store(b); store != nil {
				if err := store.Save(ctxBG, &tok); err != nil {
					b.Fatal(err)
				}
				s = New(r, WithStore(store))
			} else {
				s = New(r, WithInitialToken(&tok))
			}
			b.Cleanup(func() { _ = s.Close() })
			if _, err := s.Token(ctxBG); err != nil { // loads from the store
				b.Fatal(err)
			}
			return s, r
		}
		benchHotPath(b, "store="+st.name, source)
	}
}

// benchHotPath runs Token on the Source that mk returns, serially (name
// "/serial") and from every P (name "/parallel"), and fails if the hot path
// called the Refresher.
func benchHotPath(b *testing.B, name string, mk func(b *testing.B) (*Source, *counter)) {
	b.Run(name+"/serial", func(b *testing.B) {
		s, r := mk(b)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.Token(ctxBG); err != nil {
				b.Fatal(err)
			}
		}
		if n := r.calls.Load(); n != 0 {
			b.Fatalf("%d Refresher calls on the hot path, want 0", n)
		}
	})
	b.Run(name+"/parallel", func(b *testing.B) {
		s, r := mk(b)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := s.Token(ctxBG); err != nil {
					b.Error(err)
					return
				}
			}
		})
		if n := r.calls.Load(); n != 0 {
			b.Fatalf("%d Refresher calls on the hot path, want 0", n)
		}
	})
}
