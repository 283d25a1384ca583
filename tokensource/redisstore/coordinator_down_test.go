package redisstore

import (
	"context"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/redistest"
	"github.com/tokenrefresh/grpc-tokenrefresh/internal/testutil"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// probeBound is the longest a Source lets one look at a Coordinator that is
// down, or turns out to be, take: a bounded probe, not the client's whole
// dial-retry budget.
const probeBound = time.Second

// downPeriod is the Sources' backoff (initial and maximum alike), so that
// each period after a failed look at Redis lasts between half of it and all
// of it on the Sources' clock, whatever the number of failures. It is the
// Source's cap on the backoff after coordinator failures (a second), so that
// the fleet recovers within about a second of Redis answering again.
const downPeriod = time.Second

// tokenLife is the lifetime of the tokens the Refresher hands out on the
// Sources' clock: many expire within one backoff period.
const tokenLife = 50 * time.Millisecond

// redisTraffic counts what a go-redis client asks of Redis: dial attempts
// (each one of go-redis's own dial retries counts) and commands (a pipeline
// counts as one; go-redis's command retries do not add to it). For each
// command it also keeps how much time its ctx left it: the bound its caller
// put on it.
type redisTraffic struct {
	dials atomic.Int64

	mu        sync.Mutex
	allowance []time.Duration // per command: time left until ctx's deadline, or -1 without one
}

func (r *redisTraffic) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		r.dials.Add(1)
		return next(ctx, network, addr)
	}
}

func (r *redisTraffic) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		r.command(ctx)
		return next(ctx, cmd)
	}
}

func (r *redisTraffic) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		r.command(ctx)
		return next(ctx, cmds)
	}
}

func (r *redisTraffic) command(ctx context.Context) {
	left := time.Duration(-1)
	if dl, ok := ctx.Deadline(); ok {
		left = time.Until(dl)
	}
	r.mu.Lock()
	r.allowance = append(r.allowance, left)
	r.mu.Unlock()
}

// trafficMark is a point in a client's traffic; since returns what came
// after it.
type trafficMark struct {
	r           *redisTraffic
	dials, cmds int
}

func (r *redisTraffic) mark() trafficMark {
	r.mu.Lock()
	defer r.mu.Unlock()
	return trafficMark{r: r, dials: int(r.dials.Load()), cmds: len(r.allowance)}
}

// since returns the dials and commands after m, and the time the ctx of
// each of those commands left it.
func (m trafficMark) since() (dials, cmds int, allowance []time.Duration) {
	m.r.mu.Lock()
	defer m.r.mu.Unlock()
	allowance = append([]time.Duration(nil), m.r.allowance[m.cmds:]...)
	return int(m.r.dials.Load()) - m.dials, len(allowance), allowance
}

// defaultClient returns a client for srv's socket at go-redis's defaults for
// dialing and retrying (five dial attempts per connection, three command
// retries), as users run it, with the one setting the package documentation
// asks for (ContextTimeoutEnabled), and the traffic it causes.
func defaultClient(t *testing.T, srv *redistest.Server) (*redis.Client, *redisTraffic) {
	o := clientOptions(srv)
	o.DialerRetries = 0 // go-redis's default
	c := redis.NewClient(o)
	t.Cleanup(func() { _ = c.Close() })
	tr := &redisTraffic{}
	c.AddHook(tr)
	return c, tr
}

// dialRetryBudget is the least time one command spends with a client at
// opts (defaults filled in) when every dial fails at once, as on the socket
// of a killed redis-server: every command attempt makes DialerRetries dial
// attempts with DialerRetryTimeout between them, and the attempts are
// separated by at least MinRetryBackoff.
func dialRetryBudget(opts *redis.Options) time.Duration {
	attempts := time.Duration(opts.MaxRetries + 1)
	perAttempt := time.Duration(opts.DialerRetries-1) * opts.DialerRetryTimeout
	return attempts*perAttempt + time.Duration(opts.MaxRetries)*max(opts.MinRetryBackoff, 0)
}

// counter is a client-credentials style Refresher: any number of refreshes
// are harmless, each hands out a new token living tokenLife on clock.
type counter struct {
	clock *testutil.Clock
	n     atomic.Int64
}

func (c *counter) Refresh(context.Context, *tokensource.Token) (*tokensource.Token, error) {
	n := strconv.FormatInt(c.n.Add(1), 10)
	return &tokensource.Token{
		AccessToken:  "access-SECRET-c" + n,
		RefreshToken: "refresh-SECRET-c" + n,
		Expiry:       c.clock.Now().Add(tokenLife),
	}, nil
}

