package tokensource

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// Tests of the Source's side of fleet coordination with Sources sharing a
// MemoryStore, in one process. The stores' own tests, and the fleet tests in
// e2e, use real processes and redis-server.

// rotating is an authorization server's refresh-token grant in miniature:
// every refresh rotates the refresh token, and presenting a used one is a
// reuse, counted (a real server would revoke the family).
type rotating struct {
	mu     sync.Mutex
	next   int
	valid  string // the refresh token that may be presented now
	reused atomic.Int64
	calls  atomic.Int64
	life   time.Duration
	now    func() time.Time // nil: time.Now
}

func newRotating(life time.Duration) (*rotating, *Token) {
	r := &rotating{life: life, valid: "rt-0"}
	return r, &Token{AccessToken: "at-0", RefreshToken: "rt-0", Expiry: time.Now().Add(life)}
}

func (r *rotating) Refresh(_ context.Context, cur *Token) (*Token, error) {
	r.calls.Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	if cur == nil || cur.RefreshToken != r.valid {
		r.reused.Add(1)
		return nil, Permanent(errors.New("invalid_grant: refresh token reused"))
	}
	r.next++
	n := strconv.Itoa(r.next)
	r.valid = "rt-" + n
	now := time.Now
	if r.now != nil {
		now = r.now
	}
	return &Token{AccessToken: "at-" + n, RefreshToken: r.valid, Expiry: now().Add(r.life)}, nil
}

// loggedIn returns a rotating authorization server whose tokens live for
// life, and a MemoryStore holding its login token.
func loggedIn(t *testing.T, life time.Duration) (*rotating, *MemoryStore) {
	t.Helper()
	r, login := newRotating(life)
	st := NewMemoryStore()
	if err := st.Save(ctxBG, login); err != nil {
		t.Fatal(err)
	}
	return r, st
}

// fleet makes n Sources sharing st, all with the same Refresher.
func fleet(t *testing.T, n int, r Refresher, st Store, opts ...Option) []*Source {
	t.Helper()
	srcs := make([]*Source, n)
	for i := range srcs {
		srcs[i] = New(r, append([]Option{WithStore(st)}, opts...)...)
		t.Cleanup(func() { mustClose(t, srcs[i]) })
	}
	return srcs
}

// One refresh per need: members that all need a token at an expiry make one
// Refresher call between them, across several expiries; nobody presents a used
// refresh token.
func TestFleetOneRefreshPerExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, st := loggedIn(t, time.Minute)
		srcs := fleet(t, 4, r, st, WithEarlyRefresh(0))
		const expiries = 3
		for e := range expiries {
			time.Sleep(time.Minute) // every member's token expired
			var wg sync.WaitGroup
			for _, s := range srcs {
				for range 16 {
					wg.Go(func() {
						tok, err := s.Token(ctxBG)
						if err != nil {
							t.Errorf("expiry %d: Token = %v", e+1, err)
							return
						}
						if want := "at-" + strconv.Itoa(e+1); tok.AccessToken != want {
							t.Errorf("expiry %d: got %s, want %s", e+1, tok.AccessToken, want)
						}
					})
				}
			}
			wg.Wait()
		}
		if got := r.calls.Load(); got != expiries {
			t.Errorf("%d Refresher calls fleet-wide, want %d (one per expiry)", got, expiries)
		}
		if got := r.reused.Load(); got != 0 {
			t.Errorf("%d reused refresh tokens", got)
		}
		var adopted uint64
		for _, s := range srcs {
			adopted += s.Stats().Adopted
		}
		// At the first expiry the members had no token yet: taking the
		// first one from the store is a load, not an adoption.
		if want := uint64((expiries - 1) * (len(srcs) - 1)); adopted != want {
			t.Errorf("%d adoptions, want %d", adopted, want)
		}
	})
}

