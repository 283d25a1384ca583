package e2e_test

import (
	"flag"
	"testing"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/redistest"
	"github.com/tokenrefresh/grpc-tokenrefresh/internal/testutil"
)

var soakDuration = flag.Duration("soak.duration", 20*time.Second,
	"how long TestSoak sends traffic (it also needs a few seconds to set up and check)")

func TestMain(m *testing.M) {
	// The dial failures of a redis-server being started or restarted.
	redistest.QuietClientLogs()
	// A worker process of a fleet test (fleet_test.go) runs its role
	// instead of the tests.
	testutil.Main(m, testutil.Role(envWorker, func(string) int { return runFleetWorker() }))
}
