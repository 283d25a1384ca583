package e2e_test

import (
	"context"
	"flag"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/testutil"
)

var soakDuration = flag.Duration("soak.duration", 20*time.Second,
	"how long TestSoak sends traffic (it also needs a few seconds to set up and check)")

func TestMain(m *testing.M) {
	// go-redis's own log lines: the dial failures of a redis-server being
	// started or restarted.
	redis.SetLogger(quietLogger{})
	// A worker process of a fleet test (fleet_test.go) or of the chaos
	// campaign (chaosworker_test.go) runs its role instead of the tests.
	testutil.Main(m, testutil.Role(envWorker, func(string) int { return runFleetWorker() }),
		testutil.Role(envChaosWorker, runChaosWorker))
}

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}
