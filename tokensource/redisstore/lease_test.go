package redisstore

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/redistest"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// shortTTL is the lease TTL of tests that let leases expire: short enough to
// keep them quick, long enough that a live holder on a loaded machine renews
// in time (every 500 ms).
const shortTTL = 1500 * time.Millisecond

func TestLeaseExclusion(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	stores := make([]*Store, 8)
	for i := range stores {
		stores[i] = member(t, srv, "token")
	}

	// Many members race for the lease at once: exactly one gets it.
	var granted atomic.Int64
	var wg sync.WaitGroup
	leases := make(chan tokensource.Lease, len(stores)*4)
	for _, s := range stores {
		for range 4 {
			wg.Go(func() {
				l, err := s.TryLease(ctx)
				if err != nil {
					t.Errorf("TryLease: %v", err)
					return
				}
				if l != nil {
					granted.Add(1)
					leases <- l
				}
			})
		}
	}
	wg.Wait()
	close(leases)
	if n := granted.Load(); n != 1 {
		t.Fatalf("%d members got the lease at once; want exactly 1", n)
	}
	l := <-leases
	if l.TakenOver() {
		t.Fatal("a first lease reports a takeover")
	}
	if rec := l.Record(); rec.Token != nil || rec.Version != 0 {
		t.Fatalf("Record() of an empty store = %+v", rec)
	}

	// Released: the next member gets it, and it is no takeover.
	if err := l.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatalf("second Release: %v (Release is idempotent)", err)
	}
	next := mustLease(t, ctx, stores[1])
	if next.TakenOver() {
		t.Fatal("a lease taken after a Release reports a takeover")
	}
	want := secretToken()
	if err := next.Commit(ctx, want); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	// Committed: free again, and the next holder reads the new record.
	after := mustLease(t, ctx, stores[2])
	defer after.Release(ctx)
	if after.TakenOver() {
		t.Fatal("a lease taken after a Commit reports a takeover")
	}
	if rec := after.Record(); !sameToken(rec.Token, want) || rec.Version != 1 {
		t.Fatalf("Record() after the commit = %+v; want the committed token at version 1", rec)
	}
}

func TestLeaseRenewedPastTTL(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	a := member(t, srv, "token", WithLeaseTTL(shortTTL))
	b := member(t, srv, "token", WithLeaseTTL(shortTTL))

	l := mustLease(t, ctx, a)
	owner := l.(*lease).owner
	// The passing of time is what this test is about: three TTLs, during
	// which only the renewal can keep the lease alive.
	time.Sleep(3 * shortTTL)
	if got := newClient(t, srv).Get(ctx, a.leaseKey).Val(); got != owner {
		t.Fatalf("after 3 TTLs the lease key holds %q; want the holder's owner (renewed)", got)
	}
	mustNotLease(t, ctx, b)
	if err := l.Commit(ctx, secretToken()); err != nil {
		t.Fatalf("Commit after a long refresh: %v", err)
	}
}

func TestExpiredLeaseIsTakenOver(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	a := member(t, srv, "token", WithLeaseTTL(shortTTL), WithPollInterval(50*time.Millisecond))
	b := member(t, srv, "token", WithLeaseTTL(shortTTL), WithPollInterval(50*time.Millisecond))
	seed := secretToken()
	if err := a.Save(ctx, seed); err != nil {
		t.Fatal(err)
	}

	la := mustLease(t, ctx, a)
	freeze(la) // the holder dies mid-refresh
	mustNotLease(t, ctx, b)
	waitLeaseGone(t, ctx, b)

	lb := mustLease(t, ctx, b)
	if !lb.TakenOver() {
		t.Fatal("TakenOver() = false for a lease whose holder stopped renewing")
	}
	if rec := lb.Record(); !sameToken(rec.Token, seed) {
		t.Fatalf("the new holder reads %v; want the newest token %v", rec.Token, seed)
	}
	if err := lb.Commit(ctx, secretToken()); err != nil {
		t.Fatalf("Commit of the new holder: %v", err)
	}
}

