//go:build unix

package tokensource

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func init() { platformHelperRoles["stall"] = helperStall }

// helperStall stops its own process (SIGSTOP) inside the lock file's
// critical section of its first TryLease, for the test to continue it, then
// does what a Source does: holding the lease, it would present the record's
// refresh token, and prints "took <refresh token>"; otherwise it waits for
// the holder's commit and prints the record it adopts, "adopted <revision>
// <refresh token>".
func helperStall(ctx context.Context, f *FileStore) error {
	var once sync.Once
	f.inLock = func() { once.Do(func() { _ = syscall.Kill(os.Getpid(), syscall.SIGSTOP) }) }
	rec, err := f.LoadRecord(ctx)
	if err != nil {
		return err
	}
	l, err := f.TryLease(ctx)
	if err != nil {
		return err
	}
	if l != nil {
		fmt.Println("took", l.Record().Token.RefreshToken)
		return l.Release(ctx)
	}
	for {
		if err := f.Wait(ctx, rec.Version); err != nil {
			return err
		}
		now, err := f.LoadRecord(ctx)
		if err != nil {
			return err
		}
		if now.Version != rec.Version && now.Token != nil {
			fmt.Println("adopted", now.Version, now.Token.RefreshToken)
			return nil
		}
	}
}

// A holder stopped (SIGSTOP) past its TTL loses the lease to another
// process, which commits a newer token; continued (SIGCONT), the old holder
// has its commit refused and the newer token is intact.
func TestFileStoreProcessStoppedHolder(t *testing.T) {
	t.Parallel()
	path := tokenFile(t)
	const ttl = time.Second
	f := NewFileStore(path, WithFileLeaseTTL(ttl), WithFilePollInterval(5*time.Millisecond))
	if err := f.Save(ctxBG, &Token{AccessToken: "at-0", RefreshToken: "rt-0"}); err != nil {
		t.Fatal(err)
	}
	p := startHelper(t, "hold", path, ttl, 0)
	if got := p.line(t); got != "held 1" {
		t.Fatalf("helper said %q, want held 1", got)
	}
	stopOutsideLock(t, p, f)
	stopped := time.Now()
	l := waitTakeover(t, f, 1)
	t.Logf("lease taken over %v after SIGSTOP (TTL %v)", time.Since(stopped).Round(time.Millisecond), ttl)
	if !l.TakenOver() {
		t.Error("the paused holder's lease was not reported as taken over")
	}
	newer := &Token{AccessToken: "at-newer", RefreshToken: "rt-newer"}
	if err := l.Commit(ctxBG, newer); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	p.send(t, "commit at-stale")
	if got := p.line(t); got != "lost" {
		t.Errorf("the resumed holder's commit: %q, want lost (ErrLeaseLost)", got)
	}
	p.finish(t)
	if rec := mustRecord(t, f); !sameToken(rec.Token, newer) || rec.Version != 2 {
		t.Errorf("record = %+v, want the newer token at revision 2", rec)
	}
}

// A process stopped (SIGSTOP) inside the lock file's critical section past
// the lease's TTL, while the holder is in the middle of a refresh, does not
// take the holder's lease over when it continues: it adopts the holder's
// result, the holder's refresh token is presented once, and the holder's
// commit, which waited for the lock meanwhile, lands.
func TestFileStoreProcessStoppedInsideLock(t *testing.T) {
	t.Parallel()
	path := tokenFile(t)
	const ttl = time.Second
	r, login := newRotating(time.Hour)
	holder := NewFileStore(path, WithFileLeaseTTL(ttl), WithFilePollInterval(5*time.Millisecond))
	if err := holder.Save(ctxBG, login); err != nil {
		t.Fatal(err)
	}
	lh := mustLease(t, holder)
	// The holder presents its refresh token: the server rotates it.
	next, err := r.Refresh(ctxBG, lh.Record().Token)
	if err != nil {
		t.Fatal(err)
	}
	p := startHelper(t, "stall", path, ttl, 0)
	waitStopped(t, p.cmd.Process.Pid) // inside TryLease's critical section
	committed := make(chan error, 1)
	go func() { committed <- lh.Commit(ctxBG, next) }()
	// The stop outlasts the lease's expiry as the lock file records it.
	_, expires := leaseExpiry(t, path)
	time.Sleep(time.Until(time.Unix(0, expires)) + ttl/2)
	if err := p.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	switch verb, arg, _ := strings.Cut(p.line(t), " "); verb {
	case "took":
		_, _ = r.Refresh(ctxBG, &Token{RefreshToken: arg}) // as the member would
		t.Errorf("the continued process took over the live holder's lease")
	case "adopted":
		if arg != "2 rt-1" {
			t.Errorf("the continued process adopted %q, want revision 2 with rt-1", arg)
		}
	default:
		t.Fatalf("helper said %q", verb+" "+arg)
	}
	p.finish(t)
	if err := <-committed; err != nil {
		t.Errorf("the holder's commit = %v, want it to land", err)
	}
	if n := r.reused.Load(); n != 0 {
		t.Errorf("%d refresh tokens presented twice", n)
	}
	if rec := mustRecord(t, holder); !sameToken(rec.Token, next) || rec.Version != 2 {
		t.Errorf("record = %+v, want the holder's token at revision 2", rec)
	}
}

// stopOutsideLock stops the helper with SIGSTOP at a moment when it does not
// hold the lock file's flock (its renewal takes it for a moment every
// TTL/3): stopped inside, it would block every critical section until it
// continues, which is not the case under test.
func stopOutsideLock(t *testing.T, p *helperProc, f *FileStore) {
	t.Helper()
	for range 50 {
		if err := p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		waitStopped(t, p.cmd.Process.Pid)
		ctx, cancel := context.WithTimeout(ctxBG, 100*time.Millisecond)
		err := f.locked(ctx, func(*os.File) error { return nil })
		cancel()
		if err == nil {
			return
		}
		if err := p.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
	}
	t.Fatal("could not stop the helper outside the lock")
}

// waitStopped waits until the process is in the stopped state, where
// Linux's /proc shows it; elsewhere it returns at once (kill(2) has then at
// least queued the stop).
func waitStopped(t *testing.T, pid int) {
	t.Helper()
	if runtime.GOOS != "linux" {
		return
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			t.Fatal(err)
		}
		// The state follows the command name in parentheses.
		if i := strings.LastIndexByte(string(data), ')'); i >= 0 && i+2 < len(data) && (data[i+2] == 'T' || data[i+2] == 't') {
			return
		}
	}
	t.Fatal("the helper did not stop")
}
