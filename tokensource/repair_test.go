package tokensource

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// outageStore is a MemoryStore behind a coordinator that can stop answering
// (down), as a Redis server that is killed does: while down every call fails
// with ErrCoordinatorUnavailable, and a lease whose commit failed that way is
// gone when the coordinator answers again (its TTL ran out), so the next
// member takes it over.
type outageStore struct {
	*MemoryStore
	down   atomic.Bool
	orphan atomic.Bool // a lease ended without Commit or Release: the next TryLease is a takeover
	last   atomic.Pointer[outageLease]
	// unacked: writes land but are not confirmed (a replica acknowledgement
	// that does not come): Commit and Restore write and fail; restores
	// counts the Restore calls.
	unacked  atomic.Bool
	restores atomic.Int64
	// refused: Restore fails without writing while reads still work (a
	// write that does not reach the master while a replica serves reads).
	refused atomic.Bool
	// slow: how long LoadRecord takes (a coordinator under load).
	slow atomic.Int64
	// life, if set, gives the leases a lifetime (ExpiringLease) from their
	// grant, on the test's clock; leases counts the grants.
	life   time.Duration
	leases atomic.Int64
}

var errUnacked = fmt.Errorf("not acknowledged by replicas: %w", ErrCoordinatorUnavailable)

// expire ends the lease granted last as its TTL would while its holder is
// paused: the next member takes it over, and the holder's Commit is refused.
func (o *outageStore) expire() {
	_ = o.last.Load().Lease.Release(ctxBG)
	o.orphan.Store(true)
}

func (o *outageStore) LoadRecord(ctx context.Context) (Record, error) {
	time.Sleep(time.Duration(o.slow.Load()))
	if o.down.Load() {
		return Record{}, errDown
	}
	return o.MemoryStore.LoadRecord(ctx)
}

func (o *outageStore) TryLease(ctx context.Context) (Lease, error) {
	if o.down.Load() {
		return nil, errDown
	}
	l, err := o.MemoryStore.TryLease(ctx)
	if l == nil || err != nil {
		return l, err
	}
	o.leases.Add(1)
	ol := &outageLease{Lease: l, o: o, takenOver: o.orphan.Swap(false), granted: time.Now()}
	o.last.Store(ol)
	return ol, nil
}

func (o *outageStore) Restore(ctx context.Context, rec Record) (bool, error) {
	o.restores.Add(1)
	if o.down.Load() || o.refused.Load() {
		return false, errDown
	}
	wrote, err := o.MemoryStore.Restore(ctx, rec)
	if err == nil && o.unacked.Load() {
		return false, errUnacked
	}
	return wrote, err
}

// reset empties the record, as a Redis restart without persistence does:
// what it knew about past leases is gone too, so the next lease is no
// takeover.
func (o *outageStore) reset() {
	m := o.MemoryStore
	m.mu.Lock()
	m.tok, m.version, m.restore = nil, 0, false
	m.mu.Unlock()
	o.orphan.Store(false)
}

type outageLease struct {
	Lease
	o         *outageStore
	takenOver bool
	granted   time.Time
}

func (l *outageLease) Expires() time.Time {
	if l.o.life == 0 {
		return time.Now().Add(time.Hour)
	}
	return l.granted.Add(l.o.life)
}

func (l *outageLease) TakenOver() bool { return l.takenOver }

func (l *outageLease) Commit(ctx context.Context, t *Token) error {
	if l.o.down.Load() {
		_ = l.Lease.Release(ctx) // the lease expires while the coordinator is away
		l.o.orphan.Store(true)
		return errDown
	}
	if err := l.Lease.Commit(ctx, t); err != nil || !l.o.unacked.Load() {
		return err
	}
	return errUnacked
}

func (l *outageLease) Release(ctx context.Context) error {
	if l.o.down.Load() {
		return errDown // it expires: see Commit
	}
	return l.Lease.Release(ctx)
}

