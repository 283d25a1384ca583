package tokenrefreshotel_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	"github.com/tokenrefresh/grpc-tokenrefresh/internal/testutil"
	tokenrefreshotel "github.com/tokenrefresh/grpc-tokenrefresh/otel"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// spanRefresher wraps a refresher and records the span found in the
// context of each call.
type spanRefresher struct {
	*refresher
	mu   sync.Mutex
	seen []trace.SpanContext
}

func (r *spanRefresher) Refresh(ctx context.Context, cur *tokensource.Token) (*tokensource.Token, error) {
	r.mu.Lock()
	r.seen = append(r.seen, trace.SpanContextFromContext(ctx))
	r.mu.Unlock()
	return r.refresher.Refresh(ctx, cur)
}

// hookedSource is a Source whose observer is rg's and whose hooks are the
// Observer's, with Wait also signalling waited.
func hookedSource(t *testing.T, rg *rig, r tokensource.Refresher, waited chan<- struct{}, opts ...tokensource.Option) *tokensource.Source {
	t.Helper()
	h := rg.obs.Hooks()
	if waited != nil {
		wait := h.Wait
		h.Wait = func(ctx context.Context, id uint64) {
			wait(ctx, id)
			waited <- struct{}{}
		}
	}
	return newSource(t, r, append([]tokensource.Option{tokensource.WithObserver(rg.observe),
		tokensource.WithRefreshHooks(h)}, opts...)...)
}

// linksTo returns the links of s to target, by their tokenrefresh.link value.
func linksTo(s sdktrace.ReadOnlySpan, target trace.SpanContext) []string {
	var out []string
	for _, l := range s.Links() {
		if l.SpanContext.Equal(target) {
			v := ""
			for _, kv := range l.Attributes {
				if kv.Key == tokenrefreshotel.LinkKey {
					v = kv.Value.AsString()
				}
			}
			out = append(out, v)
		}
	}
	return out
}

// wantAllEnded fails if a span was started but not ended.
func (r *rig) wantAllEnded(t *testing.T) {
	t.Helper()
	if s, e := len(r.spans.Started()), len(r.spans.Ended()); s != e {
		t.Errorf("%d spans started, %d ended", s, e)
	}
}

