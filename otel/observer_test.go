package tokenrefreshotel_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/testutil"
	tokenrefreshotel "github.com/tokenrefresh/grpc-tokenrefresh/otel"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

var (
	success   = tokenrefreshotel.OutcomeKey.String(tokenrefreshotel.OutcomeSuccess)
	failure   = tokenrefreshotel.OutcomeKey.String(tokenrefreshotel.OutcomeFailure)
	reauth    = tokenrefreshotel.OutcomeKey.String(tokenrefreshotel.OutcomeReauthRequired)
	unchanged = tokenrefreshotel.OutcomeKey.String(tokenrefreshotel.OutcomeUnchanged)
	adopted   = tokenrefreshotel.OutcomeKey.String(tokenrefreshotel.OutcomeAdopted)
	expiry    = tokenrefreshotel.TriggerKey.String(tokenrefreshotel.TriggerExpiry)
	early     = tokenrefreshotel.TriggerKey.String(tokenrefreshotel.TriggerEarly)
	forced    = tokenrefreshotel.TriggerKey.String(tokenrefreshotel.TriggerForced)
)

// A refresh for a missing token, two forced refreshes and a rate-limited one:
// counters by outcome and trigger, the duration histogram, one span each.
func TestRefreshesByTrigger(t *testing.T) {
	rg := newRig(t, tokenrefreshotel.WithAttributes(attribute.String("tokenrefresh.source", "billing")))
	ref := &refresher{life: time.Hour}
	src := newSource(t, ref, tokensource.WithObserver(rg.observe), tokensource.WithMinRefreshInterval(time.Hour))
	ctx := testCtx(t)

	tok, err := src.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rg.waitFor(t, tokensource.RefreshSucceeded)
	tok2, err := src.Refresh(ctx, tok)
	if err != nil || tok2 == tok {
		t.Fatalf("Refresh = %v, %v; want a new token", tok2, err)
	}
	rg.waitFor(t, tokensource.RefreshSucceeded)
	tok3, err := src.Refresh(ctx, tok2) // the storm guard's burst is two
	if err != nil || tok3 == tok2 {
		t.Fatalf("second Refresh = %v, %v; want a new token", tok3, err)
	}
	rg.waitFor(t, tokensource.RefreshSucceeded)
	if tok4, err := src.Refresh(ctx, tok3); err != nil || tok4 != tok3 {
		t.Fatalf("third Refresh = %v, %v; want the same token (rate limit)", tok4, err)
	}
	rg.waitFor(t, tokensource.RefreshRateLimited)
	if n := ref.n.Load(); n != 3 {
		t.Fatalf("Refresher calls = %d, want 3", n)
	}

	source := attribute.String("tokenrefresh.source", "billing")
	for _, c := range []struct {
		attrs []attribute.KeyValue
		want  int64
	}{
		{[]attribute.KeyValue{success, expiry, source}, 1},
		{[]attribute.KeyValue{success, forced, source}, 2},
		{[]attribute.KeyValue{success, early}, 0},
		{[]attribute.KeyValue{failure}, 0},
		{nil, 3},
	} {
		if got := rg.sum(t, tokenrefreshotel.MetricRefreshes, c.attrs...); got != c.want {
			t.Errorf("%s%v = %d, want %d", tokenrefreshotel.MetricRefreshes, c.attrs, got, c.want)
		}
	}
	if n, _ := rg.hist(t, tokenrefreshotel.MetricRefreshDuration, success, source); n != 3 {
		t.Errorf("%s count = %d, want 3", tokenrefreshotel.MetricRefreshDuration, n)
	}
	if got := rg.sum(t, tokenrefreshotel.MetricRefreshRateLimited, source); got != 1 {
		t.Errorf("%s = %d, want 1", tokenrefreshotel.MetricRefreshRateLimited, got)
	}
	// The callers that called Token and Refresh each waited for their refresh.
	if got := rg.sum(t, tokenrefreshotel.MetricCallersWaited); got != 3 {
		t.Errorf("%s = %d, want 3", tokenrefreshotel.MetricCallersWaited, got)
	}

	spans := rg.refreshSpans()
	if len(spans) != 3 {
		t.Fatalf("refresh spans = %d, want 3", len(spans))
	}
	for i, trig := range []attribute.KeyValue{expiry, forced, forced} {
		s := spans[i]
		wantAttr(t, s, success)
		wantAttr(t, s, trig)
		wantAttr(t, s, source)
		wantAttr(t, s, tokenrefreshotel.GenerationKey.Int64(int64(i+1)))
		wantAttr(t, s, tokenrefreshotel.WaitersKey.Int(1))
		if s.Status().Code != codes.Unset {
			t.Errorf("span %d status = %v, want Unset", i, s.Status())
		}
		if s.Parent().IsValid() {
			t.Errorf("span %d has a parent; refresh spans are roots", i)
		}
		if s.EndTime().Before(s.StartTime()) {
			t.Errorf("span %d ends before it starts", i)
		}
	}
}

