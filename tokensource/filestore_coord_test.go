package tokensource

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/testutil"
)

// Tests of FileStore as a Coordinator within one process: two FileStores on
// one path stand for two Sources (or processes); a FileStore whose clock is
// shifted forward sees the others' leases as expired without the test
// waiting for their TTL. The tests with real processes are in
// filestore_proc_test.go.

// shifted returns a FileStore on path whose lease clock runs d ahead.
func shifted(path string, d time.Duration, opts ...FileStoreOption) *FileStore {
	f := NewFileStore(path, opts...)
	f.now = func() time.Time { return time.Now().Add(d) }
	return f
}

func mustLease(t *testing.T, f *FileStore) Lease {
	t.Helper()
	l, err := f.TryLease(ctxBG)
	if err != nil || l == nil {
		t.Fatalf("TryLease = (%v, %v), want a lease", l, err)
	}
	return l
}

func mustNoLease(t *testing.T, f *FileStore, why string) {
	t.Helper()
	l, err := f.TryLease(ctxBG)
	if err != nil || l != nil {
		if l != nil {
			_ = l.Release(ctxBG)
		}
		t.Fatalf("TryLease %s = (%v, %v), want (nil, nil)", why, l, err)
	}
}

func mustRecord(t *testing.T, f *FileStore) Record {
	t.Helper()
	rec, err := f.LoadRecord(ctxBG)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// leaseExpiry reads the expiry in the lock file beside path.
func leaseExpiry(t *testing.T, path string) (owner string, expires int64) {
	t.Helper()
	data, err := os.ReadFile(path + ".lock")
	if err != nil {
		t.Fatal(err)
	}
	lr, ok := parseLeaseRecord(data)
	if !ok {
		t.Fatalf("lock file does not hold a lease record: %q", data)
	}
	return lr.Owner, lr.Expires
}

func TestFileStoreCoordLeaseExclusion(t *testing.T) {
	t.Parallel()
	path := tokenFile(t)
	a, b := NewFileStore(path), NewFileStore(path)
	la := mustLease(t, a)
	mustNoLease(t, b, "by a second FileStore while the first holds the lease")
	mustNoLease(t, a, "by the holder's own FileStore")
	if la.TakenOver() {
		t.Error("a free lease reported as taken over")
	}
	if err := la.Release(ctxBG); err != nil {
		t.Fatal(err)
	}
	if err := la.Release(ctxBG); err != nil {
		t.Fatalf("second Release = %v, want nil (idempotent)", err)
	}
	lb := mustLease(t, b)
	if lb.TakenOver() {
		t.Error("a released lease reported as taken over")
	}
	if err := lb.Release(ctxBG); err != nil {
		t.Fatal(err)
	}
}

// Exclusion holds for many goroutines on many FileStores at once: every
// commit is counted once, and nobody holds the lease while another does.
func TestFileStoreCoordConcurrentCommits(t *testing.T) {
	t.Parallel()
	path := tokenFile(t)
	const members, rounds = 6, 10
	var holders, overlaps, commits atomic.Int64
	var wg sync.WaitGroup
	for range members {
		f := NewFileStore(path, WithFilePollInterval(time.Millisecond))
		wg.Go(func() {
			for done := 0; done < rounds; {
				rec, err := f.LoadRecord(ctxBG)
				if err != nil {
					t.Error(err)
					return
				}
				l, err := f.TryLease(ctxBG)
				if err != nil {
					t.Error(err)
					return
				}
				if l == nil {
					if err := f.Wait(ctxBG, rec.Version); err != nil {
						t.Error(err)
						return
					}
					continue
				}
				if holders.Add(1) != 1 {
					overlaps.Add(1)
				}
				n := 0
				if r := l.Record(); r.Token != nil {
					n, _ = strconv.Atoi(r.Token.AccessToken)
				}
				holders.Add(-1)
				switch err := l.Commit(ctxBG, &Token{AccessToken: strconv.Itoa(n + 1)}); {
				case err == nil:
					commits.Add(1)
					done++
				case !errors.Is(err, ErrLeaseLost):
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	rec := mustRecord(t, NewFileStore(path))
	if got, want := rec.Token.AccessToken, strconv.Itoa(members*rounds); got != want || commits.Load() != members*rounds {
		t.Errorf("counter = %s after %d commits, want %s", got, commits.Load(), want)
	}
	if rec.Version != members*rounds {
		t.Errorf("revision = %d, want %d (one per commit)", rec.Version, members*rounds)
	}
	if overlaps.Load() != 0 {
		t.Errorf("%d times two members held the lease at once", overlaps.Load())
	}
}

// The holder renews its lease: after the renewal, a member whose clock is
// past the original expiry (but before the renewed one) still finds it held.
// Once a member takes the lease over, the old holder stops renewing and its
// commit is refused while the new holder is live.
func TestFileStoreCoordRenewal(t *testing.T) {
	t.Parallel()
	path := tokenFile(t)
	const ttl = 900 * time.Millisecond
	a := NewFileStore(path, WithFileLeaseTTL(ttl))
	la := mustLease(t, a)
	owner, first := leaseExpiry(t, path)
	var renewed int64
	for deadline := time.Now().Add(20 * ttl); ; {
		o, e := leaseExpiry(t, path)
		if o != owner {
			t.Fatalf("lease owner changed to %q", o)
		}
		if e > first {
			renewed = e
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the lease was never renewed")
		}
		time.Sleep(ttl / 10) // polling another goroutine's file writes
	}
	between := NewFileStore(path, WithFileLeaseTTL(ttl))
	between.now = func() time.Time { return time.Unix(0, first+(renewed-first)/2) }
	mustNoLease(t, between, "past the original expiry, before the renewed one")

	b := shifted(path, 100*ttl, WithFileLeaseTTL(ttl))
	lb := mustLease(t, b)
	if !lb.TakenOver() {
		t.Error("a lease taken from an expired holder does not report TakenOver")
	}
	err := la.Commit(ctxBG, &Token{AccessToken: "stale-secret-token"})
	if !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("Commit of a lease taken over by a live member = %v, want ErrLeaseLost", err)
	}
	if strings.Contains(err.Error(), "stale-secret-token") {
		t.Errorf("error quotes the token: %v", err)
	}
	if rec := mustRecord(t, a); rec.Token != nil || rec.Version != 0 {
		t.Errorf("record after a refused commit = %+v, want it empty", rec)
	}
	if err := lb.Commit(ctxBG, &Token{AccessToken: "new"}); err != nil {
		t.Fatal(err)
	}
}

// A commit is refused, and writes nothing, once another member has committed
// over the revision the lease read; an unconditional Save fences it too.
func TestFileStoreCoordFencedCommit(t *testing.T) {
	t.Parallel()
	for _, by := range []string{"peer commit", "save"} {
		t.Run(by, func(t *testing.T) {
			path := tokenFile(t)
			a := NewFileStore(path, WithFileLeaseTTL(time.Second))
			if err := a.Save(ctxBG, &Token{AccessToken: "at-0", RefreshToken: "rt-0"}); err != nil {
				t.Fatal(err)
			}
			la := mustLease(t, a)
			if rec := la.Record(); rec.Version != 1 || rec.Token.RefreshToken != "rt-0" {
				t.Fatalf("lease record = %+v, want revision 1 with rt-0", rec)
			}
			newer := &Token{AccessToken: "at-newer", RefreshToken: "rt-newer"}
			b := shifted(path, time.Hour)
			if by == "save" {
				if err := b.Save(ctxBG, newer); err != nil {
					t.Fatal(err)
				}
			} else {
				lb := mustLease(t, b) // la counts as expired for b
				if err := lb.Commit(ctxBG, newer); err != nil {
					t.Fatal(err)
				}
			}
			err := la.Commit(ctxBG, &Token{AccessToken: "at-stale-secret", RefreshToken: "rt-stale-secret"})
			if !errors.Is(err, ErrLeaseLost) {
				t.Fatalf("Commit after a %s = %v, want ErrLeaseLost", by, err)
			}
			if msg := err.Error(); strings.Contains(msg, "secret") || strings.Contains(msg, "at-newer") || strings.Contains(msg, "rt-newer") {
				t.Errorf("error quotes a token: %v", err)
			}
			rec := mustRecord(t, a)
			if !sameToken(rec.Token, newer) || rec.Version != 2 {
				t.Errorf("record = %+v, want the newer token at revision 2", rec)
			}
			// The refused holder gave up its lease.
			if l := mustLease(t, NewFileStore(path)); l.TakenOver() {
				t.Error("the refused holder's lease was still in the lock file")
			} else if err := l.Release(ctxBG); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A commit after the lease expired, or after Release, succeeds while nobody
// else has taken the lease: a late result is not lost.
func TestFileStoreCoordLateCommit(t *testing.T) {
	t.Parallel()
	t.Run("expired", func(t *testing.T) {
		path := tokenFile(t)
		a := NewFileStore(path, WithFileLeaseTTL(time.Second))
		la := mustLease(t, a)
		la.(*fileLease).stopRenewing() // the holder hangs
		later := shifted(path, time.Hour)
		if err := later.Wait(ctxBG, 0); err != nil { // an expired lease wakes waiters
			t.Fatal(err)
		}
		if err := la.Commit(ctxBG, &Token{AccessToken: "late"}); err != nil {
			t.Fatalf("late Commit with nobody else = %v, want nil", err)
		}
		if rec := mustRecord(t, later); rec.Token.AccessToken != "late" || rec.Version != 1 {
			t.Errorf("record = %+v", rec)
		}
		if l := mustLease(t, later); l.TakenOver() {
			t.Error("Commit did not free the lease")
		} else {
			_ = l.Release(ctxBG)
		}
	})
	t.Run("released", func(t *testing.T) {
		path := tokenFile(t)
		a := NewFileStore(path)
		la := mustLease(t, a)
		if err := la.Release(ctxBG); err != nil {
			t.Fatal(err)
		}
		if err := la.Commit(ctxBG, &Token{AccessToken: "late"}); err != nil {
			t.Fatalf("Commit after Release with nobody else = %v, want nil", err)
		}
		if rec := mustRecord(t, a); rec.Token.AccessToken != "late" {
			t.Errorf("record = %+v", rec)
		}
	})
}

// Release never frees a lease that another member has taken over since.
func TestFileStoreCoordReleaseKeepsOthersLease(t *testing.T) {
	t.Parallel()
	path := tokenFile(t)
	a := NewFileStore(path, WithFileLeaseTTL(time.Second))
	la := mustLease(t, a)
	b := shifted(path, time.Hour)
	lb := mustLease(t, b)
	if err := la.Release(ctxBG); err != nil {
		t.Fatal(err)
	}
	// A member whose clock runs with b's sees b's lease as live.
	mustNoLease(t, shifted(path, time.Hour), "after the old holder's Release")
	if err := lb.Release(ctxBG); err != nil {
		t.Fatal(err)
	}
	l := mustLease(t, NewFileStore(path))
	_ = l.Release(ctxBG)
}

// Wait returns when the record changes (Save, Commit) or the lease is
// released, and not before.
func TestFileStoreCoordWaitWakes(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"save", "commit", "release"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			path := tokenFile(t)
			a := NewFileStore(path)
			if err := a.Save(ctxBG, &Token{AccessToken: "v1"}); err != nil {
				t.Fatal(err)
			}
			la := mustLease(t, a)
			defer la.Release(ctxBG)
			b := NewFileStore(path)
			rec := mustRecord(t, b)
			woke := make(chan error, 1)
			go func() { woke <- b.Wait(ctxBG, rec.Version) }()
			// Meanwhile a Wait bounded by a deadline runs into it: Wait
			// does not return while the lease is held and the record is
			// unchanged.
			dctx, cancel := context.WithTimeout(ctxBG, 50*time.Millisecond)
			err := b.Wait(dctx, rec.Version)
			cancel()
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("bounded Wait = %v, want DeadlineExceeded", err)
			}
			select {
			case err := <-woke:
				t.Fatalf("Wait returned %v while the lease is held and the record unchanged", err)
			default:
			}
			start := time.Now()
			switch how {
			case "save":
				err = a.Save(ctxBG, &Token{AccessToken: "v2"})
			case "commit":
				err = la.Commit(ctxBG, &Token{AccessToken: "v2"})
			case "release":
				err = la.Release(ctxBG)
			}
			if err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-woke:
				if err != nil {
					t.Fatalf("Wait = %v", err)
				}
				t.Logf("woke %v after the %s returned", time.Since(start), how)
			case <-time.After(10 * time.Second):
				t.Fatalf("Wait did not return after a %s", how)
			}
		})
	}
}

// Wait honours its ctx: cancellation and deadline.
func TestFileStoreCoordWaitHonoursCtx(t *testing.T) {
	t.Parallel()
	path := tokenFile(t)
	a := NewFileStore(path)
	la := mustLease(t, a)
	defer la.Release(ctxBG)
	ctx, cancel := context.WithCancel(ctxBG)
	woke := make(chan error, 1)
	go func() { woke <- a.Wait(ctx, 0) }()
	cancel()
	if err := <-woke; !errors.Is(err, context.Canceled) {
		t.Errorf("Wait after cancel = %v, want context.Canceled", err)
	}
	dctx, dcancel := context.WithTimeout(ctxBG, 50*time.Millisecond)
	defer dcancel()
	if err := a.Wait(dctx, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait past its deadline = %v, want context.DeadlineExceeded", err)
	}
}

// A critical section waits for the lock only within its ctx: a member that
// holds the lock (a process stopped inside a critical section, say) delays
// the others' Save, TryLease and Commit no longer than their ctx allows.
func TestFileStoreCoordLockHonoursCtx(t *testing.T) {
	t.Parallel()
	path := tokenFile(t)
	a, b := NewFileStore(path), NewFileStore(path)
	inside, leave := make(chan struct{}), make(chan struct{})
	held := make(chan error, 1)
	go func() {
		held <- a.locked(ctxBG, func(*os.File) error {
			close(inside)
			<-leave
			return nil
		})
	}()
	<-inside
	ctx, cancel := context.WithTimeout(ctxBG, 100*time.Millisecond)
	defer cancel()
	if err := b.Save(ctx, &Token{AccessToken: "a"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Save while another FileStore holds the lock = %v, want DeadlineExceeded", err)
	}
	if l, err := b.TryLease(ctx); l != nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("TryLease while another FileStore holds the lock = (%v, %v), want DeadlineExceeded", l, err)
	}
	close(leave)
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	if err := b.Save(ctxBG, &Token{AccessToken: "a"}); err != nil {
		t.Fatal(err)
	}
}

// Files of format version 1 (no revision) are read as revision 1, and the
// first write turns them into version 2.
func TestFileStoreCoordVersion1File(t *testing.T) {
	t.Parallel()
	path := tokenFile(t)
	if err := os.WriteFile(path, []byte(`{"version":1,"access_token":"a1","refresh_token":"r1"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	f := NewFileStore(path)
	if rec := mustRecord(t, f); rec.Version != 1 || rec.Token.RefreshToken != "r1" {
		t.Fatalf("record of a version-1 file = %+v, want revision 1", rec)
	}
	l := mustLease(t, f)
	if rec := l.Record(); rec.Version != 1 || rec.Token.AccessToken != "a1" {
		t.Fatalf("lease record = %+v", rec)
	}
	if err := l.Commit(ctxBG, &Token{AccessToken: "a2", RefreshToken: "r2"}); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"version":2,"revision":2,`) {
		t.Errorf("file after the commit = %s, want version 2 at revision 2", data)
	}
	if err := f.Save(ctxBG, &Token{AccessToken: "a3"}); err != nil {
		t.Fatal(err)
	}
	if rec := mustRecord(t, f); rec.Version != 3 {
		t.Errorf("revision after a Save = %d, want 3", rec.Version)
	}
}

// A corrupt token file fails TryLease (the lease stays free), and a Save
// over it still moves the revision past every one written before, so that
// no lease taken before the corruption can commit over the login.
func TestFileStoreCoordCorruptFile(t *testing.T) {
	t.Parallel()
	path := tokenFile(t)
	f := NewFileStore(path)
	for range 3 {
		if err := f.Save(ctxBG, &Token{AccessToken: "a"}); err != nil {
			t.Fatal(err)
		}
	}
	stale := mustLease(t, f) // read revision 3
	if err := stale.Release(ctxBG); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(`{"version":2,"revision":1,"access_token":"secret-in-a-corrupt-file"`), 0o600); err != nil {
		t.Fatal(err)
	}
	if l, err := f.TryLease(ctxBG); l != nil || !errors.Is(err, ErrCorruptStore) {
		t.Fatalf("TryLease on a corrupt file = (%v, %v), want ErrCorruptStore", l, err)
	} else if strings.Contains(err.Error(), "secret") {
		t.Errorf("error quotes the file: %v", err)
	}
	if err := f.Save(ctxBG, &Token{AccessToken: "login"}); err != nil {
		t.Fatal(err)
	}
	if rec := mustRecord(t, f); rec.Version != 4 || rec.Token.AccessToken != "login" {
		t.Errorf("record after a Save over a corrupt file = %+v, want revision 4", rec)
	}
	l := mustLease(t, f)
	_ = l.Release(ctxBG)
}

// Sources on separate FileStores of one path make one Refresher call per
// expiry between them, with a rotating refresh token that nobody presents
// twice. (The Sources' clock is fake; the leases run on the real one.)
func TestFileStoreCoordSources(t *testing.T) {
	t.Parallel()
	path := tokenFile(t)
	clk := testutil.NewClock(testutil.Epoch)
	r := &rotating{now: clk.Now, valid: "rt-0", life: time.Hour}
	if err := NewFileStore(path).Save(ctxBG, &Token{AccessToken: "at-0", RefreshToken: "rt-0", Expiry: clk.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	var srcs []*Source
	for range 4 {
		s := New(r, WithStore(NewFileStore(path, WithFilePollInterval(2*time.Millisecond))),
			WithClock(clk.Now), WithEarlyRefresh(0))
		t.Cleanup(func() { mustClose(t, s) })
		srcs = append(srcs, s)
	}
	const expiries = 3
	for e := range expiries {
		clk.Advance(2 * time.Hour)
		var wg sync.WaitGroup
		for _, s := range srcs {
			for range 8 {
				wg.Go(func() {
					tok, err := s.Token(ctxBG)
					if want := "at-" + strconv.Itoa(e+1); err != nil || tok.AccessToken != want {
						t.Errorf("expiry %d: Token = (%v, %v), want %s", e+1, tok, err, want)
					}
				})
			}
		}
		wg.Wait()
	}
	if got := r.calls.Load(); got != expiries {
		t.Errorf("%d Refresher calls, want %d (one per expiry)", got, expiries)
	}
	if got := r.reused.Load(); got != 0 {
		t.Errorf("%d reused refresh tokens", got)
	}
	if rec := mustRecord(t, NewFileStore(path)); rec.Token.RefreshToken != "rt-"+strconv.Itoa(expiries) {
		t.Errorf("file holds %+v, want the last rotated refresh token", rec)
	}
}
