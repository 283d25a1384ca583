package redisstore

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/redistest"
	"github.com/tokenrefresh/grpc-tokenrefresh/internal/testutil"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

func TestMain(m *testing.M) {
	// go-redis's own log lines are dial failures while a test has stopped
	// the server on purpose.
	redis.SetLogger(quietLogger{})
	// After as many failed dials as its pool has connections (the tests
	// that kill redis-server with the client's default dial retries get
	// there), go-redis redials from a goroutine of its own that sleeps a
	// second between tries and notices a closed client only when it wakes.
	testutil.Main(m, testutil.IgnoreGoroutines(
		goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial")))
}

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

// clientOptions returns client options for srv's socket: go-redis's defaults
// (command retries included, as in production) with the setting the package
// recommends, ContextTimeoutEnabled, and a single dial attempt, so that a
// test that stops the server sees the failure in well under a second
// instead of after five dial attempts per command.
func clientOptions(srv *redistest.Server) *redis.Options {
	return &redis.Options{
		Network:               "unix",
		Addr:                  srv.Socket,
		Password:              srv.Password,
		DialerRetries:         1,
		ContextTimeoutEnabled: true,
	}
}

// newClient returns a client for srv, closed when the test ends.
func newClient(tb testing.TB, srv *redistest.Server) *redis.Client {
	c := redis.NewClient(clientOptions(srv))
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// testTimeout bounds every blocking step of a test; generous for a loaded
// 2-core CI machine. Tests never pass or fail by timing: it only turns a hang
// into a failure.
const testTimeout = 30 * time.Second

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// member is one member of a fleet: its own client (its own connections, as
// on another host) and Store.
func member(t *testing.T, srv *redistest.Server, key string, opts ...Option) *Store {
	t.Helper()
	return New(newClient(t, srv), key, opts...)
}

var tokenSeq atomic.Int64

// secretToken returns a token whose secrets are unique and easy to search
// for in raw Redis values and error messages.
func secretToken() *tokensource.Token {
	n := strconv.FormatInt(tokenSeq.Add(1), 10)
	return &tokensource.Token{
		AccessToken:  "access-SECRET-" + n,
		RefreshToken: "refresh-SECRET-" + n,
		Expiry:       time.Now().Add(time.Hour).Round(0),
	}
}

func sameToken(a, b *tokensource.Token) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.AccessToken == b.AccessToken && a.RefreshToken == b.RefreshToken && a.Expiry.Equal(b.Expiry)
}

// mustLease takes the lease or fails the test.
func mustLease(t *testing.T, ctx context.Context, s *Store) tokensource.Lease {
	t.Helper()
	l, err := s.TryLease(ctx)
	if err != nil {
		t.Fatalf("TryLease: %v", err)
	}
	if l == nil {
		t.Fatal("TryLease: the lease is held by someone else")
	}
	return l
}

// mustNotLease asserts that the lease is held by someone else.
func mustNotLease(t *testing.T, ctx context.Context, s *Store) {
	t.Helper()
	l, err := s.TryLease(ctx)
	if err != nil {
		t.Fatalf("TryLease: %v", err)
	}
	if l != nil {
		t.Fatal("TryLease granted a lease that another member holds")
	}
}

// freeze simulates a holder that died or was stopped (kill -9, SIGSTOP): its
// lease is no longer renewed, released or committed.
func freeze(l tokensource.Lease) { l.(*lease).stopRenewal() }

// waitLeaseGone blocks until the lease key of s has expired, by waiting as a
// fleet member would (Wait returns when no live lease exists).
func waitLeaseGone(t *testing.T, ctx context.Context, s *Store) {
	t.Helper()
	for {
		n, err := s.client.Exists(ctx, s.leaseKey).Result()
		if err != nil {
			t.Fatalf("EXISTS: %v", err)
		}
		if n == 0 {
			return
		}
		v, _, err := s.probe(ctx)
		if err != nil {
			t.Fatalf("probe: %v", err)
		}
		if err := s.Wait(ctx, v); err != nil {
			t.Fatalf("Wait: %v", err)
		}
	}
}

// noSecrets fails the test if err's message contains a secret of any token.
func noSecrets(t *testing.T, err error) {
	t.Helper()
	if err != nil && strings.Contains(err.Error(), "SECRET") {
		t.Fatalf("error leaks a token: %v", err)
	}
}

func mustLoad(t *testing.T, ctx context.Context, s *Store) tokensource.Record {
	t.Helper()
	rec, err := s.LoadRecord(ctx)
	if err != nil {
		t.Fatalf("LoadRecord: %v", err)
	}
	return rec
}

func isUnavailable(err error) bool { return errors.Is(err, tokensource.ErrCoordinatorUnavailable) }
