// Package bench holds the benchmarks that compare grpc-tokenrefresh with the
// alternatives a Go gRPC client has. It contains no code of its own besides
// this overview: everything is in the _test.go files, and
// scripts/bench.sh runs them (with the tokensource package's own
// benchmarks) and prints a benchstat table.
//
// # Per-call cost with a valid token
//
// Three ways of attaching "authorization: Bearer <token>" are compared, as
// sub-benchmarks named impl=… so that benchstat -col /impl lines them up:
//
//   - floor: a unary interceptor that appends a constant header, the least
//     any solution must do;
//   - tokenrefresh: this module, tokensource.Source behind
//     interceptor.DialOptions;
//   - oauth: grpc-go's credentials/oauth.TokenSource over
//     oauth2.ReuseTokenSource, installed as per-RPC credentials.
//
// BenchmarkUnaryRPC measures a real unary RPC over an in-memory (bufconn)
// connection with TLS, against the bundled test server, which validates the
// token on every call. For tokenrefresh it includes the transport-security
// check that DialOptions installs as connection-wide per-RPC credentials;
// like any per-RPC credentials, that makes grpc-go's transport build an
// audience string and a metadata map for every call (3 allocations that the
// floor does not make, and that oauth makes too).
//
// BenchmarkAttach measures the attaching step alone: the interceptor with an
// invoker that does nothing, or, for oauth, the credentials'
// GetRequestMetadata as the transport calls it. Here impl=tokenrefresh is the
// interceptor as DialOptions configures it, and impl=tokenrefresh-standalone
// is UnaryClientInterceptor used on its own, which adds the transport-security
// check as a per-call option (in the pooled option slice the interceptor
// passes a unary call anyway, so no more allocations).
//
// Both report x-floor, the ratio of their time per call to the floor's
// median in the same run (the floor runs first).
//
// # Attaching the token to an HTTP request
//
// BenchmarkHTTPAttach measures the same step for net/http: a RoundTrip with
// a valid token through a base transport that does nothing. impl=floor is a
// RoundTripper that sets a constant header on a copy of the request (the
// least the http.RoundTripper contract allows: the caller's request must not
// be modified), impl=httpauth is httpauth.NewTransport over a
// tokensource.Source, impl=oauth2 is golang.org/x/oauth2's Transport over an
// oauth2.ReuseTokenSource. Each reports x-floor and its allocations:
// httpauth makes the floor's (the copy of the request and of its header),
// oauth2.Transport copies every header value separately.
//
// # The source's hot path
//
// The comparison of tokensource.Source.Token with oauth2.ReuseTokenSource
// for a valid token, serially and in parallel, is BenchmarkToken in package
// tokensource; scripts/bench.sh runs it with these.
//
// # Refresh storm
//
// BenchmarkRefreshStorm starts 10,000 concurrent calls that all need a new
// token while the refresh takes 50 ms, and reports refresher-calls (must be
// 1) and x-ideal: the time until every call has completed divided by the
// ideal, the refresh latency plus "one RPC". With rpc=none the calls go
// through the interceptor to an invoker that does nothing, so one RPC costs
// nothing and the ideal is the refresh latency. With rpc=bufconn-tls they are
// real RPCs against the test server, whose tokens were all expired on the
// server side (the calls are rejected, wait for the one refresh and are
// retried); there "one RPC" is measured, in the same iteration, as the time
// the same 10,000 concurrent calls take with a valid token (baseline-ms),
// because on a machine with few cores 10,000 RPCs cannot all finish within
// the time of a single one.
//
// # Token endpoint outage
//
// BenchmarkIdPOutage has 200 callers make unary calls one after another,
// each with a 5 s deadline (a caller whose call failed pauses 10 ms before
// its next), while the token has expired and the token endpoint answers
// Unavailable for 0.2 s, 0.5 s or 2 s from the first refresh request. It
// reports, per outage, the calls that failed (failed/op) and were made
// (calls/op), and the 99th percentile and the maximum of their latencies
// (p99-ms, max-ms), from the expiry until the calls released by the first
// new token have completed. refresh=today makes one token request per
// refresh (WithRefreshAttempts(1)); refresh=attempts has the library's
// defaults, which try a failed request again within the refresh (3 requests,
// with waits from WithBackoff's default 100 ms). Failed calls come from the
// callers waiting for a refresh whose requests all failed, and from calls
// failing fast while the Source backs off after it, so failed/op depends on
// the callers' pace; a failed call returns at once, which is why the p99 of
// refresh=today can be the lower one. The time per op is the length of that
// window.
//
// # Memory held by a waiting call
//
// BenchmarkWaiterMemory parks 10,000 calls on a refresh that does not finish
// and reports, per waiting call, the growth of the live heap (heap-B/waiter)
// and of the memory in goroutine stacks (stack-B/waiter), measured with
// runtime.ReadMemStats after a GC before and after parking them; B/waiter is
// their sum. The caller's goroutine stack is counted because a blocked call
// holds it. Not counted: the runtime's goroutine descriptor (a few hundred
// bytes), which the runtime reuses from exited goroutines, and the request
// message, which the caller owns.
//
// path=goroutine is a bare goroutine blocked on a channel, the least any
// blocked call costs; path=interceptor is a call blocked in the interceptor
// (invoker never reached); path=grpc is a call made through a real
// ClientConn. The Source keeps no per-waiter state beyond a counter, so what
// a waiting call holds is essentially its goroutine's stack. Stack figures
// depend on the runtime's adaptive initial stack size: by default it settles
// at 4 KiB here for every path; with GODEBUG=adaptivestackstart=0 a bare
// goroutine keeps its 2 KiB while a call blocked in the interceptor needs
// one growth to 4 KiB.
package bench
