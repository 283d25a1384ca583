package redisstore

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/redistest"
)

// noPoll disables the timed re-read in practice, so that only a notification
// can wake a waiter.
const noPoll = time.Hour

// startWait runs s.Wait(ctx, version) in a goroutine; the result arrives on
// the returned channel.
func startWait(ctx context.Context, s *Store, version uint64) <-chan error {
	done := make(chan error, 1)
	go func() { done <- s.Wait(ctx, version) }()
	return done
}

// waitSubscribed blocks until the Store's channel has n subscribers, so that
// a test writes only once its waiters listen.
func waitSubscribed(t *testing.T, ctx context.Context, srv *redistest.Server, s *Store, n int64) {
	t.Helper()
	c := newClient(t, srv)
	for {
		m, err := c.PubSubNumSub(ctx, s.channel).Result()
		if err != nil {
			t.Fatalf("PUBSUB NUMSUB: %v", err)
		}
		if m[s.channel] == n {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("channel %s has %d subscribers; want %d", s.channel, m[s.channel], n)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func TestWaitWakesOnCommitByPubSub(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	holder := member(t, srv, "token")
	waiter := member(t, srv, "token", WithPollInterval(noPoll))

	l := mustLease(t, ctx, holder)
	rec := mustLoad(t, ctx, waiter)
	// Several waiters of one Store share one subscription.
	var results []<-chan error
	for range 5 {
		results = append(results, startWait(ctx, waiter, rec.Version))
	}
	waitSubscribed(t, ctx, srv, waiter, 1)
	select {
	case err := <-results[0]:
		t.Fatalf("Wait returned %v while the lease is held and the record unchanged", err)
	default:
	}

	want := secretToken()
	if err := l.Commit(ctx, want); err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		if err := <-r; err != nil {
			t.Fatalf("Wait after a commit = %v; want nil (woken by pub/sub, polling is off)", err)
		}
	}
	if got := mustLoad(t, ctx, waiter); !sameToken(got.Token, want) {
		t.Fatalf("after the wake-up the waiter reads %v; want %v", got.Token, want)
	}
	// The last waiter gone, the subscription is closed.
	waitSubscribed(t, ctx, srv, waiter, 0)
}

func TestWaitWakesOnRelease(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	holder := member(t, srv, "token")
	waiter := member(t, srv, "token", WithPollInterval(noPoll))

	l := mustLease(t, ctx, holder)
	done := startWait(ctx, waiter, 0)
	waitSubscribed(t, ctx, srv, waiter, 1)
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Wait after a release = %v; want nil", err)
	}
	mustLease(t, ctx, waiter).Release(ctx)
}

func TestWaitFallsBackToReRead(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	holder := member(t, srv, "token")
	waiter := member(t, srv, "token", WithPollInterval(50*time.Millisecond))

	l := mustLease(t, ctx, holder)
	defer l.Release(ctx)
	done := startWait(ctx, waiter, 0)
	waitSubscribed(t, ctx, srv, waiter, 1)
	// A write that publishes nothing, as if the notification were lost.
	if err := newClient(t, srv).HIncrBy(ctx, waiter.recordKey, "version", 1).Err(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Wait after an unpublished write = %v; want nil (the timed re-read)", err)
	}
}

func TestWaitWakesWhenLeaseExpires(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	holder := member(t, srv, "token", WithLeaseTTL(shortTTL))
	waiter := member(t, srv, "token", WithPollInterval(50*time.Millisecond))

	l := mustLease(t, ctx, holder)
	freeze(l)
	// Redis publishes nothing when a key expires: the re-read notices.
	if err := waiter.Wait(ctx, 0); err != nil {
		t.Fatalf("Wait for an expiring lease = %v; want nil", err)
	}
	if n := newClient(t, srv).Exists(ctx, waiter.leaseKey).Val(); n != 0 {
		t.Fatal("Wait returned while the lease was live")
	}
}

func TestWaitReturnsAtOnce(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	s := member(t, srv, "token", WithPollInterval(noPoll))
	if err := s.Save(ctx, secretToken()); err != nil {
		t.Fatal(err)
	}
	l := mustLease(t, ctx, s)
	defer l.Release(ctx)
	// The version moved on before Wait was called: no notification will
	// come, yet Wait must not miss it.
	if err := s.Wait(ctx, 0); err != nil {
		t.Fatalf("Wait(stale version) = %v; want nil", err)
	}
}

func TestWaitHonoursContext(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	holder := member(t, srv, "token")
	waiter := member(t, srv, "token", WithPollInterval(noPoll))
	l := mustLease(t, ctx, holder)
	defer l.Release(ctx)

	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for range 3 {
		wg.Go(func() { errs <- waiter.Wait(wctx, 0) })
	}
	waitSubscribed(t, ctx, srv, waiter, 1)
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Wait after cancel = %v; want context.Canceled", err)
		}
	}
	if err := waiter.Wait(wctx, 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait on an ended ctx = %v; want context.Canceled", err)
	}
}
