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
//	src := tokensource.New(refresher, tokensource.WithObserver(obs.Observe))
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
//	tokenrefresh.refresh.rate_limited  Counter          {refresh}   forced refreshes skipped by the minimum refresh interval
//	tokenrefresh.store.failures        Counter          {failure}   failed token saves (the token was used anyway), by error.type
//	tokenrefresh.tokens.adopted        Counter          {token}     tokens adopted from the fleet's shared store instead of calling the Refresher
//	tokenrefresh.lease.wait.duration   Histogram        s           waits for the fleet's refresh lease held by a peer
//	tokenrefresh.lease.takeovers       Counter          {takeover}  leases taken over from a holder that stopped renewing them
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
// Each refresh is one span, tokenrefresh.refresh (kind internal), from the
// first event of the refresh to its end: RefreshStarted, or a lease event
// when the Source first waited for or took over the fleet's lease, up to
// RefreshSucceeded, RefreshFailed, ReauthRequired, RefreshUnchanged or
// TokenAdopted. It carries tokenrefresh.trigger, tokenrefresh.outcome,
// tokenrefresh.waiters, tokenrefresh.generation (Event.Generation after the
// refresh) and error.type; a failure sets the Error status with the error's
// message (tokensource errors never contain a token). Store failures, a
// token loaded from the store, lease waits and takeovers, and the moment the
// Refresher was called after lease work, are span events. Timestamps are the
// events' times, by the Source's clock.
//
// How start and end are paired: an Event carries no refresh identifier and
// no context, so the Observer keeps the one open span of its Source (a Source
// runs one refresh at a time) and closes it at the next end event. An end
// without a start (a store load that failed before the Refresher was called,
// or the late result of a timed-out refresh) gets a span reconstructed from
// Event.Duration. A start whose end never came is closed, with outcome
// unknown, when the next refresh starts. For the same reason refresh spans
// are root spans: the context of the caller that started the refresh is not
// available to an observer.
//
// What links to a refresh span: the call retried by the interceptors. Its
// span, the one in the call's context (trace.SpanFromContext), gets the
// attribute tokenrefresh.retried=true, an event tokenrefresh.retry (with
// rpc.method and rpc.response.status_code) and a link to the most recently
// started refresh span of the Observer. With one refresh at a time that is
// the refresh whose token the retry carries, unless another refresh started
// between the two (a background refresh, say), in which case the link points
// to the newer one. Which span is "the call's span" depends on the gRPC
// instrumentation: with otelgrpc's stats handler (otelgrpc.NewClientHandler)
// the client spans are made per attempt below the caller's span, so the mark
// and the link land on the caller's span; with an instrumenting interceptor
// chained outside this package's, they land on its client span.
//
// Not linked: callers that blocked in Source.Token while a refresh for an
// expired token ran (trigger expiry) without being rejected. The Source tells
// an observer how many waited, not who; the refresh span's
// tokenrefresh.waiters says how many there were.
package tokenrefreshotel
