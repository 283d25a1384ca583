package bench_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if a benchmark leaves goroutines behind (a
// connection, a server or a refresh that was not shut down).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
