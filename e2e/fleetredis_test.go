package e2e_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	"github.com/tokenrefresh/grpc-tokenrefresh/internal/redistest"
	"github.com/tokenrefresh/grpc-tokenrefresh/internal/testutil"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource/redisstore"
)

// Redis killed (SIGKILL) and restarted in the middle of a fleet run, with
// the append-only file synced on every write as a credential store should
// be: the fleet rides through it. No call fails and no refresh token is
// reused. (A Redis that loses the record, with no persistence, loses the
// newest refresh token like a deleted token file: see the README.)
func TestFleetRedisRestarted(t *testing.T) {
	var rs *redistest.Server
	cfg := fleetConfig{
		workers: 4, callers: 8, duration: 3 * fleetTokenTTL, tokenTTL: fleetTokenTTL,
		grant: "refresh", leaseTTL: 2 * time.Second,
		store: func(t testing.TB) (string, tokensource.Store) {
			rs = redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always")
			return "redis:" + rs.Socket, redisstore.New(redisClient(t, rs), fleetKey)
		},
	}
	f := startFleet(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// After the first fleet refresh has been adopted, restart Redis.
	if _, err := f.firstEvent(ctx, tokensource.TokenAdopted.String(), nil); err != nil {
		t.Fatal(err)
	}
	rs.Restart()
	calls, failed, _ := f.wait()
	c := f.srv.Counters()
	t.Logf("%d calls, %d failed; server: %d refreshes, %d failed refreshes", calls, failed, c.RefreshesOK, c.RefreshesFailed)
	if failed != 0 {
		t.Errorf("%d of %d calls failed, want 0", failed, calls)
	}
	if c.RefreshesFailed != 0 || c.Logins != 0 {
		t.Errorf("server: %d failed refreshes, %d logins; want 0, 0", c.RefreshesFailed, c.Logins)
	}
	if c.RefreshesOK < 2 {
		t.Errorf("%d refreshes, want the fleet to refresh after the restart too", c.RefreshesOK)
	}
}

// With Redis down, a member with a valid token goes on; once its token has
// expired, refreshing without the lease is refused with Unavailable matching
// ErrCoordinatorUnavailable, and the Refresher is not called; with
// WithUncoordinatedRefresh it refreshes locally. When Redis is back, the
// default member recovers.
func TestFleetRedisDown(t *testing.T) {
	for _, local := range []bool{false, true} {
		name := "lease-required"
		if local {
			name = "WithUncoordinatedRefresh"
		}
		t.Run(name, func(t *testing.T) {
			srv := testserver.New(testserver.WithAccessTokenTTL(tokenLife))
			ep, err := srv.Start(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			defer ep.Stop()
			rs := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always")
			rc := redisClient(t, rs)
			st := redisstore.New(rc, fleetKey)
			login, err := srv.IssueToken(testserver.DefaultUser)
			if err != nil {
				t.Fatal(err)
			}
			// The Source's clock decides local expiry: moved to 5 s before
			// the login token's expiry, it is past the leeway, while a token
			// the server issues then still has 5 s to live by that clock.
			clock := testutil.NewClock(time.Now())
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := st.Save(ctx, login); err != nil {
				t.Fatal(err)
			}
			authConn, err := grpc.NewClient(ep.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer authConn.Close()
			counted := &countingRefresher{r: testserver.NewRefresher(authConn, testserver.DefaultUser, testserver.DefaultPassword)}
			opts := []tokensource.Option{tokensource.WithStore(st), tokensource.WithClock(clock.Now),
				tokensource.WithBackoff(time.Millisecond, time.Millisecond)}
			if local {
				opts = append(opts, tokensource.WithUncoordinatedRefresh())
			}
			src := tokensource.New(counted, opts...)
			defer src.Close()
			conn, err := grpc.NewClient(ep.Addr(), append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
				interceptor.DialOptions(src, interceptor.AllowInsecure())...)...)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			echo := echov1.NewEchoServiceClient(conn)
			call := func() error {
				_, err := echo.Echo(ctx, &echov1.EchoRequest{Message: "x"})
				return err
			}
			if err := call(); err != nil {
				t.Fatal(err)
			}

			rs.Stop()
			if err := call(); err != nil {
				t.Fatalf("call with a valid token while Redis is down = %v, want success", err)
			}
			clock.Advance(tokenLife - 5*time.Second) // the token has expired
			err = call()
			if !local {
				if status.Code(err) != codes.Unavailable || !errors.Is(err, tokensource.ErrCoordinatorUnavailable) {
					t.Fatalf("call after expiry with Redis down = %v, want Unavailable matching ErrCoordinatorUnavailable", err)
				}
				if n := counted.calls(); n != 0 {
					t.Fatalf("%d Refresher calls without the lease, want 0", n)
				}
				rs.Restart()
				// go-redis redials a pool that failed in the background;
				// wait for that before asking the Source.
				for rc.Ping(ctx).Err() != nil {
					select {
					case <-ctx.Done():
						t.Fatal("the redis client did not reconnect")
					case <-time.After(50 * time.Millisecond):
					}
				}
				clock.Advance(time.Second) // past the backoff, by the Source's clock
				if err := call(); err != nil {
					t.Fatalf("call after Redis came back = %v", err)
				}
			} else if err != nil {
				t.Fatalf("call after expiry with Redis down and WithUncoordinatedRefresh = %v, want a local refresh", err)
			}
			if n := counted.calls(); n != 1 {
				t.Errorf("%d Refresher calls, want 1", n)
			}
			if c := srv.Counters(); c.RefreshesFailed != 0 {
				t.Errorf("%d failed refreshes at the server", c.RefreshesFailed)
			}
		})
	}
}

// tokenLife is the access-token lifetime of TestFleetRedisDown.
const tokenLife = 10 * time.Minute

type countingRefresher struct {
	r tokensource.Refresher
	n atomic.Int64
}

func (c *countingRefresher) Refresh(ctx context.Context, cur *tokensource.Token) (*tokensource.Token, error) {
	c.n.Add(1)
	return c.r.Refresh(ctx, cur)
}

func (c *countingRefresher) calls() int64 { return c.n.Load() }
