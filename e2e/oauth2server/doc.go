// Package oauth2server tests grpc-tokenrefresh against a real OAuth 2
// authorization server: the OpenID-certified provider of
// github.com/zitadel/oidc/v3 (package op), run in process over TLS on
// loopback, and a gRPC resource server that accepts a call only if the
// provider's introspection endpoint (RFC 7662) says its bearer token is
// active (in the outage tests, an active answer is reused for 200 ms, as
// resource servers may do, so that 200 callers do not queue for
// introspection). It is a module of its own so that the library's go.mod
// gains none of zitadel/oidc's dependencies; it contains no library code,
// only tests, which run in `make test` under -race.
//
// The provider's storage (storage_test.go) is written for these tests: it
// rotates refresh tokens on every refresh-token grant and detects reuse (a
// consumed refresh token presented again revokes its whole family), serves
// the client-credentials grant and token exchange, and issues JWT access
// tokens with a 5 s lifetime (expires_in 4), looked up at introspection so that revocation
// takes effect at once. Everything else — the endpoints, client
// authentication, PKCE, signing and verifying the JWTs, the error responses
// — is zitadel's.
//
// The first token pair comes from a real login: the authorization-code
// grant with PKCE, through /authorize, a stand-in login UI that approves the
// user at once (the only part of the flow not performed by zitadel's code),
// the provider's callback and the code exchange.
//
// The tests:
//
//   - TestRefreshTokenGrantUnderLoad: OAuth2Refresher and the interceptors,
//     64 goroutines across four refreshes: no call fails, one grant per
//     expiry, no reuse detected.
//   - TestAuthServerRevokesFamilyOnReuse: the positive control for the
//     reuse detection the other tests rely on.
//   - TestRestartSoonAfterLogin: a process stops before its first refresh; a
//     new process (the test binary re-executed) on the same FileStore goes on
//     without a login.
//   - TestCloseDuringRotation: Close while the provider's answer to a
//     rotation is on its way; the rotated refresh token must reach the Store
//     and the restarted process must not present the consumed one.
//   - TestClientCredentialsUnderLoad, TestClientCredentialsRecoversFromRevocation:
//     ClientCredentials across expiries, and one forced refresh after the
//     provider revoked a still-valid token (RFC 7009).
//   - TestFromOAuth2ReuseTokenSourceReportsUnchangedToken: the same
//     revocation with FromOAuth2 around an oauth2.ReuseTokenSource is
//     reported as Unauthenticated matching ErrUnchangedToken.
//   - TestTokenEndpointOutageFailsNoCall: a fault injector in front of the
//     token endpoint answers 503 (with and without Retry-After) for 0.5 s,
//     once on the refresh of an expired token and once on the forced
//     refresh after a revocation; 200 callers (unary, server-stream,
//     client-stream and bidi calls, and Source.Token) with 5 s deadlines:
//     no call fails, the refresh tries again while they wait (after exactly
//     the Retry-After when there is one), and the token requests are the
//     attempts of one refresh per expiry or revocation.
//   - TestTokenEndpointDownForGood: the token endpoint stays down; the
//     waiting callers are released by the refresh timeout with Unavailable,
//     callers during the backoff fail fast without a token request, and
//     callers made with grpc.WaitForReady(true) wait and succeed once the
//     endpoint is back.
//   - TestPrivateKeyJWTClientCredentialsUnderLoad,
//     TestFederatedAssertionUnderLoad, TestTokenExchangeTwoAudiencesUnderLoad:
//     client authentication by private_key_jwt and by a projected
//     service-account token that kubelet rotates (workload identity
//     federation), and RFC 8693 token exchange for two audiences from a
//     rotating subject file; 200 callers across three expiries, no call
//     fails, one token request per expiry (and audience), no client secret
//     on the wire, every jti distinct. The token endpoint for these tests
//     (credsserver_test.go) is zitadel's LegacyServer with assertions
//     accepted for every grant and verified by zitadel's
//     op.VerifyJWTAssertion; the storage serves token exchange.
//   - TestFileTokenRotationUnderLoad, TestFileTokenRevokedAfterSidecarWrote:
//     FromFile under 200 callers while a sidecar rewrites the file as
//     kubelet (..data swap) and as a Vault agent (rename) do; a revocation
//     after the sidecar wrote the next token costs each rejected call one
//     retry.
//   - TestAssertionBadInput: an unknown key (invalid_client:
//     ErrReauthRequired after one request), an expired assertion file
//     (Unavailable, no request, recovery once renewed).
//
// Run them with
//
//	cd e2e/oauth2server && go test -race ./...
package oauth2server
