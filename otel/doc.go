// Package tokenrefreshotel reports what a tokensource.Source and the
// interceptors in front of it do as OpenTelemetry metrics and spans.
//
// It is a module of its own (github.com/tokenrefresh/grpc-tokenrefresh/otel),
// so that the core module never depends on OpenTelemetry. Its import path
// ends in "otel" but the package is called tokenrefreshotel, so that it does
// not collide with go.opentelemetry.io/otel in the same file:
//
//	import tokenrefreshotel "github.com/tokenrefresh/grpc-tokenrefresh/otel"
//
//	obs, err := tokenrefreshotel.NewObserver() // the global providers; see WithMeterProvider, WithTracerProvider
//	if err != nil { ... }
//	src := tokensource.New(refresher, obs.SourceOptions()...) // observer and refresh hooks
//	reg, err := obs.ObserveStats(src) // optional: the live gauges below
//	defer reg.Unregister()
//	conn, err := grpc.NewClient(target, append([]grpc.DialOption{creds},
//		interceptor.DialOptions(src, obs.InterceptorOption())...)...)
//
// Use one Observer per Source (WithAttributes tells them apart). Nothing is
// recorded on the hot path: a Source emits events only when it refreshes,
// fails to save, rate-limits a forced refresh or coordinates with its
// fleet, and the interceptors call the retry hook only for a retried call.
// A Source.Token served from the cache costs the same, and allocates
// nothing, with the Observer installed (see BenchmarkSourceToken).
//
// # Metrics
//
// Names and units follow OpenTelemetry's semantic-convention style (units in
// UCUM, counts of things as annotations such as {refresh}). Every
// measurement also carries the attributes given with WithAttributes.
//
//	tokenrefresh.refreshes             Counter          {refresh}   refreshes completed, by tokenrefresh.outcome and tokenrefresh.trigger (+ error.type when not a success)
//	tokenrefresh.refresh.duration      Histogram        s           how long each refresh took, same attributes
//	tokenrefresh.callers.waited        Counter          {caller}    callers that blocked on a refresh (Event.Waiters, added when it ends), same attributes
//	tokenrefresh.refresh.rate_limited  Counter          {refresh}   forced refreshes held back by the storm guard (WithMinRefreshInterval)
//	tokenrefresh.store.failures        Counter          {failure}   failed token saves (the token was used anyway), by error.type
//	tokenrefresh.tokens.adopted        Counter          {token}     tokens adopted from the fleet's shared store instead of calling the Refresher
//	tokenrefresh.lease.wait.duration   Histogram        s           waits for the fleet's refresh lease held by a peer
//	tokenrefresh.lease.takeovers       Counter          {takeover}  leases taken over from a holder that stopped renewing them
//	tokenrefresh.tokens.restored       Counter          {token}     tokens put back into a shared record that was behind them (a failed commit, a record lost or rolled back)
//	tokenrefresh.rpc.retries           Counter          {retry}     calls retried with a new token, by rpc.system.name, rpc.method, rpc.response.status_code
//	tokenrefresh.callers.waiting       UpDownCounter    {caller}    callers blocked on a refresh now (ObserveStats)
//	tokenrefresh.refresh.active        UpDownCounter    {refresh}   refreshes running now, 0 or 1 per Source (ObserveStats)
//	tokenrefresh.reauth.required       Gauge            1           1 while the Source waits for a new login (ObserveStats)
//
// The last three are asynchronous instruments read from Source.Stats at each
// collection, only for Sources registered with ObserveStats: an event
// reports how many callers waited only once the refresh has ended, so a
// "waiting now" gauge cannot be built from events.
//
// tokenrefresh.outcome is success, failure, reauth_required (the refresh
// credential was refused: log in again), unchanged (a forced refresh handed
// back the rejected token, see tokensource.ErrUnchangedToken) or adopted (a
// fleet peer's token; also counted by tokenrefresh.tokens.adopted). So
// "unchanged tokens" and "re-authentication required" are
// tokenrefresh.refreshes with that outcome. tokenrefresh.trigger is forced
// (Event.Forced: a server rejected the token), early (Event.Background: a
// background refresh in the early window) or expiry (a caller needed a token
// and there was no valid one, including the very first). error.type is a
// small fixed set: timeout, unchanged_token, reauth_required, invalid_token,
// coordinator_unavailable, lease_lost, corrupt_store, closed,
// deadline_exceeded, canceled, the gRPC status code of a Refresher's RPC
// (such as UNAVAILABLE), or _OTHER; never an error's text.
//
// A refresh cut off by the refresh timeout is counted as a failure (timeout)
// when the waiters are released; if its Refresher returns later with a
// token, that late success is counted too, and its Waiters are those of the
// timed-out attempt again.
//
// # Traces
//
// Each refresh is one span, tokenrefresh.refresh (kind internal). With the
// hooks that SourceOptions installs (see Observer.Hooks and
// tokensource.WithRefreshHooks) it runs from the moment the Source starts
// the refresh to its result: RefreshSucceeded, RefreshFailed,
// ReauthRequired, RefreshUnchanged or TokenAdopted, or, for a refresh that
// ends without one (the Store held a valid token), the refresh's end, with
// outcome none. It carries tokenrefresh.trigger, tokenrefresh.outcome,
// tokenrefresh.waiters, tokenrefresh.generation (Event.Generation after the
// refresh), tokenrefresh.refresh.id (Event.Refresh) and error.type; a
// failure sets the Error status with the error's message (tokensource
// errors never contain a token). Store failures, a token loaded from the
// store, lease waits and takeovers, and the moment the Refresher was called
// (tokenrefresh.refresher_called) are span events. Timestamps are the
// Source's clock.
//
// Start and end are paired exactly, by Event.Refresh. A refresh started by
// a caller (trigger expiry or forced) is in that caller's trace: its span
// is a child of the span in the caller's context. A background refresh
// (trigger early) is a root span, with a link (tokenrefresh.link =
// triggered_by) to the caller whose Token call noticed the early window: no
// caller waits for it, and its result may come long after that caller's
// span has ended. The Refresher runs with the refresh span in its context,
// so its own RPCs, traced by otelgrpc say, nest under the refresh span.
//
// A refresh cut off by the refresh timeout ends its span as a failure
// (error.type timeout); if its Refresher still returns a token later, that
// late result gets a span of its own, under the same parent, with
// tokenrefresh.late = true and a link (timed_out) to the span that timed
// out.
//
// What links to a refresh span:
//
//   - Every caller that waited on the refresh (in Source.Token or
//     Source.Refresh): the span in its context (trace.SpanFromContext) gets
//     an event tokenrefresh.wait (with tokenrefresh.refresh.id) and a link
//     (tokenrefresh.link = wait) to the refresh span. The caller that
//     started the refresh waits too, so its span is both the refresh's
//     parent and linked to it.
//   - The call retried by the interceptors: its span gets the attribute
//     tokenrefresh.retried = true, an event tokenrefresh.retry (with
//     rpc.method and rpc.response.status_code) and a link (refresh) to the
//     refresh it waited on. A call that did not wait, because the Source
//     had already moved on to a newer token when the rejection came, links
//     to the refresh started last, which is the one that produced that
//     token unless another (a background refresh, say) started since.
//
// Which span is "the call's span" depends on the gRPC instrumentation: with
// otelgrpc's stats handler (otelgrpc.NewClientHandler) the client spans are
// made per attempt below the caller's span, so the marks and links land on
// the caller's span; with an instrumenting interceptor chained outside this
// package's, they land on its client span.
//
// With Observe alone (tokensource.WithObserver(obs.Observe), no hooks) the
// metrics are the same, but refresh spans are root spans from the first
// event of the refresh (RefreshStarted, or a lease event), waiting callers
// are not linked, and a retried call links to the refresh started last. An
// end without a start (a store load that failed before the Refresher was
// called) gets a span rebuilt from Event.Duration; a span whose end never
// came is closed with outcome unknown when a later refresh starts.
package tokenrefreshotel
