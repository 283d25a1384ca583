package redisstore

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/redistest"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// failoverClient returns a Sentinel-managed client for s, closed when the
// test ends.
func failoverClient(t *testing.T, s *redistest.Sentinel) *redis.Client {
	c := redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:            s.Name,
		SentinelAddrs:         s.Addrs(),
		ContextTimeoutEnabled: true,
	})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// TestSentinelFailover: a master with one replica and three Sentinels. A
// commit acknowledged by the replica (WithReplicaAck) survives the master's
// death; after the failover the same Stores and clients commit again, and
// with no replica left the acknowledged Store does not block.
func TestSentinelFailover(t *testing.T) {
	sn := redistest.StartSentinel(t, 1, 3)
	ctx := testContext(t)
	acked := New(failoverClient(t, sn), "token", WithReplicaAck(1, ackTimeout))
	plain := New(failoverClient(t, sn), "token")
	waiter := New(failoverClient(t, sn), "token")
	if err := acked.Save(ctx, secretToken()); err != nil {
		t.Fatalf("Save: %v", err)
	}
	l := mustLease(t, ctx, acked)
	tok := secretToken()
	if err := l.Commit(ctx, tok); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	v := l.Record().Version + 1

	// A member waits across the failover: it returns once the record can
	// be read again, or with the outage.
	lw := mustLease(t, ctx, plain)
	waited := startWait(ctx, waiter, v)
	_, _, took := sn.Failover(t)
	start := time.Now()

	// The acknowledged commit is on the promoted replica.
	var rec tokensource.Record
	retryUnavailable(t, ctx, func(ctx context.Context) (err error) {
		rec, err = plain.LoadRecord(ctx)
		return err
	})
	first := time.Since(start)
	if !sameToken(rec.Token, tok) || rec.Version != v {
		t.Fatalf("after the failover the record is %v at version %d; want the acknowledged commit %v at %d", rec.Token, rec.Version, tok, v)
	}
	if err := <-waited; err != nil && !errors.Is(err, tokensource.ErrCoordinatorUnavailable) {
		t.Fatalf("a Wait across the failover = %v; want nil or ErrCoordinatorUnavailable", err)
	}
	t.Logf("Sentinel failover took %v from the kill; the Store read the record %v after that", took, first)

	// The lease taken before the failover was replicated; its holder
	// releases it and both Stores commit again, the acknowledged one
	// without a replica left to wait for.
	retryUnavailable(t, ctx, lw.Release)
	for _, s := range []*Store{plain, acked} {
		var nl tokensource.Lease
		retryUnavailable(t, ctx, func(ctx context.Context) (err error) {
			nl, err = s.TryLease(ctx)
			if err == nil && nl == nil {
				t.Fatal("the lease is held after its holder released it")
			}
			return err
		})
		want := secretToken()
		if err := nl.Commit(ctx, want); err != nil {
			t.Fatalf("Commit after the failover: %v", err)
		}
		wantRecord(t, waiter, want, nl.Record().Version+1)
	}
}

// TestSentinelFailoverToLaggingReplica: the replica's replication link
// holds the master's stream back, so a commit cannot be acknowledged and
// fails with ErrNotReplicated (a plain commit would have succeeded). The
// master dies with it and Sentinel promotes the replica, which never got the
// commit: the record went back. The member that holds the committed token
// restores it at its version, and the fleet goes on from it.
func TestSentinelFailoverToLaggingReplica(t *testing.T) {
	sn := redistest.StartSentinelVia(t, 1, 3)
	ctx := testContext(t)
	holder := New(failoverClient(t, sn), "token", WithReplicaAck(1, 200*time.Millisecond))
	peer := New(failoverClient(t, sn), "token")
	seed := secretToken()
	if err := holder.Save(ctx, seed); err != nil {
		t.Fatalf("Save: %v", err)
	}
	l := mustLease(t, ctx, holder)
	v := l.Record().Version
	sn.Master(t).WaitReplicas(t, 1) // the replica has the seed and the lease

	sn.Links[0].Hold()
	tok := secretToken()
	if err := l.Commit(ctx, tok); !errors.Is(err, ErrNotReplicated) || !errors.Is(err, tokensource.ErrCoordinatorUnavailable) {
		t.Fatalf("Commit while the replica lags = %v; want ErrNotReplicated and ErrCoordinatorUnavailable", err)
	}
	old := sn.Master(t)
	old.Kill()
	sn.Links[0].Cut() // what the link held is lost with the master
	if sn.Master(t) == old {
		t.Fatal("no failover")
	}

	var rec tokensource.Record
	retryUnavailable(t, ctx, func(ctx context.Context) (err error) {
		rec, err = peer.LoadRecord(ctx)
		return err
	})
	if rec.Version != v || !sameToken(rec.Token, seed) {
		t.Fatalf("after the failover the record is %v at version %d; want the seed at %d (the commit never reached the replica)", rec.Token, rec.Version, v)
	}
	wrote, err := holder.Restore(ctx, tokensource.Record{Token: tok, Version: v + 1})
	if err != nil || !wrote {
		t.Fatalf("Restore of the lost commit = %v, %v; want true, nil (and no wait: no replica is left)", wrote, err)
	}
	wantRecord(t, peer, tok, v+1)
}
