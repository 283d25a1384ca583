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

// clusterClient returns a Cluster client for c, closed when the test ends:
// go-redis's defaults with ContextTimeoutEnabled, as the package recommends.
func clusterClient(t *testing.T, c *redistest.Cluster) *redis.ClusterClient {
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// TestClusterKeyWithoutHashTag: on a 3-master Redis Cluster, a key without a
// hash tag works end to end (the Store adds the tag): save, lease, commit,
// wait woken by pub/sub, restore; no CROSSSLOT at the first lease.
func TestClusterKeyWithoutHashTag(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0)
	ctx := testContext(t)
	a := New(clusterClient(t, c), "token", WithKeyPrefix("svc-a:"))
	b := New(clusterClient(t, c), "token", WithKeyPrefix("svc-a:"), WithPollInterval(noPoll))
	if a.Key() != "svc-a:{token}" {
		t.Fatalf("Key() = %q; want svc-a:{token}", a.Key())
	}
	if err := a.Save(ctx, secretToken()); err != nil {
		t.Fatalf("Save: %v", err)
	}
	l, err := a.TryLease(ctx)
	if err != nil || l == nil {
		t.Fatalf("TryLease on a Cluster = %v, %v; want a lease", l, err)
	}
	mustNotLease(t, ctx, b)

	// b waits, without polling: only the notification can wake it. Classic
	// PUBLISH reaches subscribers on every node of a Cluster.
	done := startWait(ctx, b, l.Record().Version)
	waitClusterSubscribed(t, ctx, c, b)
	tok := secretToken()
	if err := l.Commit(ctx, tok); err != nil {
		t.Fatalf("Commit on a Cluster: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Wait on a Cluster: %v", err)
	}
	wantRecord(t, b, tok, 2)
	restored := secretToken()
	mustRestore(t, b, tokensource.Record{Token: restored, Version: 5}, true)
	wantRecord(t, a, restored, 5)

	// The record is where Key says, on the master of its slot.
	if v, err := c.MasterFor(t, a.Key()).Do("HGET", "svc-a:{token}", "version"); err != nil || v != "5" {
		t.Fatalf("HGET svc-a:{token} version on its master = %v, %v; want 5", v, err)
	}
}

// waitClusterSubscribed blocks until some node of c counts a subscriber on
// s's channel (go-redis subscribes on the master of the channel's slot).
func waitClusterSubscribed(t *testing.T, ctx context.Context, c *redistest.Cluster, s *Store) {
	t.Helper()
	redistest.WaitFor(t, "a subscriber on "+s.channel, func() (bool, error) {
		for _, n := range c.Nodes {
			if !n.Running() {
				continue
			}
			v, err := n.Do("PUBSUB", "NUMSUB", s.channel)
			if err != nil {
				return false, err
			}
			if a, ok := v.([]any); ok && len(a) == 2 && a[1] == int64(1) {
				return true, nil
			}
		}
		return false, ctx.Err()
	})
}

// TestClusterMasterKilled: the master that owns the record's slot dies while
// a holder commits. The commit fails as a coordinator outage (never as a
// configuration error), and after the failover the same Stores and clients
// work again: the holder's token is restored, the lease released, a waiter
// woken, and the next commit lands, with and without WithReplicaAck.
func TestClusterMasterKilled(t *testing.T) {
	c := redistest.StartCluster(t, 3, 1)
	ctx := testContext(t)
	const key = "token"
	holder := New(clusterClient(t, c), key)
	acked := New(clusterClient(t, c), key, WithReplicaAck(1, ackTimeout))
	waiter := New(clusterClient(t, c), key, WithPollInterval(noPoll))
	if err := acked.Save(ctx, secretToken()); err != nil {
		t.Fatalf("Save: %v", err)
	}
	l := mustLease(t, ctx, holder)
	v := l.Record().Version
	c.MasterFor(t, holder.Key()).WaitReplicas(t, 1) // the lease has reached the replica
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	waited := startWait(wctx, waiter, v)
	waitClusterSubscribed(t, ctx, c, waiter)

	// The master stops answering with the commit on its way, then dies.
	// The commit's own deadline is shorter than any failover (the node
	// timeout alone is a second), so the commit fails rather than lands.
	m := c.MasterFor(t, holder.Key())
	m.Pause()
	start := time.Now()
	cctx, ccancel := context.WithTimeout(ctx, 300*time.Millisecond)
	tok := secretToken()
	err := l.Commit(cctx, tok)
	ccancel()
	if !errors.Is(err, tokensource.ErrCoordinatorUnavailable) {
		t.Fatalf("Commit while the slot's master is down = %v; want ErrCoordinatorUnavailable", err)
	}
	noSecrets(t, err)
	m.Kill()
	c.WaitFailover(t, holder.Key(), m)
	healthy := time.Since(start)

	// The holder's pending token is put back as soon as the Store answers.
	var wrote bool
	first := retryUnavailable(t, ctx, func(ctx context.Context) (err error) {
		wrote, err = acked.Restore(ctx, tokensource.Record{Token: tok, Version: v + 1})
		return err
	}).Sub(start)
	if !wrote {
		t.Fatal("Restore after the failover did not write; the failed commit must not have landed")
	}
	t.Logf("slot master killed: cluster healthy after %v, first successful Restore after %v", healthy, first)
	if err := <-waited; err != nil && !errors.Is(err, tokensource.ErrCoordinatorUnavailable) {
		t.Fatalf("a Wait across the failover = %v; want nil or ErrCoordinatorUnavailable", err)
	}

	// The old lease survived on the promoted replica; its holder releases
	// it, and the fleet goes on from the restored token.
	// Its client has not been used since the failover and still knows the
	// dead master: its first call fails and makes it reload the slots.
	retryUnavailable(t, ctx, l.Release)
	want := tok
	for _, s := range []*Store{holder, acked} {
		nl := mustLease(t, ctx, s)
		if !sameToken(nl.Record().Token, want) {
			t.Fatalf("the lease after the failover reads %v; want %v (restored, then committed)", nl.Record().Token, want)
		}
		done := startWait(ctx, waiter, nl.Record().Version)
		waitClusterSubscribed(t, ctx, c, waiter)
		want = secretToken()
		if err := nl.Commit(ctx, want); err != nil {
			t.Fatalf("Commit after the failover: %v", err)
		}
		if err := <-done; err != nil {
			t.Fatalf("Wait after the failover: %v", err)
		}
	}
}

// retryUnavailable calls f, with a second's deadline each time, until it
// succeeds, as a Source retries a coordinator that is down, and returns when
// it succeeded. Errors other than ErrCoordinatorUnavailable fail the test.
func retryUnavailable(t *testing.T, ctx context.Context, f func(context.Context) error) time.Time {
	t.Helper()
	for failed := 0; ; failed++ {
		fctx, cancel := context.WithTimeout(ctx, time.Second)
		err := f(fctx)
		cancel()
		if err == nil {
			if failed > 0 {
				t.Logf("succeeded after %d attempts that failed as a coordinator outage", failed)
			}
			return time.Now()
		}
		if !errors.Is(err, tokensource.ErrCoordinatorUnavailable) {
			t.Fatalf("during or after a failover: %v; want success or ErrCoordinatorUnavailable", err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no recovery from a failover: %v", err)
		case <-time.After(20 * time.Millisecond): // a retry cadence, as a Source's
		}
	}
}