// outageFleet returns a rotating authorization server, an outageStore
// holding its login token, and n Sources sharing it.
func outageFleet(t *testing.T, n int, opts ...Option) (*rotating, *outageStore, []*Source) {
	t.Helper()
	r, login := newRotating(time.Minute)
	st := &outageStore{MemoryStore: NewMemoryStore()}
	if err := st.Save(ctxBG, login); err != nil {
		t.Fatal(err)
	}
	return r, st, fleet(t, n, r, st, append([]Option{WithEarlyRefresh(0)}, opts...)...)
}

// outageHolder returns a Source on st whose first refresh succeeds at the
// authorization server r and then finds the coordinator gone: its commit
// fails. It returns once that refresh has been handed out; later refreshes
// are plain.
func outageHolder(t *testing.T, r *rotating, st *outageStore, opts ...Option) (*Source, *Token) {
	t.Helper()
	hold := make(chan struct{})
	var once sync.Once
	a := New(RefresherFunc(func(ctx context.Context, cur *Token) (*Token, error) {
		tok, err := r.Refresh(ctx, cur)
		once.Do(func() {
			st.down.Store(true)
			close(hold)
		})
		return tok, err
	}), append([]Option{WithStore(st), WithEarlyRefresh(0)}, opts...)...)
	t.Cleanup(func() { mustClose(t, a) })
	a1, err := a.Refresh(ctxBG, mustToken(t, a))
	<-hold
	if err != nil || a1.AccessToken != "at-1" {
		t.Fatalf("a: Refresh = (%v, %v), want at-1 (used although its commit failed)", a1, err)
	}
	return a, a1
}

// checkLanded checks that the fleet made one refresh, presented no refresh
// token twice, and that the record holds at-1 at version 2, the commit that
// had failed.
func checkLanded(t *testing.T, r *rotating, st *outageStore) {
	t.Helper()
	if got := r.reused.Load(); got != 0 {
		t.Errorf("%d refresh tokens presented twice", got)
	}
	if got := r.calls.Load(); got != 1 {
		t.Errorf("%d Refresher calls, want 1", got)
	}
	if rec, _ := st.LoadRecord(ctxBG); rec.Token == nil || rec.Token.AccessToken != "at-1" || rec.Version != 2 {
		t.Errorf("record = %v at version %d, want at-1 at 2", rec.Token, rec.Version)
	}
}

// A holder whose commit fails (the coordinator stopped answering after the
// authorization server rotated the refresh token) keeps its token pending and
// puts it into the record as soon as the coordinator answers again: a peer
// that lived through the outage adopts it once the coordinator answers.
func TestPendingCommitLandsWhenTheCoordinatorAnswers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var restored events
		r, st, srcs := outageFleet(t, 1)
		b := srcs[0]
		b0 := mustToken(t, b)
		outageHolder(t, r, st, WithObserver(restored.observe))
		time.Sleep(5 * time.Second) // the outage
		st.down.Store(false)
		// Members recover within about a second of the coordinator
		// answering (b probed it during the outage).
		time.Sleep(coordinatorRetry)
		b1, err := b.Refresh(ctxBG, b0)
		if err != nil || b1.AccessToken != "at-1" {
			t.Fatalf("b: Refresh = (%v, %v), want at-1, the token a could not commit", b1, err)
		}
		checkLanded(t, r, st)
		if got := len(restored.of(TokenRestored)); got != 1 {
			t.Errorf("%d TokenRestored events, want 1", got)
		}
	})
}

// A member that takes over the lease the failed holder left behind waits
// the repair grace before presenting the refresh token in the record, which
// the holder has already spent: the holder's pending commit lands meanwhile.
func TestTakeoverWaitsForAPendingCommit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, st, _ := outageFleet(t, 0)
		outageHolder(t, r, st)
		// The outage. It ends between two of a's checks (every 250 ms
		// while they fail), so that b takes the lease before a's pending
		// commit lands.
		time.Sleep(5*time.Second + 100*time.Millisecond)
		st.down.Store(false)
		// A member started just now (a process restarted during the
		// outage) whose stored token is rejected at once.
		b := fleet(t, 1, r, st, WithEarlyRefresh(0))[0]
		b0 := mustToken(t, b)
		if b0.AccessToken != "at-0" {
			t.Fatalf("b: Token = %s, want at-0 from the record", b0.AccessToken)
		}
		b1, err := b.Refresh(ctxBG, b0)
		if err != nil || b1.AccessToken != "at-1" {
			t.Fatalf("b: Refresh = (%v, %v), want at-1, the token a could not commit", b1, err)
		}
		checkLanded(t, r, st)
	})
}

