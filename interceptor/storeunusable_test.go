package interceptor_test

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/testing/testpb"
	"google.golang.org/grpc/codes"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// A FileStore whose directory does not exist is a configuration mistake,
// not an outage: the call fails with FailedPrecondition matching
// tokensource.ErrStoreUnusable, and nothing reaches the server.
func TestFileStoreMissingDirectoryFailedPrecondition(t *testing.T) {
	srv, creds := startServer(t, false)
	r := &rotatingRefresher{srv: srv}
	store := tokensource.NewFileStore(filepath.Join(t.TempDir(), "no-such-dir", "token.json"))
	src := tokensource.New(r, tokensource.WithStore(store))
	t.Cleanup(func() { _ = src.Close() })
	client := dial(t, srv, creds, dialOpts(src)...)

	_, err := client.Ping(withID(testCtx(t), t.Name()), &testpb.PingRequest{Value: "v"})
	wantCode(t, err, codes.FailedPrecondition)
	if !errors.Is(err, tokensource.ErrStoreUnusable) || errors.Is(err, tokensource.ErrCoordinatorUnavailable) {
		t.Errorf("err = %v, want it to match tokensource.ErrStoreUnusable only", err)
	}
	if n := len(srv.callsFor(t.Name(), methodPing)); n != 0 {
		t.Errorf("server saw %d calls, want 0", n)
	}
}