// Failures carry their outcome and a low-cardinality error.type, on the
// counter and on an Error span; ReauthRequired is its own outcome and shows
// in the reauth.required state.
func TestRefreshFailures(t *testing.T) {
	rg := newRig(t)
	clk := testutil.NewClock(time.Now())
	ref := &refresher{clock: clk.Now, life: time.Hour, fail: func(n int64) error {
		switch n {
		case 1:
			return errors.New("connection reset")
		case 2:
			return status.Error(grpccodes.Unavailable, "identity provider down")
		default:
			return tokensource.Permanent(errors.New("invalid_grant"))
		}
	}}
	// One Refresher call per refresh: each failure ends its refresh.
	src := newSource(t, ref, tokensource.WithObserver(rg.observe), tokensource.WithClock(clk.Now),
		tokensource.WithBackoff(time.Second, time.Second), tokensource.WithRefreshAttempts(1))
	reg, err := rg.obs.ObserveStats(src)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = reg.Unregister() }()
	ctx := testCtx(t)

	for i, want := range []tokensource.EventKind{tokensource.RefreshFailed, tokensource.RefreshFailed, tokensource.ReauthRequired} {
		if _, err := src.Token(ctx); err == nil {
			t.Fatalf("Token %d succeeded", i)
		}
		rg.waitFor(t, want)
		clk.Advance(time.Minute) // past the backoff
	}
	if n := ref.n.Load(); n != 3 {
		t.Fatalf("Refresher calls = %d, want 3", n)
	}
	for _, c := range []struct {
		attrs []attribute.KeyValue
		want  int64
	}{
		{[]attribute.KeyValue{failure, expiry, semconv.ErrorTypeOther}, 1},
		{[]attribute.KeyValue{failure, expiry, semconv.ErrorTypeKey.String("UNAVAILABLE")}, 1},
		{[]attribute.KeyValue{reauth, expiry, semconv.ErrorTypeKey.String("reauth_required")}, 1},
		{[]attribute.KeyValue{success}, 0},
	} {
		if got := rg.sum(t, tokenrefreshotel.MetricRefreshes, c.attrs...); got != c.want {
			t.Errorf("%s%v = %d, want %d", tokenrefreshotel.MetricRefreshes, c.attrs, got, c.want)
		}
	}
	if got := rg.sum(t, tokenrefreshotel.MetricReauthRequiredState); got != 1 {
		t.Errorf("%s = %d, want 1", tokenrefreshotel.MetricReauthRequiredState, got)
	}
	spans := rg.refreshSpans()
	if len(spans) != 3 {
		t.Fatalf("refresh spans = %d, want 3", len(spans))
	}
	for _, s := range spans {
		if s.Status().Code != codes.Error || s.Status().Description == "" {
			t.Errorf("span status = %+v, want Error with a description", s.Status())
		}
	}
	wantAttr(t, spans[2], reauth)

	// A new login leaves the state.
	if err := src.SetToken(ctx, &tokensource.Token{AccessToken: "login", Expiry: clk.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if got := rg.sum(t, tokenrefreshotel.MetricReauthRequiredState); got != 0 {
		t.Errorf("%s after SetToken = %d, want 0", tokenrefreshotel.MetricReauthRequiredState, got)
	}
}

// A forced refresh that hands back the rejected token is the unchanged
// outcome, not a success.
func TestRefreshUnchanged(t *testing.T) {
	rg := newRig(t)
	ref := &refresher{same: true}
	src := newSource(t, ref, tokensource.WithObserver(rg.observe),
		tokensource.WithInitialToken(&tokensource.Token{AccessToken: "cached", Expiry: time.Now().Add(time.Hour)}))
	ctx := testCtx(t)
	tok, err := src.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = src.Refresh(ctx, tok)
	if !errors.Is(err, tokensource.ErrUnchangedToken) {
		t.Fatalf("Refresh = %v, want ErrUnchangedToken", err)
	}
	rg.waitFor(t, tokensource.RefreshUnchanged)
	if got := rg.sum(t, tokenrefreshotel.MetricRefreshes, unchanged, forced,
		semconv.ErrorTypeKey.String("unchanged_token")); got != 1 {
		t.Errorf("%s{unchanged, forced} = %d, want 1", tokenrefreshotel.MetricRefreshes, got)
	}
	if got := rg.sum(t, tokenrefreshotel.MetricRefreshes, success); got != 0 {
		t.Errorf("%s{success} = %d, want 0", tokenrefreshotel.MetricRefreshes, got)
	}
	spans := rg.refreshSpans()
	if len(spans) != 1 {
		t.Fatalf("refresh spans = %d, want 1", len(spans))
	}
	wantAttr(t, spans[0], unchanged)
	if spans[0].Status().Code != codes.Error {
		t.Errorf("span status = %v, want Error", spans[0].Status())
	}
}

// In the early window the refresh runs in the background: trigger early,
// nobody waited.
func TestEarlyRefresh(t *testing.T) {
	rg := newRig(t)
	clk := testutil.NewClock(time.Now())
	ref := &refresher{clock: clk.Now, life: time.Hour}
	src := newSource(t, ref, tokensource.WithObserver(rg.observe), tokensource.WithClock(clk.Now),
		tokensource.WithInitialToken(&tokensource.Token{AccessToken: "login", Expiry: clk.Now().Add(time.Hour)}))
	ctx := testCtx(t)
	if _, err := src.Token(ctx); err != nil {
		t.Fatal(err)
	}
	// Inside the early window (the default 225 s before the 10 s leeway), still valid.
	clk.Advance(time.Hour - tokensource.DefaultExpiryLeeway - tokensource.DefaultEarlyRefresh/2)
	tok, err := src.Token(ctx)
	if err != nil || tok.AccessToken != "login" {
		t.Fatalf("Token in the early window = %v, %v; want the valid login token at once", tok, err)
	}
	e := rg.waitFor(t, tokensource.RefreshSucceeded)
	if !e.Background {
		t.Fatalf("event %+v is not a background refresh", e)
	}
	if got := rg.sum(t, tokenrefreshotel.MetricRefreshes, success, early); got != 1 {
		t.Errorf("%s{success, early} = %d, want 1", tokenrefreshotel.MetricRefreshes, got)
	}
	spans := rg.refreshSpans()
	if len(spans) != 1 {
		t.Fatalf("refresh spans = %d, want 1", len(spans))
	}
	wantAttr(t, spans[0], early)
	wantAttr(t, spans[0], tokenrefreshotel.WaitersKey.Int(0))
}

// Callers blocked on one refresh: the live gauge while it runs, the
// callers.waited counter and the span's waiters when it ends.
func TestCallersWaiting(t *testing.T) {
	rg := newRig(t)
	ref := &refresher{life: time.Hour, gate: make(chan struct{}), entered: make(chan struct{}, 1)}
	src := newSource(t, ref, tokensource.WithObserver(rg.observe))
	reg, err := rg.obs.ObserveStats(src)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = reg.Unregister() }()
	ctx := testCtx(t)

	const callers = 5
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for range callers {
		wg.Go(func() {
			_, err := src.Token(ctx)
			errs <- err
		})
	}
	<-ref.entered
	// Stats is the only view of how many have joined the refresh.
	for src.Stats().Waiting != callers {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting = %d, want %d", src.Stats().Waiting, callers)
		case <-time.After(time.Millisecond):
		}
	}
	if got := rg.sum(t, tokenrefreshotel.MetricCallersWaiting); got != callers {
		t.Errorf("%s = %d, want %d", tokenrefreshotel.MetricCallersWaiting, got, callers)
	}
	if got := rg.sum(t, tokenrefreshotel.MetricRefreshActive); got != 1 {
		t.Errorf("%s = %d, want 1", tokenrefreshotel.MetricRefreshActive, got)
	}
	close(ref.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	rg.waitFor(t, tokensource.RefreshSucceeded)
	if n := ref.n.Load(); n != 1 {
		t.Fatalf("Refresher calls = %d, want 1", n)
	}
	if got := rg.sum(t, tokenrefreshotel.MetricCallersWaited, success, expiry); got != callers {
		t.Errorf("%s = %d, want %d", tokenrefreshotel.MetricCallersWaited, got, callers)
	}
	if got := rg.sum(t, tokenrefreshotel.MetricCallersWaiting); got != 0 {
		t.Errorf("%s after the refresh = %d, want 0", tokenrefreshotel.MetricCallersWaiting, got)
	}
	if got := rg.sum(t, tokenrefreshotel.MetricRefreshActive); got != 0 {
		t.Errorf("%s after the refresh = %d, want 0", tokenrefreshotel.MetricRefreshActive, got)
	}
	spans := rg.refreshSpans()
	if len(spans) != 1 {
		t.Fatalf("refresh spans = %d, want 1", len(spans))
	}
	wantAttr(t, spans[0], tokenrefreshotel.WaitersKey.Int(callers))
}

// failingStore keeps nothing: every Save fails.
type failingStore struct{}

var errDiskFull = errors.New("disk full")

func (failingStore) Load(context.Context) (*tokensource.Token, error) { return nil, nil }
func (failingStore) Save(context.Context, *tokensource.Token) error   { return errDiskFull }

// A failed save is counted and marked on the refresh span it belongs to.
func TestStoreFailure(t *testing.T) {
	rg := newRig(t)
	src := newSource(t, &refresher{life: time.Hour}, tokensource.WithObserver(rg.observe),
		tokensource.WithStore(failingStore{}))
	if _, err := src.Token(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	rg.waitFor(t, tokensource.RefreshSucceeded)
	if got := rg.sum(t, tokenrefreshotel.MetricStoreFailures, semconv.ErrorTypeOther); got != 1 {
		t.Errorf("%s = %d, want 1", tokenrefreshotel.MetricStoreFailures, got)
	}
	spans := rg.refreshSpans()
	if len(spans) != 1 {
		t.Fatalf("refresh spans = %d, want 1", len(spans))
	}
	if !hasEvent(spans[0], "tokenrefresh.store_failed") {
		t.Errorf("refresh span has no store_failed event: %v", spans[0].Events())
	}
}
