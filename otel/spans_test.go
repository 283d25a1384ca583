package tokenrefreshotel_test

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	tokenrefreshotel "github.com/tokenrefresh/grpc-tokenrefresh/otel"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// A Refresher that ignores its context: the refresh timeout ends the span
// as a timeout failure; the late result, reported without a start of its
// own, gets a span of its own that covers the whole call.
func TestTimeoutAndLateResult(t *testing.T) {
	rg := newRig(t)
	ref := &refresher{life: time.Hour, gate: make(chan struct{}), deaf: true}
	src := newSource(t, ref, tokensource.WithObserver(rg.observe),
		tokensource.WithRefreshTimeout(100*time.Millisecond))
	_, err := src.Token(testCtx(t))
	if !errors.Is(err, tokensource.ErrRefreshTimeout) {
		t.Fatalf("Token = %v, want ErrRefreshTimeout", err)
	}
	rg.waitFor(t, tokensource.RefreshFailed)
	close(ref.gate) // the late result arrives
	late := rg.waitFor(t, tokensource.RefreshSucceeded)

	if got := rg.sum(t, tokenrefreshotel.MetricRefreshes, failure, semconv.ErrorTypeKey.String("timeout")); got != 1 {
		t.Errorf("%s{failure, timeout} = %d, want 1", tokenrefreshotel.MetricRefreshes, got)
	}
	if got := rg.sum(t, tokenrefreshotel.MetricRefreshes, success); got != 1 {
		t.Errorf("%s{success} = %d, want 1 (the late result)", tokenrefreshotel.MetricRefreshes, got)
	}
	spans := rg.refreshSpans()
	if len(spans) != 2 {
		t.Fatalf("refresh spans = %d, want 2", len(spans))
	}
	if s := spans[0]; s.Status().Code != codes.Error {
		t.Errorf("timed-out span status = %v, want Error", s.Status())
	}
	s := spans[1]
	wantAttr(t, s, success)
	if got := s.EndTime().Sub(s.StartTime()); got != late.Duration {
		t.Errorf("late span lasts %v, want the event's duration %v", got, late.Duration)
	}
}

// Pairing without a Source: a start whose end never came is closed as
// unknown when the next one starts.
func TestUnpairedStart(t *testing.T) {
	rg := newRig(t)
	now := time.Now()
	rg.obs.Observe(tokensource.Event{Kind: tokensource.RefreshStarted, Time: now})
	rg.obs.Observe(tokensource.Event{Kind: tokensource.RefreshStarted, Time: now.Add(time.Second), Forced: true})
	rg.obs.Observe(tokensource.Event{Kind: tokensource.RefreshSucceeded, Time: now.Add(2 * time.Second),
		Duration: time.Second, Forced: true, Generation: 7})
	spans := rg.refreshSpans()
	if len(spans) != 2 {
		t.Fatalf("refresh spans = %d, want 2", len(spans))
	}
	wantAttr(t, spans[0], tokenrefreshotel.OutcomeKey.String(tokenrefreshotel.OutcomeUnknown))
	wantAttr(t, spans[0], expiry)
	wantAttr(t, spans[1], success)
	wantAttr(t, spans[1], forced)
	wantAttr(t, spans[1], tokenrefreshotel.GenerationKey.Int64(7))
	if !spans[1].StartTime().Equal(now.Add(time.Second)) || !spans[1].EndTime().Equal(now.Add(2*time.Second)) {
		t.Errorf("span runs %v to %v, want the events' times", spans[1].StartTime(), spans[1].EndTime())
	}
}

// Every instrument the Observer creates is documented in README.md and in
// the package documentation.
func TestInstrumentsDocumented(t *testing.T) {
	rg := newRig(t)
	src := hotSource(t, nil)
	reg, err := rg.obs.ObserveStats(src)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = reg.Unregister() }()
	now := time.Now()
	for _, k := range []tokensource.EventKind{
		tokensource.RefreshStarted, tokensource.RefreshSucceeded, tokensource.RefreshRateLimited,
		tokensource.StoreFailed, tokensource.TokenAdopted, tokensource.LeaseWaited, tokensource.LeaseTakenOver,
	} {
		rg.obs.Observe(tokensource.Event{Kind: k, Time: now, Duration: time.Second, Waiters: 1})
	}
	rg.tryRetry(t)

	var names []string
	for _, sm := range rg.collect(t).ScopeMetrics {
		if sm.Scope.Name != tokenrefreshotel.ScopeName {
			t.Errorf("scope %q, want %q", sm.Scope.Name, tokenrefreshotel.ScopeName)
		}
		for _, m := range sm.Metrics {
			names = append(names, m.Name)
			if m.Description == "" || m.Unit == "" {
				t.Errorf("%s: description %q, unit %q; want both", m.Name, m.Description, m.Unit)
			}
		}
	}
	if len(names) != 12 {
		t.Errorf("instruments = %d (%v), want 12", len(names), names)
	}
	for _, file := range []string{"README.md", "doc.go"} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if !strings.Contains(string(b), n+"`") && !strings.Contains(string(b), n+" ") {
				t.Errorf("%s does not document %s", file, n)
			}
		}
	}
}
