package tokenrefreshotel

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// bg is the context of every measurement, and the parent of refresh spans
// started from events alone (Observe without the hooks of SourceOptions):
// an Event carries no context.
var bg = context.Background()

// recentRefreshes is how many ended refreshes the Observer remembers, for
// the late result of a timed-out refresh and for the calls that waited on
// a refresh and are retried after it ended. A Source runs one refresh at a
// time, so the retry of a waiter comes while its refresh is the newest or
// the one before.
const recentRefreshes = 4

// refreshRec is what the Observer knows about one refresh of its Source,
// keyed by Event.Refresh.
type refreshRec struct {
	id   uint64
	span trace.Span
	sc   trace.SpanContext
	// parent is the span of the caller that started the refresh (invalid
	// for a background refresh, or without hooks): the late result's span
	// gets it too.
	parent trace.SpanContext
	hooked bool // opened by the Context hook: its End hook will come
	called bool // RefreshStarted seen: the Refresher was called
	ended  bool // the span has ended
	loaded bool // TokenLoaded seen
	// waiters are the spans of the callers that waited on the refresh,
	// for the retry's link.
	waiters map[trace.SpanID]struct{}
}

// startSpan starts a refresh span at t under parent, with the trigger of
// r, and records it as refresh id. o.mu must not be held: the SDK may call
// span processors.
func (o *Observer) startSpan(parent context.Context, trig string, t time.Time, extra ...trace.SpanStartOption) (context.Context, trace.Span) {
	opts := append([]trace.SpanStartOption{
		trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithTimestamp(t),
		trace.WithAttributes(append([]attribute.KeyValue{TriggerKey.String(trig)}, o.attrs...)...),
	}, extra...)
	return o.tracer.Start(parent, SpanRefresh, opts...)
}

// addLocked records rec as open. o.mu must be held.
func (o *Observer) addLocked(rec *refreshRec) {
	o.open[rec.id] = rec
	o.last = rec.sc
}

// retireLocked moves rec from the open refreshes to the recent ones. o.mu
// must be held.
func (o *Observer) retireLocked(rec *refreshRec) {
	delete(o.open, rec.id)
	for _, r := range o.recent {
		if r == rec {
			return
		}
	}
	copy(o.recent[1:], o.recent[:len(o.recent)-1])
	o.recent[0] = rec
}

// findLocked returns the record of refresh id, open or recent, or nil.
// o.mu must be held.
func (o *Observer) findLocked(id uint64) *refreshRec {
	if rec := o.open[id]; rec != nil {
		return rec
	}
	for _, r := range o.recent {
		if r != nil && r.id == id {
			return r
		}
	}
	return nil
}

// refreshContext is the RefreshHooks.Context of SourceOptions: it starts
// the refresh span, as a child of the initiating caller's span or, for a
// background refresh, as a root span linked to the caller that noticed the
// early window, and returns ctx with the span in it.
func (o *Observer) refreshContext(ctx context.Context, r tokensource.RefreshInfo) context.Context {
	trig := triggerOf(r.Forced, r.Background)
	caller := trace.SpanContextFromContext(ctx)
	var extra []trace.SpanStartOption
	parent := caller
	if r.Background {
		parent = trace.SpanContext{}
		extra = append(extra, trace.WithNewRoot())
		if caller.IsValid() {
			extra = append(extra, trace.WithLinks(trace.Link{SpanContext: caller,
				Attributes: []attribute.KeyValue{LinkKey.String(LinkTriggeredBy)}}))
		}
	}
	extra = append(extra, trace.WithAttributes(RefreshIDKey.Int64(int64(r.ID))))
	rctx, sp := o.startSpan(ctx, trig, eventTimeOf(r.Time), extra...)
	rec := &refreshRec{id: r.ID, span: sp, sc: sp.SpanContext(), parent: parent, hooked: true}
	o.mu.Lock()
	o.addLocked(rec)
	o.mu.Unlock()
	return rctx
}

// waited is the RefreshHooks.Wait of SourceOptions: the caller's span gets
// an event and a link to the refresh span it waits on.
func (o *Observer) waited(ctx context.Context, id uint64) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	o.mu.Lock()
	rec := o.findLocked(id)
	var sc trace.SpanContext
	if rec != nil {
		sc = rec.sc
		if rec.waiters == nil {
			rec.waiters = map[trace.SpanID]struct{}{}
		}
		rec.waiters[span.SpanContext().SpanID()] = struct{}{}
	}
	o.mu.Unlock()
	span.AddEvent(EventWait, trace.WithAttributes(RefreshIDKey.Int64(int64(id))))
	if sc.IsValid() {
		span.AddLink(trace.Link{SpanContext: sc, Attributes: []attribute.KeyValue{LinkKey.String(LinkWaited)}})
	}
}

// refreshEnded is the RefreshHooks.End of SourceOptions: a refresh whose
// span is still open had no result event (the token came from the Store or
// was the login token, or the Refresher handed back the token it was
// given); its span ends now with outcome none.
func (o *Observer) refreshEnded(id uint64) {
	o.mu.Lock()
	rec := o.open[id]
	if rec == nil {
		o.mu.Unlock()
		return
	}
	rec.ended = true
	o.retireLocked(rec)
	o.mu.Unlock()
	rec.span.SetAttributes(OutcomeKey.String(OutcomeNone))
	rec.span.End()
}

