package interceptor_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/testing/testpb"
	"google.golang.org/grpc/codes"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// A Refresher that hands back the token the server has just rejected (a
// caching oauth2.ReuseTokenSource, typically) makes the call fail with
// Unauthenticated matching tokensource.ErrUnchangedToken, and the rejected
// token is not sent a second time.
func TestUnchangedTokenNotRetried(t *testing.T) {
	srv, creds := startServer(t, false)
	var calls atomic.Int64
	cached := &tokensource.Token{AccessToken: "cached-token"}
	r := tokensource.RefresherFunc(func(context.Context, *tokensource.Token) (*tokensource.Token, error) {
		calls.Add(1)
		c := *cached
		return &c, nil
	})
	srv.accept("cached-token")
	src := tokensource.New(r)
	t.Cleanup(func() { _ = src.Close() })
	client := dial(t, srv, creds, dialOpts(src)...)
	ctx := withID(testCtx(t), t.Name())
	if _, err := client.Ping(ctx, &testpb.PingRequest{Value: "v"}); err != nil {
		t.Fatal(err)
	}

	srv.accept("revoked-for-everyone") // the server revokes cached-token
	_, err := client.Ping(ctx, &testpb.PingRequest{Value: "v"})
	wantCode(t, err, codes.Unauthenticated)
	if !errors.Is(err, tokensource.ErrUnchangedToken) {
		t.Fatalf("err = %v, want it to match tokensource.ErrUnchangedToken", err)
	}
	if got := len(srv.callsFor(t.Name(), methodPing)); got != 2 {
		t.Errorf("server saw %d attempts, want 2: the rejected token must not be retried", got)
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("Refresher calls = %d, want 2 (initial + one forced)", n)
	}
}