// A holder paused past its lease's lifetime between presenting the refresh
// token and committing, that resumes while the member that took over waits
// the repair grace: its commit is refused (another member holds the lease),
// so its result stays pending and is put back into the record; the member
// that took over adopts it instead of presenting the spent refresh token.
func TestPausedHolderResumingWithinTheGrace(t *testing.T) {
	// It resumes as soon as b waits, or a second into b's grace of 1.25 s.
	for _, late := range []time.Duration{0, time.Second} {
		t.Run(late.String(), func(t *testing.T) { pausedHolderResuming(t, late) })
	}
}

// pausedHolder is a fleet of two, a and b, whose login token in st has
// expired and whose tokens live for life: a's Refresher closes presented
// once the authorization server has rotated, then pauses until resume is
// closed. It must run inside a synctest bubble.
type pausedHolder struct {
	r                 *rotating
	st                *outageStore
	a, b              *Source
	presented, resume chan struct{}
}

func newPausedHolder(t *testing.T, life time.Duration) *pausedHolder {
	t.Helper()
	r, login := newRotating(life)
	login.Expiry = time.Now().Add(-time.Minute) // expired: the first member refreshes
	p := &pausedHolder{r: r, st: &outageStore{MemoryStore: NewMemoryStore()},
		presented: make(chan struct{}), resume: make(chan struct{})}
	if err := p.st.Save(ctxBG, login); err != nil {
		t.Fatal(err)
	}
	p.a = New(RefresherFunc(func(ctx context.Context, cur *Token) (*Token, error) {
		tok, err := r.Refresh(ctx, cur)
		close(p.presented)
		<-p.resume // paused after the authorization server rotated
		return tok, err
	}), WithStore(p.st), WithEarlyRefresh(0))
	t.Cleanup(func() { mustClose(t, p.a) })
	p.b = fleet(t, 1, r, p.st, WithEarlyRefresh(0))[0]
	return p
}

func pausedHolderResuming(t *testing.T, late time.Duration) {
	synctest.Test(t, func(t *testing.T) {
		p := newPausedHolder(t, time.Minute)
		r, st, a, b, presented, resume := p.r, p.st, p.a, p.b, p.presented, p.resume

		// Tokens by name ("" for an error), got on goroutines of their own.
		token := func(s *Source, done chan<- string) {
			tok, err := s.Token(ctxBG)
			if err != nil {
				t.Error(err)
				done <- ""
				return
			}
			done <- tok.AccessToken
		}
		aDone := make(chan string, 1)
		go token(a, aDone)
		<-presented
		st.expire() // a's lease runs out while it is paused
		bDone := make(chan string, 1)
		go token(b, bDone)
		synctest.Wait() // b has taken the lease over and waits the grace
		time.Sleep(late)
		close(resume)
		if got := <-aDone; got != "at-1" {
			t.Errorf("a: Token = %s, want at-1", got)
		}
		if got := <-bDone; got != "at-1" {
			t.Errorf("b: Token = %s, want at-1, the token a could not commit", got)
		}
		checkLanded(t, r, st)
	})
}

