package oauth2server_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/zitadel/oidc/v3/pkg/oidc"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// sidecarToken returns a function that obtains a new access token for
// client id from the authorization server, as a sidecar (Vault agent, a
// token helper) would before writing it out.
func sidecarToken(a *authServer, id string) func() (string, error) {
	return func() (string, error) {
		ot, err := a.serviceConfig(id).Token(a.httpContext(context.Background()))
		if err != nil {
			return "", err
		}
		return ot.AccessToken, nil
	}
}

// The bearer token comes from a file that a sidecar rewrites at 80 % of
// each token's life, as kubelet does (the ..data swap) and as a Vault
// agent does (a temporary file renamed over the sink): 200 callers through
// the interceptors across three rotations, with the resource server
// checking every token at the real authorization server, fail no call.
func TestFileTokenRotationUnderLoad(t *testing.T) {
	for _, how := range []string{"kubelet", "vault"} {
		t.Run(how, func(t *testing.T) {
			a := startAuthServer(t)
			r := startCachingResourceServer(t, a, 200*time.Millisecond)
			var w tokenWriter = newKubeletVolume(t)
			if how == "vault" {
				w = vaultSink{file: filepath.Join(t.TempDir(), "token")}
			}
			stopWriter := rotateAt80(t, w, accessTTL, sidecarToken(a, serviceClient))

			events := newEventLog()
			src := tokensource.New(tokensource.FromFile(w.path()), tokensource.WithObserver(events.observe))
			defer src.Close()
			echo := dial(t, r.addr, a.clientTLS(), src)
			// The first token, then one per rotation.
			res := loadWhile(t, echo, grantsReached(a.store, oidc.GrantTypeClientCredentials, serviceClient, credsExpiries+1), serviceClient)
			// Until the Source has read the last one written.
			_ = src.Close()
			rotations := stopWriter()
			succeeded, forced := events.count(tokensource.RefreshSucceeded)
			failed, _ := events.count(tokensource.RefreshFailed)
			t.Logf("%s rotation | %v; %d tokens written, %d file reads (%d forced), %d failed reads; resource server: %d accepted, %d rejected",
				how, res, rotations, succeeded, forced, failed, r.accepted.Load(), r.rejected.Load())
			if res.failed.Load() != 0 {
				t.Errorf("%d of %d calls failed: %v", res.failed.Load(), res.calls.Load(), res)
			}
			if failed != 0 {
				t.Errorf("%d file reads failed during atomic rotations", failed)
			}
		})
	}
}

// The server revokes the token the Source holds after the sidecar has
// already written the next one: 64 callers (the resource server
// introspects every call here, with no cache that could hide the
// revocation); every call rejected with the old token is retried once with
// the new one, after one shared file read, and no call fails.
func TestFileTokenRevokedAfterSidecarWrote(t *testing.T) {
	a := startAuthServer(t)
	r := startResourceServer(t, a)
	ctx := a.httpContext(context.Background())
	vol := newKubeletVolume(t)
	next := sidecarToken(a, longClient)
	first, err := next()
	if err != nil {
		t.Fatal(err)
	}
	if err := vol.write(first); err != nil {
		t.Fatal(err)
	}
	events := newEventLog()
	src := tokensource.New(tokensource.FromFile(vol.path()), tokensource.WithObserver(events.observe))
	defer src.Close()
	echo := dial(t, r.addr, a.clientTLS(), src)
	if before := runLoad(ctx, echo, workers, 2, nil, longClient); before.failed.Load() != 0 {
		t.Fatalf("before the revocation: %v", before)
	}
	second, err := next()
	if err != nil {
		t.Fatal(err)
	}
	if err := vol.write(second); err != nil {
		t.Fatal(err)
	}
	if err := a.revokeAccessToken(ctx, longClient, serviceSecret, first); err != nil {
		t.Fatal(err)
	}
	rejectedBefore := r.rejected.Load()
	res := runLoad(ctx, echo, workers, 2, nil, longClient)
	rejected := r.rejected.Load() - rejectedBefore
	reads, forced := events.count(tokensource.RefreshSucceeded)
	t.Logf("revoked after the sidecar wrote | %v; resource server rejected %d calls with the revoked token; %d file reads, %d forced",
		res, rejected, reads, forced)
	if res.failed.Load() != 0 {
		t.Errorf("%d of %d calls failed: %v", res.failed.Load(), res.calls.Load(), res)
	}
	if forced != 1 || reads != 2 {
		t.Errorf("%d file reads (%d forced), want 2: the first, and one shared after the rejection", reads, forced)
	}
	if rejected < 1 || rejected > workers {
		t.Errorf("%d rejections: want at least one, and at most one per caller (each rejected call is retried once)", rejected)
	}
	if got, _ := src.Token(ctx); got.AccessToken != second {
		t.Error("the Source did not move to the sidecar's new token")
	}
}
