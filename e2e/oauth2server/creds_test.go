package oauth2server_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"golang.org/x/oauth2/clientcredentials"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// callers is the number of concurrent callers of the credential tests.
const callers = 200

// credsExpiries is how many expiries each load test crosses: the first
// token request, then one per expiry.
const credsExpiries = 3

// loadWhile runs callers goroutines of calls through echo until reached is
// closed (or the hang guard).
func loadWhile(t *testing.T, echo echov1.EchoServiceClient, reached <-chan struct{}, want string) *loadResult {
	t.Helper()
	halt := make(chan struct{})
	done := make(chan *loadResult, 1)
	go func() { done <- runLoad(context.Background(), echo, callers, 0, halt, want) }()
	timedOut := false
	select {
	case <-reached:
	case <-time.After(hangGuard):
		timedOut = true
	}
	close(halt)
	res := <-done
	if timedOut {
		t.Fatalf("the expected token requests did not happen within %v; %v", hangGuard, res)
	}
	return res
}

// ecKey returns a new P-256 key.
func ecKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// ClientCredentials with private_key_jwt against zitadel's verification:
// 200 callers through the interceptors across three expiries, no call
// fails, one token request per expiry, no client secret on the wire (the
// configuration has one, to prove it is left out), every assertion's jti
// new, and the HTTP client given by WithHTTPClient alone (no context
// value).
func TestPrivateKeyJWTClientCredentialsUnderLoad(t *testing.T) {
	a, c := startCredsServer(t)
	key := ecKey(t)
	c.registerKeyClient(keyClient, keyID, &key.PublicKey, jose.ES256, oidc.GrantTypeClientCredentials)
	r := startCachingResourceServer(t, a, 200*time.Millisecond)

	events := newEventLog()
	cfg := &clientcredentials.Config{ClientID: keyClient, ClientSecret: "not-to-be-sent", TokenURL: c.tokenURL()}
	src := tokensource.New(tokensource.ClientCredentials(cfg,
		tokensource.WithPrivateKeyJWT(key, keyID), tokensource.WithHTTPClient(a.srv.Client())),
		tokensource.WithObserver(events.observe))
	defer src.Close()
	echo := dial(t, r.addr, a.clientTLS(), src)

	res := loadWhile(t, echo, grantsReached(a.store, oidc.GrantTypeClientCredentials, keyClient, credsExpiries+1), keyClient)
	_ = src.Close()

	grants := a.store.issuances(oidc.GrantTypeClientCredentials, keyClient)
	succeeded, _ := events.count(tokensource.RefreshSucceeded)
	snap := c.snapshot()
	gap := checkGaps(t, grants)
	t.Logf("private_key_jwt client credentials | %v; %d token requests for %d expiries, smallest gap %v; %d assertions, %d distinct jti, %d replays, %d requests with a secret; refusals %v",
		res, len(grants), credsExpiries, gap.Round(time.Millisecond), snap.assertions[keyClient], snap.jtis, snap.replays, snap.secrets[keyClient], snap.refused)
	if res.failed.Load() != 0 {
		t.Errorf("%d of %d calls failed: %v", res.failed.Load(), res.calls.Load(), res)
	}
	if len(grants) != succeeded || snap.assertions[keyClient] != len(grants) {
		t.Errorf("%d grants, %d refreshes, %d assertions: want them equal", len(grants), succeeded, snap.assertions[keyClient])
	}
	if len(snap.refused) != 0 {
		t.Errorf("the server refused token requests: %v (%s)", snap.refused, snap.lastCause)
	}
	if snap.secrets[keyClient] != 0 || snap.replays != 0 || snap.jtis != snap.assertions[keyClient] {
		t.Errorf("%d requests with a secret, %d replays, %d jti for %d assertions: want 0, 0 and one each",
			snap.secrets[keyClient], snap.replays, snap.jtis, snap.assertions[keyClient])
	}
}