// One refresh per rejected token: members rejected with the same token make
// one refresh; a member rejected with a token the record has already replaced
// adopts the new one without refreshing.
func TestFleetForcedRefresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, st := loggedIn(t, time.Hour)
		srcs := fleet(t, 3, r, st)
		toks := make([]*Token, len(srcs))
		for i, s := range srcs {
			tok, err := s.Token(ctxBG)
			if err != nil || tok.AccessToken != "at-0" {
				t.Fatalf("Token = (%v, %v)", tok, err)
			}
			toks[i] = tok
		}
		var wg sync.WaitGroup
		for i, s := range srcs[:2] {
			wg.Go(func() {
				tok, err := s.Refresh(ctxBG, toks[i])
				if err != nil || tok.AccessToken != "at-1" {
					t.Errorf("Refresh = (%v, %v), want at-1", tok, err)
				}
			})
		}
		wg.Wait()
		tok, err := srcs[2].Refresh(ctxBG, toks[2]) // late: the record holds at-1 already
		if err != nil || tok.AccessToken != "at-1" {
			t.Errorf("late Refresh = (%v, %v), want at-1 adopted", tok, err)
		}
		if got := r.calls.Load(); got != 1 {
			t.Errorf("%d Refresher calls, want 1", got)
		}
	})
}

// In the early window members keep serving the valid token from the hot path,
// without touching the Store, while one member refreshes; the others adopt its
// result.
func TestFleetEarlyWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, st := loggedIn(t, time.Hour)
		srcs := fleet(t, 3, r, st, WithEarlyRefresh(10*time.Minute))
		waited := make([]uint64, len(srcs))
		for i, s := range srcs {
			if _, err := s.Token(ctxBG); err != nil { // loads the store
				t.Fatal(err)
			}
			waited[i] = s.Stats().Waited
		}
		time.Sleep(52 * time.Minute) // inside every member's early window
		for _, s := range srcs {
			tok, err := s.Token(ctxBG)
			if err != nil || tok.AccessToken != "at-0" {
				t.Fatalf("Token in the early window = (%v, %v), want at-0 at once", tok, err)
			}
			synctest.Wait()
		}
		for i, s := range srcs {
			tok, err := s.Token(ctxBG)
			if err != nil || tok.AccessToken != "at-1" {
				t.Errorf("Token after the early refresh = (%v, %v), want at-1", tok, err)
			}
			if s.Stats().Waited != waited[i] {
				t.Errorf("a caller waited: %+v", s.Stats())
			}
		}
		if got := r.calls.Load(); got != 1 {
			t.Errorf("%d Refresher calls, want 1", got)
		}
	})
}

// A revocation while a member's early refresh is at the authorization
// server: the token it brings back may predate the revocation, so members
// whose calls were rejected meanwhile (the refreshing member a, and b, whose
// own early refresh waits for a's lease and adopts a's token) do not retry
// with it, but share one more refresh of it, fleet-wide: two Refresher
// calls, no reuse, and both retry with the second token.
func TestFleetRevocationDuringEarlyRefresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, st := loggedIn(t, time.Hour)
		var calls atomic.Int32
		entered := []chan struct{}{make(chan struct{}), make(chan struct{})}
		release := []chan struct{}{make(chan struct{}), make(chan struct{})}
		gated := RefresherFunc(func(ctx context.Context, cur *Token) (*Token, error) {
			if n := calls.Add(1) - 1; int(n) < len(entered) {
				close(entered[n])
				<-release[n]
			}
			return r.Refresh(ctx, cur)
		})
		srcs := fleet(t, 2, gated, st, WithEarlyRefresh(10*time.Minute))
		old := make([]*Token, len(srcs))
		for i, s := range srcs {
			old[i] = mustToken(t, s)
		}
		time.Sleep(52 * time.Minute) // inside every member's early window
		mustToken(t, srcs[0])        // a's early refresh, at the server until released
		<-entered[0]
		mustToken(t, srcs[1]) // b's early refresh, waiting for a's lease
		synctest.Wait()
		got := make([]*Token, len(srcs))
		var wg sync.WaitGroup
		for i, s := range srcs { // both rejected: every token so far revoked
			wg.Go(func() {
				var err error
				if got[i], err = s.Refresh(ctxBG, old[i]); err != nil {
					t.Errorf("member %d: Refresh = %v", i, err)
				}
			})
		}
		synctest.Wait()
		close(release[0]) // at-1 committed; b adopts it
		select {          // the refresh of at-1, under the lease
		case <-entered[1]:
		case <-time.After(time.Minute):
			t.Fatal("no refresh after the early one: the rejected calls would retry with a token the revocation hit")
		}
		synctest.Wait() // b waits for it
		close(release[1])
		wg.Wait()
		for i := range srcs {
			if got[i] == nil || got[i].AccessToken != "at-2" {
				t.Errorf("member %d: Refresh = %v, want at-2, refreshed after the revocation", i, got[i])
			}
		}
		if got := r.calls.Load(); got != 2 {
			t.Errorf("%d Refresher calls, want 2 (the early refresh and one after the rejections)", got)
		}
		if got := r.reused.Load(); got != 0 {
			t.Errorf("%d reused refresh tokens", got)
		}
	})
}

