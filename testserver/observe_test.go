package testserver_test

import (
	"context"
	"slices"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
)

// The rejection observer sees every rejected access and refresh token, with
// the reason the client was told, a reuse flagged with its family, and the
// RPC's incoming metadata; accepted tokens are not reported.
func TestRejectionObserver(t *testing.T) {
	type seen struct {
		r    testserver.Rejection
		from string // the "x-caller" metadata of the RPC
	}
	var (
		mu  sync.Mutex
		got []seen
	)
	srv := testserver.New(testserver.WithRejectionObserver(func(ctx context.Context, r testserver.Rejection) {
		from := ""
		if v := metadata.ValueFromIncomingContext(ctx, "x-caller"); len(v) == 1 {
			from = v[0]
		}
		mu.Lock()
		got = append(got, seen{r, from})
		mu.Unlock()
	}))
	_, c := start(t, srv)
	ctx := metadata.AppendToOutgoingContext(t.Context(), "x-caller", "a")

	pair := login(t, c, testserver.DefaultUser, testserver.DefaultPassword)
	if err := echo(ctx, c, pair.GetAccessToken()); err != nil {
		t.Fatalf("Echo with a valid token: %v", err)
	}
	srv.ForceExpire()
	if err := echo(ctx, c, pair.GetAccessToken()); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Echo with a force-expired token: %v, want Unauthenticated", err)
	}
	if _, err := refresh(ctx, c, pair.GetRefreshToken()); err != nil {
		t.Fatalf("first Refresh: %v", err)
	}
	if _, err := refresh(ctx, c, pair.GetRefreshToken()); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Refresh with a used refresh token: %v, want Unauthenticated", err)
	}

	mu.Lock()
	defer mu.Unlock()
	want := []seen{
		{testserver.Rejection{Kind: "access token", Reason: "token expired"}, "a"},
		{testserver.Rejection{Kind: "refresh token", Reason: "refresh token reuse detected; token family revoked", Reuse: true}, "a"},
	}
	if len(got) == 2 && got[1].r.Family == 0 {
		t.Errorf("the reuse was reported without its family")
	}
	if len(got) == 2 {
		got[1].r.Family = 0
	}
	if !slices.Equal(got, want) {
		t.Errorf("observed %+v, want %+v", got, want)
	}
}
