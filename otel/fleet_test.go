package tokenrefreshotel_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/testutil"
	tokenrefreshotel "github.com/tokenrefresh/grpc-tokenrefresh/otel"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// watchedStore is a real MemoryStore, the Coordinator of Sources in one
// process, that tells the test when a Source starts waiting for a peer's
// lease, and can make the next lease report a takeover, as redisstore does
// when the previous holder's lease expired (a MemoryStore's leases never
// expire, because their holder cannot die alone).
type watchedStore struct {
	*tokensource.MemoryStore
	waiting  chan struct{}
	takeover atomic.Bool
}

func newWatchedStore() *watchedStore {
	return &watchedStore{MemoryStore: tokensource.NewMemoryStore(), waiting: make(chan struct{}, 16)}
}

var _ tokensource.Coordinator = (*watchedStore)(nil)

func (w *watchedStore) Wait(ctx context.Context, version uint64) error {
	w.waiting <- struct{}{}
	return w.MemoryStore.Wait(ctx, version)
}

func (w *watchedStore) TryLease(ctx context.Context) (tokensource.Lease, error) {
	l, err := w.MemoryStore.TryLease(ctx)
	if l != nil && w.takeover.CompareAndSwap(true, false) {
		return takenOver{l}, err
	}
	return l, err
}

type takenOver struct{ tokensource.Lease }

func (takenOver) TakenOver() bool { return true }

// member is one Source of a fleet with its own Observer.
type member struct {
	rg  *rig
	src *tokensource.Source
}