// A holder paused so long after presenting the refresh token that the token
// it then receives has already expired (a pause longer than the token's
// lifetime): the token is refused, but its rotated refresh token is the
// fleet's only valid one. Its commit is refused (another member took the
// lease over), so, as with a refreshed token, it stays pending and is put
// back into the record; the member that took over presents the rotated
// refresh token, not the spent one.
func TestPausedHolderReceivingAnExpiredToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPausedHolder(t, time.Second)
		r, st, a, b, presented, resume := p.r, p.st, p.a, p.b, p.presented, p.resume
		aErr := make(chan error, 1)
		go func() {
			_, err := a.Token(ctxBG)
			aErr <- err
		}()
		<-presented
		st.expire() // a's lease runs out while it is paused
		bDone := make(chan *Token, 1)
		go func() {
			tok, err := b.Token(ctxBG)
			if err != nil {
				t.Errorf("b: Token = %v", err)
			}
			bDone <- tok
		}()
		synctest.Wait()                     // b has taken the lease over and waits the grace
		time.Sleep(1100 * time.Millisecond) // at-1 expires a second after it was issued
		close(resume)
		if err := <-aErr; err == nil {
			t.Error("a: Token succeeded with a token that expired on arrival")
		}
		if got := <-bDone; got == nil || got.AccessToken != "at-2" {
			t.Errorf("b: Token = %v, want at-2, refreshed with the refresh token a received", got)
		}
		if got := r.reused.Load(); got != 0 {
			t.Errorf("%d refresh tokens presented twice", got)
		}
		if got := r.calls.Load(); got != 2 {
			t.Errorf("%d Refresher calls, want 2", got)
		}
	})
}

// A commit that landed but was not confirmed (a replica acknowledgement that
// did not come) stays pending although the record shows its version: the
// Source asks the Coordinator to confirm it (Restore) until it does.
func TestUnconfirmedCommitIsConfirmedLater(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, st, srcs := outageFleet(t, 1)
		a := srcs[0]
		st.unacked.Store(true)
		if _, err := a.Refresh(ctxBG, mustToken(t, a)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second)
		if n := st.restores.Load(); n < 2 {
			t.Fatalf("%d Restore calls while the commit is unconfirmed, want it asked again and again", n)
		}
		st.unacked.Store(false)
		time.Sleep(time.Second)
		n := st.restores.Load()
		time.Sleep(5 * time.Second)
		if extra := st.restores.Load() - n; extra != 0 {
			t.Errorf("%d Restore calls after the commit was confirmed, want none", extra)
		}
		checkLanded(t, r, st)
	})
}

// Redis killed while a refresh is in flight and restarted empty: the
// holder's commit fails, and a live member that holds the older token puts
// that back first. A member about to present its refresh token from that
// restored record waits the repair grace, in which the holder's pending
// commit lands over it.
func TestRestoredRecordWaitsForAPendingCommit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, st, srcs := outageFleet(t, 1)
		b := srcs[0]
		b0 := mustToken(t, b)
		outageHolder(t, r, st) // a holds at-1; its commit failed
		st.reset()             // restarted without persistence
		st.down.Store(false)
		// A member that holds at-0 puts it back at its version.
		if wrote, err := st.Restore(ctxBG, Record{Token: b0, Version: 1}); err != nil || !wrote {
			t.Fatalf("Restore = (%v, %v)", wrote, err)
		}
		b1, err := b.Refresh(ctxBG, b0)
		if err != nil || b1.AccessToken != "at-1" {
			t.Fatalf("b: Refresh = (%v, %v), want at-1, the token a could not commit", b1, err)
		}
		checkLanded(t, r, st)
	})
}

// A record that went back (a Redis restart without persistence) is repaired
// from the newest token a live member holds before a lagging member, whose
// token is older, refreshes: the lagging member adopts the newest token
// instead of presenting a refresh token that was spent before the loss.
func TestRecordThatWentBackIsRepairedFromTheNewestToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, st, srcs := outageFleet(t, 3)
		a, b, lagging := srcs[0], srcs[1], srcs[2]
		mustToken(t, lagging) // holds at-0 (version 1) from now on
		time.Sleep(30 * time.Second)
		a1, err := a.Refresh(ctxBG, mustToken(t, a)) // a revocation: at-1, valid for a minute
		if err != nil || a1.AccessToken != "at-1" {
			t.Fatalf("a: Refresh = (%v, %v)", a1, err)
		}
		if tok := mustToken(t, b); tok.AccessToken != "at-1" {
			t.Fatalf("b: Token = %s, want at-1", tok.AccessToken)
		}
		time.Sleep(29 * time.Second)
		st.reset() // the record is lost a moment before the lagging member's token expires
		time.Sleep(2 * time.Second)
		tok, err := lagging.Token(ctxBG)
		if err != nil || tok.AccessToken != "at-1" {
			t.Fatalf("lagging: Token = (%v, %v), want at-1 restored by a live member", tok, err)
		}
		if got := r.reused.Load(); got != 0 {
			t.Errorf("%d refresh tokens presented twice", got)
		}
		if got := r.calls.Load(); got != 1 {
			t.Errorf("%d Refresher calls, want 1", got)
		}
	})
}

