package e2e_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/redistest"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource/redisstore"
)

// fleetKey is the Redis key of the fleet tests' shared record.
const fleetKey = "tokenrefresh-e2e:fleet"

// openFleetStore opens the store a worker process was given: "file:<path>",
// "redis:<unix socket>", or "memory" (a MemoryStore of the worker's own: no
// coordination between workers).
func openFleetStore(spec string, leaseTTL time.Duration) (tokensource.Store, func(), error) {
	kind, arg, _ := strings.Cut(spec, ":")
	switch kind {
	case "file":
		var opts []tokensource.FileStoreOption
		if leaseTTL > 0 {
			opts = append(opts, tokensource.WithFileLeaseTTL(leaseTTL))
		}
		return tokensource.NewFileStore(arg, opts...), func() {}, nil
	case "memory":
		return tokensource.NewMemoryStore(), func() {}, nil
	case "redis":
		c := redis.NewClient(&redis.Options{Network: "unix", Addr: arg})
		var opts []redisstore.Option
		if leaseTTL > 0 {
			opts = append(opts, redisstore.WithLeaseTTL(leaseTTL))
		}
		return redisstore.New(c, fleetKey, opts...), func() { _ = c.Close() }, nil
	}
	return nil, nil, fmt.Errorf("unknown store spec %q", spec)
}

func redisFleetStore(t testing.TB) (string, tokensource.Store) {
	srv := redistest.Start(t)
	return "redis:" + srv.Socket, redisstore.New(redisClient(t, srv), fleetKey)
}

// redisClient returns a test's own client for rs, closed when the test
// ends: go-redis's defaults with the setting redisstore recommends,
// ContextTimeoutEnabled, and a single dial attempt, so that while a test has
// stopped the server a command fails in well under a second instead of
// after five dial attempts.
func redisClient(tb testing.TB, rs *redistest.Server) *redis.Client {
	c := redis.NewClient(&redis.Options{
		Network:               "unix",
		Addr:                  rs.Socket,
		Password:              rs.Password,
		DialerRetries:         1,
		ContextTimeoutEnabled: true,
	})
	tb.Cleanup(func() { _ = c.Close() })
	return c
}
