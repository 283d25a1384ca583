package tokenrefreshotel

import (
	"errors"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// Observer turns the events of one tokensource.Source, and the retries of
// the interceptors in front of it, into OpenTelemetry metrics and spans.
// Create it with NewObserver, give its SourceOptions to tokensource.New and
// its InterceptorOption to the interceptors. Its methods are safe for
// concurrent use.
//
// Use one Observer per Source: refresh spans are keyed by Event.Refresh,
// which is unique only among the refreshes of one Source. Observers can
// share their providers.
type Observer struct {
	tracer trace.Tracer
	attrs  []attribute.KeyValue // WithAttributes
	base   metric.MeasurementOption

	refreshes       metric.Int64Counter
	refreshDuration metric.Float64Histogram
	callersWaited   metric.Int64Counter
	rateLimited     metric.Int64Counter
	storeFailures   metric.Int64Counter
	adopted         metric.Int64Counter
	leaseWait       metric.Float64Histogram
	takeovers       metric.Int64Counter
	restored        metric.Int64Counter
	retries         metric.Int64Counter
	callersWaiting  metric.Int64ObservableUpDownCounter
	refreshActive   metric.Int64ObservableUpDownCounter
	reauthState     metric.Int64ObservableGauge
	meter           metric.Meter

	mu sync.Mutex
	// open holds the refreshes whose span has not ended, by Event.Refresh.
	open map[uint64]*refreshRec
	// recent holds the last refreshes whose span has ended, newest first.
	recent [recentRefreshes]*refreshRec
	// last is the span context of the refresh span started last: the link
	// of a retried call that the Wait hook did not see waiting.
	last trace.SpanContext
}

// durationBuckets are the histogram bounds, in seconds, of refresh and lease
// wait durations: from a cached identity provider's few milliseconds to past
// the default refresh timeout (30 s), so that a timed-out refresh lands in a
// bucket of its own.
var durationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

// NewObserver creates the Observer's instruments with the MeterProvider and
// its tracer with the TracerProvider given as options (by default the global
// ones). It fails only if an instrument cannot be created; the error names
// each failure.
func NewObserver(opts ...Option) (*Observer, error) {
	o := newOptions(opts)
	meter := o.meterProvider.Meter(ScopeName, metric.WithSchemaURL(semconv.SchemaURL))
	obs := &Observer{
		tracer: o.tracerProvider.Tracer(ScopeName, trace.WithSchemaURL(semconv.SchemaURL)),
		attrs:  o.attrs,
		base:   metric.WithAttributeSet(attribute.NewSet(o.attrs...)),
		meter:  meter,
		open:   map[uint64]*refreshRec{},
	}
	var errs []error
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	var err error
	obs.refreshes, err = meter.Int64Counter(MetricRefreshes, metric.WithUnit("{refresh}"),
		metric.WithDescription("Refreshes completed by the token source, by outcome and trigger."))
	check(err)
	obs.refreshDuration, err = meter.Float64Histogram(MetricRefreshDuration, metric.WithUnit("s"),
		metric.WithDescription("Duration of token refreshes, from the start of the refresh to its result (including store and lease work)."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	check(err)
	obs.callersWaited, err = meter.Int64Counter(MetricCallersWaited, metric.WithUnit("{caller}"),
		metric.WithDescription("Callers that blocked on a refresh, counted when the refresh ends."))
	check(err)
	obs.rateLimited, err = meter.Int64Counter(MetricRefreshRateLimited, metric.WithUnit("{refresh}"),
		metric.WithDescription("Forced refreshes skipped because the previous one ended less than the minimum refresh interval ago."))
	check(err)
	obs.storeFailures, err = meter.Int64Counter(MetricStoreFailures, metric.WithUnit("{failure}"),
		metric.WithDescription("Failed saves of a token to the store; the token was used anyway."))
	check(err)
	obs.adopted, err = meter.Int64Counter(MetricTokensAdopted, metric.WithUnit("{token}"),
		metric.WithDescription("Tokens adopted from the fleet's shared store instead of calling the Refresher."))
	check(err)
	obs.leaseWait, err = meter.Float64Histogram(MetricLeaseWaitDuration, metric.WithUnit("s"),
		metric.WithDescription("Time spent waiting for another member of the fleet that held the refresh lease."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	check(err)
	obs.takeovers, err = meter.Int64Counter(MetricLeaseTakeovers, metric.WithUnit("{takeover}"),
		metric.WithDescription("Refresh leases taken over from a holder that stopped renewing them."))
	check(err)
	obs.restored, err = meter.Int64Counter(MetricTokensRestored, metric.WithUnit("{token}"),
		metric.WithDescription("Tokens put back into the fleet's shared record, which was behind them."))
	check(err)
	obs.retries, err = meter.Int64Counter(MetricRPCRetries, metric.WithUnit("{retry}"),
		metric.WithDescription("Calls retried with a new token after the server rejected their token."))
	check(err)
	obs.callersWaiting, err = meter.Int64ObservableUpDownCounter(MetricCallersWaiting, metric.WithUnit("{caller}"),
		metric.WithDescription("Callers blocked on a refresh right now (observed from Source.Stats)."))
	check(err)
	obs.refreshActive, err = meter.Int64ObservableUpDownCounter(MetricRefreshActive, metric.WithUnit("{refresh}"),
		metric.WithDescription("Refreshes running right now, 0 or 1 per source (observed from Source.Stats)."))
	check(err)
	obs.reauthState, err = meter.Int64ObservableGauge(MetricReauthRequiredState, metric.WithUnit("1"),
		metric.WithDescription("1 while the source waits for a new login (SetToken) after its refresh credential was refused, else 0 (observed from Source.Stats)."))
	check(err)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return obs, nil
}

// SourceOptions returns the options that connect a Source to o: its
// observer (Observe) and its refresh hooks (Hooks). Give them to
// tokensource.New:
//
//	src := tokensource.New(r, obs.SourceOptions()...)
//
// A WithObserver or WithRefreshHooks given after them replaces o's; to
// observe the events yourself too, call o.Observe from your own observer.
func (o *Observer) SourceOptions() []tokensource.Option {
	return []tokensource.Option{tokensource.WithObserver(o.Observe), tokensource.WithRefreshHooks(o.Hooks())}
}

// Hooks returns the refresh hooks that put a Source's refreshes into the
// traces of its callers (see the package documentation): the refresh span
// becomes a child of the span of the caller that started the refresh, the
// Refresher runs with the refresh span in its context, and every caller
// that waits on the refresh gets a link to it. SourceOptions includes them.
// Without them (Observe alone) refresh spans are root spans and waiters are
// not linked. The hooks do not block beyond the SDK's own span start.
func (o *Observer) Hooks() tokensource.RefreshHooks {
	return tokensource.RefreshHooks{Context: o.refreshContext, Wait: o.waited, End: o.refreshEnded}
}

// Observe records e. SourceOptions passes it to tokensource.WithObserver;
// on its own,
//
//	src := tokensource.New(r, tokensource.WithObserver(obs.Observe))
//
// records the same metrics and refresh spans, but the spans are root spans
// (see Hooks). It is called only on the Source's slow path (refreshes,
// store failures, rate-limited refreshes, fleet coordination), never for a
// token served from the cache. It does not block beyond the SDK's own
// recording.
func (o *Observer) Observe(e tokensource.Event) {
	switch e.Kind {
	case tokensource.RefreshStarted:
		o.started(e)
	case tokensource.RefreshSucceeded:
		o.ended(e, OutcomeSuccess)
	case tokensource.RefreshFailed:
		o.ended(e, OutcomeFailure)
	case tokensource.ReauthRequired:
		o.ended(e, OutcomeReauthRequired)
	case tokensource.RefreshUnchanged:
		o.ended(e, OutcomeUnchanged)
	case tokensource.TokenAdopted:
		o.adopted.Add(bg, 1, o.base)
		o.ended(e, OutcomeAdopted)
	case tokensource.RefreshRateLimited:
		o.rateLimited.Add(bg, 1, o.base)
	case tokensource.StoreFailed:
		et := errorType(e.Err)
		o.storeFailures.Add(bg, 1, o.with(et))
		o.spanEvent(e, "tokenrefresh.store_failed", et)
	case tokensource.TokenLoaded:
		o.spanEvent(e, "tokenrefresh.token_loaded")
	case tokensource.LeaseWaited:
		o.leaseWait.Record(bg, e.Duration.Seconds(), o.base)
		o.leaseEvent(e, "tokenrefresh.lease_waited", e.Time.Add(-e.Duration))
	case tokensource.LeaseTakenOver:
		o.takeovers.Add(bg, 1, o.base)
		o.leaseEvent(e, "tokenrefresh.lease_taken_over", e.Time)
	case tokensource.TokenRestored:
		o.restored.Add(bg, 1, o.base)
	}
}

// with returns the Observer's attributes plus kv as a measurement option.
func (o *Observer) with(kv ...attribute.KeyValue) metric.MeasurementOption {
	return metric.WithAttributes(append(kv, o.attrs...)...)
}

// trigger derives why a refresh ran from e.
func trigger(e tokensource.Event) string { return triggerOf(e.Forced, e.Background) }

func triggerOf(forced, background bool) string {
	switch {
	case forced:
		return TriggerForced
	case background:
		return TriggerEarly
	}
	return TriggerExpiry
}

// eventTime is e.Time, or now for an event without one.
func eventTime(e tokensource.Event) time.Time { return eventTimeOf(e.Time) }

func eventTimeOf(t time.Time) time.Time {
	if t.IsZero() {
		return time.Now()
	}
	return t
}