func TestFencedCommitRefusedAfterTakeover(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	a := member(t, srv, "token", WithLeaseTTL(shortTTL), WithPollInterval(50*time.Millisecond))
	b := member(t, srv, "token", WithLeaseTTL(shortTTL), WithPollInterval(50*time.Millisecond))
	if err := a.Save(ctx, secretToken()); err != nil {
		t.Fatal(err)
	}

	la := mustLease(t, ctx, a)
	freeze(la) // SIGSTOP past the TTL
	waitLeaseGone(t, ctx, b)
	lb := mustLease(t, ctx, b)

	// While b holds the lease, a's late commit is refused ("held").
	err := la.Commit(ctx, secretToken())
	if !errors.Is(err, tokensource.ErrLeaseLost) {
		t.Fatalf("Commit of a paused holder while another holds the lease = %v; want ErrLeaseLost", err)
	}
	noSecrets(t, err)

	winner := secretToken()
	if err := lb.Commit(ctx, winner); err != nil {
		t.Fatalf("Commit of the new holder: %v", err)
	}
	// After b committed, a's commit is refused by the version ("version").
	if err := la.Commit(ctx, secretToken()); !errors.Is(err, tokensource.ErrLeaseLost) {
		t.Fatalf("Commit of a paused holder after another committed = %v; want ErrLeaseLost", err)
	}
	if rec := mustLoad(t, ctx, a); !sameToken(rec.Token, winner) {
		t.Fatalf("record = %v after the refused commit; want the winner's %v (nothing overwritten)", rec.Token, winner)
	}
	// a's release after all this leaves the lease and record alone.
	lc := mustLease(t, ctx, b)
	if err := la.Release(ctx); err != nil {
		t.Fatalf("Release of the paused holder: %v", err)
	}
	mustNotLease(t, ctx, a)
	if err := lc.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestLateCommitAfterExpiryWithoutTakeover(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	a := member(t, srv, "token", WithLeaseTTL(shortTTL), WithPollInterval(50*time.Millisecond))
	b := member(t, srv, "token", WithLeaseTTL(shortTTL), WithPollInterval(50*time.Millisecond))

	la := mustLease(t, ctx, a)
	freeze(la)
	waitLeaseGone(t, ctx, b)

	late := secretToken()
	if err := la.Commit(ctx, late); err != nil {
		t.Fatalf("late Commit with nobody else holding the lease = %v; want success (the result is not lost)", err)
	}
	if rec := mustLoad(t, ctx, b); !sameToken(rec.Token, late) || rec.Version != 1 {
		t.Fatalf("record = %+v; want the late token at version 1", rec)
	}
	// The late commit ended the holder's tenure: no takeover is reported.
	lb := mustLease(t, ctx, b)
	defer lb.Release(ctx)
	if lb.TakenOver() {
		t.Fatal("TakenOver() after the expired holder committed late")
	}
}

func TestCommitAfterRelease(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	a := member(t, srv, "token")
	b := member(t, srv, "token")

	// The Source releases at its refresh timeout and may commit a late
	// result afterwards: allowed while nobody else took the lease.
	l := mustLease(t, ctx, a)
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	late := secretToken()
	if err := l.Commit(ctx, late); err != nil {
		t.Fatalf("Commit after Release = %v; want success", err)
	}
	if rec := mustLoad(t, ctx, b); !sameToken(rec.Token, late) {
		t.Fatalf("record = %v; want %v", rec.Token, late)
	}

	// Released, then someone else took it: refused.
	l = mustLease(t, ctx, a)
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	lb := mustLease(t, ctx, b)
	if err := l.Commit(ctx, secretToken()); !errors.Is(err, tokensource.ErrLeaseLost) {
		t.Fatalf("Commit after Release while another holds the lease = %v; want ErrLeaseLost", err)
	}
	if err := lb.Commit(ctx, secretToken()); err != nil {
		t.Fatalf("the other holder's Commit: %v", err)
	}
}

func TestSaveFencesTheHolder(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	a := member(t, srv, "token")
	b := member(t, srv, "token")

	l := mustLease(t, ctx, a)
	login := secretToken()
	if err := b.Save(ctx, login); err != nil { // SetToken elsewhere: a new login
		t.Fatal(err)
	}
	if err := l.Commit(ctx, secretToken()); !errors.Is(err, tokensource.ErrLeaseLost) {
		t.Fatalf("Commit over a newer Save = %v; want ErrLeaseLost", err)
	}
	if rec := mustLoad(t, ctx, a); !sameToken(rec.Token, login) {
		t.Fatalf("record = %v; want the login %v", rec.Token, login)
	}
	mustLease(t, ctx, b).Release(ctx) // the refused Commit ended a's lease
}

func TestReleaseKeepsAnothersLease(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	a := member(t, srv, "token", WithLeaseTTL(shortTTL), WithPollInterval(50*time.Millisecond))
	b := member(t, srv, "token", WithLeaseTTL(shortTTL), WithPollInterval(50*time.Millisecond))

	la := mustLease(t, ctx, a)
	freeze(la)
	waitLeaseGone(t, ctx, b)
	lb := mustLease(t, ctx, b)

	if err := la.Release(ctx); err != nil {
		t.Fatalf("Release of the expired lease: %v", err)
	}
	mustNotLease(t, ctx, a) // b's lease survived a's Release
	if err := lb.Commit(ctx, secretToken()); err != nil {
		t.Fatalf("Commit of the holder after the other's Release: %v", err)
	}
}

// TestScriptsIdempotentForRetries replays TryLease's and Commit's scripts, as
// go-redis does when a reply is lost after the server ran the command.
func TestScriptsIdempotentForRetries(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	s := member(t, srv, "token")
	keys := []string{s.recordKey, s.leaseKey}

	for range 2 {
		res, err := acquireScript.Run(ctx, s.client, keys, "owner-1", "30000").Slice()
		if err != nil {
			t.Fatalf("acquire (retried): %v", err)
		}
		if taken, _ := res[0].(int64); taken != 0 {
			t.Fatal("a retried acquire reports a takeover from itself")
		}
	}
	if _, err := acquireScript.Run(ctx, s.client, keys, "owner-2", "30000").Slice(); err == nil {
		t.Fatal("another owner got the lease")
	}
	for i := range 2 {
		res, err := commitScript.Run(ctx, s.client, keys, "owner-1", "0", "payload-1", s.channel, "1").Slice()
		if err != nil {
			t.Fatalf("commit attempt %d: %v", i+1, err)
		}
		if ok, _ := res[0].(int64); ok != 1 {
			t.Fatalf("commit attempt %d refused (%v); a retry of an applied commit must succeed", i+1, res[1])
		}
	}
	if v := newClient(t, srv).HGet(ctx, s.recordKey, "version").Val(); v != "1" {
		t.Fatalf("version %s after a retried commit; want 1 (applied once)", v)
	}
	// A different payload at that version is not ours: refused.
	res, err := commitScript.Run(ctx, s.client, keys, "owner-1", "0", "payload-2", s.channel, "1").Slice()
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := res[0].(int64); ok != 0 {
		t.Fatal("a stale commit with another payload succeeded")
	}

	// A Restore retried after its reply was lost keeps the mark it set; a
	// retried commit that finds its payload at its version (put back by
	// a Restore meanwhile) succeeds and clears the mark as a commit does.
	for i, want := range []int64{1, 0} {
		n, err := restoreScript.Run(ctx, s.client, []string{s.recordKey}, "2", "payload-r", s.channel, "1").Int64()
		if err != nil || n != want {
			t.Fatalf("restore attempt %d = (%d, %v); want %d", i+1, n, err, want)
		}
		if r := newClient(t, srv).HGet(ctx, s.recordKey, "restored").Val(); r != "1" {
			t.Fatalf("restore attempt %d left restored = %q; want 1", i+1, r)
		}
	}
	res, err = commitScript.Run(ctx, s.client, keys, "owner-1", "1", "payload-r", s.channel, "2").Slice()
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := res[0].(int64); ok != 1 {
		t.Fatalf("a retried commit over its restored payload refused (%v)", res[1])
	}
	if n := newClient(t, srv).HExists(ctx, s.recordKey, "restored").Val(); n {
		t.Fatal("a commit left the record marked restored")
	}
}

// TestTryLeaseCutOffGivesLeaseBack: a TryLease whose ctx ends while the
// server is busy may still be executed by it; the lease is given back rather
// than left to block the fleet for a TTL.
func TestTryLeaseCutOffGivesLeaseBack(t *testing.T) {
	srv := redistest.Start(t, "--enable-debug-command", "yes")
	ctx := testContext(t)
	s := member(t, srv, "token", WithLeaseTTL(time.Minute))
	// Connects the pool and loads the script, so that the cut-off call is
	// an EVALSHA the server will run (not one it answers with NOSCRIPT).
	if err := mustLease(t, ctx, s).Release(ctx); err != nil {
		t.Fatal(err)
	}
	admin := newClient(t, srv)
	sleeping := make(chan error, 1)
	go func() { sleeping <- admin.Do(ctx, "DEBUG", "SLEEP", "2").Err() }()
	// The server is inside DEBUG SLEEP once it stops answering PING.
	probe := newClient(t, srv)
	for {
		pctx, pcancel := context.WithTimeout(ctx, 50*time.Millisecond)
		err := probe.Ping(pctx).Err()
		pcancel()
		if err != nil {
			break
		}
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	l, err := s.TryLease(short)
	cancel()
	if err == nil {
		t.Fatalf("TryLease during DEBUG SLEEP = %v, nil; want a deadline error", l)
	}
	if !isUnavailable(err) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("TryLease cut off = %v; want ErrCoordinatorUnavailable and context.DeadlineExceeded", err)
	}
	if err := <-sleeping; err != nil {
		t.Fatalf("DEBUG SLEEP: %v", err)
	}
	if n := admin.Exists(ctx, s.leaseKey).Val(); n != 0 {
		t.Fatal("the cut-off TryLease left a lease nobody renews")
	}
	mustLease(t, ctx, s).Release(ctx)
}