// Two callers block on one expiry refresh, each under a span of its own:
// the refresh span is a child of the initiator's span, the Refresher runs
// under the refresh span, and both callers' spans get a wait event and a
// link to the one refresh span.
func TestWaitersLinkToRefreshSpan(t *testing.T) {
	rg := newRig(t)
	ref := &spanRefresher{refresher: &refresher{life: time.Hour, gate: make(chan struct{}), entered: make(chan struct{}, 1)}}
	waited := make(chan struct{}, 2)
	src := hookedSource(t, rg, ref, waited)
	tracer := rg.tp.Tracer("test")
	ctxA, spanA := tracer.Start(testCtx(t), "caller-a")
	ctxB, spanB := tracer.Start(testCtx(t), "caller-b")

	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Go(func() { _, err := src.Token(ctxA); errs <- err })
	<-ref.entered // A started the refresh
	<-waited
	wg.Go(func() { _, err := src.Token(ctxB); errs <- err })
	<-waited // B waits on it too
	close(ref.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	spanA.End()
	spanB.End()
	if err := src.Close(); err != nil { // waits for the End hook
		t.Fatal(err)
	}

	spans := rg.refreshSpans()
	if len(spans) != 1 {
		t.Fatalf("refresh spans = %d, want 1", len(spans))
	}
	rs := spans[0]
	if got := rs.Parent(); !got.Equal(spanA.SpanContext()) {
		t.Errorf("refresh span's parent = %v, want the initiator's span %v", got.SpanID(), spanA.SpanContext().SpanID())
	}
	wantAttr(t, rs, success)
	wantAttr(t, rs, expiry)
	wantAttr(t, rs, tokenrefreshotel.WaitersKey.Int(2))
	if len(ref.seen) != 1 || !ref.seen[0].Equal(rs.SpanContext()) {
		t.Errorf("the Refresher saw span %v, want the refresh span %v", ref.seen, rs.SpanContext().SpanID())
	}
	for _, name := range []string{"caller-a", "caller-b"} {
		s := rg.ended(t, name)
		if got := linksTo(s, rs.SpanContext()); len(got) != 1 || got[0] != tokenrefreshotel.LinkWaited {
			t.Errorf("%s: links to the refresh span %v, want one %q", name, got, tokenrefreshotel.LinkWaited)
		}
		if !hasEvent(s, tokenrefreshotel.EventWait) {
			t.Errorf("%s: no %s event", name, tokenrefreshotel.EventWait)
		}
	}
	rg.wantAllEnded(t)
}

// A call rejected with the current token waits on the forced refresh its
// Refresh started: that refresh is a child of the call's span, and the
// retry's link points to it, not to the refresh before.
func TestRetryLinksToTheRefreshItWaitedOn(t *testing.T) {
	rg := newRig(t)
	ref := &spanRefresher{refresher: &refresher{life: time.Hour}}
	src := hookedSource(t, rg, ref, nil, tokensource.WithMinRefreshInterval(0))
	ui := interceptor.UnaryClientInterceptor(src, interceptor.AllowInsecure(), rg.obs.InterceptorOption())
	if _, err := src.Token(testCtx(t)); err != nil { // refresh 1: the first token
		t.Fatal(err)
	}
	attempts := 0
	invoker := func(ctx context.Context, _ string, _, _ any, _ *grpc.ClientConn, _ ...grpc.CallOption) error {
		attempts++
		if attempts == 1 {
			return status.Error(grpccodes.Unauthenticated, "token rejected")
		}
		return nil
	}
	ctx, call := rg.tp.Tracer("test").Start(testCtx(t), "call")
	if err := ui(ctx, "/svc/Method", nil, nil, nil, invoker); err != nil {
		t.Fatal(err)
	}
	call.End()
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	spans := rg.refreshSpans()
	if len(spans) != 2 {
		t.Fatalf("refresh spans = %d, want 2", len(spans))
	}
	// In the order they started: the first refresh's span may end after
	// the second's (its events come after its waiters are released).
	slices.SortFunc(spans, func(a, b sdktrace.ReadOnlySpan) int { return a.StartTime().Compare(b.StartTime()) })
	forcedSpan := spans[1]
	wantAttr(t, forcedSpan, forced)
	if !forcedSpan.Parent().Equal(call.SpanContext()) {
		t.Errorf("forced refresh's parent = %v, want the call's span", forcedSpan.Parent().SpanID())
	}
	s := rg.ended(t, "call")
	wantAttr(t, s, tokenrefreshotel.RetriedKey.Bool(true))
	got := linksTo(s, forcedSpan.SpanContext())
	if len(got) != 2 || got[0] != tokenrefreshotel.LinkWaited || got[1] != tokenrefreshotel.LinkRefresh {
		t.Errorf("call's links to the forced refresh = %v, want [wait refresh]", got)
	}
	if got := linksTo(s, spans[0].SpanContext()); len(got) != 0 {
		t.Errorf("call links to the first refresh too: %v", got)
	}
	rg.wantAllEnded(t)
}

// A Refresher that ignores its context: the timeout ends the refresh span
// (under the initiator's span); the late result gets a span of its own,
// under the same parent, marked late and linked to the timed-out one.
func TestLateResultWithHooks(t *testing.T) {
	rg := newRig(t)
	ref := &refresher{life: time.Hour, gate: make(chan struct{}), deaf: true}
	src := hookedSource(t, rg, ref, nil, tokensource.WithRefreshTimeout(100*time.Millisecond))
	ctx, caller := rg.tp.Tracer("test").Start(testCtx(t), "caller")
	if _, err := src.Token(ctx); !errors.Is(err, tokensource.ErrRefreshTimeout) {
		t.Fatalf("Token = %v, want ErrRefreshTimeout", err)
	}
	caller.End()
	timedOut := rg.waitFor(t, tokensource.RefreshFailed)
	close(ref.gate)
	late := rg.waitFor(t, tokensource.RefreshSucceeded)
	if late.Refresh != timedOut.Refresh {
		t.Fatalf("late result's Refresh %d, want the timed-out %d", late.Refresh, timedOut.Refresh)
	}
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	spans := rg.refreshSpans()
	if len(spans) != 2 {
		t.Fatalf("refresh spans = %d, want 2", len(spans))
	}
	first, second := spans[0], spans[1]
	if first.Status().Code != codes.Error || !first.Parent().Equal(caller.SpanContext()) {
		t.Errorf("timed-out span: status %v, parent %v; want Error under the caller", first.Status(), first.Parent().SpanID())
	}
	wantAttr(t, second, success)
	wantAttr(t, second, tokenrefreshotel.LateKey.Bool(true))
	if !second.Parent().Equal(caller.SpanContext()) {
		t.Errorf("late span's parent = %v, want the caller's span", second.Parent().SpanID())
	}
	if got := linksTo(second, first.SpanContext()); len(got) != 1 || got[0] != tokenrefreshotel.LinkTimedOut {
		t.Errorf("late span's links to the timed-out one = %v, want [%s]", got, tokenrefreshotel.LinkTimedOut)
	}
	rg.wantAllEnded(t)
}

// A background refresh in the early window, installed with SourceOptions:
// a root span linked to the caller that noticed the window; the Refresher
// runs under it; nobody waits.
func TestBackgroundRefreshIsRootSpan(t *testing.T) {
	rg := newRig(t)
	clock := testutil.NewClock(time.Now())
	ref := &spanRefresher{refresher: &refresher{life: time.Hour, clock: clock.Now}}
	src := newSource(t, ref, append(rg.obs.SourceOptions(), tokensource.WithObserver(rg.record),
		tokensource.WithClock(clock.Now),
		tokensource.WithInitialToken(&tokensource.Token{AccessToken: "first", Expiry: clock.Now().Add(time.Hour)}))...)
	clock.Advance(time.Hour - 10*time.Second - 225*time.Second + time.Second) // into the early window
	ctx, caller := rg.tp.Tracer("test").Start(testCtx(t), "caller")
	if tok, err := src.Token(ctx); err != nil || tok.AccessToken != "first" {
		t.Fatalf("Token in the early window = (%v, %v), want the current token", tok, err)
	}
	caller.End()
	ev := rg.waitFor(t, tokensource.RefreshSucceeded)
	if !ev.Background {
		t.Fatalf("refresh event %+v, want a background refresh", ev)
	}
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	spans := rg.refreshSpans()
	if len(spans) != 1 {
		t.Fatalf("refresh spans = %d, want 1", len(spans))
	}
	rs := spans[0]
	if rs.Parent().IsValid() {
		t.Errorf("background refresh span has parent %v, want a root span", rs.Parent().SpanID())
	}
	wantAttr(t, rs, tokenrefreshotel.TriggerKey.String(tokenrefreshotel.TriggerEarly))
	if got := linksTo(rs, caller.SpanContext()); len(got) != 1 || got[0] != tokenrefreshotel.LinkTriggeredBy {
		t.Errorf("background span's links to the caller = %v, want [%s]", got, tokenrefreshotel.LinkTriggeredBy)
	}
	if len(ref.seen) != 1 || !ref.seen[0].Equal(rs.SpanContext()) {
		t.Errorf("the Refresher saw span %v, want the refresh span", ref.seen)
	}
	if hasEvent(rg.ended(t, "caller"), tokenrefreshotel.EventWait) {
		t.Error("the caller that noticed the early window is marked as waiting")
	}
	rg.wantAllEnded(t)
}

// A refresh that ends without a result event (the Store held a valid
// token) still ends its span, with outcome none, through the End hook.
func TestLoadOnlyRefreshEndsSpan(t *testing.T) {
	rg := newRig(t)
	st := tokensource.NewMemoryStore()
	if err := st.Save(testCtx(t), &tokensource.Token{AccessToken: "stored", Expiry: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	ref := &refresher{life: time.Hour}
	src := hookedSource(t, rg, ref, nil, tokensource.WithStore(st))
	if tok, err := src.Token(testCtx(t)); err != nil || tok.AccessToken != "stored" {
		t.Fatalf("Token = (%v, %v), want the stored token", tok, err)
	}
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	spans := rg.refreshSpans()
	if len(spans) != 1 {
		t.Fatalf("refresh spans = %d, want 1", len(spans))
	}
	wantAttr(t, spans[0], tokenrefreshotel.OutcomeKey.String(tokenrefreshotel.OutcomeNone))
	if !hasEvent(spans[0], "tokenrefresh.token_loaded") {
		t.Error("no token_loaded event on the span")
	}
	if n := ref.n.Load(); n != 0 {
		t.Errorf("%d Refresher calls, want 0", n)
	}
	rg.wantAllEnded(t)
}