// downSource returns a Source on a Store of client: its clock is clock, its
// backoff periods are downPeriod, it refreshes only on demand, and it is
// closed when the test ends.
func downSource(t *testing.T, client *redis.Client, clock *testutil.Clock, ref tokensource.Refresher, opts ...tokensource.Option) *tokensource.Source {
	src := tokensource.New(ref, append([]tokensource.Option{
		tokensource.WithStore(New(client, "token")),
		tokensource.WithClock(clock.Now),
		tokensource.WithBackoff(downPeriod, downPeriod),
		tokensource.WithEarlyRefresh(0),
		// Only the callers' probes are counted here: the periodic check of
		// the record (which goes through the same known-down gate) is
		// tested with the repair.
		tokensource.WithRepairInterval(0),
	}, opts...)...)
	t.Cleanup(func() { _ = src.Close() })
	return src
}

// checkProbe asserts that what a Source asked of a dead Redis since m is
// exactly one probe, bounded by probeBound: one command, whose ctx
// left it no more than probeBound, and no more dials than go-redis makes for
// one command.
func checkProbe(t *testing.T, what string, m trafficMark, opts *redis.Options) {
	t.Helper()
	dials, cmds, allowance := m.since()
	if cmds != 1 {
		t.Errorf("%s: %d commands sent to the dead Redis; want one probe", what, cmds)
	}
	for _, left := range allowance {
		if left < 0 || left > probeBound {
			t.Errorf("%s: a command to the dead Redis was allowed %v (-1: no deadline); want a probe bounded by %v, "+
				"not go-redis's dial-retry budget", what, left, probeBound)
		}
	}
	if perCmd := (opts.MaxRetries + 1) * opts.DialerRetries; dials > perCmd*cmds {
		t.Errorf("%s: %d dial attempts for %d commands; go-redis makes at most %d per command", what, dials, cmds, perCmd)
	}
}

// checkSilent asserts that a Source did not touch Redis since m.
func checkSilent(t *testing.T, what string, m trafficMark) {
	t.Helper()
	if dials, cmds, _ := m.since(); dials != 0 || cmds != 0 {
		t.Errorf("%s: %d commands and %d dial attempts to the Redis known to be down; want none within the backoff period",
			what, cmds, dials)
	}
}

// checkInRecord asserts that the record in Redis holds tok: the Source
// committed it, or adopted it from there.
func checkInRecord(t *testing.T, ctx context.Context, srv *redistest.Server, what string, tok *tokensource.Token) {
	t.Helper()
	if got := mustLoad(t, ctx, member(t, srv, "token")); !sameToken(got.Token, tok) {
		t.Errorf("%s: the record in Redis holds %v; want the Source's token %v", what, got.Token, tok)
	}
}

// TestUncoordinatedRefreshRedisKilled: with redis-server killed, a Source
// with WithUncoordinatedRefresh whose token expired pays one bounded probe,
// then refreshes locally; further refreshes within the backoff period leave
// Redis alone, the next period costs one probe again, and once Redis is back
// the Source coordinates through it again within one backoff period.
func TestUncoordinatedRefreshRedisKilled(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	clock := testutil.NewClock(testutil.Epoch)
	client, traffic := defaultClient(t, srv)
	opts := client.Options()
	budget := dialRetryBudget(opts)
	ref := &counter{clock: clock}
	src := downSource(t, client, clock, ref, tokensource.WithUncoordinatedRefresh())

	// A member got the fleet's token while Redis was up.
	shared := &tokensource.Token{AccessToken: "access-SECRET-s0", RefreshToken: "refresh-SECRET-s0", Expiry: clock.Now().Add(tokenLife)}
	if err := member(t, srv, "token").Save(ctx, shared); err != nil {
		t.Fatal(err)
	}
	if tok, err := src.Token(ctx); err != nil || !sameToken(tok, shared) {
		t.Fatalf("Token with Redis up = %v, %v; want the shared token", tok, err)
	}

	srv.Stop()
	// refresh expires the Source's token and has it refreshed, and returns
	// how long the call took.
	refresh := func(what string) (*tokensource.Token, time.Duration) {
		t.Helper()
		clock.Advance(2 * tokenLife)
		before := ref.n.Load()
		start := time.Now()
		tok, err := src.Token(ctx)
		took := time.Since(start)
		if err != nil {
			t.Fatalf("%s: Token = %v; want a local refresh (WithUncoordinatedRefresh)", what, err)
		}
		if ref.n.Load() != before+1 || tok.AccessToken != "access-SECRET-c"+strconv.FormatInt(before+1, 10) {
			t.Fatalf("%s: Token = %v after %d Refresher calls; want the token of one new call", what, tok, ref.n.Load()-before)
		}
		return tok, took
	}

	m := traffic.mark()
	_, took := refresh("first refresh with Redis killed")
	checkProbe(t, "first refresh with Redis killed", m, opts)
	// The bound itself is checkProbe's (the command's deadline, counted
	// dials): no pass or fail by timing.
	t.Logf("first refresh with Redis killed took %v (probe bound %v, go-redis's dial-retry budget of one command %v)",
		took, probeBound, budget)
	// Within the backoff period (at least downPeriod/2 on the Source's
	// clock): local refreshes that do not touch Redis at all.
	for i := range 3 {
		m = traffic.mark()
		what := "refresh " + strconv.Itoa(i+2) + " within the backoff period"
		refresh(what)
		checkSilent(t, what, m)
		if t.Failed() {
			// Going on would only add dial failures, which past
			// go-redis's pool size make the client fail every dial for a
			// second after Redis is back.
			t.FailNow()
		}
	}

	// The next backoff period: one bounded probe, then silence again.
	clock.Advance(downPeriod)
	m = traffic.mark()
	refresh("first refresh of the next backoff period")
	checkProbe(t, "first refresh of the next backoff period", m, opts)
	m = traffic.mark()
	refresh("second refresh of the next backoff period")
	checkSilent(t, "second refresh of the next backoff period", m)

	// Redis is back, empty. Within one backoff period the Source
	// coordinates again: it refreshes under the lease and commits.
	srv.Restart()
	clock.Advance(downPeriod)
	tok, _ := refresh("refresh once Redis is back")
	checkInRecord(t, ctx, srv, "refresh once Redis is back", tok)

	// And it adopts what a peer committed, without a Refresher call.
	peer := &tokensource.Token{AccessToken: "access-SECRET-p", RefreshToken: "refresh-SECRET-p", Expiry: clock.Now().Add(10 * tokenLife)}
	if err := member(t, srv, "token").Save(ctx, peer); err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * tokenLife)
	before := ref.n.Load()
	if got, err := src.Token(ctx); err != nil || !sameToken(got, peer) || ref.n.Load() != before {
		t.Fatalf("Token after a peer committed = %v, %v with %d Refresher calls; want the peer's token, adopted",
			got, err, ref.n.Load()-before)
	}
}

