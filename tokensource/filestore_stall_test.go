package tokensource

import (
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
