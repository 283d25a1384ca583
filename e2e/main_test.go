package e2e_test

import (
	"flag"
	"testing"
	"time"

	"go.uber.org/goleak"
)

var soakDuration = flag.Duration("soak.duration", 20*time.Second,
	"how long TestSoak sends traffic (it also needs a few seconds to set up and check)")

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