// The same loss found by the lagging member itself first: it puts its older
// token back, then waits the repair grace before presenting it, and the live
// members' newer token overtakes it.
func TestLaggingMemberWaitsForANewerTokenAfterALoss(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, st, srcs := outageFleet(t, 3)
		a, b, lagging := srcs[0], srcs[1], srcs[2]
		mustToken(t, lagging)
		time.Sleep(30 * time.Second)
		if _, err := a.Refresh(ctxBG, mustToken(t, a)); err != nil {
			t.Fatal(err)
		}
		mustToken(t, b)
		time.Sleep(30*time.Second - 50*time.Millisecond)
		st.reset() // lost just before the lagging member's token expires
		time.Sleep(100 * time.Millisecond)
		tok, err := lagging.Token(ctxBG)
		if err != nil || tok.AccessToken != "at-1" {
			t.Fatalf("lagging: Token = (%v, %v), want at-1", tok, err)
		}
		if got := r.reused.Load(); got != 0 {
			t.Errorf("%d refresh tokens presented twice", got)
		}
	})
}

// WithRepairInterval(0) turns the repair off: no goroutine, no grace.
func TestRepairIntervalZeroDisablesRepair(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, _, srcs := outageFleet(t, 1, WithRepairInterval(0))
		mustToken(t, srcs[0])
		if srcs[0].stopRepair != nil {
			t.Error("the repair check started with WithRepairInterval(0)")
		}
	})
}

// A member whose token is newer than the record and whose restore fails
// neither adopts the older token in the record (its newest refresh token
// would be gone) nor presents that token's spent refresh token: the flight
// fails, and the repair puts the token back once the Coordinator takes it.
func TestFailedRestoreDoesNotAdoptTheOlderRecord(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, st, _ := outageFleet(t, 0)
		a, a1 := outageHolder(t, r, st) // at-1 pending at version 2; the record holds at-0
		st.refused.Store(true)
		st.down.Store(false)
		got, err := a.Refresh(ctxBG, a1)
		if err == nil {
			t.Fatalf("a: Refresh = %v, want a failure while the record is behind and cannot be repaired", got.AccessToken)
		}
		st.refused.Store(false)
		time.Sleep(2 * time.Second) // the repair lands, the backoff ends
		next, err := a.Refresh(ctxBG, a1)
		if err != nil || next.AccessToken != "at-2" {
			t.Fatalf("a: Refresh = (%v, %v), want at-2 refreshed from at-1", next, err)
		}
		if got := r.reused.Load(); got != 0 {
			t.Errorf("%d refresh tokens presented twice", got)
		}
	})
}

// A member that saw the Coordinator fail a moment ago waits the repair grace
// before presenting a refresh token even from a record that looks ordinary:
// a failover to a replica that missed both the last commit and its lease
// leaves no other trace for a member that never read the newer version.
func TestRecentOutageCallsForTheGrace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, st, srcs := outageFleet(t, 1)
		b := srcs[0]
		b0 := mustToken(t, b)
		lease, err := st.TryLease(ctxBG)
		if err != nil || lease == nil {
			t.Fatalf("TryLease = (%v, %v)", lease, err)
		}
		defer lease.Release(ctxBG)
		if b.mayHaveLost(lease, b0, false) {
			t.Fatal("an ordinary record calls for the grace")
		}
		st.down.Store(true)
		if _, err := b.probeRecord(ctxBG); err == nil {
			t.Fatal("probe of a coordinator that is down succeeded")
		}
		st.down.Store(false)
		if !b.mayHaveLost(lease, b0, false) {
			t.Error("a record read just after an outage does not call for the grace")
		}
		time.Sleep(recentOutage)
		if b.mayHaveLost(lease, b0, false) {
			t.Error("the grace is still called for long after the outage")
		}
	})
}

