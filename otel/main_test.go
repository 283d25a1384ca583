package tokenrefreshotel_test

import (
	"testing"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/testutil"
)

func TestMain(m *testing.M) {
	testutil.Main(m)
}
