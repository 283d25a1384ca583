package bench_test

import (
	"testing"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/testutil"
)

// TestMain fails the run if a benchmark leaves goroutines behind (a
// connection, a server or a refresh that was not shut down).
func TestMain(m *testing.M) {
	testutil.Main(m)
}
