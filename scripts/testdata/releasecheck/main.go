// Command releasecheck is the consumer program of `make release-check`
// (scripts/release-check.sh). The check builds it in a module of its own,
// outside the repository, against the core, redisstore and otel modules
// fetched at the release's version, as a user would. It lives under testdata
// so that no module of the repository compiles it.
//
// It exits non-zero unless real RPCs succeeded on a token that two members of
// a fleet coordinated through Redis: one logs in, the other adopts that token
// from Redis; after the server expired every access token, one refreshes
// (rotating the refresh token) and the other adopts the result instead of
// presenting the refresh token already spent, which the server would answer
// by revoking the family.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/redis/go-redis/v9"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	tokenrefreshotel "github.com/tokenrefresh/grpc-tokenrefresh/otel"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource/redisstore"
)

func main() {
	socket := flag.String("redis", "", "the unix socket of a running redis-server (required)")
	flag.Parse()
	if *socket == "" {
		fmt.Fprintln(os.Stderr, "releasecheck: -redis is required")
		os.Exit(2)
	}
	if err := run(*socket); err != nil {
		fmt.Fprintln(os.Stderr, "releasecheck: FAIL:", err)
		os.Exit(1)
	}
}

// member is one member of the fleet: its own Redis client (as on another
// host), Store, connection and Source.
type member struct {
	name  string
	rdb   *redis.Client
	store *redisstore.Store
	conn  *grpc.ClientConn
	src   *tokensource.Source
}

func newMember(name string, ep *testserver.Endpoint, socket string, obs *tokenrefreshotel.Observer) (*member, error) {
	m := &member{name: name}
	m.rdb = redis.NewClient(&redis.Options{Network: "unix", Addr: socket, ContextTimeoutEnabled: true})
	m.store = redisstore.New(m.rdb, "release-check:token")
	srcOpts := []tokensource.Option{tokensource.WithStore(m.store)}
	dialOpts := []grpc.DialOption{grpc.WithTransportCredentials(ep.ClientCredentials())}
	if obs != nil {
		srcOpts = append(srcOpts, obs.SourceOptions()...)
		dialOpts = append(dialOpts, interceptor.WithInterceptorOptions(obs.InterceptorOption()))
	}
	conn, src, err := interceptor.NewClient(ep.Target(), func(cc grpc.ClientConnInterface) *tokensource.Source {
		return tokensource.New(testserver.NewRefresher(cc, testserver.DefaultUser, testserver.DefaultPassword), srcOpts...)
	}, dialOpts...)
	if err != nil {
		_ = m.rdb.Close()
		return nil, err
	}
	m.conn, m.src = conn, src
	return m, nil
}

func (m *member) close() {
	m.src.Close()
	_ = m.conn.Close()
	_ = m.rdb.Close()
}

// echo makes one real RPC through the member's connection.
func (m *member) echo(ctx context.Context) error {
	resp, err := echov1.NewEchoServiceClient(m.conn).Echo(ctx, &echov1.EchoRequest{Message: "hello"})
	if err != nil {
		return fmt.Errorf("%s: Echo: %w", m.name, err)
	}
	if resp.GetUser() != testserver.DefaultUser {
		return fmt.Errorf("%s: Echo answered for user %q, want %q", m.name, resp.GetUser(), testserver.DefaultUser)
	}
	return nil
}

func run(socket string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := waitRedis(ctx, socket); err != nil {
		return err
	}

	srv := testserver.New()
	ep, err := srv.Start(ctx, testserver.TLS())
	if err != nil {
		return err
	}
	defer ep.Stop()

	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() { _ = mp.Shutdown(context.Background()) }()
	obs, err := tokenrefreshotel.NewObserver(tokenrefreshotel.WithMeterProvider(mp))
	if err != nil {
		return err
	}

	a, err := newMember("member A", ep, socket, obs)
	if err != nil {
		return err
	}
	defer a.close()
	b, err := newMember("member B", ep, socket, nil)
	if err != nil {
		return err
	}
	defer b.close()

	// A logs in under the fleet's lease and commits the token to Redis; B
	// finds it there and logs in no more.
	if err := a.echo(ctx); err != nil {
		return err
	}
	if err := b.echo(ctx); err != nil {
		return err
	}
	if c := srv.Counters(); c.Logins != 1 {
		return fmt.Errorf("%d logins for two members, want 1: B did not take A's token from Redis", c.Logins)
	}

	// Every access token expires. B's call is rejected: B refreshes under
	// the lease with the refresh token in Redis, commits the new pair and
	// retries. A's call is rejected next: A must adopt B's token, not
	// present the refresh token B has spent.
	srv.ForceExpire()
	if err := b.echo(ctx); err != nil {
		return err
	}
	if err := a.echo(ctx); err != nil {
		return err
	}
	c := srv.Counters()
	if c.Logins != 1 || c.RefreshesOK != 1 || c.RefreshesFailed != 0 {
		return fmt.Errorf("server saw %d logins, %d refreshes, %d failed refreshes; want 1, 1, 0", c.Logins, c.RefreshesOK, c.RefreshesFailed)
	}
	if sa, sb := a.src.Stats(), b.src.Stats(); sb.Refreshes != 1 || sa.Adopted == 0 {
		return fmt.Errorf("A: %+v; B: %+v; want B to have refreshed once and A to have adopted B's token", sa, sb)
	}

	// Both use the token in Redis, and it is the refreshed one.
	stored, err := a.store.Load(ctx)
	if err != nil || stored == nil {
		return fmt.Errorf("loading the token from Redis: %v (token present: %t)", err, stored != nil)
	}
	for _, m := range []*member{a, b} {
		tok, err := m.src.Token(ctx)
		if err != nil {
			return fmt.Errorf("%s: Token: %w", m.name, err)
		}
		if tok.AccessToken != stored.AccessToken {
			return fmt.Errorf("%s uses another token than the one in Redis", m.name)
		}
	}

	// The OpenTelemetry adapter saw A's refreshes (its login and the
	// adoption). Their events reach it after the callers got the token:
	// Close waits for them.
	_ = a.src.Close()
	n, err := refreshesRecorded(ctx, reader)
	if err != nil {
		return err
	}
	if n < 2 {
		return fmt.Errorf("tokenrefresh.refreshes recorded %d refreshes for A, want at least 2", n)
	}

	fmt.Printf("releasecheck: ok: %d RPCs; server: %d login, %d refresh; A adopted %d token(s) from Redis; otel recorded %d refreshes\n",
		sumRPCs(c), c.Logins, c.RefreshesOK, a.src.Stats().Adopted, n)
	return nil
}

// waitRedis waits until the redis-server the script has just started
// answers PING.
func waitRedis(ctx context.Context, socket string) error {
	c := redis.NewClient(&redis.Options{Network: "unix", Addr: socket, MaxRetries: -1, ContextTimeoutEnabled: true})
	defer c.Close()
	for {
		err := c.Ping(ctx).Err()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("redis-server on %s: %w", socket, errors.Join(ctx.Err(), err))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func refreshesRecorded(ctx context.Context, reader *sdkmetric.ManualReader) (int64, error) {
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		return 0, err
	}
	var n int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if sum, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == "tokenrefresh.refreshes" {
				for _, dp := range sum.DataPoints {
					n += dp.Value
				}
			}
		}
	}
	return n, nil
}

func sumRPCs(c testserver.Counters) int64 {
	var n int64
	for _, v := range c.RPCs {
		n += v
	}
	return n
}
