package tokensource

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// hookLog records the calls of RefreshHooks, and the events between them.
type hookLog struct {
	mu       sync.Mutex
	starts   []RefreshInfo
	starters []any // ctxKey value of each Context call's ctx
	waits    map[any]uint64
	waitIDs  []uint64
	ends     []uint64
	order    []string // "start", "wait", "end" and event kinds, in call order
	evs      events
}

func newHookLog() *hookLog { return &hookLog{waits: map[any]uint64{}} }

func (h *hookLog) hooks() RefreshHooks {
	return RefreshHooks{
		Context: func(ctx context.Context, r RefreshInfo) context.Context {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.starts = append(h.starts, r)
			h.starters = append(h.starters, ctx.Value(ctxKey{}))
			h.order = append(h.order, "start")
			return context.WithValue(ctx, hookKey{}, r.ID)
		},
		Wait: func(ctx context.Context, id uint64) {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.waits[ctx.Value(ctxKey{})] = id
			h.waitIDs = append(h.waitIDs, id)
			h.order = append(h.order, "wait")
		},
		End: func(id uint64) {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.ends = append(h.ends, id)
			h.order = append(h.order, "end")
		},
	}
}

func (h *hookLog) observe(e Event) {
	h.mu.Lock()
	h.order = append(h.order, e.Kind.String())
	h.mu.Unlock()
	h.evs.observe(e)
}

type hookKey struct{}

// N callers blocked on one refresh: N Wait calls, each with its caller's
// ctx and the refresh's ID, which every event of the refresh carries; the
// Refresher runs with the values of the initiator's ctx plus those of the
// Context hook; End comes last.
func TestRefreshHooksWaiters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 50
		release := make(chan struct{})
		inner := sequence(time.Now, time.Hour)
		var refCtx context.Context
		r := &counter{fn: func(ctx context.Context, cur *Token) (*Token, error) {
			refCtx = ctx
			<-release
			return inner.Refresh(ctx, cur)
		}}
		h := newHookLog()
		s := New(r, WithInitialToken(expired(time.Now())), WithObserver(h.observe), WithRefreshHooks(h.hooks()))
		defer mustClose(t, s)

		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				if _, err := s.Token(context.WithValue(ctxBG, ctxKey{}, i)); err != nil {
					t.Errorf("caller %d: %v", i, err)
				}
			})
		}
		synctest.Wait()
		close(release)
		wg.Wait()
		mustClose(t, s)

		h.mu.Lock()
		defer h.mu.Unlock()
		if len(h.starts) != 1 || len(h.ends) != 1 {
			t.Fatalf("Context calls %+v, End calls %v, want one each", h.starts, h.ends)
		}
		id := h.starts[0].ID
		if id == 0 || h.starts[0].Forced || h.starts[0].Background {
			t.Errorf("RefreshInfo = %+v, want an expiry refresh with an ID", h.starts[0])
		}
		if h.ends[0] != id {
			t.Errorf("End(%d), want End(%d)", h.ends[0], id)
		}
		if i, ok := h.starters[0].(int); !ok || i < 0 || i >= n {
			t.Errorf("Context hook saw initiator value %v, want one of the callers'", h.starters[0])
		}
		if got := refCtx.Value(hookKey{}); got != id {
			t.Errorf("Refresher's ctx carries hook value %v, want %d", got, id)
		}
		if refCtx.Value(ctxKey{}) != h.starters[0] {
			t.Errorf("Refresher's ctx lost the initiator's values")
		}
		if !InRefresh(refCtx) {
			t.Error("Refresher's ctx is not marked InRefresh")
		}
		if _, ok := refCtx.Deadline(); !ok {
			t.Error("Refresher's ctx has no deadline (the refresh timeout)")
		}
		if len(h.waits) != n || len(h.waitIDs) != n {
			t.Fatalf("%d Wait calls from %d distinct callers, want %d", len(h.waitIDs), len(h.waits), n)
		}
		for i := range n {
			if got, ok := h.waits[i]; !ok || got != id {
				t.Errorf("caller %d: Wait(%d, ok %v), want Wait with its own ctx and ID %d", i, got, ok, id)
			}
		}
		ok := h.evs.of(RefreshSucceeded)
		started := h.evs.of(RefreshStarted)
		if len(ok) != 1 || ok[0].Refresh != id || ok[0].Waiters != n || len(started) != 1 || started[0].Refresh != id {
			t.Errorf("events %+v %+v, want one start and one success with Refresh %d, Waiters %d", started, ok, id, n)
		}
		if h.order[0] != "start" || h.order[len(h.order)-1] != "end" {
			t.Errorf("hook and event order %v, want the Context call first and End last", h.order)
		}
	})
}

// IDs are unique per refresh and shared by all events of one, including a
// late result; events outside a refresh carry 0; a background refresh is
// reported as such to the Context hook.
func TestRefreshIDs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		unblock := make(chan struct{})
		calls := 0
		r := &counter{fn: func(ctx context.Context, cur *Token) (*Token, error) {
			calls++
			if calls == 2 {
				<-unblock // ignores ctx: a late result
			}
			return &Token{AccessToken: "a" + string(rune('0'+calls)), Expiry: time.Now().Add(time.Hour)}, nil
		}}
		h := newHookLog()
		s := New(r, WithObserver(h.observe), WithRefreshHooks(h.hooks()), WithRefreshTimeout(2*time.Second))
		defer mustClose(t, s)

		if _, err := s.Token(ctxBG); err != nil { // refresh 1
			t.Fatal(err)
		}
		time.Sleep(time.Hour - 10*time.Second - 225*time.Second + time.Second) // the early window
		if _, err := s.Token(ctxBG); err != nil {                              // starts background refresh 2
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second) // past the refresh timeout
		close(unblock)
		synctest.Wait()
		if err := s.SetToken(ctxBG, &Token{AccessToken: "set", Expiry: time.Now().Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		mustClose(t, s)

		h.mu.Lock()
		defer h.mu.Unlock()
		if len(h.starts) != 2 || h.starts[0].Background || !h.starts[1].Background {
			t.Fatalf("Context calls %+v, want an expiry refresh and a background one", h.starts)
		}
		id1, id2 := h.starts[0].ID, h.starts[1].ID
		if id1 == 0 || id2 == 0 || id1 == id2 {
			t.Fatalf("IDs %d and %d, want two distinct non-zero IDs", id1, id2)
		}
		if len(h.ends) != 2 || h.ends[0] != id1 || h.ends[1] != id2 {
			t.Errorf("End calls %v, want [%d %d]", h.ends, id1, id2)
		}
		if len(h.waitIDs) != 1 || h.waitIDs[0] != id1 {
			t.Errorf("Wait calls %v, want one for refresh %d (nobody waits on a background refresh)", h.waitIDs, id1)
		}
		want := map[EventKind][]uint64{
			RefreshStarted:   {id1, id2},
			RefreshSucceeded: {id1, id2}, // the second is the late result
			RefreshFailed:    {id2},      // the timeout
			TokenSet:         {0},
		}
		for k, ids := range want {
			evs := h.evs.of(k)
			if len(evs) != len(ids) {
				t.Errorf("%d %v events, want %d", len(evs), k, len(ids))
				continue
			}
			for i, e := range evs {
				if e.Refresh != ids[i] {
					t.Errorf("%v event %d: Refresh %d, want %d", k, i, e.Refresh, ids[i])
				}
			}
		}
		if f := h.evs.of(RefreshFailed); len(f) == 1 && !errors.Is(f[0].Err, ErrRefreshTimeout) {
			t.Errorf("RefreshFailed %v, want the timeout", f[0].Err)
		}
	})
}