// started handles RefreshStarted: the Refresher is about to be called.
func (o *Observer) started(e tokensource.Event) {
	t := eventTime(e)
	o.mu.Lock()
	rec := o.open[e.Refresh]
	if rec != nil && !rec.called {
		// The span was opened by the Context hook or by a lease event of
		// this same refresh.
		rec.called = true
		o.mu.Unlock()
		rec.span.AddEvent(EventRefresherCalled, trace.WithTimestamp(t))
		return
	}
	stale := o.staleLocked(e.Refresh)
	o.mu.Unlock()
	o.closeUnknown(stale, t)
	o.openFromEvent(e, t, true)
}

// staleLocked takes out the open spans, started from events, that will
// never see their end now that refresh id starts: without the hooks, a
// refresh that ends without a result event leaves its span open. They are
// those of id itself (a second start: events not from a Source) and of the
// refreshes before the previous one; the previous refresh's result event
// may still be on its way, since a Source reports it after releasing its
// waiters. Spans opened by the Context hook are closed by the End hook
// instead. o.mu must be held.
func (o *Observer) staleLocked(id uint64) []*refreshRec {
	var stale []*refreshRec
	for k, r := range o.open {
		if !r.hooked && (k == id || k+1 < id) {
			r.ended = true
			o.retireLocked(r)
			stale = append(stale, r)
		}
	}
	return stale
}

// closeUnknown ends the spans of stale with outcome unknown at t.
func (o *Observer) closeUnknown(stale []*refreshRec, t time.Time) {
	for _, r := range stale {
		r.span.SetAttributes(OutcomeKey.String(OutcomeUnknown))
		r.span.End(trace.WithTimestamp(t))
	}
}

// openFromEvent opens the span of e's refresh from an event (no Context
// hook was called for it), as a root span starting at start.
func (o *Observer) openFromEvent(e tokensource.Event, start time.Time, called bool) *refreshRec {
	_, sp := o.startSpan(bg, trigger(e), start, trace.WithAttributes(RefreshIDKey.Int64(int64(e.Refresh))))
	rec := &refreshRec{id: e.Refresh, span: sp, sc: sp.SpanContext(), called: called}
	o.mu.Lock()
	o.addLocked(rec)
	o.mu.Unlock()
	return rec
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
	rec := o.findLocked(e.Refresh)
	var sp trace.Span
	if rec != nil && !rec.ended {
		sp = rec.span
		rec.ended = true
		o.retireLocked(rec)
		o.mu.Unlock()
	} else {
		// No open span: the late result of a refresh whose timeout already
		// ended its span (rec), or, without the hooks, a store load that
		// failed before the Refresher was called. The event's duration
		// gives the start. A late result's span is a sibling of the
		// timed-out one, linked to it.
		o.mu.Unlock()
		parent, extra := bg, []trace.SpanStartOption{trace.WithAttributes(RefreshIDKey.Int64(int64(e.Refresh)))}
		if rec != nil {
			if rec.parent.IsValid() {
				parent = trace.ContextWithSpanContext(bg, rec.parent)
			}
			extra = append(extra, trace.WithLinks(trace.Link{SpanContext: rec.sc,
				Attributes: []attribute.KeyValue{LinkKey.String(LinkTimedOut)}}),
				trace.WithAttributes(LateKey.Bool(true)))
		}
		_, sp = o.startSpan(parent, trigger(e), t.Add(-e.Duration), extra...)
		late := &refreshRec{id: e.Refresh, span: sp, sc: sp.SpanContext(), ended: true}
		if rec != nil {
			late.parent, late.waiters = rec.parent, rec.waiters
		}
		o.mu.Lock()
		if rec == nil {
			o.last = late.sc
		}
		o.retireLocked(late)
		o.mu.Unlock()
	}
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

// spanEvent adds an event to the open span of e's refresh, if there is one.
func (o *Observer) spanEvent(e tokensource.Event, name string, attrs ...attribute.KeyValue) {
	o.mu.Lock()
	rec := o.open[e.Refresh]
	if rec != nil && e.Kind == tokensource.TokenLoaded {
		rec.loaded = true
	}
	o.mu.Unlock()
	if rec != nil {
		rec.span.AddEvent(name, trace.WithTimestamp(eventTime(e)), trace.WithAttributes(attrs...))
	}
}

// leaseEvent adds a lease event to the span of e's refresh, opening it (at
// start) when the lease work comes first without the hooks, as it does: a
// Source waits for and takes the fleet's lease before it calls its
// Refresher.
func (o *Observer) leaseEvent(e tokensource.Event, name string, start time.Time) {
	o.mu.Lock()
	rec := o.open[e.Refresh]
	var stale []*refreshRec
	if rec == nil {
		stale = o.staleLocked(e.Refresh)
	}
	o.mu.Unlock()
	if rec == nil {
		o.closeUnknown(stale, start)
		rec = o.openFromEvent(e, start, false)
	}
	var attrs []attribute.KeyValue
	if e.Kind == tokensource.LeaseWaited {
		attrs = append(attrs, attribute.Float64("tokenrefresh.lease.wait.duration", e.Duration.Seconds()))
	}
	rec.span.AddEvent(name, trace.WithTimestamp(eventTime(e)), trace.WithAttributes(attrs...))
}

// waitedOnLocked returns the span context of the refresh that the call
// with span id waited on, if the Observer still remembers it. o.mu must be
// held.
func (o *Observer) waitedOnLocked(id trace.SpanID) (trace.SpanContext, bool) {
	for _, r := range o.open {
		if _, ok := r.waiters[id]; ok {
			return r.sc, true
		}
	}
	for _, r := range o.recent {
		if r == nil {
			continue
		}
		if _, ok := r.waiters[id]; ok {
			return r.sc, true
		}
	}
	return trace.SpanContext{}, false
}
