package oauth2server_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// Registered clients and the user of the authorization server.
const (
	appClient      = "app" // code grant with PKCE + refresh tokens
	appSecret      = "app-secret"
	appRedirectURI = "https://app.example/callback" // never contacted: the test's browser stops there
	serviceClient  = "service"                      // client credentials, short-lived tokens
	longClient     = "service-long"                 // client credentials, tokens that outlive the test
	serviceSecret  = "service-secret"
	rsClient       = "resource-server" // authenticates to the introspection endpoint
	rsSecret       = "rs-secret"
	user           = "alice"
)

// accessTTL is the lifetime of the short-lived access tokens. The op
// package reports expires_in rounded down to whole seconds of what is left
// when it answers, so clients see 7 s: its leeway (a tenth, 0.7 s) covers a
// call's way to the resource server's introspection on a loaded 2-core
// machine (with 4 s tokens and a 0.4 s leeway an occasional call arrived
// with an expired token and its retry met the same delay), and the 1.75 s
// early-refresh window finishes a refresh before any caller waits; short
// enough that a test crosses several expiries in about 20 s.
const accessTTL = 8 * time.Second

// authServer is a zitadel/oidc OpenID Provider (package op, OpenID
// certified) served over TLS on loopback, with the in-memory storage, a
// stand-in login UI, a hook that can hold back the response of a
// refresh-token grant after the server has committed its rotation, and a
// fault injector that can take the token endpoint down.
type authServer struct {
	store    *storage
	provider *op.Provider
	srv      *httptest.Server
	issuer   string
	stop     chan struct{} // closed at cleanup: releases held responses
	faults   *tokenFaults  // in front of the token endpoint: outages on demand

	mu    sync.Mutex
	hold  *heldRefresh // armed: the next refresh-token grant's response is held
	token http.Handler // if set, serves the token endpoint (startCredsServer)
}

// heldRefresh is one refresh-token grant whose response the server holds
// back: rotated is closed once the server has rotated (the response is
// ready), and the response is sent when release is closed.
type heldRefresh struct {
	rotated chan struct{}
	release chan struct{}
}

func startAuthServer(t *testing.T) *authServer {
	t.Helper()
	a := &authServer{store: newStorage(), stop: make(chan struct{})}
	a.srv = httptest.NewUnstartedServer(nil)
	a.issuer = "https://" + a.srv.Listener.Addr().String()

	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		t.Fatal(err)
	}
	provider, err := op.NewProvider(&op.Config{
		CryptoKey:               key,
		CodeMethodS256:          true,
		GrantTypeRefreshToken:   true,
		AuthMethodPrivateKeyJWT: true,
	}, a.store, op.StaticIssuer(a.issuer), op.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	a.provider = provider

	loginURL := a.issuer + "/login?authRequestID="
	a.store.addClient(&client{id: appClient, secret: appSecret, redirectURI: appRedirectURI, loginURL: loginURL,
		grants: []oidc.GrantType{oidc.GrantTypeCode, oidc.GrantTypeRefreshToken}, accessTTL: accessTTL})
	a.store.addClient(&client{id: serviceClient, secret: serviceSecret,
		grants: []oidc.GrantType{oidc.GrantTypeClientCredentials}, accessTTL: accessTTL})
	a.store.addClient(&client{id: longClient, secret: serviceSecret,
		grants: []oidc.GrantType{oidc.GrantTypeClientCredentials}, accessTTL: time.Hour})
	a.store.addClient(&client{id: rsClient, secret: rsSecret, accessTTL: accessTTL})

	mux := http.NewServeMux()
	mux.Handle("/login", op.NewIssuerInterceptor(provider.IssuerFromRequest).Handler(http.HandlerFunc(a.login)))
	a.faults = &tokenFaults{next: http.HandlerFunc(a.serveOP)}
	mux.Handle("/", a.faults)
	a.srv.Config.Handler = mux
	a.srv.StartTLS()
	t.Cleanup(func() {
		close(a.stop)
		a.srv.Close() // also closes the idle connections of a.srv.Client()
	})
	return a
}

// login is the stand-in login UI: it authenticates the user at once (a real
// one would check a password and a session) and sends the browser back to
// the provider's callback, which issues the authorization code.
func (a *authServer) login(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("authRequestID")
	if err := a.store.completeLogin(id, user); err != nil {
		http.Error(w, "unknown authorization request", http.StatusBadRequest)
		return
	}
	http.Redirect(w, r, op.AuthCallbackURL(a.provider)(r.Context(), id), http.StatusFound)
}