// Durability in a fleet: a login token is committed to an empty shared record
// before it is handed out, and the member that did so is the only one whose
// token counts; the others adopt it.
func TestFleetSeedsInitialToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, login := newRotating(time.Hour)
		st := NewMemoryStore()
		a := New(r, WithStore(st), WithInitialToken(login))
		defer mustClose(t, a)
		if tok, err := a.Token(ctxBG); err != nil || tok.AccessToken != "at-0" {
			t.Fatalf("Token = (%v, %v)", tok, err)
		}
		rec, _ := st.LoadRecord(ctxBG)
		if rec.Token == nil || rec.Token.RefreshToken != "rt-0" {
			t.Fatalf("record = %+v, want the login token", rec)
		}
		b := New(r, WithStore(st)) // a replica started later, without a login
		defer mustClose(t, b)
		if tok, err := b.Token(ctxBG); err != nil || tok.AccessToken != "at-0" {
			t.Fatalf("replica Token = (%v, %v)", tok, err)
		}
		if r.calls.Load() != 0 {
			t.Errorf("%d Refresher calls, want 0", r.calls.Load())
		}
	})
}

// downStore is a Coordinator whose backend is unreachable.
type downStore struct{}

var errDown = fmt.Errorf("dial unix /tmp/redis.sock: connect: connection refused: %w", ErrCoordinatorUnavailable)

func (downStore) Save(context.Context, *Token) error         { return errDown }
func (downStore) Load(context.Context) (*Token, error)       { return nil, errDown }
func (downStore) LoadRecord(context.Context) (Record, error) { return Record{}, errDown }
func (downStore) TryLease(context.Context) (Lease, error)    { return nil, errDown }
func (downStore) Wait(context.Context, uint64) error         { return errDown }

// Coordinator down: refreshing without the lease is off by default and fails
// with a clear Unavailable-class cause; the opt-in allows a local refresh.
func TestFleetCoordinatorDown(t *testing.T) {
	t.Run("default", func(t *testing.T) {
		r, _ := newRotating(time.Hour)
		s := New(r, WithStore(downStore{}))
		defer mustClose(t, s)
		_, err := s.Token(ctxBG)
		if !errors.Is(err, ErrCoordinatorUnavailable) || errors.Is(err, ErrReauthRequired) {
			t.Fatalf("Token = %v, want ErrCoordinatorUnavailable", err)
		}
		if r.calls.Load() != 0 {
			t.Errorf("%d Refresher calls without the lease, want 0", r.calls.Load())
		}
	})
	t.Run("WithUncoordinatedRefresh", func(t *testing.T) {
		var calls atomic.Int64
		r := RefresherFunc(func(context.Context, *Token) (*Token, error) {
			calls.Add(1)
			return &Token{AccessToken: "cc", Expiry: time.Now().Add(time.Hour)}, nil
		})
		s := New(r, WithStore(downStore{}), WithUncoordinatedRefresh())
		defer mustClose(t, s)
		tok, err := s.Token(ctxBG)
		if err != nil || tok.AccessToken != "cc" {
			t.Fatalf("Token = (%v, %v), want a local refresh", tok, err)
		}
		if calls.Load() != 1 || s.Stats().StoreFailures != 1 {
			t.Errorf("calls = %d, stats = %+v; want 1 call and the failed best-effort save counted", calls.Load(), s.Stats())
		}
	})
}

