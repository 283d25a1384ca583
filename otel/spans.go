package tokenrefreshotel

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// bg is the context of every measurement and refresh span: an Event carries
// no context (see the package documentation).
var bg = context.Background()

// startSpan starts a refresh span at t. o.mu must be held.
func (o *Observer) startSpanLocked(e tokensource.Event, t time.Time) trace.Span {
	_, sp := o.tracer.Start(bg, SpanRefresh,
		trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithTimestamp(t),
		trace.WithAttributes(append([]attribute.KeyValue{TriggerKey.String(trigger(e))}, o.attrs...)...))
	o.last = sp.SpanContext()
	return sp
}

// started handles RefreshStarted: the Refresher is about to be called.
func (o *Observer) started(e tokensource.Event) {
	t := eventTime(e)
	o.mu.Lock()
	stale := o.open
	if stale != nil && !o.called {
		// The span was opened by a lease event of this same refresh.
		o.called = true
		stale.AddEvent("tokenrefresh.refresher_called", trace.WithTimestamp(t))
		o.mu.Unlock()
		return
	}
	o.open, o.called = o.startSpanLocked(e, t), true
	o.mu.Unlock()
	if stale != nil {
		// The previous refresh's end was never reported: close its span
		// rather than leak it, and say so.
		stale.SetAttributes(OutcomeKey.String(OutcomeUnknown))
		stale.End(trace.WithTimestamp(t))
	}
}

// ended handles the event that ends a refresh, with its outcome.
func (o *Observer) ended(e tokensource.Event, outcome string) {
	attrs := []attribute.KeyValue{OutcomeKey.String(outcome), TriggerKey.String(trigger(e))}
	failed := outcome != OutcomeSuccess && outcome != OutcomeAdopted
	if failed {
		attrs = append(attrs, errorType(e.Err))
	}
	set := o.with(attrs...)
	o.refreshes.Add(bg, 1, set)
	o.refreshDuration.Record(bg, e.Duration.Seconds(), set)
	if e.Waiters > 0 {
		o.callersWaited.Add(bg, int64(e.Waiters), set)
	}

	t := eventTime(e)
	o.mu.Lock()
	sp := o.open
	o.open, o.called = nil, false
	if sp == nil {
		// No start was seen: a store load that failed before the Refresher
		// was called, or the late result of a refresh whose timeout
		// already ended its span. The event's duration gives the start.
		sp = o.startSpanLocked(e, t.Add(-e.Duration))
	}
	o.mu.Unlock()
	sp.SetAttributes(append(attrs, WaitersKey.Int(e.Waiters), GenerationKey.Int64(int64(e.Generation)))...)
	if failed {
		msg := outcome
		if e.Err != nil {
			msg = e.Err.Error() // tokensource errors never contain a token
		}
		sp.SetStatus(codes.Error, msg)
	}
	sp.End(trace.WithTimestamp(t))
}

// spanEvent adds an event to the open refresh span, if there is one.
func (o *Observer) spanEvent(e tokensource.Event, name string, attrs ...attribute.KeyValue) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.open != nil {
		o.open.AddEvent(name, trace.WithTimestamp(eventTime(e)), trace.WithAttributes(attrs...))
	}
}

// leaseEvent adds a lease event to the open refresh span, opening it (at
// start) when the lease work comes first, as it does: a Source waits for and
// takes the fleet's lease before it calls its Refresher.
func (o *Observer) leaseEvent(e tokensource.Event, name string, start time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.open == nil {
		o.open, o.called = o.startSpanLocked(e, start), false
	}
	var attrs []attribute.KeyValue
	if e.Kind == tokensource.LeaseWaited {
		attrs = append(attrs, attribute.Float64("tokenrefresh.lease.wait.duration", e.Duration.Seconds()))
	}
	o.open.AddEvent(name, trace.WithTimestamp(eventTime(e)), trace.WithAttributes(attrs...))
}
