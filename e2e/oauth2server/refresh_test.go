package oauth2server_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/zitadel/oidc/v3/pkg/oidc"
	"golang.org/x/oauth2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

const workers = 64

// minGrantGap is the least time between two grants for one client when
// each token is replaced once: a token with expires_in 4 s enters its
// early-refresh window 2.6 s after it arrives. A second grant for the same
// expiry would follow the first within milliseconds.
const minGrantGap = 2 * time.Second

// grantsReached returns a channel that is closed once the server has made n
// grants of kind grant for clientID.
func grantsReached(s *storage, grant oidc.GrantType, clientID string, n int) <-chan struct{} {
	reached := make(chan struct{})
	seen := 0
	s.setOnIssue(func(is issuance) {
		if is.grant == grant && is.clientID == clientID {
			if seen++; seen == n {
				close(reached)
			}
		}
	})
	return reached
}

// loadUntil runs runLoad until reached is closed (or the hang guard).
func loadUntil(t *testing.T, ctx context.Context, echo echov1.EchoServiceClient, reached <-chan struct{}, want string) *loadResult {
	t.Helper()
	halt := make(chan struct{})
	done := make(chan *loadResult, 1)
	go func() { done <- runLoad(ctx, echo, workers, 0, halt, want) }()
	timedOut := false
	select {
	case <-reached:
	case <-time.After(hangGuard):
		timedOut = true
	}
	close(halt)
	res := <-done
	if timedOut {
		t.Fatalf("the expected grants did not happen within %v; %v", hangGuard, res)
	}
	return res
}

// checkGaps fails the test if two consecutive grants came closer than
// minGrantGap, and returns the smallest gap.
func checkGaps(t *testing.T, iss []issuance) time.Duration {
	t.Helper()
	smallest := time.Duration(1<<63 - 1)
	for i := 1; i < len(iss); i++ {
		gap := iss[i].at.Sub(iss[i-1].at)
		smallest = min(smallest, gap)
		if gap < minGrantGap {
			t.Errorf("grants %d and %d only %v apart: one token was replaced twice", i-1, i, gap)
		}
	}
	return smallest
}

// The refresh-token grant through the library against a real authorization
// server with rotation and reuse detection: 64 goroutines call a resource
// server that introspects every token, across four refreshes (the login's
// token and three refreshed ones expire under them). No call fails, every
// expiry costs exactly one grant, and the server never sees a refresh token
// twice.
func TestRefreshTokenGrantUnderLoad(t *testing.T) {
	a := startAuthServer(t)
	r := startResourceServer(t, a)
	ctx := a.httpContext(context.Background())
	login := a.loginUser(t, ctx)
	fam := a.store.familyOf(login.RefreshToken)

	events := newEventLog()
	src := tokensource.New(tokensource.OAuth2Refresher(a.appConfig()),
		tokensource.WithInitialToken(login), tokensource.WithObserver(events.observe))
	defer src.Close()
	echo := dial(t, r.addr, a.clientTLS(), src)

	const refreshes = 4
	res := loadUntil(t, ctx, echo, grantsReached(a.store, oidc.GrantTypeRefreshToken, appClient, refreshes), user)
	_ = src.Close()

	c := a.store.counts()
	grants := a.store.issuances(oidc.GrantTypeRefreshToken, appClient)
	succeeded, forced := events.count(tokensource.RefreshSucceeded)
	started, _ := events.count(tokensource.RefreshStarted)
	login0 := a.store.issuances(oidc.GrantTypeCode, appClient)
	gap := checkGaps(t, append(login0, grants...))
	t.Logf("refresh-token grant | %v; %d refresh grants for %d expiries (%d forced), smallest gap %v; "+
		"resource server: %d accepted, %d rejected; %d reuse detections, %d refused grants",
		res, len(grants), refreshes, forced, gap.Round(time.Millisecond), r.accepted.Load(), r.rejected.Load(), c.reuseDetected, c.refused)

	if res.failed.Load() != 0 {
		t.Errorf("%d of %d calls failed: %v", res.failed.Load(), res.calls.Load(), res)
	}
	if len(grants) < refreshes || len(grants) != succeeded || started != succeeded {
		t.Errorf("server made %d refresh grants, the Source started %d and completed %d refreshes; want them equal (≥ %d)",
			len(grants), started, succeeded, refreshes)
	}
	for _, g := range grants {
		if g.family != fam {
			t.Errorf("a grant of another token family: the login's family is %q, got %q", fam, g.family)
		}
	}
	if c.reuseDetected != 0 || c.refused != 0 {
		t.Errorf("server detected %d reuses and refused %d grants, want 0", c.reuseDetected, c.refused)
	}
	if _, revoked := a.store.head(fam); revoked {
		t.Error("the token family was revoked")
	}
}

