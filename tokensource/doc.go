// Package tokensource keeps an access token valid for any number of
// concurrent callers: it renews the token before it expires, shares one
// refresh between everyone who needs a token while it runs, and persists
// rotated refresh tokens so that nothing is lost across restarts.
//
// The package has no gRPC dependency. The interceptor package puts the token
// on every RPC as "authorization: Bearer <token>" and retries a call the
// server rejects once, after one shared refresh; most programs use a Source
// only through it.
//
// # Getting started
//
// A Source needs a Refresher, the code that obtains a new token. For OAuth 2
// it is one line:
//
//	src := tokensource.New(tokensource.ClientCredentials(cfg)) // a service acting as itself
//	defer src.Close()
//	conn, err := grpc.NewClient(target, append([]grpc.DialOption{grpc.WithTransportCredentials(creds)},
//		interceptor.DialOptions(src)...)...)
//
// For a user who logged in, keep the login's token and persist its rotations:
//
//	src := tokensource.New(tokensource.OAuth2Refresher(oauthCfg),
//		tokensource.WithInitialToken(loginToken),
//		tokensource.WithStore(tokensource.NewFileStore(path)))
//
// Any other way of getting tokens is a Refresher of your own (or a
// RefresherFunc): it returns the new Token, or an error wrapped in Permanent
// when retrying cannot help and the user must log in again. A Refresher that
// calls an authentication service over the intercepted connection itself
// needs no configuration: its calls are recognised (InRefresh) and pass
// through without a token.
//
// # Choosing the adapter for your credential
//
//	Your service holds                     Refresher
//	a client ID and secret                 ClientCredentials(cfg)
//	a registered private key               ClientCredentials(cfg, WithPrivateKeyJWT(key, keyID))
//	a token file another process rotates   FromFile(path[, WithTokenLifetime(d)])
//	a federated assertion file             ClientCredentials(cfg, WithClientAssertionFile(path))
//	a subject token, several audiences     TokenExchange(cfg, subject), one Source per audience
//	a user's refresh token                 OAuth2Refresher(cfg) with WithInitialToken
//	any oauth2.TokenSource                 FromOAuth2(ts)
//
// In detail:
//
//   - Client credentials: ClientCredentials(cfg) with a
//     *clientcredentials.Config. Every refresh is one new grant sent with the
//     refresh context, so the refresh timeout cancels the HTTP request, and a
//     token the server revoked before its expiry is replaced by one forced
//     refresh. invalid_client, unauthorized_client, invalid_grant,
//     invalid_scope and unsupported_grant_type are Permanent.
//   - A private key instead of a secret: WithPrivateKeyJWT (RFC 7523
//     private_key_jwt) signs a new assertion for every token request, with
//     github.com/go-jose/go-jose/v4; no secret is sent. It works with
//     ClientCredentials, OAuth2Refresher and TokenExchange.
//   - Workload identity: FromFile serves the token in a file that kubelet, a
//     Vault agent or a SPIFFE helper keeps fresh, read only when the Source
//     refreshes; WithClientAssertionFile presents such a file's JWT as the
//     client's assertion at the identity provider (federation), read per
//     token request. A file that cannot be used is transient
//     (ErrTokenFile).
//   - Token exchange: TokenExchange (RFC 8693) exchanges the token of a
//     SubjectSource (a Source over FromFile, say) for a token for one
//     audience; the next refresh after the subject changes presents the new
//     one.
//   - Refresh token: OAuth2Refresher(cfg) with an *oauth2.Config and the
//     login's token in WithInitialToken. It runs the refresh-token grant with
//     the refresh context and keeps the rotated refresh token. invalid_grant
//     is Permanent.
//   - Any other oauth2.TokenSource: FromOAuth2(ts). It can neither pass the
//     refresh context to ts nor make a caching source fetch (see FromOAuth2),
//     so do not wrap the oauth2.ReuseTokenSource that Config.TokenSource and
//     clientcredentials.Config.TokenSource return: use the adapters above.
//
// WithHTTPClient gives any OAuth 2 adapter the *http.Client for the token
// endpoint: one trusting a private CA, presenting a client certificate, or
// using a proxy.
//
// Source.OAuth2 goes the other way: it presents a Source as an
// oauth2.TokenSource. Error messages never contain the token endpoint's
// response body.
//
// # What a caller can rely on
//
// Token returns a valid token without blocking, locking or allocating while
// the current one is valid; otherwise it waits, within its own ctx, for the
// one shared refresh, which runs detached from its callers with its own
// timeout (a caller that gives up cancels nothing for the others). Renewal
// is early (WithEarlyRefresh): callers keep the valid token while one
// background refresh runs, and a failed background refresh fails none of
// them. Refresh(ctx, stale) reports a rejected token: a newer one comes back
// at once, and forced refreshes pass a storm guard (WithMinRefreshInterval).
// A token is checked before it is stored or handed out (ErrInvalidToken).
// After a failure the Source backs off and callers get the last error at
// once. Close releases every waiter with ErrClosed and lets a Refresher call
// in flight finish and save its result.
//
// # Defaults
//
//	WithExpiryLeeway        10 s      a token counts as expired this long before its Expiry (as golang.org/x/oauth2)
//	WithEarlyRefresh        225 s     background renewal starts this long before that (as Google's auth libraries)
//	WithRefreshTimeout      30 s      bound on one refresh
//	WithMinRefreshInterval  1 s       storm guard: two forced refreshes, then one per interval
//	WithRepairInterval      1 s       how often a fleet member checks the shared record is not behind it
//	WithBackoff             1 s up to 30 s, doubling, jittered into [d/2, d]
//	WithRefreshAttempts     3         Refresher calls per refresh when they fail transiently
//	WithStore               none      tokens live in memory only
//	WithLogger              none      nothing is logged, except a Refresher's panic (to slog.Default)
//
// The leeway is capped at a tenth and the early window at a quarter of a
// token's lifetime, so short-lived tokens (a 2 s test token) are not
// "expired" on arrival. A token with a zero Expiry never expires and is
// refreshed only when a server rejects it. Expiry is judged by the wall clock.
//
// # Errors
//
// Errors match sentinels with errors.Is; the interceptor package maps them
// to gRPC codes (Unauthenticated for the first two, FailedPrecondition for
// ErrStoreUnusable, Unavailable for the transient ones).
//
//	ErrReauthRequired          the Refresher returned a Permanent error: log in again (then SetToken)
//	ErrUnchangedToken          a forced refresh handed back the token the server had just rejected
//	ErrRefreshTimeout          the refresh timeout cut the refresh off (not context.DeadlineExceeded)
//	ErrInvalidToken            the Refresher returned a token that cannot be sent
//	ErrRefresherPanicked       the Refresher panicked; the stack is logged
//	ErrClosed                  the Source was closed
//	ErrCorruptStore            the token file cannot be parsed; it is left untouched
//	ErrStoreUnusable           the Store cannot work as configured (a FileStore's directory is missing); not transient
//	ErrCoordinatorUnavailable  the fleet's shared store (Redis) cannot be reached
//	ErrLeaseLost               another member took over the fleet's refresh lease
//	ErrSelfWait                code inside a refresh asked the same Source for a token it would wait for
//
// ErrReauthRequired is also reported once per occurrence to the hook set
// with WithOnReauthRequired; a still-valid token is served until it goes
// stale. A caller whose own ctx ends gets an error matching ctx.Err().
//
// # Persistence
//
// With WithStore, the Source loads the stored token on first use (it takes
// precedence over WithInitialToken, being newer) and saves every token it
// takes in (from WithInitialToken when the store is empty, from SetToken,
// from a refresh) before handing it out. A restart on the same store never
// needs a login that the previous process did not need. A failed save is
// reported (StoreFailed) and the token is used anyway, since it may hold the
// only copy of a rotated refresh token. NewFileStore keeps the token in a
// file replaced atomically, NewMemoryStore in memory.
//
// # Fleets
//
// Replicas sharing one credential must make one refresh per expiry between
// them: with rotating refresh tokens a second refresh would present a used
// token and get the whole family revoked. A Store that implements
// Coordinator makes that so: NewFileStore for the processes of one host,
// the redisstore package across hosts. A member refreshes only while it
// holds the fleet's lease and only if the shared record still holds the
// token that needed replacing; otherwise it adopts the token a peer
// committed, after waiting (a second at most) for a peer refreshing at
// that moment when its own token was rejected (the record's may have been
// rejected too).
// Commits are fenced, so a member that lost its lease never
// overwrites a newer token. When Redis is down, members with a valid token
// go on and refreshing without the lease fails with ErrCoordinatorUnavailable
// unless WithUncoordinatedRefresh allows it (safe for client credentials
// only).
//
// # Data loss
//
// A coordinator can lose what it holds: a commit fails after the
// authorization server rotated the refresh token, Redis restarts without
// persistence, a failover promotes a replica that lagged. A member's token is
// then newer than the shared record, and a peer refreshing from the record
// would present a refresh token the server has already spent. With a
// Coordinator that implements Restorer (all of this module's, and
// redisstore), each member knows the version of its token in the record and
// puts it back when the record is behind it: at once in its own refreshes,
// and from a periodic check (WithRepairInterval). A member that is about to
// present a refresh token from a record that may have lost a newer one (the
// lease was taken over, the record is empty or went back) waits for those
// restores first. What no member holds any more cannot be restored.
//
// # Observability
//
// WithObserver receives an Event for every refresh start and end,
// re-authentication, store failure, token load, SetToken, rate-limited
// refresh and fleet coordination step: never on the hot path.
// Event.Refresh identifies the refresh an event belongs to. WithRefreshHooks
// adds the callers' contexts, which events cannot carry, so that a tracer can
// nest the Refresher's RPCs under a span of the refresh. Stats returns
// counters (refreshes, failures, callers waiting now, …) without a lock.
// WithLogger adds log/slog output. The module
// github.com/tokenrefresh/grpc-tokenrefresh/otel turns all of it into
// OpenTelemetry metrics and spans.
//
// # Secrets
//
// Tokens never appear in errors, logs or events. Token's String, GoString,
// Format and LogValue methods redact the access and refresh tokens for every
// fmt verb and for log/slog. fmt bypasses those methods in two places it
// cannot be told about: %p applied to a Token value (which go vet reports)
// and a Token value in an unexported field of a struct that is printed. Keep
// a *Token there instead.
//
// Every behaviour the library guarantees, with the tests that prove it, is
// listed in docs/contract.md in the repository. How the Source works inside
// (the lock-free snapshot, the shared flight, the refresh timeout, fleet
// leases) is described in docs/design.md.
package tokensource