// serveOP serves the provider, holding back the response of a refresh-token
// grant when armed.
func (a *authServer) serveOP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/oauth/token" {
		a.provider.ServeHTTP(w, r)
		return
	}
	_ = r.ParseForm() // the provider parses it again from r.Form
	a.mu.Lock()
	h, token := a.hold, a.token
	if token != nil {
		a.mu.Unlock()
		token.ServeHTTP(w, r)
		return
	}
	if r.PostForm.Get("grant_type") != string(oidc.GrantTypeRefreshToken) {
		h = nil
	}
	if h != nil {
		a.hold = nil
	}
	a.mu.Unlock()
	if h == nil {
		a.provider.ServeHTTP(w, r)
		return
	}
	rec := httptest.NewRecorder()
	a.provider.ServeHTTP(rec, r) // the rotation is committed in the storage now
	close(h.rotated)
	select {
	case <-h.release:
	case <-a.stop:
		return
	}
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

// holdNextRefresh arms the hold for the next refresh-token grant.
func (a *authServer) holdNextRefresh() *heldRefresh {
	h := &heldRefresh{rotated: make(chan struct{}), release: make(chan struct{})}
	a.mu.Lock()
	a.hold = h
	a.mu.Unlock()
	return h
}

// httpContext returns ctx carrying the HTTP client that trusts the server's
// certificate, where golang.org/x/oauth2 (and so the library's refreshes)
// looks for it.
func (a *authServer) httpContext(ctx context.Context) context.Context {
	return context.WithValue(ctx, oauth2.HTTPClient, a.srv.Client())
}

// appConfig is the oauth2.Config of the "app" client, with the endpoints
// the provider's discovery document names.
func (a *authServer) appConfig() *oauth2.Config {
	return &oauth2.Config{
		ClientID:     appClient,
		ClientSecret: appSecret,
		Endpoint: oauth2.Endpoint{
			AuthURL:   a.issuer + "/authorize",
			TokenURL:  a.issuer + "/oauth/token",
			AuthStyle: oauth2.AuthStyleInHeader,
		},
		RedirectURL: appRedirectURI,
		Scopes:      []string{oidc.ScopeOpenID, oidc.ScopeOfflineAccess},
	}
}

// serviceConfig is the clientcredentials.Config of a service client.
func (a *authServer) serviceConfig(id string) *clientcredentials.Config {
	return &clientcredentials.Config{
		ClientID:     id,
		ClientSecret: serviceSecret,
		TokenURL:     a.issuer + "/oauth/token",
		AuthStyle:    oauth2.AuthStyleInHeader,
	}
}

// loginUser performs the authorization-code grant with PKCE as a user's browser
// and the app would: /authorize, the login UI, the provider's callback,
// then the code exchange at the token endpoint. It returns the login's
// token pair, the first token of a new refresh-token family.
func (a *authServer) loginUser(t *testing.T, ctx context.Context) *tokensource.Token {
	t.Helper()
	cfg := a.appConfig()
	verifier := oauth2.GenerateVerifier()
	state := rand.Text()
	browser := *a.srv.Client() // same transport, so the same trust and cleanup
	browser.CheckRedirect = func(req *http.Request, _ []*http.Request) error {
		if req.URL.Host == "app.example" {
			return http.ErrUseLastResponse // the app's callback: read the code from here
		}
		return nil
	}
	resp, err := browser.Get(cfg.AuthCodeURL(state, oauth2.S256ChallengeOption(verifier)))
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	loc, err := resp.Location()
	if err != nil {
		t.Fatalf("authorization ended with %s, not a redirect to the app: %v", resp.Status, err)
	}
	if loc.Query().Get("state") != state || loc.Query().Get("code") == "" {
		t.Fatalf("callback %q: want the state and a code", redactQuery(loc))
	}
	ot, err := cfg.Exchange(a.httpContext(ctx), loc.Query().Get("code"), oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatalf("code exchange: %v", err)
	}
	if ot.RefreshToken == "" {
		t.Fatal("the code exchange issued no refresh token")
	}
	return &tokensource.Token{AccessToken: ot.AccessToken, RefreshToken: ot.RefreshToken, Expiry: ot.Expiry}
}

func redactQuery(u *url.URL) string {
	c := *u
	c.RawQuery = ""
	return c.String() + "?<redacted>"
}

// revokeAccessToken revokes tok at the provider's revocation endpoint (RFC
// 7009) as client id.
func (a *authServer) revokeAccessToken(ctx context.Context, id, secret, tok string) error {
	form := url.Values{"token": {tok}, "token_type_hint": {"access_token"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.issuer+"/revoke", strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
	resp, err := a.srv.Client().Do(req)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("revocation: %s", resp.Status)
	}
	return nil
}