// Workload identity federation: the projected service-account token that
// kubelet keeps rotating (at 80 % of its life, by the ..data swap) is the
// client assertion, read per request. 200 callers across three expiries
// of the access token: no call fails, one token request per expiry, no
// secret on the wire, and the assertions presented follow the rotation.
func TestFederatedAssertionUnderLoad(t *testing.T) {
	a, c := startCredsServer(t)
	a.store.addClient(&client{id: workloadClient, authMethod: oidc.AuthMethodPrivateKeyJWT,
		grants: []oidc.GrantType{oidc.GrantTypeClientCredentials}, accessTTL: accessTTL})
	r := startCachingResourceServer(t, a, 200*time.Millisecond)

	vol := newKubeletVolume(t)
	const projectedLife = 6 * time.Second // renewed at 80 %, twice or more during the test
	stopWriter := rotateAt80(t, vol, projectedLife, func() (string, error) {
		return c.cluster.projectedToken(t, c.tokenURL(), projectedLife), nil
	})

	events := newEventLog()
	src := tokensource.New(tokensource.ClientCredentials(&clientcredentials.Config{ClientID: workloadClient, TokenURL: c.tokenURL()},
		tokensource.WithClientAssertionFile(vol.path()), tokensource.WithHTTPClient(a.srv.Client())),
		tokensource.WithObserver(events.observe))
	defer src.Close()
	echo := dial(t, r.addr, a.clientTLS(), src)

	res := loadWhile(t, echo, grantsReached(a.store, oidc.GrantTypeClientCredentials, workloadClient, credsExpiries+1), workloadClient)
	_ = src.Close()
	rotations := stopWriter()

	grants := a.store.issuances(oidc.GrantTypeClientCredentials, workloadClient)
	succeeded, _ := events.count(tokensource.RefreshSucceeded)
	snap := c.snapshot()
	gap := checkGaps(t, grants)
	t.Logf("federated assertion | %v; %d token requests for %d expiries, smallest gap %v; %d projected tokens written, %d distinct ones presented; %d requests with a secret; refusals %v %s",
		res, len(grants), credsExpiries, gap.Round(time.Millisecond), rotations, snap.federated, snap.secrets[workloadClient], snap.refused, snap.lastCause)
	if res.failed.Load() != 0 {
		t.Errorf("%d of %d calls failed: %v", res.failed.Load(), res.calls.Load(), res)
	}
	if len(grants) != succeeded || snap.assertions[workloadClient] != len(grants) {
		t.Errorf("%d grants, %d refreshes, %d assertions: want them equal", len(grants), succeeded, snap.assertions[workloadClient])
	}
	if len(snap.refused) != 0 {
		t.Errorf("the server refused token requests: %v (%s)", snap.refused, snap.lastCause)
	}
	if snap.secrets[workloadClient] != 0 {
		t.Errorf("%d requests carried a secret", snap.secrets[workloadClient])
	}
	if snap.federated < 2 {
		t.Errorf("%d distinct projected tokens presented over %d rotations: the rotation was not followed", snap.federated, rotations)
	}
}

