// Package testserver is a gRPC server for testing token-refreshing clients:
// an AuthService that issues short-lived access tokens and rotating refresh
// tokens, an EchoService with one method of each RPC kind that requires a
// valid bearer token, fault injection, and counters a test can assert on.
//
// # Starting a server in a test
//
//	srv := testserver.New(testserver.WithAccessTokenTTL(time.Second))
//	ep, err := srv.Start(ctx)           // loopback TCP; TLS() and Bufconn() are options
//	if err != nil { ... }
//	defer ep.Stop()                     // returns once every server goroutine has exited
//	conn, err := ep.NewClient()         // or grpc.NewClient(ep.Target(), ep.DialOptions()...)
//
// Servers that need their own grpc.Server use ServerOptions and Register.
//
// # Tokens
//
// Login starts a token family: an access token (default lifetime
// DefaultAccessTokenTTL) and a refresh token (DefaultRefreshTokenTTL). Tokens
// are opaque random strings ("at_…", "rt_…") that are legal HTTP/2 header
// values. Refresh tokens rotate: Refresh consumes the one presented and issues
// the next pair of the same family. Presenting a refresh token a second time
// revokes the whole family, as the OAuth 2.0 Security Best Current Practice
// recommends, and so does Revoke. Without WithUser options the only user is
// DefaultUser with DefaultPassword.
//
// # Authentication
//
// Every service except AuthService and server reflection requires
// "authorization: Bearer <access token>" (the scheme in any case, one
// header). The check runs in a go-grpc-middleware auth interceptor, selected
// with its selector interceptor, before the handler: a missing or malformed
// header and an unknown, expired or revoked token get codes.Unauthenticated
// in a trailers-only response.
//
// Every error the server itself answers with reads "testserver: <reason>",
// such as "testserver: token expired" or "testserver: malformed
// authorization header, want ..." (errors a WithRefreshFailureFunc predicate
// returns are passed on as they are). Each rejected access or refresh token is
// logged at Info level (a reused refresh token at Warn) as "access token
// rejected" or "refresh token rejected", with the method and the same
// reason, so the default level shows why a client was turned away.
//
// Expiry is judged by the clock given to WithClock, so a test can expire
// tokens without waiting, or at once with ForceExpire; RevokeAll revokes
// everything, and SetRejectAccessTokens makes the server reject every access
// token.
//
// # Fault injection
//
// WithRefreshLatency delays Refresh calls; WithRefreshFailures fails the next
// n of them with a chosen code; WithRefreshFailureFunc fails (or blocks) the
// calls a predicate picks. The Set… and FailNextRefreshes methods change the
// first two while the server runs. ServerStreamEcho can fail a stream after a
// given number of messages, to produce an error that follows responses.
//
// # Counters
//
// Counters returns a snapshot of logins, refreshes (succeeded and failed),
// revocations, Unauthenticated answers, RPCs per method, and how many requests
// carried an authorization header at all — which proves that a client sent no
// token over an insecure connection.
//
// # Client side
//
// NewRefresher turns an AuthService client into a tokensource.Refresher that
// logs in once and then follows the rotating refresh tokens.
//
// Token values never appear in the server's errors or logs.
package testserver