// A flight waits the repair grace once, and again only after a new loss.
// The chaos campaign lost the session twice to a flight that waited the
// grace, then waited on peers' leases through a second Redis restart
// (empty): once it put its own token back into the emptied record and
// presented 5 ms later; once it took the lease on the emptied record 10 ms
// after the restart, having seen no failure (the wait for the peer's commit
// rode over it).
func TestGraceWaitedAgainAfterANewLoss(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, st, srcs := outageFleet(t, 1)
		b := srcs[0]
		b0 := mustToken(t, b)
		// take returns a lease on the record as it is now, given up at the
		// test's end.
		take := func() Lease {
			t.Helper()
			lease, err := st.TryLease(ctxBG)
			if err != nil || lease == nil {
				t.Fatalf("TryLease = (%v, %v)", lease, err)
			}
			_ = lease.Release(ctxBG)
			return lease
		}
		// grace waits the grace under lease, and a second more (the wait
		// on peers' leases).
		grace := func(lease Lease) graceMark {
			time.Sleep(b.repairGrace())
			m := b.markGrace(lease)
			time.Sleep(time.Second)
			return m
		}
		st.reset() // the record is lost; b puts its token back
		if !b.restoreBehind(ctxBG, Record{}) {
			t.Fatal("b did not put its token back into the empty record")
		}
		lease := take()
		if !b.graceDue(lease, b0, false, graceMark{}) {
			t.Fatal("a restored record does not call for the grace")
		}
		graced := grace(lease)
		if b.graceDue(lease, b0, false, graced) {
			t.Error("the grace is called for again with no loss since")
		}

		st.down.Store(true) // a second outage
		if _, err := b.probeRecord(ctxBG); err == nil {
			t.Fatal("probe of a coordinator that is down succeeded")
		}
		st.down.Store(false)
		if !b.graceDue(lease, b0, false, graced) {
			t.Error("a coordinator failure after the grace does not call for another")
		}

		time.Sleep(recentOutage)
		graced = grace(lease)
		st.reset() // lost again: b puts its token back, seeing no failure
		if !b.restoreBehind(ctxBG, Record{}) {
			t.Fatal("b did not put its token back into the empty record")
		}
		if !b.graceDue(take(), b0, false, graced) {
			t.Error("a restore after the grace does not call for another")
		}

		graced = grace(lease)
		st.reset() // lost again, and b neither sees a failure nor restores
		if !b.graceDue(take(), b0, false, graced) {
			t.Error("a record older than the one the grace was waited on does not call for another")
		}
	})
}

// A member whose lease ran out while it waited the repair grace (its
// process was paused, say) does not present the refresh token under it:
// another member may hold the lease by then. It takes the lease again.
func TestLeaseExpiredBeforePresentingIsTakenAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, login := newRotating(time.Minute)
		login.Expiry = time.Now().Add(-time.Minute) // expired: a refresh is needed
		st := &outageStore{MemoryStore: NewMemoryStore(), life: time.Second}
		if err := st.Save(ctxBG, login); err != nil {
			t.Fatal(err)
		}
		st.orphan.Store(true) // the first lease is a takeover: the grace (1.25 s) outlasts it
		a := fleet(t, 1, r, st, WithEarlyRefresh(0))[0]
		if tok := mustToken(t, a); tok.AccessToken != "at-1" {
			t.Fatalf("Token = %s, want at-1", tok.AccessToken)
		}
		if n := st.leases.Load(); n != 2 {
			t.Errorf("%d leases taken, want 2 (the first expired during the grace)", n)
		}
		if n := r.calls.Load(); n != 1 {
			t.Errorf("%d Refresher calls, want 1", n)
		}
	})
}
