package tokensource

import (
	"errors"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Tests of FileStore.Restore, which puts back a token the token file lost,
// and of the revision Commit writes.

func tokenAt(v uint64) *Token {
	n := strconv.FormatUint(v, 10)
	return &Token{AccessToken: "at-" + n, RefreshToken: "rt-" + n}
}

func mustRestore(t *testing.T, f *FileStore, v uint64, want bool) {
	t.Helper()
	got, err := f.Restore(ctxBG, Record{Token: tokenAt(v), Version: v})
	if err != nil || got != want {
		t.Fatalf("Restore at %d = (%v, %v), want (%v, nil)", v, got, err, want)
	}
}

func wantRecord(t *testing.T, f *FileStore, v uint64) {
	t.Helper()
	if rec := mustRecord(t, f); rec.Version != v || !sameToken(rec.Token, tokenAt(v)) {
		t.Fatalf("record = %+v, want %+v at revision %d", rec, tokenAt(v), v)
	}
}

// saveAt saves tokens until the token file is at revision v.
func saveAt(t *testing.T, f *FileStore, v uint64) {
	t.Helper()
	for mustRecord(t, f).Version < v {
		if err := f.Save(ctxBG, tokenAt(mustRecord(t, f).Version+1)); err != nil {
			t.Fatal(err)
		}
	}
	wantRecord(t, f, v)
}

// Restore writes iff the token file's revision is lower, and the revision
// it wrote is the one the next Commit and Save build on.
func TestFileStoreRestore(t *testing.T) {
	t.Parallel()
	t.Run("missing file", func(t *testing.T) {
		f := NewFileStore(tokenFile(t))
		mustRestore(t, f, 5, true)
		wantRecord(t, f, 5)
		if err := f.Save(ctxBG, tokenAt(6)); err != nil {
			t.Fatal(err)
		}
		wantRecord(t, f, 6)
	})
	t.Run("lower revision", func(t *testing.T) {
		f := NewFileStore(tokenFile(t))
		saveAt(t, f, 2)
		mustRestore(t, f, 5, true)
		wantRecord(t, f, 5)
		l := mustLease(t, f)
		if got := l.Record(); got.Version != 5 || !sameToken(got.Token, tokenAt(5)) {
			t.Fatalf("lease record = %+v, want the restored token", got)
		}
		if err := l.Commit(ctxBG, tokenAt(6)); err != nil {
			t.Fatal(err)
		}
		wantRecord(t, f, 6)
	})
	t.Run("equal or higher refused", func(t *testing.T) {
		f := NewFileStore(tokenFile(t))
		saveAt(t, f, 5)
		for _, v := range []uint64{5, 3, 0} {
			got, err := f.Restore(ctxBG, Record{Token: &Token{AccessToken: "older"}, Version: v})
			if err != nil || got {
				t.Fatalf("Restore at %d over revision 5 = (%v, %v), want (false, nil)", v, got, err)
			}
		}
		wantRecord(t, f, 5)
	})
	t.Run("maximum in either order", func(t *testing.T) {
		for _, order := range [][2]uint64{{6, 7}, {7, 6}} {
			f := NewFileStore(tokenFile(t))
			saveAt(t, f, 1)
			mustRestore(t, f, order[0], true)
			mustRestore(t, f, order[1], order[1] > order[0])
			wantRecord(t, f, 7)
		}
	})
	t.Run("nil token", func(t *testing.T) {
		f := NewFileStore(tokenFile(t))
		if got, err := f.Restore(ctxBG, Record{Version: 3}); got || err == nil {
			t.Fatalf("Restore of no token = (%v, %v), want an error", got, err)
		}
		if rec := mustRecord(t, f); rec.Version != 0 {
			t.Fatalf("record = %+v, want it empty", rec)
		}
	})
	t.Run("corrupt file", func(t *testing.T) {
		path := tokenFile(t)
		corrupt := []byte(`{"version":2,"revision":1,"access_token":"secret`)
		if err := os.WriteFile(path, corrupt, 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := NewFileStore(path).Restore(ctxBG, Record{Token: tokenAt(9), Version: 9})
		if got || !errors.Is(err, ErrCorruptStore) {
			t.Fatalf("Restore over a corrupt file = (%v, %v), want ErrCorruptStore", got, err)
		}
		if data, _ := os.ReadFile(path); string(data) != string(corrupt) {
			t.Errorf("the corrupt file was modified")
		}
	})
}

// Concurrent restores of many revisions, in any order, leave the highest.
func TestFileStoreRestoreConcurrentMaximum(t *testing.T) {
	t.Parallel()
	path := tokenFile(t)
	const n = 40
	vs := rand.Perm(n)
	var wg sync.WaitGroup
	var wrote sync.Map
	for _, v := range vs {
		f := NewFileStore(path)
		wg.Go(func() {
			ok, err := f.Restore(ctxBG, Record{Token: tokenAt(uint64(v + 1)), Version: uint64(v + 1)})
			if err != nil {
				t.Error(err)
			}
			wrote.Store(v+1, ok)
		})
	}
	wg.Wait()
	wantRecord(t, NewFileStore(path), n)
	if ok, _ := wrote.Load(n); ok != any(true) {
		t.Errorf("the restore of the highest revision reported no write")
	}
}

// Restore writes whoever holds the lease, and leaves the lease alone; the
// holder, which read the older revision, is refused at Commit, and a waiter
// wakes for the restored revision.
func TestFileStoreRestoreFencesHolder(t *testing.T) {
	t.Parallel()
	path := tokenFile(t)
	holder := NewFileStore(path)
	saveAt(t, holder, 1)
	lh := mustLease(t, holder)
	waiter := NewFileStore(path, WithFilePollInterval(2*time.Millisecond))
	woke := make(chan error, 1)
	go func() { woke <- waiter.Wait(ctxBG, 1) }()

	mustRestore(t, NewFileStore(path), 2, true)
	select {
	case err := <-woke:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return after the restore")
	}
	mustNoLease(t, NewFileStore(path), "after a restore while a live member holds the lease")
	err := lh.Commit(ctxBG, &Token{AccessToken: "at-from-1", RefreshToken: "rt-from-1"})
	if !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("Commit of a lease that read revision 1 after a restore at 2 = %v, want ErrLeaseLost", err)
	}
	wantRecord(t, holder, 2)
	l := mustLease(t, NewFileStore(path)) // the refused holder gave the lease up
	if err := l.Commit(ctxBG, tokenAt(3)); err != nil {
		t.Fatal(err)
	}
	wantRecord(t, holder, 3)
}

// A token file that went back (deleted, or replaced by an older copy) is
// reported at the revision it holds, so that members see it; Restore puts
// the newer token back, and a lease that read the older file is refused.
func TestFileStoreRestoreWentBack(t *testing.T) {
	t.Parallel()
	t.Run("deleted", func(t *testing.T) {
		path := tokenFile(t)
		f := NewFileStore(path)
		saveAt(t, f, 3)
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		if rec := mustRecord(t, f); rec.Version != 0 || rec.Token != nil {
			t.Fatalf("record of a deleted file = %+v, want it empty", rec)
		}
		mustRestore(t, f, 3, true)
		wantRecord(t, f, 3)
		if err := f.Save(ctxBG, tokenAt(4)); err != nil {
			t.Fatal(err)
		}
		wantRecord(t, f, 4)
	})
	t.Run("older copy", func(t *testing.T) {
		path := tokenFile(t)
		f := NewFileStore(path)
		saveAt(t, f, 1)
		backup, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		saveAt(t, f, 3)
		if err := os.WriteFile(path, backup, 0o600); err != nil {
			t.Fatal(err)
		}
		wantRecord(t, f, 1)
		l := mustLease(t, f)
		mustRestore(t, f, 3, true)
		if err := l.Commit(ctxBG, tokenAt(2)); !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("Commit of a lease that read the older copy, after the restore = %v, want ErrLeaseLost", err)
		}
		wantRecord(t, f, 3)
	})
	t.Run("nothing restored", func(t *testing.T) {
		// Nobody restores: a lease holder commits over the older copy at
		// the next revision (see TestFileStoreCoordCommitNextRevision),
		// and a later Save still writes above every revision written.
		path := tokenFile(t)
		f := NewFileStore(path)
		saveAt(t, f, 1)
		backup, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		saveAt(t, f, 5)
		if err := os.WriteFile(path, backup, 0o600); err != nil {
			t.Fatal(err)
		}
		l := mustLease(t, f)
		if err := l.Commit(ctxBG, tokenAt(2)); err != nil {
			t.Fatal(err)
		}
		wantRecord(t, f, 2)
		if err := f.Save(ctxBG, tokenAt(6)); err != nil {
			t.Fatal(err)
		}
		wantRecord(t, f, 6)
	})
}