// Nothing is lost: a holder whose commit is refused (its lease was lost and a
// peer committed) adopts the peer's token instead of overwriting it.
func TestFleetLostLeaseAdoptsPeer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := NewMemoryStore()
		old := &Token{AccessToken: "old", RefreshToken: "rt-0", Expiry: time.Now().Add(-time.Second)}
		if err := st.Save(ctxBG, old); err != nil {
			t.Fatal(err)
		}
		peer := &Token{AccessToken: "peer", RefreshToken: "rt-peer", Expiry: time.Now().Add(time.Hour)}
		r := RefresherFunc(func(context.Context, *Token) (*Token, error) {
			// While this member refreshes, a peer writes unconditionally
			// (as SetToken after a login does): the commit must be refused.
			if err := st.Save(ctxBG, peer); err != nil {
				t.Error(err)
			}
			return &Token{AccessToken: "mine", RefreshToken: "rt-mine", Expiry: time.Now().Add(time.Hour)}, nil
		})
		s := New(r, WithStore(st))
		defer mustClose(t, s)
		tok, err := s.Token(ctxBG)
		if err != nil || tok.AccessToken != "peer" {
			t.Fatalf("Token = (%v, %v), want the peer's token adopted", tok, err)
		}
		if got, _ := st.Load(ctxBG); got.AccessToken != "peer" {
			t.Errorf("store = %v, want the peer's token intact", got)
		}
	})
}

// A hung Refresher cannot stall the fleet: at the refresh timeout the holder
// gives up the lease, so a peer can refresh; the holder's late commit is
// refused because the peer committed first.
func TestFleetHungHolderReleasesLease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := NewMemoryStore()
		old := &Token{AccessToken: "old", RefreshToken: "rt-0", Expiry: time.Now().Add(-time.Second)}
		if err := st.Save(ctxBG, old); err != nil {
			t.Fatal(err)
		}
		unblock := make(chan struct{})
		var n atomic.Int64
		r := RefresherFunc(func(context.Context, *Token) (*Token, error) {
			i := n.Add(1)
			if i == 1 {
				<-unblock // hangs, ignoring ctx
			}
			return &Token{AccessToken: "at-" + strconv.FormatInt(i, 10), Expiry: time.Now().Add(time.Hour)}, nil
		})
		a := New(r, WithStore(st), WithRefreshTimeout(time.Second))
		b := New(r, WithStore(st), WithRefreshTimeout(time.Minute))
		defer mustClose(t, b)
		if _, err := a.Token(ctxBG); !errors.Is(err, ErrRefreshTimeout) {
			t.Fatalf("hung holder's Token = %v, want ErrRefreshTimeout", err)
		}
		tok, err := b.Token(ctxBG)
		if err != nil || tok.AccessToken != "at-2" {
			t.Fatalf("peer Token = (%v, %v), want its own refresh at-2", tok, err)
		}
		close(unblock)
		synctest.Wait()
		if got, _ := st.Load(ctxBG); got.AccessToken != "at-2" {
			t.Errorf("store = %v, want the peer's at-2 not overwritten by the late at-1", got)
		}
		if tok, err := a.Token(ctxBG); err != nil || tok.AccessToken != "at-2" {
			t.Errorf("hung holder after its late result = (%v, %v), want the fleet's at-2", tok, err)
		}
		mustClose(t, a)
	})
}
