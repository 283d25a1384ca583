//go:build unix

package tokensource

import (
	"context"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

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