// Token exchange (RFC 8693) for two audiences from one subject: the
// projected token kubelet rotates, read by a Source over FromFile. Each
// audience has its own Source (client authentication by private_key_jwt);
// 100 callers per audience across three expiries: no call fails, one
// exchange per expiry and audience, no secret on the wire, distinct jti,
// and after each rotation the next exchange presents the new subject.
func TestTokenExchangeTwoAudiencesUnderLoad(t *testing.T) {
	a, c := startCredsServer(t)
	key := ecKey(t)
	c.registerKeyClient(exchangeClient, exchangeKeyID, &key.PublicKey, jose.ES256, oidc.GrantTypeTokenExchange)
	r := startCachingResourceServer(t, a, 200*time.Millisecond)

	vol := newKubeletVolume(t)
	const subjectLife = 6 * time.Second // renewed at 4.8 s, while the exchanged tokens live 5 s
	stopWriter := rotateAt80(t, vol, subjectLife, func() (string, error) {
		return c.cluster.projectedToken(t, "sts", subjectLife), nil
	})
	subject := tokensource.New(tokensource.FromFile(vol.path()))
	defer subject.Close()

	perAudience := map[string]*eventLog{}
	var sources []*tokensource.Source
	var echos []echov1.EchoServiceClient
	for _, aud := range []string{audienceOrders, audienceBilling} {
		perAudience[aud] = newEventLog()
		src := tokensource.New(tokensource.TokenExchange(tokensource.TokenExchangeConfig{
			TokenURL: c.tokenURL(), ClientID: exchangeClient, ClientSecret: "not-to-be-sent",
			Audience: []string{aud}, SubjectTokenType: tokensource.TokenTypeJWT,
		}, subject, tokensource.WithPrivateKeyJWT(key, exchangeKeyID), tokensource.WithHTTPClient(a.srv.Client())),
			tokensource.WithObserver(perAudience[aud].observe))
		defer src.Close()
		sources = append(sources, src)
		echos = append(echos, dial(t, r.addr, a.clientTLS(), src))
	}

	reached := grantsReached(a.store, oidc.GrantTypeTokenExchange, exchangeClient, 2*(credsExpiries+1))
	halt := make(chan struct{})
	results := make(chan *loadResult, len(echos))
	for _, echo := range echos {
		go func() { results <- runLoad(context.Background(), echo, callers/len(echos), 0, halt, serviceAccount) }()
	}
	select {
	case <-reached:
	case <-time.After(hangGuard):
		t.Error("the expected exchanges did not happen in time")
	}
	close(halt)
	// Every caller has returned before the Sources close: a call still in
	// flight at the halt would otherwise fail with ErrClosed.
	var loads []*loadResult
	for range echos {
		loads = append(loads, <-results)
	}
	for _, src := range sources {
		_ = src.Close()
	}
	rotations := stopWriter()

	grants := a.store.issuances(oidc.GrantTypeTokenExchange, exchangeClient)
	snap := c.snapshot()
	for _, res := range loads {
		t.Logf("token exchange | %v", res)
		if res.failed.Load() != 0 {
			t.Errorf("%d of %d calls failed: %v", res.failed.Load(), res.calls.Load(), res)
		}
	}
	byAudience := map[string][]issuance{}
	for _, g := range grants {
		byAudience[g.audience] = append(byAudience[g.audience], g)
	}
	for aud, iss := range byAudience {
		succeeded, _ := perAudience[aud].count(tokensource.RefreshSucceeded)
		gap := checkGaps(t, iss)
		t.Logf("audience %s: %d exchanges, %d refreshes, smallest gap %v", aud, len(iss), succeeded, gap.Round(time.Millisecond))
		if len(iss) != succeeded || len(iss) < credsExpiries {
			t.Errorf("audience %s: %d exchanges, %d refreshes: want them equal, one per expiry", aud, len(iss), succeeded)
		}
	}
	if len(byAudience) != 2 {
		t.Errorf("exchanges for %d audiences, want 2", len(byAudience))
	}
	distinct := map[string]bool{}
	for i, s := range snap.subjects {
		if i > 0 && s != snap.subjects[i-1] && distinct[s] {
			t.Errorf("exchange %d presented an older subject again after a newer one", i)
		}
		distinct[s] = true
	}
	t.Logf("%d subject tokens written; %d exchanges presented %d distinct subjects; %d assertions, %d jti, %d replays, %d requests with a secret; refusals %v",
		rotations, len(snap.subjects), len(distinct), snap.assertions[exchangeClient], snap.jtis, snap.replays, snap.secrets[exchangeClient], snap.refused)
	if len(snap.refused) != 0 {
		t.Errorf("the server refused token requests: %v (%s)", snap.refused, snap.lastCause)
	}
	if len(distinct) < 2 {
		t.Error("the exchanges never presented a rotated subject")
	}
	if snap.secrets[exchangeClient] != 0 || snap.replays != 0 || snap.jtis != snap.assertions[exchangeClient] {
		t.Errorf("%d requests with a secret, %d replays, %d jti for %d assertions", snap.secrets[exchangeClient], snap.replays, snap.jtis, snap.assertions[exchangeClient])
	}
}