// Commit writes exactly Record().Version+1, also when the lock file has seen
// a higher revision (the token file went back to an older copy): a Source
// knows the revision of the token it committed from its lease.
func TestFileStoreCoordCommitNextRevision(t *testing.T) {
	t.Parallel()
	path := tokenFile(t)
	f := NewFileStore(path)
	saveAt(t, f, 1)
	backup, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for want := uint64(2); want <= 3; want++ {
		l := mustLease(t, f)
		if err := l.Commit(ctxBG, tokenAt(want)); err != nil {
			t.Fatal(err)
		}
		if got := mustRecord(t, f).Version; got != l.Record().Version+1 || got != want {
			t.Fatalf("commit over revision %d wrote revision %d, want %d", l.Record().Version, got, want)
		}
	}
	if err := os.WriteFile(path, backup, 0o600); err != nil {
		t.Fatal(err)
	}
	l := mustLease(t, f)
	if err := l.Commit(ctxBG, tokenAt(2)); err != nil {
		t.Fatal(err)
	}
	if got := mustRecord(t, f).Version; got != 2 {
		t.Errorf("commit over the older copy at revision 1 wrote revision %d, want 2", got)
	}
}

// Sources on a FileStore put their token back when the token file goes back
// to an older copy (a backup restored over it, say): the next refresh
// presents the newest refresh token, never the one the older copy holds,
// which the server has already spent.
func TestFileStoreSourcesRestoreOlderCopy(t *testing.T) {
	t.Parallel()
	path := tokenFile(t)
	r, login := newRotating(time.Hour)
	login.Expiry = time.Now().Add(-time.Minute) // the first Token refreshes
	if err := NewFileStore(path).Save(ctxBG, login); err != nil {
		t.Fatal(err)
	}
	backup, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var srcs []*Source
	for range 2 {
		s := New(r, WithStore(NewFileStore(path, WithFilePollInterval(2*time.Millisecond))),
			WithEarlyRefresh(0), WithRepairInterval(50*time.Millisecond))
		t.Cleanup(func() { mustClose(t, s) })
		srcs = append(srcs, s)
	}
	var tok *Token
	for _, s := range srcs {
		if tok, err = s.Token(ctxBG); err != nil || tok.RefreshToken != "rt-1" {
			t.Fatalf("Token = (%v, %v), want the first refresh's", tok, err)
		}
	}
	f := NewFileStore(path)
	if rec := mustRecord(t, f); rec.Version != 2 {
		t.Fatalf("record = %+v, want the refresh committed at revision 2", rec)
	}
	if err := os.WriteFile(path, backup, 0o600); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		rec := mustRecord(t, f)
		if rec.Version == 2 && sameToken(rec.Token, tok) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("record = %+v 10 s after it went back, want the members' token restored at revision 2", rec)
		}
		time.Sleep(5 * time.Millisecond) // polling another goroutine's file writes
	}
	// A rejected token: the refresh presents rt-1, not the spent rt-0.
	next, err := srcs[1].Refresh(ctxBG, tok)
	if err != nil || next.RefreshToken != "rt-2" {
		t.Fatalf("Refresh = (%v, %v), want rt-2", next, err)
	}
	if n := r.reused.Load(); n != 0 {
		t.Errorf("%d refresh tokens presented twice", n)
	}
	if n := r.calls.Load(); n != 2 {
		t.Errorf("%d Refresher calls, want 2", n)
	}
	if rec := mustRecord(t, f); rec.Version != 3 || !sameToken(rec.Token, next) {
		t.Errorf("record = %+v, want the second refresh at revision 3", rec)
	}
}