// TestRefreshRefusedRedisKilled: with redis-server killed and without
// WithUncoordinatedRefresh, the callers of a Source whose token expired fail
// promptly with ErrCoordinatorUnavailable after one bounded probe shared by
// all of them; within the backoff period nobody probes; once Redis is back
// the Source refreshes through it within one backoff period.
func TestRefreshRefusedRedisKilled(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	clock := testutil.NewClock(testutil.Epoch)
	client, traffic := defaultClient(t, srv)
	opts := client.Options()
	budget := dialRetryBudget(opts)
	ref := &counter{clock: clock}
	src := downSource(t, client, clock, ref)

	shared := &tokensource.Token{AccessToken: "access-SECRET-s0", RefreshToken: "refresh-SECRET-s0", Expiry: clock.Now().Add(tokenLife)}
	if err := member(t, srv, "token").Save(ctx, shared); err != nil {
		t.Fatal(err)
	}
	if tok, err := src.Token(ctx); err != nil || !sameToken(tok, shared) {
		t.Fatalf("Token with Redis up = %v, %v; want the shared token", tok, err)
	}

	srv.Stop()
	clock.Advance(2 * tokenLife)
	// callers has n callers ask at once and returns the longest call.
	callers := func(what string, n int) time.Duration {
		t.Helper()
		var wg sync.WaitGroup
		var mu sync.Mutex
		var longest time.Duration
		for range n {
			wg.Go(func() {
				start := time.Now()
				tok, err := src.Token(ctx)
				took := time.Since(start)
				if !isUnavailable(err) {
					t.Errorf("%s: Token = %v, %v; want an error matching ErrCoordinatorUnavailable", what, tok, err)
				}
				if err != nil && strings.Contains(err.Error(), "SECRET") { // noSecrets, off the test goroutine
					t.Errorf("error leaks a token: %v", err)
				}
				mu.Lock()
				longest = max(longest, took)
				mu.Unlock()
			})
		}
		wg.Wait()
		return longest
	}

	m := traffic.mark()
	longest := callers("callers with Redis killed", 20)
	checkProbe(t, "20 callers with Redis killed", m, opts)
	t.Logf("callers with Redis killed waited up to %v (probe bound %v, go-redis's dial-retry budget of one command %v)",
		longest, probeBound, budget)
	m = traffic.mark()
	callers("callers within the backoff period", 20)
	clock.Advance(downPeriod / 4)
	callers("callers later within the backoff period", 20)
	checkSilent(t, "callers within the backoff period", m)

	clock.Advance(downPeriod)
	m = traffic.mark()
	callers("callers of the next backoff period", 20)
	checkProbe(t, "callers of the next backoff period", m, opts)
	if n := ref.n.Load(); n != 0 {
		t.Fatalf("%d Refresher calls without the fleet's lease; want none", n)
	}

	// Redis is back, empty: within one backoff period the Source refreshes
	// under the lease and commits.
	srv.Restart()
	clock.Advance(downPeriod)
	tok, err := src.Token(ctx)
	if err != nil || ref.n.Load() != 1 {
		t.Fatalf("Token once Redis is back = %v, %v after %d Refresher calls; want one refresh", tok, err, ref.n.Load())
	}
	checkInRecord(t, ctx, srv, "refresh once Redis is back", tok)
}
