// Package tokensource keeps an access token fresh for any number of
// concurrent users, with one refresh at a time shared by everyone who needs
// it.
//
// A Source caches the current Token and obtains new ones from a Refresher.
// Token returns a valid token; Refresh reports that a server rejected one.
// The package has no gRPC dependency: the interceptor package builds the
// "authorization: Bearer" header and the retry-once logic on top of it.
//
//	src := tokensource.New(tokensource.OAuth2Refresher(cfg),
//		tokensource.WithInitialToken(loginToken),
//		tokensource.WithStore(tokensource.NewFileStore(path)))
//	defer src.Close()
//	tok, err := src.Token(ctx)
//
// # How sharing works
//
// The current token lives in an immutable snapshot behind an
// atomic.Pointer, together with precomputed instants (when the early window
// starts, when the token goes stale). While a token is valid and outside its
// early window, Token is one atomic load, one clock read and one comparison:
// no lock and no allocation.
//
// Everything else goes through a mutex that guards at most one "flight", a
// refresh in progress. The first caller that needs a token starts the flight;
// later callers join it. The flight carries a channel that is closed when its
// result (token or error) is final, and every waiter selects on that channel
// and on its own ctx.Done(). This broadcast channel is used instead of a
// sync.Cond because a Cond waiter cannot select on a context: making it
// cancellable needs context.AfterFunc to Broadcast to every waiter, each of
// which must then re-check its state in a loop. Closing a channel wakes all
// waiters exactly once, composes with select, lets one waiter leave without
// disturbing the others, and — since the result hangs off the flight —
// no waiter can miss the wake-up or pick up the result of a later refresh.
//
// The Refresher runs in its own goroutine on a context that keeps the values
// of the context that started the refresh (trace IDs, for example, and
// outgoing gRPC metadata: the interceptor package removes its token header
// from the contexts it passes in, and other callers should not pass a
// context carrying a credential meant for one call) but not its
// cancellation or deadline, is marked for InRefresh, and has its own timeout
// (DefaultRefreshTimeout, 30 s: long enough for a slow identity provider,
// short enough that a hung one does not stall a service). So a caller whose
// ctx ends returns at once with an error matching ctx.Err(), while the
// refresh completes for the others; cancelling the caller that started it
// cancels nothing. A refresh cut off by the timeout fails with an error
// matching ErrRefreshTimeout (and, deliberately, not
// context.DeadlineExceeded, which belongs to callers' own deadlines), even
// when the Refresher ignores its context: its waiters are released at the
// timeout, no second call starts while it runs, and its late result is still
// validated, installed and saved. Close releases waiters at once but lets a
// Refresher call in flight finish (bounded by the refresh timeout) and saves
// its result, since the authorization server may already have rotated.
//
// # Expiry leeway and the early window
//
// A token counts as expired a leeway before its Expiry, so that it is not
// sent when it would expire in transit or on a server whose clock runs
// ahead. The default leeway, 10 s, is golang.org/x/oauth2's expiryDelta.
// Like that package, the Source judges Expiry by the wall clock, even when
// it carries a monotonic clock reading (time.Now().Add(ttl) does): the
// monotonic clock stops while the machine sleeps.
//
// Before that, in the early-refresh window, callers keep receiving the valid
// token at once while one background refresh runs; they block only if the
// token goes stale before it finishes. A failed background refresh is
// logged, reported to the observer and backed off; it never fails a caller
// that still has a valid token. The default window, 3 m 45 s (225 s), is
// that of Google's auth libraries (cloud.google.com/go/auth): long enough for
// several attempts of a slow refresh to finish before any caller waits. With
// both defaults a one-hour token is refreshed in the background about four
// minutes before it expires.
//
// Both are capped by the token's lifetime, counted from when the Source
// received it: the leeway by a tenth of it and the early window by a quarter
// of it, whether they come from the defaults or from WithExpiryLeeway and
// WithEarlyRefresh. Without the cap a 2-second demo token or a 100 ms test
// token would be "expired" on arrival. A 2 s token thus gets 200 ms of leeway
// and a 500 ms window; a 100 ms token 10 ms and 25 ms. A token loaded from a
// Store or given to WithInitialToken has its remaining lifetime as its
// lifetime. A token with a zero Expiry never expires and is never refreshed
// unless a server rejects it.
//
// The background refresh is started by the first Token call inside the
// window: a Source that nobody asks for tokens does no work.
//
// # Stale tokens and forced refreshes
//
// Refresh(ctx, stale) compares stale with the current token by identity
// (pass back exactly the *Token that Token returned). If the Source has moved
// on, the newer token is returned at once: an RPC that was rejected with an
// old token after a refresh completed does not cause a second refresh. If
// stale is current, one shared refresh runs — unless the previous forced
// refresh finished less than WithMinRefreshInterval ago (default 1 s), in
// which case the current token is returned unchanged. A server that rejects
// every token thus causes at most one refresh per interval, however many
// RPCs it rejects; the interceptor's retry-once rule turns the second
// rejection into an error for the caller.
//
// # Failures, backoff and re-authentication
//
// A failed refresh gives every waiter the same error,
// "tokensource: refresh failed: …", wrapping the Refresher's error. Then the
// Source backs off: 100 ms after the first failure, doubling up to 30 s
// (WithBackoff), each wait jittered into [d/2, d] so that many clients do not
// retry in lockstep; a success resets it. While backing off, a caller without
// a valid token gets the last error at once — nothing hangs waiting for an
// attempt that is not going to happen — and the first call after the backoff
// tries again.
//
// A Refresher marks failures that retrying cannot fix with Permanent (OAuth 2
// invalid_grant: the refresh token was revoked or expired). The Source then
// enters the re-authentication-required state: the Refresher is not called
// again, a still-valid token is served until it goes stale, and then every
// call fails at once with an error that matches both ErrReauthRequired and
// the Refresher's error. The hook set with WithOnReauthRequired fires once per
// entry into this state; SetToken (after the user has logged in again)
// leaves it.
//
// A token from the Refresher is validated before it is stored or handed out:
// nil, an empty access token, an expiry that has passed, or a byte outside
// visible ASCII (0x21–0x7E) in the access token is an error matching
// ErrInvalidToken that says what is wrong without quoting the token. That
// range is what an HTTP/2 header value allows, minus space and tab, which no
// bearer token contains (RFC 6750) and which would be trimmed or used for
// header injection. Invalid tokens are handled like any transient failure,
// with one exception: if the refused result carries a new refresh token, the
// Source keeps it (and saves it to the Store) and presents it on the next
// refresh, because the Refresher may already have consumed the previous one
// and presenting that again would look like refresh-token reuse.
//
// # Persistence
//
// With a Store (WithStore), the Source loads the stored token once, on first
// use, and prefers it to WithInitialToken (it is the newer one). It saves
// every new token before handing it out, so a rotated refresh token is
// persisted before any server can see the access token issued with it. If
// the save fails, the token is kept and handed out anyway — it holds the only
// copy of the rotated refresh token, and refusing it would lose that too —
// and the failure is logged and reported as a StoreFailed event. A load
// failure (a corrupt file, for example) fails the refresh and is retried after
// the backoff; the store is not overwritten until a refresh succeeds after a
// successful load, or SetToken replaces it deliberately.
//
// MemoryStore keeps the token in memory. FileStore keeps it in a JSON file
// with mode 0600, written atomically (temporary file in the same directory,
// fsync, rename, fsync of the directory), so a crash leaves the old or the
// new token, never a torn file; a file it cannot parse is reported with an
// error matching ErrCorruptStore and left untouched.
//
// # Coordination across processes
//
// A Source coordinates the goroutines of one process. Replicas sharing one
// credential must also make one refresh per expiry between them and pick up
// each other's results: give them a Store that implements Coordinator
// (MemoryStore within a process, FileStore across the processes of a host,
// the redisstore package across hosts). The Source detects it with a type
// assertion; Store itself does not change. Under a Coordinator a Source
// refreshes only while it holds the fleet's Lease and only if the shared
// Record still holds the token that needed replacing (expired, in its early
// window, or rejected); otherwise it adopts the token a peer committed.
// Commits are fenced by the Record's version, so a member that lost its lease
// never overwrites a newer token. When the Coordinator is unavailable, the
// Source does not refresh without the lease unless WithUncoordinatedRefresh
// allows it.
//
// # Observability
//
// WithObserver receives an Event for every refresh start, success and
// failure, re-authentication requirement, store failure, token load,
// SetToken and rate-limited refresh, with the time, the duration, the error,
// how many callers waited on the refresh and whether it was forced or
// background: enough for an OpenTelemetry or Prometheus adapter, which can
// live outside this package. Event.Refresh identifies the refresh an event
// belongs to. WithRefreshHooks adds what events cannot carry, the callers'
// contexts: the context of the caller that started a refresh (from which a
// tracer derives the refresh's own context, so that the Refresher's RPCs
// nest under its span), each caller that waits on it, and its end. Stats returns counters (refreshes, failures,
// callers waiting now, …) without taking a lock. WithLogger adds log/slog
// output.
//
// # Secrets
//
// Tokens never appear in errors, logs or events. Token's String, GoString,
// Format and LogValue methods redact the access and refresh tokens for every
// fmt verb and for log/slog. fmt bypasses those methods in two places it
// cannot be told about: %p applied to a Token value (which go vet reports)
// and a Token value stored in an unexported field of a struct that is
// printed. Keep a *Token there instead.
//
// # Refreshers that make RPCs
//
// A Refresher may call an authentication service over the same intercepted
// gRPC connection: its context is marked, and interceptors let calls with
// InRefresh(ctx) pass through untouched. Should code running inside a refresh
// still ask the same Source for a token it would have to wait for, the
// Source returns an error instead of deadlocking.
//
// # OAuth 2
//
// Choose the adapter by grant:
//
//   - Client credentials: ClientCredentials(cfg) with a
//     clientcredentials.Config. Each refresh is one new grant on the refresh
//     context, so the refresh timeout and cancellation reach the HTTP request,
//     and a forced refresh after a server revoked a still-valid token obtains a
//     new one. Error codes that refuse the client or its request
//     (invalid_client, unauthorized_client, invalid_grant, invalid_scope,
//     unsupported_grant_type) are Permanent.
//   - Refresh token: OAuth2Refresher(cfg) with an oauth2.Config and the
//     login's token in WithInitialToken. It runs the refresh-token grant on
//     the refresh context and keeps the rotated refresh token for the Store.
//     invalid_grant is Permanent.
//   - Any other oauth2.TokenSource: FromOAuth2(ts). oauth2.TokenSource.Token
//     takes no context. The refresh timeout is still enforced by the Source:
//     it releases the waiters and starts no second refresh. But the call
//     itself is not interrupted. Also, a caching ts, such as the
//     oauth2.ReuseTokenSource that oauth2.Config.TokenSource and
//     clientcredentials.Config.TokenSource return, hands back the token the
//     server has just rejected. The Source reports that as ErrUnchangedToken.
//
// Source.OAuth2 presents a Source as an oauth2.TokenSource. Error messages
// never contain the token endpoint's response body.
package tokensource
