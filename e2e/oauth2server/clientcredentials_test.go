package oauth2server_test

import (
	"context"
	"testing"
	"time"

	"github.com/zitadel/oidc/v3/pkg/oidc"
	"google.golang.org/grpc/codes"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// The client-credentials grant through ClientCredentials under load,
// across four expiries: no call fails and every expiry costs one grant.
func TestClientCredentialsUnderLoad(t *testing.T) {
	a := startAuthServer(t)
	r := startResourceServer(t, a)
	ctx := a.httpContext(context.Background())

	events := newEventLog()
	src := tokensource.New(tokensource.ClientCredentials(a.serviceConfig(serviceClient)),
		tokensource.WithObserver(events.observe))
	defer src.Close()
	echo := dial(t, r.addr, a.clientTLS(), src)

	const expiries = 4 // the first grant, then one per expiry
	res := loadUntil(t, ctx, echo, grantsReached(a.store, oidc.GrantTypeClientCredentials, serviceClient, expiries+1), serviceClient)
	_ = src.Close()

	grants := a.store.issuances(oidc.GrantTypeClientCredentials, serviceClient)
	succeeded, forced := events.count(tokensource.RefreshSucceeded)
	gap := checkGaps(t, grants)
	t.Logf("client credentials | %v; %d grants for the first token and %d expiries (%d forced), smallest gap %v; resource server: %d accepted, %d rejected",
		res, len(grants), expiries, forced, gap.Round(time.Millisecond), r.accepted.Load(), r.rejected.Load())
	if res.failed.Load() != 0 {
		t.Errorf("%d of %d calls failed: %v", res.failed.Load(), res.calls.Load(), res)
	}
	if len(grants) < expiries+1 || len(grants) != succeeded {
		t.Errorf("server made %d grants, the Source %d refreshes; want them equal (≥ %d)", len(grants), succeeded, expiries+1)
	}
}

// revocationRun runs 64 goroutines × 3 calls with a valid token, revokes
// that token at the server (RFC 7009) while it has an hour left, and runs
// 64 × 3 calls again. It returns the second run's result, the grants and
// the resource server's rejections during it.
func revocationRun(t *testing.T, a *authServer, r *resourceServer, src *tokensource.Source) (res *loadResult, grants int, rejected int64) {
	t.Helper()
	ctx := a.httpContext(context.Background())
	echo := dial(t, r.addr, a.clientTLS(), src)
	if before := runLoad(ctx, echo, workers, 3, nil, longClient); before.failed.Load() != 0 {
		t.Fatalf("before the revocation: %v", before)
	}
	tok, err := src.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.revokeAccessToken(ctx, longClient, serviceSecret, tok.AccessToken); err != nil {
		t.Fatal(err)
	}
	grantsBefore := len(a.store.issuances(oidc.GrantTypeClientCredentials, longClient))
	rejectedBefore := r.rejected.Load()
	res = runLoad(ctx, echo, workers, 3, nil, longClient)
	return res, len(a.store.issuances(oidc.GrantTypeClientCredentials, longClient)) - grantsBefore, r.rejected.Load() - rejectedBefore
}

// After the server revokes a still-valid token, ClientCredentials recovers
// with exactly one forced refresh shared by all 64 callers: no call fails.
func TestClientCredentialsRecoversFromRevocation(t *testing.T) {
	a := startAuthServer(t)
	r := startResourceServer(t, a)
	events := newEventLog()
	src := tokensource.New(tokensource.ClientCredentials(a.serviceConfig(longClient)), tokensource.WithObserver(events.observe))
	defer src.Close()

	res, grants, rejected := revocationRun(t, a, r, src)
	_, forced := events.count(tokensource.RefreshSucceeded)
	t.Logf("client credentials, revoked token | after revocation: %v; %d grants, %d forced refreshes, %d rejections at the resource server",
		res, grants, forced, rejected)
	if res.failed.Load() != 0 {
		t.Errorf("%d calls failed after the revocation: %v", res.failed.Load(), res)
	}
	if grants != 1 || forced != 1 {
		t.Errorf("%d grants and %d forced refreshes after the revocation, want exactly 1 each", grants, forced)
	}
	if rejected < 1 || rejected > workers {
		t.Errorf("%d rejections at the resource server, want between 1 and %d (at most one per caller)", rejected, workers)
	}
}

// The same revocation with FromOAuth2(cfg.TokenSource(ctx)), an
// oauth2.ReuseTokenSource: the forced refresh hands back the revoked token, so
// the calls fail with Unauthenticated matching ErrUnchangedToken, the server
// makes no grant, and no call sends the revoked token twice.
func TestFromOAuth2ReuseTokenSourceReportsUnchangedToken(t *testing.T) {
	a := startAuthServer(t)
	r := startResourceServer(t, a)
	events := newEventLog()
	ts := a.serviceConfig(longClient).TokenSource(a.httpContext(context.Background()))
	src := tokensource.New(tokensource.FromOAuth2(ts), tokensource.WithObserver(events.observe))
	defer src.Close()

	res, grants, rejected := revocationRun(t, a, r, src)
	unchanged, _ := events.count(tokensource.RefreshUnchanged)
	t.Logf("FromOAuth2(ReuseTokenSource), revoked token | after revocation: %v; %d matching ErrUnchangedToken; %d grants, %d unchanged-token events, %d rejections at the resource server",
		res, res.unchanged.Load(), grants, unchanged, rejected)
	calls := res.calls.Load()
	if res.failed.Load() != calls {
		t.Errorf("%d of %d calls failed, want all: the cached token stays revoked", res.failed.Load(), calls)
	}
	res.mu.Lock()
	if n := res.codes[codes.Unauthenticated]; int64(n) != calls {
		t.Errorf("%d of %d failed calls are Unauthenticated (%v), want all", n, calls, res.codes)
	}
	res.mu.Unlock()
	if res.unchanged.Load() == 0 || unchanged == 0 {
		t.Errorf("%d failed calls match ErrUnchangedToken, %d RefreshUnchanged events; want ≥ 1 each", res.unchanged.Load(), unchanged)
	}
	if grants != 0 {
		t.Errorf("%d grants after the revocation, want 0 (the ReuseTokenSource answers from its cache)", grants)
	}
	if rejected > calls {
		t.Errorf("%d rejections at the resource server for %d calls: a call was retried with the rejected token", rejected, calls)
	}
}
