// Package interceptor provides gRPC client interceptors that attach a bearer
// token from a token source to every call and make token expiry invisible to
// application code: a call whose token the server rejects is retried once
// with a refreshed token, and a stream rejected before its first response is
// reopened and replayed.
//
// The token source is normally a *tokensource.Source, which shares one
// refresh among all the callers that need it; any TokenSource works.
//
// # Installing
//
// DialOptions is all a client needs:
//
//	src := tokensource.New(refresher)
//	defer src.Close()
//	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
//	conn, err := grpc.NewClient(target, append(opts, interceptor.DialOptions(src)...)...)
//
// When the Refresher calls its authentication service over this same
// connection (as testserver.NewRefresher does), use NewClient instead: it
// creates the connection, hands it to the function that builds the source,
// and binds the result, so there is no moment at which a call could find no
// source and nobody writes "declare now, fill in later":
//
//	conn, src, err := interceptor.NewClient(target, func(cc grpc.ClientConnInterface) *tokensource.Source {
//		return tokensource.New(authRefresher(cc))
//	}, grpc.WithTransportCredentials(creds), interceptor.WithInterceptorOptions(opts...))
//	defer conn.Close()
//	defer src.Close() // first: it lets a refresh in flight on conn finish
//
// The Refresher's own calls pass through the interceptors untouched (they
// run inside the refresh, see tokensource.InRefresh).
//
// DialOptions chains the unary and the stream interceptor (sharing one configuration)
// and installs the transport security check once for the connection.
// UnaryClientInterceptor and StreamClientInterceptor return the interceptors
// alone, for clients that assemble their chain themselves; they then add the
// security check to each call they handle.
//
// Every call carries "authorization: Bearer <access token>" (WithHeader and
// WithScheme change the key and the scheme). A value the caller put in the
// outgoing metadata under that key is replaced, never sent twice, and is
// also removed from the context the token source sees: a refresh keeps the
// values of the context that started it, so the caller's header would
// otherwise travel on the Refresher's own RPCs.
//
// # Placing it in a chain
//
// gRPC runs chained client interceptors in the order they are given, the
// first one outermost, and the dial options that chain them add up in the
// order they are passed to grpc.NewClient. With go-grpc-middleware's
// interceptors, the order that works is:
//
//	opts := []grpc.DialOption{
//		grpc.WithTransportCredentials(creds),
//		grpc.WithChainUnaryInterceptor(
//			logging.UnaryClientInterceptor(logger), // 1. outermost
//			timeout.UnaryClientInterceptor(5*time.Second),
//			retry.UnaryClientInterceptor(retry.WithMax(3)),
//		),
//	}
//	opts = append(opts, interceptor.DialOptions(src)...) // 4. innermost, next to the transport
//	conn, err := grpc.NewClient(target, opts...)
//
// Why this order:
//
//  1. Logging outermost logs each call once, as the application sees it:
//     after the token was obtained and any refresh-and-retry happened
//     inside. (Placed inside retry instead, it would log every attempt.)
//  2. The timeout outside the others bounds the whole call: the wait for a
//     token, the attempts and the backoff between them.
//  3. Retry outside this package's interceptors, so that every retry
//     attempt passes through them again and carries the source's current
//     token rather than the one attached for the first attempt. A token
//     source that cannot produce a token for a transient reason fails the
//     call with codes.Unavailable, which retry's default codes retry with
//     backoff. An Unauthenticated that survived this package's own retry is
//     not retried by default, which is right: the server rejected a fresh
//     token.
//  4. This package innermost, so that the token it attaches is the last
//     word and its one retry sits below the generic retry.
//
// gRPC's own retry policy (from the service config) runs below all
// interceptors and resends the same metadata; do not add Unauthenticated to
// its retryable codes.
//
// # Unary calls
//
// The unary interceptor gets a token (waiting, within the call's context,
// while the source refreshes), makes the call, and if the server rejected
// the token (WithTokenRejected; by default codes.Unauthenticated) asks the
// source to Refresh the token that was sent, then retries once with the
// token it returns. The caller sees the retry's result. There is no second
// retry, and no retry at all when the source returns the rejected token
// itself (a *tokensource.Source does so within its minimum refresh interval,
// when the server keeps rejecting fresh tokens): the same token would be
// rejected again, so the server's rejection is returned, with its code,
// matching it with errors.Is, and with the reason appended to its message:
//
//	rpc error: code = Unauthenticated desc = token revoked; not retried: forced refresh rate-limited (WithMinRefreshInterval 1s)
//
// The same holds for a stream rejected when it is created.
//
// # Streams
//
// The token is attached when a stream opens. The server's rejection can
// surface when the stream is created, in Header (grpc-go reports a
// trailers-only rejection there as an ended stream), in RecvMsg, or as
// io.EOF from SendMsg. In each case, if no response message has arrived yet,
// the stream interceptor refreshes the token, opens a new stream with it,
// replays the messages sent so far (and CloseSend, if the caller had
// called it), and carries on: the caller's next RecvMsg reads from the new
// stream, and Header, Trailer and Context return the new stream's. A stream
// is reopened at most once.
//
// Messages are kept for the replay only while no response has arrived, as
// clones (so the caller may reuse a message after SendMsg), and only up to
// WithMaxReplayBytes (default 256 KiB, grpc-go's own retry buffer size).
// Past the bound, or after the first response, a rejection is returned as it
// is: replaying would duplicate what the server already answered. The same
// holds, as for grpc-go's own retries, once Header has returned the server's
// header or the caller has asked for the stream's Context, and for calls
// whose codec is not protocol buffers (grpc.ForceCodec,
// grpc.CallContentSubtype), because finding out how a stream ended may mean
// capturing a response the caller has not asked for yet. The source is
// still refreshed then, so later calls carry a fresh token.
//
// grpc-go allows one goroutine in SendMsg while another is in RecvMsg. The
// wrapper keeps that: while the stream is being replaced or replayed,
// SendMsg and CloseSend wait (or return when the call's context ends), and
// no lock is held across a blocking call on the underlying stream. SendMsg
// returns nil for a message sent into a stream that turned out to be
// rejected only if the message is part of the replay; otherwise io.EOF, as
// grpc-go does, and RecvMsg reports the status. The replay of a reopened
// stream runs on a goroutine of its own, so that a receiver can drain
// responses meanwhile; it ends with the stream.
//
// # Challenges
//
// A resource server may say why it refused a token with a WWW-Authenticate
// challenge (RFC 6750) in the response's header or trailer metadata, under
// the key "www-authenticate", as Envoy's jwt_authn filter does. The
// interceptors read it when a call fails with Unauthenticated or
// PermissionDenied, by the RFC 9110 grammar (several challenges in one value
// or across values; challenges of other schemes, such as DPoP, ignored), the
// same way package httpauth reads an HTTP response's:
//   - error="invalid_token", or no error code: the token is stale; refresh
//     and retry as for any rejection (WithTokenRejected decides, so by
//     default only Unauthenticated);
//   - error="insufficient_scope": a new token of the same grant cannot help.
//     The call is not retried and the source is not refreshed; the error has
//     the server's code, message and details, its message names the scope,
//     and it matches tokensource.ErrInsufficientScope (errors.As finds the
//     *tokensource.ScopeError) as well as the server's error;
//   - error="insufficient_user_authentication" (RFC 9470): likewise, matching
//     tokensource.ErrStepUpRequired, with the *tokensource.StepUpError's
//     ACRValues and MaxAge for a new, stronger login.
//
// A unary call reads the metadata through grpc.Header and grpc.Trailer call
// options that the interceptor adds from a pool, so a call that succeeds
// allocates nothing more. A stream reads it when the server ends it; a
// stream's creation never carries the server's answer (grpc-go reports it on
// the stream), so an error there is handled as before.
//
// # Skipping
//
// A call goes out untouched (no token, no refresh) when it has the SkipAuth
// call option, when its method is listed with WithSkipMethods (a login RPC,
// say), or when it is made from inside the token source's own refresh
// (tokensource.InRefresh): a Refresher that calls an auth service over the
// same intercepted connection neither waits for the refresh it is part of
// nor starts another one. Such a call carries whatever metadata the
// Refresher gave it, its own credential for the auth service included, but
// never the header of the call that started the refresh (see Installing).
//
// # Transport security
//
// By default no token is sent over a connection without transport security
// (PrivacyAndIntegrity, as grpc-go's oauth credentials require). The check
// runs where gRPC knows the connection, in the transport: a call that
// carries the token header on an insecure connection fails with
// codes.Unauthenticated and an error matching ErrInsecureTransport, before
// anything is written, and triggers no refresh. Calls without a token
// (SkipAuth, skipped methods) still work on such a connection. AllowInsecure
// turns the check off, for local testing.
//
// gRPC reveals a connection's security level only to the transport, after
// the interceptor has obtained the token. So a source that holds no valid
// token refreshes once for the first call on an insecure connection (the
// token then stays in the process); the refusal itself never triggers a
// refresh, however many calls are refused.
//
// # Errors
//
// Errors are gRPC status errors; use status.Code, and errors.Is for causes.
// When no token can be obtained: if the call's context ended, the error has
// that context's code (Canceled, DeadlineExceeded) and matches its error;
// if the source requires the user to log in again, the code is
// Unauthenticated and the error matches tokensource.ErrReauthRequired; if
// the forced refresh handed back the very token the server had just
// rejected, the call is not retried with it: the code is Unauthenticated and
// the error matches tokensource.ErrUnchangedToken; any
// other failure (a transient refresh failure, a closed source, an unusable
// token) is Unavailable and matches its cause. Errors never contain token
// text, and tokens are never logged.
//
// # Performance
//
// With a valid token the unary path takes no lock: the source's Token is an
// atomic load and a clock read, and the header is built once per token as a
// metadata.MD that every call shares. A call whose context has no outgoing
// metadata allocates two small objects (the context wrapping that MD),
// half of what metadata.AppendToOutgoingContext allocates. When the
// caller's context already has outgoing metadata, the interceptor must look
// for an existing token header, and grpc-go offers no way to do that without
// copying the metadata: such calls pay for that one copy, which the
// interceptor then attaches (see BenchmarkUnary).
package interceptor