// twoMembers makes two Sources sharing st and ref, both holding the login
// token of the shared record.
func twoMembers(t *testing.T, st tokensource.Store, ref tokensource.Refresher, clk *testutil.Clock, opts ...tokensource.Option) (a, b member) {
	t.Helper()
	login := &tokensource.Token{AccessToken: "login", RefreshToken: "rt-0", Expiry: clk.Now().Add(time.Hour)}
	mk := func() member {
		rg := newRig(t)
		src := newSource(t, ref, append([]tokensource.Option{tokensource.WithStore(st), tokensource.WithClock(clk.Now),
			tokensource.WithInitialToken(login), tokensource.WithObserver(rg.observe)}, opts...)...)
		if _, err := src.Token(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		return member{rg, src}
	}
	return mk(), mk()
}

// tokens calls Token on every member concurrently, returning when all have
// started; wait collects their errors.
func tokens(t *testing.T, ms ...member) (wait func() []error) {
	var wg sync.WaitGroup
	errs := make([]error, len(ms))
	for i, m := range ms {
		wg.Go(func() { _, errs[i] = m.src.Token(testCtx(t)) })
	}
	return func() []error { wg.Wait(); return errs }
}

// A member that waits while a peer refreshes adopts the peer's token: no
// Refresher call of its own, the adopted outcome, its own span.
func TestFleetAdoption(t *testing.T) {
	clk := testutil.NewClock(time.Now())
	st := newWatchedStore()
	ref := &refresher{clock: clk.Now, life: time.Hour, gate: make(chan struct{}), entered: make(chan struct{}, 1)}
	a, b := twoMembers(t, st, ref, clk)
	clk.Advance(2 * time.Hour) // the shared token has expired

	waitA := tokens(t, a)
	<-ref.entered // a holds the lease and is refreshing
	waitB := tokens(t, b)
	<-st.waiting // b waits for a
	close(ref.gate)
	for _, err := range append(waitA(), waitB()...) {
		if err != nil {
			t.Fatal(err)
		}
	}
	a.rg.waitFor(t, tokensource.RefreshSucceeded)
	b.rg.waitFor(t, tokensource.TokenAdopted)
	if n := ref.n.Load(); n != 1 {
		t.Fatalf("Refresher calls = %d, want 1 for the fleet", n)
	}
	if got := b.rg.sum(t, tokenrefreshotel.MetricTokensAdopted); got != 1 {
		t.Errorf("b: %s = %d, want 1", tokenrefreshotel.MetricTokensAdopted, got)
	}
	if got := b.rg.sum(t, tokenrefreshotel.MetricRefreshes, adopted, expiry); got != 1 {
		t.Errorf("b: %s{adopted, expiry} = %d, want 1", tokenrefreshotel.MetricRefreshes, got)
	}
	if got := a.rg.sum(t, tokenrefreshotel.MetricRefreshes, success, expiry); got != 1 {
		t.Errorf("a: %s{success, expiry} = %d, want 1", tokenrefreshotel.MetricRefreshes, got)
	}
	if got := a.rg.sum(t, tokenrefreshotel.MetricTokensAdopted); got != 0 {
		t.Errorf("a: %s = %d, want 0", tokenrefreshotel.MetricTokensAdopted, got)
	}
	spans := b.rg.refreshSpans()
	if len(spans) != 1 {
		t.Fatalf("b: refresh spans = %d, want 1", len(spans))
	}
	wantAttr(t, spans[0], adopted)
}

// A member that waited for a peer whose refresh failed then takes the lease
// over and refreshes itself: one span holds the lease wait, the takeover and
// the Refresher call.
func TestFleetLeaseWaitAndTakeover(t *testing.T) {
	clk := testutil.NewClock(time.Now())
	st := newWatchedStore()
	ref := &refresher{clock: clk.Now, life: time.Hour, gate: make(chan struct{}), entered: make(chan struct{}, 2),
		fail: func(n int64) error {
			if n == 1 {
				return errors.New("identity provider hiccup")
			}
			return nil
		}}
	a, b := twoMembers(t, st, ref, clk, tokensource.WithRefreshAttempts(1)) // a's one attempt fails its refresh
	clk.Advance(2 * time.Hour)

	waitA := tokens(t, a)
	<-ref.entered
	waitB := tokens(t, b)
	<-st.waiting
	st.takeover.Store(true) // b's lease will report a takeover
	close(ref.gate)
	if errs := waitA(); errs[0] == nil {
		t.Fatal("a's refresh succeeded; want its failure")
	}
	if errs := waitB(); errs[0] != nil {
		t.Fatal(errs[0])
	}
	a.rg.waitFor(t, tokensource.RefreshFailed)
	b.rg.waitFor(t, tokensource.RefreshSucceeded)
	if n := ref.n.Load(); n != 2 {
		t.Fatalf("Refresher calls = %d, want 2 (a failed, b)", n)
	}
	if n, _ := b.rg.hist(t, tokenrefreshotel.MetricLeaseWaitDuration); n != 1 {
		t.Errorf("b: %s count = %d, want 1", tokenrefreshotel.MetricLeaseWaitDuration, n)
	}
	if got := b.rg.sum(t, tokenrefreshotel.MetricLeaseTakeovers); got != 1 {
		t.Errorf("b: %s = %d, want 1", tokenrefreshotel.MetricLeaseTakeovers, got)
	}
	if got := a.rg.sum(t, tokenrefreshotel.MetricRefreshes, failure); got != 1 {
		t.Errorf("a: %s{failure} = %d, want 1", tokenrefreshotel.MetricRefreshes, got)
	}
	spans := b.rg.refreshSpans()
	if len(spans) != 1 {
		t.Fatalf("b: refresh spans = %d, want 1", len(spans))
	}
	wantAttr(t, spans[0], success)
	for _, ev := range []string{"tokenrefresh.lease_waited", "tokenrefresh.lease_taken_over", "tokenrefresh.refresher_called"} {
		if !hasEvent(spans[0], ev) {
			t.Errorf("b's span lacks event %s: %v", ev, spans[0].Events())
		}
	}
}

// lostStore is the Coordinator of a fleet whose shared record can be lost, as
// with a Redis restart without persistence: reset swaps in an empty
// MemoryStore.
type lostStore struct {
	cur atomic.Pointer[tokensource.MemoryStore]
}

func newLostStore() *lostStore {
	l := &lostStore{}
	l.reset()
	return l
}

func (l *lostStore) reset() { l.cur.Store(tokensource.NewMemoryStore()) }

func (l *lostStore) Load(ctx context.Context) (*tokensource.Token, error) {
	return l.cur.Load().Load(ctx)
}
func (l *lostStore) Save(ctx context.Context, t *tokensource.Token) error {
	return l.cur.Load().Save(ctx, t)
}
func (l *lostStore) LoadRecord(ctx context.Context) (tokensource.Record, error) {
	return l.cur.Load().LoadRecord(ctx)
}
func (l *lostStore) TryLease(ctx context.Context) (tokensource.Lease, error) {
	return l.cur.Load().TryLease(ctx)
}
func (l *lostStore) Wait(ctx context.Context, v uint64) error { return l.cur.Load().Wait(ctx, v) }
func (l *lostStore) Restore(ctx context.Context, rec tokensource.Record) (bool, error) {
	return l.cur.Load().Restore(ctx, rec)
}

// Members whose token is newer than the shared record (it was lost) put
// their token back before anyone refreshes: the restored counter.
func TestFleetRestore(t *testing.T) {
	clk := testutil.NewClock(time.Now())
	st := newLostStore()
	ref := &refresher{clock: clk.Now, life: time.Hour}
	a, b := twoMembers(t, st, ref, clk, tokensource.WithRepairInterval(20*time.Millisecond))
	st.reset()
	clk.Advance(2 * time.Hour) // the shared token has expired, and the record is empty
	if _, err := a.src.Token(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	a.rg.waitFor(t, tokensource.RefreshSucceeded)
	// a's flight or b's periodic check, whichever comes first: a restore
	// writes only over an older record, so there is one. Close waits for
	// the checks' events.
	a.src.Close()
	b.src.Close()
	if got := a.rg.sum(t, tokenrefreshotel.MetricTokensRestored) + b.rg.sum(t, tokenrefreshotel.MetricTokensRestored); got != 1 {
		t.Errorf("%s = %d across the fleet, want 1", tokenrefreshotel.MetricTokensRestored, got)
	}
}
