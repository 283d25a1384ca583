package tokensource

import (
	"context"
	"errors"
	"os"
	"sync"
	"testing"
	"time"
)

// A member stalled inside the lock file's critical section (GC, CPU
// starvation, SIGSTOP) for longer than the lease's TTL, while the holder is
// in the middle of a refresh, does not take the holder's lease over when it
// resumes: the holder's refresh token is presented once, and the holder's
// commit, which waited for the lock meanwhile, lands.
func TestFileStoreCoordStalledNonHolder(t *testing.T) {
	t.Parallel()
	path := tokenFile(t)
	const ttl = time.Second
	r, login := newRotating(time.Hour)
	holder := NewFileStore(path, WithFileLeaseTTL(ttl), WithFilePollInterval(2*time.Millisecond))
	if err := holder.Save(ctxBG, login); err != nil {
		t.Fatal(err)
	}
	lh := mustLease(t, holder)
	// The holder presents its refresh token: the server rotates it.
	next, err := r.Refresh(ctxBG, lh.Record().Token)
	if err != nil {
		t.Fatal(err)
	}

	stalled := NewFileStore(path, WithFileLeaseTTL(ttl), WithFilePollInterval(2*time.Millisecond))
	inside, resume := make(chan struct{}), make(chan struct{})
	var once sync.Once
	stalled.inLock = func() { once.Do(func() { close(inside); <-resume }) }
	type tryResult struct {
		l   Lease
		err error
	}
	tried := make(chan tryResult, 1)
	go func() {
		l, err := stalled.TryLease(ctxBG)
		tried <- tryResult{l, err}
	}()
	<-inside
	// The holder's commit waits for the lock the stalled member holds.
	committed := make(chan error, 1)
	go func() { committed <- lh.Commit(ctxBG, next) }()
	// The stall outlasts the lease's expiry as the lock file records it
	// (the holder cannot renew it there without the lock).
	_, expires := leaseExpiry(t, path)
	time.Sleep(time.Until(time.Unix(0, expires)) + ttl/2)
	stalledFor := time.Since(time.Unix(0, expires)) + ttl
	close(resume)

	res := <-tried
	if res.err != nil {
		t.Fatal(res.err)
	}
	if res.l != nil {
		// Taken over: the member presents the record's refresh token, as
		// a Source would.
		if _, err := r.Refresh(ctxBG, res.l.Record().Token); err == nil {
			_ = res.l.Commit(ctxBG, &Token{AccessToken: "at-stalled"})
		} else {
			_ = res.l.Release(ctxBG)
		}
		t.Errorf("the stalled member took over the live holder's lease (TakenOver %v)", res.l.TakenOver())
	}
	if err := <-committed; err != nil {
		t.Errorf("the holder's commit = %v, want it to land", err)
	}
	if n := r.reused.Load(); n != 0 {
		t.Errorf("%d refresh tokens presented twice", n)
	}
	if rec := mustRecord(t, holder); !sameToken(rec.Token, next) || rec.Version != 2 {
		t.Errorf("record = %+v, want the holder's token at revision 2", rec)
	}
	t.Logf("stalled in the critical section about %v (TTL %v)", stalledFor.Round(10*time.Millisecond), ttl)
}

// A lease is live while its holder's heartbeats say so, for TryLease and
// Wait alike, although its expiry in the lock file has passed. A heartbeat
// counts only for the lease that wrote it: an earlier holder's, even one it
// writes after losing the lease, neither keeps the current lease alive nor
// overwrites its holder's heartbeat; a slot that cannot be read counts as
// no heartbeat.
func TestFileStoreCoordHeartbeatOwnLeaseOnly(t *testing.T) {
	t.Parallel()
	path := tokenFile(t)
	const ttl = time.Second
	a := NewFileStore(path, WithFileLeaseTTL(ttl))
	la := mustLease(t, a).(*fileLease)
	la.stopRenewing() // a hangs
	lb := mustLease(t, shifted(path, time.Hour, WithFileLeaseTTL(ttl))).(*fileLease)
	lb.stopRenewing() // b's renewals are written by hand below
	start := time.Now()
	if err := a.writeHeartbeat(lb.slot, lb.owner, start.Add(5*time.Hour)); err != nil {
		t.Fatal(err)
	}
	// a's one heartbeat after it lost the lease (it had read the lock file
	// before b took over).
	if err := a.writeHeartbeat(la.slot, la.owner, start.Add(10*time.Hour)); err != nil {
		t.Fatal(err)
	}
	at3h := shifted(path, 3*time.Hour)
	mustNoLease(t, at3h, "while the holder's heartbeat is live past the lock file's expiry")
	wctx, cancel := context.WithTimeout(ctxBG, 50*time.Millisecond)
	defer cancel()
	if err := at3h.Wait(wctx, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait while the holder's heartbeat is live = %v, want DeadlineExceeded", err)
	}
	lc := mustLease(t, shifted(path, 6*time.Hour)).(*fileLease)
	if !lc.TakenOver() {
		t.Error("a lease whose heartbeats ended was not reported as taken over")
	}
	if lc.slot == lb.slot {
		t.Errorf("two leases in a row use heartbeat slot %d", lc.slot)
	}
	lc.stopRenewing()
	// A slot left unreadable (a crash of the host in the middle of its
	// write) does not keep the lease alive.
	hf, err := os.OpenFile(path+".heartbeat", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hf.WriteAt([]byte(`{"owner":"`+lc.owner+`","expires":9`), int64(lc.slot)*heartbeatSlotSize); err != nil {
		t.Fatal(err)
	}
	_ = hf.Close()
	ld := mustLease(t, shifted(path, 7*time.Hour))
	if err := ld.Release(ctxBG); err != nil {
		t.Fatal(err)
	}
}