// Bad credentials, end to end: a key the server does not know is
// invalid_client, so calls fail with Unauthenticated matching
// ErrReauthRequired after one token request; an assertion file that
// expired fails calls with Unavailable, naming the file, without a token
// request; an assertion file the server refuses fails them with
// Unavailable too (its writer renews it); the calls succeed once the file
// is renewed.
func TestAssertionBadInput(t *testing.T) {
	a, c := startCredsServer(t)
	registered, unknown := ecKey(t), ecKey(t)
	c.registerKeyClient(keyClient, keyID, &registered.PublicKey, jose.ES256, oidc.GrantTypeClientCredentials)
	a.store.addClient(&client{id: workloadClient, authMethod: oidc.AuthMethodPrivateKeyJWT,
		grants: []oidc.GrantType{oidc.GrantTypeClientCredentials}, accessTTL: accessTTL})
	r := startResourceServer(t, a)
	ctx := context.Background()

	src := tokensource.New(tokensource.ClientCredentials(&clientcredentials.Config{ClientID: keyClient, TokenURL: c.tokenURL()},
		tokensource.WithPrivateKeyJWT(unknown, keyID), tokensource.WithHTTPClient(a.srv.Client())))
	defer src.Close()
	echo := dial(t, r.addr, a.clientTLS(), src)
	for range 3 {
		_, err := echo.Echo(ctx, &echov1.EchoRequest{Message: "unknown key"})
		if status.Code(err) != codes.Unauthenticated || !errors.Is(err, tokensource.ErrReauthRequired) {
			t.Fatalf("unknown key: %v, want Unauthenticated matching ErrReauthRequired", err)
		}
	}
	if got := c.snapshot().refused["private_key_jwt assertion rejected"]; got != 1 {
		t.Errorf("%d token requests with the unknown key, want 1 (no retry)", got)
	}

	vol := vaultSink{file: filepath.Join(t.TempDir(), "token")}
	expired := c.cluster.projectedToken(t, c.tokenURL(), -time.Second)
	if err := vol.write(expired); err != nil {
		t.Fatal(err)
	}
	fsrc := tokensource.New(tokensource.ClientCredentials(&clientcredentials.Config{ClientID: workloadClient, TokenURL: c.tokenURL()},
		tokensource.WithClientAssertionFile(vol.path()), tokensource.WithHTTPClient(a.srv.Client())),
		tokensource.WithBackoff(50*time.Millisecond, 50*time.Millisecond))
	defer fsrc.Close()
	fecho := dial(t, r.addr, a.clientTLS(), fsrc)
	_, err := fecho.Echo(ctx, &echov1.EchoRequest{Message: "expired assertion"})
	if status.Code(err) != codes.Unavailable || !errors.Is(err, tokensource.ErrTokenFile) {
		t.Fatalf("expired assertion file: %v, want Unavailable matching ErrTokenFile", err)
	}
	if st, _ := status.FromError(err); !containsAll(st.Message(), vol.path()) || containsAll(st.Message(), expired[:20]) {
		t.Errorf("error %q should name the file and not quote it", st.Message())
	}
	if n := len(a.store.issuances(oidc.GrantTypeClientCredentials, workloadClient)); n != 0 {
		t.Errorf("%d grants with an expired assertion file", n)
	}
	// A projected token the server refuses (issued for another audience):
	// invalid_client, transient with an assertion file, since its writer
	// renews it.
	if err := vol.write(c.cluster.projectedToken(t, "another-audience", time.Minute)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(hangGuard)
	for c.snapshot().refused["federated assertion rejected"] == 0 {
		_, err := fecho.Echo(ctx, &echov1.EchoRequest{Message: "refused assertion"})
		if status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
			t.Fatalf("an assertion the server refuses: %v, want Unavailable", err)
		}
		time.Sleep(10 * time.Millisecond) // through the 50 ms backoff
	}
	if err := vol.write(c.cluster.projectedToken(t, c.tokenURL(), time.Minute)); err != nil {
		t.Fatal(err)
	}
	for {
		_, err := fecho.Echo(ctx, &echov1.EchoRequest{Message: "renewed"})
		if err == nil {
			break
		}
		if status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
			t.Fatalf("after the file was renewed: %v", err)
		}
		time.Sleep(10 * time.Millisecond) // through the 50 ms backoff
	}
}

func containsAll(s string, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}
