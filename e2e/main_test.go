package e2e_test

import (
	"flag"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/redistest"
)

var soakDuration = flag.Duration("soak.duration", 20*time.Second,
	"how long TestSoak sends traffic (it also needs a few seconds to set up and check)")

func TestMain(m *testing.M) {
	if os.Getenv(envWorker) != "" {
		// A worker process of a fleet test (fleet_test.go), not a test run.
		os.Exit(runFleetWorker())
	}
	// The dial failures of a redis-server being started or restarted.
	redistest.QuietClientLogs()
	goleak.VerifyTestMain(m)
}