// A positive control for the reuse detection the other tests rely on: a
// refresh token presented a second time is refused, its whole family is
// revoked (the rotated refresh token and its access token stop working),
// and the library reports that as ErrReauthRequired.
func TestAuthServerRevokesFamilyOnReuse(t *testing.T) {
	a := startAuthServer(t)
	r := startResourceServer(t, a)
	ctx := a.httpContext(context.Background())
	login := a.loginUser(t, ctx)
	cfg := a.appConfig()
	refresh := func(rt string) (*oauth2.Token, error) {
		return cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: rt, Expiry: time.Unix(1, 0)}).Token()
	}

	rotated, err := refresh(login.RefreshToken)
	if err != nil {
		t.Fatal(err)
	}
	if rotated.RefreshToken == "" || rotated.RefreshToken == login.RefreshToken {
		t.Fatal("the server did not rotate the refresh token")
	}
	// The rotated token pair works.
	src := tokensource.New(tokensource.OAuth2Refresher(cfg), tokensource.WithInitialToken(&tokensource.Token{
		AccessToken: rotated.AccessToken, RefreshToken: rotated.RefreshToken, Expiry: rotated.Expiry}))
	defer src.Close()
	echo := dial(t, r.addr, a.clientTLS(), src)
	if _, err := echo.Echo(ctx, &echov1.EchoRequest{Message: "before reuse"}); err != nil {
		t.Fatal(err)
	}

	// Reuse of the login's refresh token.
	var re *oauth2.RetrieveError
	if _, err := refresh(login.RefreshToken); !errors.As(err, &re) || re.ErrorCode != "invalid_grant" {
		t.Fatalf("reuse of a consumed refresh token = %v, want invalid_grant", err)
	}
	if c := a.store.counts(); c.reuseDetected != 1 {
		t.Errorf("%d reuse detections, want 1", c.reuseDetected)
	}
	// The whole family is gone: the rotated access token ...
	if _, err := echo.Echo(ctx, &echov1.EchoRequest{Message: "after reuse"}); status.Code(err) != codes.Unauthenticated ||
		!errors.Is(err, tokensource.ErrReauthRequired) {
		t.Errorf("call with the revoked family's token = %v, want Unauthenticated matching ErrReauthRequired", err)
	}
	// ... and the rotated refresh token.
	if _, err := refresh(rotated.RefreshToken); !errors.As(err, &re) || re.ErrorCode != "invalid_grant" {
		t.Errorf("rotated refresh token after reuse = %v, want invalid_grant", err)
	}
	// A token that is not the server's is refused by the check as well.
	bogus := tokensource.New(tokensource.RefresherFunc(func(context.Context, *tokensource.Token) (*tokensource.Token, error) {
		return &tokensource.Token{AccessToken: "not-a-token", Expiry: time.Now().Add(time.Hour)}, nil
	}))
	defer bogus.Close()
	if _, err := dial(t, r.addr, a.clientTLS(), bogus).Echo(ctx, &echov1.EchoRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("call with a bogus token = %v, want Unauthenticated", err)
	}
}
