package redisstore

import (
	"errors"
	"math"
	"sync"
	"testing"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/redistest"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// saveN saves n tokens through s and returns the last, at version n on an
// empty record.
func saveN(t *testing.T, s *Store, n int) *tokensource.Token {
	t.Helper()
	ctx := testContext(t)
	var tok *tokensource.Token
	for range n {
		tok = secretToken()
		if err := s.Save(ctx, tok); err != nil {
			t.Fatalf("Save: %v", err)
		}
	}
	return tok
}

func mustRestore(t *testing.T, s *Store, rec tokensource.Record, wantWrote bool) {
	t.Helper()
	wrote, err := s.Restore(testContext(t), rec)
	if err != nil {
		t.Fatalf("Restore at version %d: %v", rec.Version, err)
	}
	if wrote != wantWrote {
		t.Fatalf("Restore at version %d wrote = %v; want %v", rec.Version, wrote, wantWrote)
	}
}

func wantRecord(t *testing.T, s *Store, tok *tokensource.Token, version uint64) {
	t.Helper()
	rec := mustLoad(t, testContext(t), s)
	if !sameToken(rec.Token, tok) || rec.Version != version {
		t.Fatalf("record = %v at version %d; want %v at version %d", rec.Token, rec.Version, tok, version)
	}
}

// TestRestoreAfterRestartWithoutPersistence: a redis-server restarted empty
// (no persistence) has lost the record; a member that holds the newest token
// puts it back at its version, and the versions go on from there.
func TestRestoreAfterRestartWithoutPersistence(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	s := member(t, srv, "token")
	newest := saveN(t, s, 3)
	srv.Restart()
	wantRecord(t, s, nil, 0)

	mustRestore(t, s, tokensource.Record{Token: newest, Version: 3}, true)
	wantRecord(t, s, newest, 3)

	// Commit writes exactly Record().Version+1; Save bumps by one.
	l := mustLease(t, ctx, s)
	if v := l.Record().Version; v != 3 {
		t.Fatalf("the lease reads version %d; want the restored 3", v)
	}
	next := secretToken()
	if err := l.Commit(ctx, next); err != nil {
		t.Fatalf("Commit over a restored record: %v", err)
	}
	wantRecord(t, s, next, 4)
	after := secretToken()
	if err := s.Save(ctx, after); err != nil {
		t.Fatal(err)
	}
	wantRecord(t, s, after, 5)

	// FLUSHALL loses it the same way.
	if err := newClient(t, srv).FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	mustRestore(t, s, tokensource.Record{Token: after, Version: 5}, true)
	wantRecord(t, s, after, 5)
}

func TestRestoreOverLowerVersion(t *testing.T) {
	srv := redistest.Start(t)
	s := member(t, srv, "token")
	saveN(t, s, 2)
	tok := secretToken()
	mustRestore(t, s, tokensource.Record{Token: tok, Version: 5}, true)
	wantRecord(t, s, tok, 5)
}

func TestRestoreRefusedAtEqualOrHigherVersion(t *testing.T) {
	srv := redistest.Start(t)
	s := member(t, srv, "token")
	cur := saveN(t, s, 3)
	for _, v := range []uint64{3, 2, 1} {
		mustRestore(t, s, tokensource.Record{Token: secretToken(), Version: v}, false)
	}
	wantRecord(t, s, cur, 3)
	// Version 0 is never above anything: not even an empty record.
	empty := member(t, srv, "other")
	mustRestore(t, empty, tokensource.Record{Token: secretToken(), Version: 0}, false)
	wantRecord(t, empty, nil, 0)
}

// TestRestoreIsAMaximum: two members restoring different versions leave the
// higher one, in either order and at once.
func TestRestoreIsAMaximum(t *testing.T) {
	srv := redistest.Start(t)
	lo, hi := secretToken(), secretToken()
	low := tokensource.Record{Token: lo, Version: 9}
	high := tokensource.Record{Token: hi, Version: 10}

	a, b := member(t, srv, "up"), member(t, srv, "up")
	mustRestore(t, a, low, true)
	mustRestore(t, b, high, true)
	wantRecord(t, a, hi, 10)

	a, b = member(t, srv, "down"), member(t, srv, "down")
	mustRestore(t, b, high, true)
	mustRestore(t, a, low, false)
	wantRecord(t, a, hi, 10)

	// Versions compare as numbers, not as strings: 10 > 9 although "10" < "9".
	ctx := testContext(t)
	for i := range 5 {
		key := "race" + string(rune('0'+i))
		var wg sync.WaitGroup
		for _, rec := range []tokensource.Record{low, high} {
			s := member(t, srv, key)
			wg.Go(func() {
				if _, err := s.Restore(ctx, rec); err != nil {
					t.Errorf("Restore: %v", err)
				}
			})
		}
		wg.Wait()
		wantRecord(t, member(t, srv, key), hi, 10)
	}
}

// TestRestoreFencesTheHolder: a Restore does not need, take or clear the
// lease, and a holder that read the older record is refused at Commit.
func TestRestoreFencesTheHolder(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	holder, other, restorer := member(t, srv, "token"), member(t, srv, "token"), member(t, srv, "token")
	saveN(t, holder, 1)
	l := mustLease(t, ctx, holder)

	tok := secretToken()
	mustRestore(t, restorer, tokensource.Record{Token: tok, Version: 2}, true)
	mustNotLease(t, ctx, other) // the holder's lease is still there

	err := l.Commit(ctx, secretToken())
	if !errors.Is(err, tokensource.ErrLeaseLost) {
		t.Fatalf("Commit of a holder that read version 1 after a Restore at 2 = %v; want ErrLeaseLost", err)
	}
	wantRecord(t, other, tok, 2)
	// The refused commit ended the lease; nobody is reported as taken over.
	next := mustLease(t, ctx, other)
	defer next.Release(ctx)
	if next.TakenOver() {
		t.Fatal("the lease after a refused commit reports a takeover")
	}
}

func TestRestoreWakesWaiters(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	holder := member(t, srv, "token")
	waiter := member(t, srv, "token", WithPollInterval(noPoll))
	restorer := member(t, srv, "token")
	saveN(t, holder, 1)
	l := mustLease(t, ctx, holder) // a live lease: only a version change wakes the waiter
	defer l.Release(ctx)

	done := startWait(ctx, waiter, 1)
	waitSubscribed(t, ctx, srv, waiter, 1)
	mustRestore(t, restorer, tokensource.Record{Token: secretToken(), Version: 4}, true)
	if err := <-done; err != nil {
		t.Fatalf("Wait: %v", err)
	}
}

func TestRestoreSealedAndErrors(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	key := []byte("0123456789abcdef")
	s := member(t, srv, "token", WithSealKey(key))
	tok := secretToken()
	mustRestore(t, s, tokensource.Record{Token: tok, Version: 7}, true)
	wantRecord(t, member(t, srv, "token", WithSealKey(key)), tok, 7)
	raw := newClient(t, srv).HGet(ctx, s.recordKey, "payload").Val()
	if len(raw) < len(sealedPrefix) || raw[:len(sealedPrefix)] != sealedPrefix {
		t.Fatal("a restored record is not sealed")
	}

	if _, err := s.Restore(ctx, tokensource.Record{Version: 8}); err == nil {
		t.Fatal("Restore of a nil token succeeded")
	}
	if _, err := s.Restore(ctx, tokensource.Record{Token: tok, Version: math.MaxInt64 + 1}); err == nil {
		t.Fatal("Restore beyond what Redis counts succeeded")
	}
	if err := newClient(t, srv).HSet(ctx, s.recordKey, "version", "x").Err(); err != nil {
		t.Fatal(err)
	}
	_, err := s.Restore(ctx, tokensource.Record{Token: secretToken(), Version: 9})
	if !errors.Is(err, ErrCorruptRecord) || !errors.Is(err, tokensource.ErrCorruptStore) {
		t.Fatalf("Restore over a corrupt version = %v; want ErrCorruptRecord", err)
	}
	noSecrets(t, err)
}

// wantRestored checks Record.Restored as LoadRecord and a new lease (which
// it releases) report it.
func wantRestored(t *testing.T, s *Store, want bool) {
	t.Helper()
	ctx := testContext(t)
	if rec := mustLoad(t, ctx, s); rec.Restored != want {
		t.Fatalf("LoadRecord: Restored = %v; want %v", rec.Restored, want)
	}
	l := mustLease(t, ctx, s)
	defer l.Release(ctx)
	if rec := l.Record(); rec.Restored != want {
		t.Fatalf("lease Record: Restored = %v; want %v", rec.Restored, want)
	}
}

// TestRestoredFlag: a record Restore wrote is reported Restored, by
// LoadRecord and by a new lease, until the next Commit or Save; a refused
// Restore leaves the mark as it was.
func TestRestoredFlag(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)

	t.Run("commit clears", func(t *testing.T) {
		s := member(t, srv, "commit")
		newest := saveN(t, s, 3)
		wantRestored(t, s, false)
		srv.Restart()
		wantRestored(t, s, false)
		mustRestore(t, s, tokensource.Record{Token: newest, Version: 3}, true)
		wantRestored(t, s, true)
		l := mustLease(t, ctx, s)
		if rec := l.Record(); !rec.Restored || rec.Version != 3 {
			t.Fatalf("lease record: Restored = %v at version %d; want the restored version 3", rec.Restored, rec.Version)
		}
		if err := l.Commit(ctx, secretToken()); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		wantRestored(t, s, false)
	})
	t.Run("save clears", func(t *testing.T) {
		s := member(t, srv, "save")
		mustRestore(t, s, tokensource.Record{Token: secretToken(), Version: 5}, true)
		wantRestored(t, s, true)
		tok := saveN(t, s, 1)
		wantRecord(t, s, tok, 6)
		wantRestored(t, s, false)
	})
	t.Run("refused restore keeps the mark", func(t *testing.T) {
		s := member(t, srv, "refused")
		saveN(t, s, 2)
		mustRestore(t, s, tokensource.Record{Token: secretToken(), Version: 2}, false)
		wantRestored(t, s, false)
		tok := secretToken()
		mustRestore(t, s, tokensource.Record{Token: tok, Version: 7}, true)
		mustRestore(t, s, tokensource.Record{Token: secretToken(), Version: 6}, false)
		mustRestore(t, s, tokensource.Record{Token: secretToken(), Version: 7}, false)
		wantRecord(t, s, tok, 7)
		wantRestored(t, s, true)
	})
	t.Run("unknown value", func(t *testing.T) {
		s := member(t, srv, "unknown")
		tok := saveN(t, s, 1)
		if err := newClient(t, srv).HSet(ctx, s.recordKey, "restored", "yes").Err(); err != nil {
			t.Fatal(err)
		}
		wantRecord(t, s, tok, 1)
		wantRestored(t, s, false)
	})
}
