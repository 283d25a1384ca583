// Package e2e holds the end-to-end reliability and security tests of
// grpc-tokenrefresh: the tokensource and interceptor packages working
// together against the bundled test server (package testserver) over TLS on
// loopback, under faults, load and hostile input. It contains no library
// code; everything is in its _test.go files, which run in `make test` under
// -race.
//
// # Fault matrix
//
// TestFaultMatrix is table-driven: each row starts a fresh server and client
// (sharing nothing with other rows), injects one fault — the refresh
// endpoint down, a refresh slower than the refresh timeout, Unavailable n
// times, Unauthenticated or PermissionDenied for the refresh itself, a
// malformed token from the Refresher, the server restarting under an open
// stream, revoked tokens, the clock jumping forward or back — and asserts
// what the caller sees (status code, errors.Is against the tokensource and
// context sentinels), how many logins and refreshes the server counted, that
// a later call recovers once the fault clears (after the backoff, or after
// SetToken when the failure is permanent), and that no goroutine is left.
// Every row logs one "matrix |" line with its observed outcome.
//
// Three further tests pin down bugs the matrix found (fixed in tokensource): a call
// rejected while the Source backs off after a failed forced refresh must see
// the transient failure (TestFaultRejectedWhileBackingOffIsUnavailable); a
// refresh ended by the refresh timeout must always match ErrRefreshTimeout
// (TestFaultRefreshTimeoutMatchesErrRefreshTimeout); and a token the Source
// refuses must not lose the rotated refresh token it came with
// (TestFaultInvalidRefreshResultKeepsRotatedRefreshToken).
//
// Both the server and the client run on fake clocks, advanced by the tests,
// so that backoff, rate limits and expiry are deterministic; only the refresh
// timeout and the injected refresh latency use real time. The server's TLS
// certificate is made once per test binary (rather than by testserver.TLS,
// which makes one per endpoint) so that a restarted endpoint presents a
// certificate the client still trusts.
//
// # Identity-provider outages
//
// TestIdPBlip runs 200 callers (unary, server-stream, client-stream, bidi
// and direct Source.Token, 5 s deadlines) while the token endpoint answers
// Unavailable for 0.5 s after an expiry and again after a revocation
// (ForceExpire): with the attempts inside one refresh no call fails, each
// need makes one refresh, and the server sees no more token requests than
// refreshes × attempts; with one attempt per refresh the same blips fail
// calls, which shows that the test can fail. TestIdPPermanentOutage keeps
// the token endpoint down: waiters are released by about the refresh
// timeout with Unavailable, later callers fail fast during the backoff, and
// calls that wait for ready (grpc.WaitForReady, per call or by default;
// tokensource.WaitForReady) wait and succeed once the server is back, or
// get DeadlineExceeded naming the last refresh error when their deadline
// ends first. Both log their figures on "idp-blip |" and "idp-outage |"
// lines.
//
// # Soak
//
// TestSoak runs mixed unary and streaming traffic from 32 workers for
// -soak.duration (default 20 s) with 3 s access tokens (about ten
// expiries; lifetimes of seconds, because a token served until shortly before
// its expiry must still be valid when an RPC slowed down by load reaches the
// server), random transient and permanent refresh failures injected by the
// server, and random caller cancellations, then checks its invariants: no
// call failed except those whose own context ended or that met an injected
// permanent failure (the client retries Unavailable, as a retry interceptor
// would); refresh attempts ≤ token expiries + forced refreshes + failed
// attempts (with at least one expiry per two token lifetimes, so the run is
// not vacuous), and the server saw exactly the Source's attempts (see the
// test for the precise definitions); the goroutines are back to the baseline;
// the heap did not grow beyond a generous bound. It logs its figures,
// including the RPC latency it measured, on "soak |" lines. Run it longer
// with
//
//	go test -race -run TestSoak ./e2e/ -soak.duration=10m
//
// # Chaos campaign
//
// TestChaos (chaos_test.go, the worker in chaosworker_test.go, the faults
// in chaosfaults_test.go, the checkers in chaoscheck_test.go) runs a
// seeded fault campaign per store (FileStore, Redis): 6 worker processes,
// each with its own connection and Source and 8 callers with 3 s deadlines
// through the interceptors, share one rotating credential against
// testserver (1.8 s tokens, 50–200 ms refresh latency, family revocation
// on reuse), while a fault strikes every 0.5–2 s: a worker killed (SIGKILL,
// restarted), a worker stopped for 0.2–3 s (SIGSTOP, SIGCONT), every access
// token force-expired, and per store: a member stalled 0.2–3 s inside the
// FileStore's critical section with a live lease (through
// internal/faultpoint); redis-server killed and restarted empty or from its
// append-only file, at a random moment or while a refresh is in flight
// (before the server rotates). With -chaos.store=cluster or sentinel (or
// all) it runs on topologies started for the purpose (chaostopology_test.go):
// a 3-master Redis Cluster whose master for the record's slot is killed,
// and a master with a replica and three Sentinels, failed over by killing
// the master, each at a random moment or with a refresh in flight, and the
// Sentinel failover also to a lagging replica (its stream held on a
// redistest.Link from before a commit until the kill, so that the promoted
// replica misses that commit). The
// schedule is drawn from -chaos.seed and logged first; the refresh latency
// is not part of it. The checkers, with
// the definitions of fault windows and the recovery allowance, are
// documented in chaoscheck_test.go: refresh-token reuse at the server,
// lost sessions, failed calls outside fault windows, failed calls per
// force-expiry (at most 20), members sending a token the server rejected
// while a valid one is committed, and grants per token lifetime. A lost
// session is followed by a relogin, so that the campaign goes on. Each
// store ends with a table per fault kind on "chaos |" lines; a failure
// names the checker, the faults and the seed. `make test` runs seed 602 for
// 20 s on FileStore and on Redis, with worker stops capped at 1.5 s
// (-chaos.max-stop): a longer stop right after a member presented its
// refresh token is the documented unfenceable pause, and whether one lands
// there is timing, which a fixed-seed smoke run must not depend on. For
// longer runs, with stops up to 3 s (STORE=file, redis, cluster, sentinel or
// all):
//
//	make chaos SEED=7 DURATION=10m STORE=redis
//
// # Fleet benchmark
//
// BenchmarkFleet runs the fleet tests' worker processes (the test binary
// re-executed, see TestMain) as a measurement: refreshes per expiry with a
// coordinating store and without, and the latency from a holder's commit to
// its waiting peers' adoption. Each iteration is one episode of
// -fleetbench.expiries expiries; `make bench-fleet` runs ten per store:
//
//	go test -run '^$' -bench BenchmarkFleet -benchtime 10x ./e2e/
//
// # Secrets and security defaults
//
// TestNoSecretsAnywhere drives every error path it can reach with every
// component logging at Debug level into buffers, and asserts that no access
// or refresh token ever issued appears in a log line, an error string or the
// fmt rendering of a token or error; TestFileStoreMode checks the mode of the
// token file. TestInsecureConnectionSendsNoToken and
// TestRefreshTokenReuseRevokesFamily check the security defaults end to end.
package e2e
