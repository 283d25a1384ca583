package redisstore

import (
	"context"
	"errors"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/redistest"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// checkUnavailable asserts that err reports an unreachable coordinator and
// leaks no token.
func checkUnavailable(t *testing.T, op string, err error) {
	t.Helper()
	if !isUnavailable(err) {
		t.Fatalf("%s with Redis down = %v; want an error matching ErrCoordinatorUnavailable", op, err)
	}
	noSecrets(t, err)
}

func TestRedisDown(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	s := member(t, srv, "token")
	tok := secretToken()
	if err := s.Save(ctx, tok); err != nil {
		t.Fatal(err)
	}
	l := mustLease(t, ctx, s)

	srv.Stop()

	_, err := s.LoadRecord(ctx)
	checkUnavailable(t, "LoadRecord", err)
	_, err = s.Load(ctx)
	checkUnavailable(t, "Load", err)
	_, err = s.TryLease(ctx)
	checkUnavailable(t, "TryLease", err)
	checkUnavailable(t, "Save", s.Save(ctx, tok))
	checkUnavailable(t, "Wait", s.Wait(ctx, 0))
	checkUnavailable(t, "Commit", l.Commit(ctx, tok))
	checkUnavailable(t, "Release", l.Release(ctx))

	// A closed client is unavailable too (redis.ErrClosed).
	c := redis.NewClient(clientOptions(srv))
	_ = c.Close()
	_, err = New(c, "token").LoadRecord(ctx)
	checkUnavailable(t, "LoadRecord on a closed client", err)
	if !errors.Is(err, redis.ErrClosed) {
		t.Fatalf("the cause redis.ErrClosed is not wrapped: %v", err)
	}

	// A caller whose ctx ends sees its own ctx error as well.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.LoadRecord(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("LoadRecord on an ended ctx = %v; want context.Canceled", err)
	}
}

func TestRedisRestarted(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	holder := member(t, srv, "token")
	waiter := member(t, srv, "token", WithPollInterval(noPoll))
	for range 3 {
		if err := holder.Save(ctx, secretToken()); err != nil {
			t.Fatal(err)
		}
	}
	l := mustLease(t, ctx, holder)
	v := l.Record().Version
	done := startWait(ctx, waiter, v)
	waitSubscribed(t, ctx, srv, waiter, 1)

	// The restarted server is empty (no persistence): the lease and the
	// record are gone. The waiter's subscription reconnects, and the
	// resubscription makes it re-read, although nobody published anything
	// and its polling is off.
	srv.Restart()
	// Its re-read may meet a pooled connection that the restart broke
	// (EOF): a transient ErrCoordinatorUnavailable, after which a Wait
	// sees the change at once. Anything else fails.
	for err := <-done; err != nil; err = <-done {
		if !errors.Is(err, tokensource.ErrCoordinatorUnavailable) {
			t.Fatalf("Wait across a restart = %v; want nil (the lease is gone)", err)
		}
		t.Logf("Wait across a restart: %v; waiting again", err)
		done = startWait(ctx, waiter, v)
	}

	// The holder's lease vanished with the data: its commit is refused
	// rather than written over a record it did not read.
	if err := l.Commit(ctx, secretToken()); !errors.Is(err, tokensource.ErrLeaseLost) {
		t.Fatalf("Commit after a restart lost the lease = %v; want ErrLeaseLost", err)
	}

	// The same Stores and clients work again.
	tok := secretToken()
	if err := holder.Save(ctx, tok); err != nil {
		t.Fatalf("Save after the restart: %v", err)
	}
	l2 := mustLease(t, ctx, waiter)
	if !sameToken(l2.Record().Token, tok) {
		t.Fatalf("Record() after the restart = %v; want %v", l2.Record().Token, tok)
	}
	done = startWait(ctx, holder, l2.Record().Version)
	next := secretToken()
	if err := l2.Commit(ctx, next); err != nil {
		t.Fatalf("Commit after the restart: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Wait after the restart: %v", err)
	}
	if got := mustLoad(t, ctx, holder); !sameToken(got.Token, next) {
		t.Fatalf("Load after the restart = %v; want %v", got.Token, next)
	}
}