// wantRestored checks Record.Restored as LoadRecord and a new lease (which
// it releases) report it.
func wantRestored(t *testing.T, f *FileStore, want bool) {
	t.Helper()
	if rec := mustRecord(t, f); rec.Restored != want {
		t.Fatalf("LoadRecord: Restored = %v, want %v", rec.Restored, want)
	}
	l := mustLease(t, f)
	defer func() { _ = l.Release(ctxBG) }()
	if rec := l.Record(); rec.Restored != want {
		t.Fatalf("lease Record: Restored = %v, want %v", rec.Restored, want)
	}
}

// The token file marks a record Restore wrote, until the next Save or
// Commit; a refused Restore leaves the mark as it was.
func TestFileStoreRestoredFlag(t *testing.T) {
	t.Parallel()
	t.Run("restore then save", func(t *testing.T) {
		f := NewFileStore(tokenFile(t))
		wantRestored(t, f, false)
		mustRestore(t, f, 5, true)
		wantRestored(t, f, true)
		if err := f.Save(ctxBG, tokenAt(6)); err != nil {
			t.Fatal(err)
		}
		wantRecord(t, f, 6)
		wantRestored(t, f, false)
	})
	t.Run("restore then commit", func(t *testing.T) {
		f := NewFileStore(tokenFile(t))
		saveAt(t, f, 2)
		wantRestored(t, f, false)
		mustRestore(t, f, 4, true)
		l := mustLease(t, f)
		if rec := l.Record(); !rec.Restored || rec.Version != 4 {
			t.Fatalf("lease record = %+v, want the restored revision 4", rec)
		}
		if err := l.Commit(ctxBG, tokenAt(5)); err != nil {
			t.Fatal(err)
		}
		wantRecord(t, f, 5)
		wantRestored(t, f, false)
	})
	t.Run("refused restore keeps the flag", func(t *testing.T) {
		f := NewFileStore(tokenFile(t))
		saveAt(t, f, 3)
		mustRestore(t, f, 3, false)
		wantRestored(t, f, false)
		mustRestore(t, f, 7, true)
		mustRestore(t, f, 6, false)
		wantRestored(t, f, true)
		wantRecord(t, f, 7)
	})
	t.Run("files without the flag", func(t *testing.T) {
		for _, content := range []string{
			`{"version":1,"access_token":"at","refresh_token":"rt"}`,
			`{"version":2,"revision":4,"access_token":"at","refresh_token":"rt"}`,
			`{"version":2,"revision":4,"access_token":"at","refresh_token":"rt","restored":false}`,
		} {
			path := tokenFile(t)
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			f := NewFileStore(path)
			wantRestored(t, f, false)
			if rec := mustRecord(t, f); rec.Token == nil || rec.Token.RefreshToken != "rt" {
				t.Fatalf("%s: record = %+v, want the stored token", content, rec)
			}
		}
	})
	t.Run("file contents", func(t *testing.T) {
		path := tokenFile(t)
		f := NewFileStore(path)
		mustRestore(t, f, 2, true)
		if data, _ := os.ReadFile(path); !strings.Contains(string(data), `"restored":true`) {
			t.Fatalf("a restored token file does not carry the flag")
		}
		if err := f.Save(ctxBG, tokenAt(3)); err != nil {
			t.Fatal(err)
		}
		if data, _ := os.ReadFile(path); strings.Contains(string(data), "restored") {
			t.Fatalf("a saved token file carries the restored flag")
		}
	})
}
