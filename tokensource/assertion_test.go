package tokensource

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// assertionEndpoint is a token endpoint that records what each request
// carried: the form, and whether any client secret was on the wire.
type assertionEndpoint struct {
	mu       sync.Mutex
	forms    []url.Values
	secrets  int    // requests with a client_secret or basic credentials
	code     string // non-empty: answer with this OAuth 2 error code
	subjects []string
	refuse   map[string]bool // subject tokens refused with invalid_request (RFC 8693)
}

func (e *assertionEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "invalid_request"})
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, _, ok := r.BasicAuth(); ok || r.PostForm.Has("client_secret") {
		e.secrets++
	}
	e.forms = append(e.forms, r.PostForm)
	e.subjects = append(e.subjects, r.PostForm.Get("subject_token"))
	if e.code != "" {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": e.code})
		return
	}
	if e.refuse[r.PostForm.Get("subject_token")] {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "invalid_request", "error_description": "subject_token is invalid"})
		return
	}
	resp := map[string]any{"access_token": fmt.Sprintf("at-%d", len(e.forms)), "token_type": "Bearer", "expires_in": 3600}
	if r.PostForm.Get("grant_type") == "refresh_token" {
		resp["refresh_token"] = "rt-next"
	}
	writeJSON(w, http.StatusOK, resp)
}

func (e *assertionEndpoint) requests() ([]url.Values, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]url.Values(nil), e.forms...), e.secrets
}

// startAssertionEndpoint serves e over TLS; the returned client trusts it.
func startAssertionEndpoint(t *testing.T, e *assertionEndpoint) (tokenURL string, client *http.Client) {
	t.Helper()
	srv := httptest.NewUnstartedServer(e)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the handshakes TestWithHTTPClient fails on purpose
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.URL + "/token", srv.Client()
}

// testKeys are keys of every supported type and the algorithm each signs with.
func testKeys(t testing.TB) []struct {
	key crypto.Signer
	alg jose.SignatureAlgorithm
} {
	t.Helper()
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	return []struct {
		key crypto.Signer
		alg jose.SignatureAlgorithm
	}{{p256, jose.ES256}, {p384, jose.ES384}, {p521, jose.ES512}, {rsaKey, jose.RS256}, {edKey, jose.EdDSA}}
}

// verifyAssertion checks a with pub as a server would, with go-jose, and
// returns its claims.
func verifyAssertion(t *testing.T, a string, pub crypto.PublicKey, alg jose.SignatureAlgorithm, kid string) jwt.Claims {
	t.Helper()
	parsed, err := jwt.ParseSigned(a, []jose.SignatureAlgorithm{alg})
	if err != nil {
		t.Fatalf("assertion is not a JWS signed with %s: %v", alg, err)
	}
	if h := parsed.Headers[0]; h.KeyID != kid || h.ExtraHeaders[jose.HeaderType] != "JWT" {
		t.Errorf("header kid %q typ %v, want %q and JWT", h.KeyID, h.ExtraHeaders[jose.HeaderType], kid)
	}
	var c jwt.Claims
	if err := parsed.Claims(pub, &c); err != nil {
		t.Fatalf("signature does not verify with the client's public key: %v", err)
	}
	return c
}

// A private_key_jwt assertion is new for every request: iss = sub = the
// client ID, aud the token endpoint, a distinct jti, iat now and exp a
// minute later, signed with the algorithm of the key's type; no secret is
// sent although the configuration has one.
func TestPrivateKeyJWTClaimsPerKeyType(t *testing.T) {
	for _, k := range testKeys(t) {
		t.Run(string(k.alg), func(t *testing.T) {
			e := &assertionEndpoint{}
			tokenURL, client := startAssertionEndpoint(t, e)
			cfg := &clientcredentials.Config{ClientID: "svc", ClientSecret: "must-not-be-sent", TokenURL: tokenURL}
			r := ClientCredentials(cfg, WithPrivateKeyJWT(k.key, "key-1"), WithHTTPClient(client))
			const n = 5
			for range n {
				before := time.Now().Truncate(time.Second)
				if _, err := r.Refresh(ctxBG, nil); err != nil {
					t.Fatal(err)
				}
				forms, _ := e.requests()
				c := verifyAssertion(t, forms[len(forms)-1].Get("client_assertion"), k.key.Public(), k.alg, "key-1")
				if c.Issuer != "svc" || c.Subject != "svc" || len(c.Audience) != 1 || c.Audience[0] != tokenURL {
					t.Errorf("iss %q sub %q aud %v, want svc, svc, [%s]", c.Issuer, c.Subject, c.Audience, tokenURL)
				}
				if iat := c.IssuedAt.Time(); iat.Before(before) || iat.After(time.Now()) {
					t.Errorf("iat %v is not the time of the request", iat)
				}
				if life := c.Expiry.Time().Sub(c.IssuedAt.Time()); life != AssertionLifetime {
					t.Errorf("exp - iat = %v, want %v", life, AssertionLifetime)
				}
			}
			forms, secrets := e.requests()
			jtis := map[string]bool{}
			for _, f := range forms {
				if f.Get("client_assertion_type") != jwtBearerAssertionType || f.Get("client_id") != "svc" {
					t.Errorf("client_assertion_type %q client_id %q", f.Get("client_assertion_type"), f.Get("client_id"))
				}
				var c jwt.Claims
				parsed, _ := jwt.ParseSigned(f.Get("client_assertion"), []jose.SignatureAlgorithm{k.alg})
				_ = parsed.UnsafeClaimsWithoutVerification(&c)
				jtis[c.ID] = true
			}
			if len(forms) != n || len(jtis) != n || secrets != 0 {
				t.Errorf("%d requests, %d distinct jti, %d with a secret; want %d, %d, 0", len(forms), len(jtis), secrets, n, n)
			}
		})
	}
}

// The assertion goes with every adapter: OAuth2Refresher and TokenExchange
// too, without the secret, and WithAssertionAudience replaces the aud.
func TestPrivateKeyJWTForEveryAdapter(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	e := &assertionEndpoint{}
	tokenURL, client := startAssertionEndpoint(t, e)
	opts := []OAuth2Option{WithPrivateKeyJWT(key, ""), WithHTTPClient(client), WithAssertionAudience("https://issuer.test")}
	rt := OAuth2Refresher(&oauth2.Config{ClientID: "app", ClientSecret: "nope",
		Endpoint: oauth2.Endpoint{TokenURL: tokenURL, AuthStyle: oauth2.AuthStyleInHeader}}, opts...)
	tok, err := rt.Refresh(ctxBG, &Token{AccessToken: "old", RefreshToken: "rt-1"})
	if err != nil || tok.RefreshToken != "rt-next" {
		t.Fatalf("refresh-token grant: %v, %v", tok, err)
	}
	subject := staticSubject{&Token{AccessToken: "subject-1"}}
	te := TokenExchange(TokenExchangeConfig{TokenURL: tokenURL, ClientID: "app", ClientSecret: "nope",
		Audience: []string{"orders"}}, subject, opts...)
	if _, err := te.Refresh(ctxBG, nil); err != nil {
		t.Fatalf("token exchange: %v", err)
	}
	forms, secrets := e.requests()
	if secrets != 0 {
		t.Errorf("%d requests carried a client secret, want 0", secrets)
	}
	for i, want := range []string{"refresh_token", tokenExchangeGrant} {
		f := forms[i]
		if f.Get("grant_type") != want {
			t.Errorf("request %d: grant_type %q, want %q", i, f.Get("grant_type"), want)
		}
		c := verifyAssertion(t, f.Get("client_assertion"), key.Public(), jose.ES256, "")
		if c.Issuer != "app" || c.Subject != "app" || len(c.Audience) != 1 || c.Audience[0] != "https://issuer.test" {
			t.Errorf("request %d: iss %q sub %q aud %v", i, c.Issuer, c.Subject, c.Audience)
		}
	}
	if f := forms[0]; f.Get("refresh_token") != "rt-1" {
		t.Errorf("refresh_token %q, want rt-1", f.Get("refresh_token"))
	}
}

// unsupportedSigner is a crypto.Signer whose key type has no JWS algorithm.
type unsupportedSigner struct{}

func (unsupportedSigner) Public() crypto.PublicKey { return "not a key" }
func (unsupportedSigner) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("unused")
}

// A key without a JWS algorithm, or no client ID, is a configuration error:
// Permanent, and no request is sent.
func TestPrivateKeyJWTConfigurationErrorsArePermanent(t *testing.T) {
	e := &assertionEndpoint{}
	tokenURL, client := startAssertionEndpoint(t, e)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for name, r := range map[string]Refresher{
		"unsupported key": ClientCredentials(&clientcredentials.Config{ClientID: "svc", TokenURL: tokenURL},
			WithPrivateKeyJWT(unsupportedSigner{}, "k"), WithHTTPClient(client)),
		"nil key": ClientCredentials(&clientcredentials.Config{ClientID: "svc", TokenURL: tokenURL},
			WithPrivateKeyJWT(nil, "k"), WithHTTPClient(client)),
		"no client ID": ClientCredentials(&clientcredentials.Config{TokenURL: tokenURL},
			WithPrivateKeyJWT(key, "k"), WithHTTPClient(client)),
	} {
		if _, err := r.Refresh(ctxBG, nil); !IsPermanent(err) {
			t.Errorf("%s: %v, want a Permanent error", name, err)
		}
	}
	if forms, _ := e.requests(); len(forms) != 0 {
		t.Errorf("%d requests sent, want 0", len(forms))
	}
}

// A key the server does not know: invalid_client, Permanent, so the Source
// requires re-authentication (codes.Unauthenticated) instead of retrying.
func TestPrivateKeyJWTUnknownKeyRequiresReauth(t *testing.T) {
	e := &assertionEndpoint{code: "invalid_client"}
	tokenURL, client := startAssertionEndpoint(t, e)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	s := New(ClientCredentials(&clientcredentials.Config{ClientID: "svc", TokenURL: tokenURL},
		WithPrivateKeyJWT(key, "unknown"), WithHTTPClient(client)))
	defer s.Close()
	if _, err := s.Token(ctxBG); !errors.Is(err, ErrReauthRequired) {
		t.Fatalf("Token: %v, want ErrReauthRequired", err)
	}
	if forms, _ := e.requests(); len(forms) != 1 {
		t.Errorf("%d requests, want 1 (no retry)", len(forms))
	}
	rt := OAuth2Refresher(&oauth2.Config{ClientID: "app", Endpoint: oauth2.Endpoint{TokenURL: tokenURL}},
		WithPrivateKeyJWT(key, "unknown"), WithHTTPClient(client))
	if _, err := rt.Refresh(ctxBG, &Token{RefreshToken: "rt"}); !IsPermanent(err) {
		t.Errorf("OAuth2Refresher: %v, want Permanent", err)
	}
}

// signedJWT returns a JWT with the given claims, signed with a fresh key.
func signedJWT(t testing.TB, c jwt.Claims) string {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := jwt.Signed(sig).Claims(c).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// WithClientAssertionFile sends the file's JWT as it is at each request (a
// rotation is used by the next one), never a secret; an expired, missing
// or non-JWT file fails before any request, transiently, naming the path
// and never the content; the fixed file works again.
func TestClientAssertionFileReadPerRequest(t *testing.T) {
	e := &assertionEndpoint{}
	tokenURL, client := startAssertionEndpoint(t, e)
	path := filepath.Join(t.TempDir(), "token")
	r := ClientCredentials(&clientcredentials.Config{ClientID: "svc", ClientSecret: "nope", TokenURL: tokenURL},
		WithClientAssertionFile(path), WithHTTPClient(client))

	var written []string
	for i := range 3 {
		a := signedJWT(t, jwt.Claims{Issuer: "https://kubernetes.test", Subject: fmt.Sprint("sa-", i),
			Expiry: jwt.NewNumericDate(time.Now().Add(time.Hour))})
		writeFile(t, path+".tmp", a)
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
		written = append(written, a)
		if _, err := r.Refresh(ctxBG, nil); err != nil {
			t.Fatal(err)
		}
	}
	forms, secrets := e.requests()
	for i, f := range forms {
		if f.Get("client_assertion") != written[i] {
			t.Errorf("request %d did not carry the file's assertion of that moment", i)
		}
	}
	if secrets != 0 {
		t.Errorf("%d requests carried a secret", secrets)
	}

	expired := signedJWT(t, jwt.Claims{Expiry: jwt.NewNumericDate(time.Now().Add(-time.Minute))})
	for name, content := range map[string]string{"expired": expired, "opaque": "not-a-jwt-secret-text", "half-written": expired[:len(expired)/2]} {
		writeFile(t, path, content)
		_, err := r.Refresh(ctxBG, nil)
		checkFileError(t, name, err, path, content)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	_, err := r.Refresh(ctxBG, nil)
	checkFileError(t, "missing", err, path, "")
	if forms, _ := e.requests(); len(forms) != 3 {
		t.Errorf("%d requests, want 3: an unusable file sends none", len(forms))
	}
	writeFile(t, path, written[0])
	if _, err := r.Refresh(ctxBG, nil); err != nil {
		t.Errorf("after the file was fixed: %v", err)
	}

	// The server refuses the file's assertion: transient, since the
	// file's writer renews it (with a private key it is Permanent: see
	// TestPrivateKeyJWTUnknownKeyRequiresReauth).
	e.mu.Lock()
	e.code = "invalid_client"
	e.mu.Unlock()
	if _, err := r.Refresh(ctxBG, nil); err == nil || IsPermanent(err) {
		t.Errorf("invalid_client with an assertion file: %v, want a transient error", err)
	}
}

// checkFileError checks that err is a transient ErrTokenFile that names
// path and does not quote content.
func checkFileError(t *testing.T, name string, err error, path, content string) {
	t.Helper()
	switch {
	case !errors.Is(err, ErrTokenFile):
		t.Errorf("%s: %v, want ErrTokenFile", name, err)
	case IsPermanent(err):
		t.Errorf("%s: %v is Permanent, want transient", name, err)
	case !strings.Contains(err.Error(), path):
		t.Errorf("%s: %q does not name the path", name, err)
	case content != "" && strings.Contains(err.Error(), content[:min(len(content), 12)]):
		t.Errorf("%s: %q quotes the file", name, err)
	}
}

// WithHTTPClient reaches the token endpoint without the context value; the
// context value still works without it; given both, the option is used.
func TestWithHTTPClient(t *testing.T) {
	e := &assertionEndpoint{}
	tokenURL, client := startAssertionEndpoint(t, e)
	cc := &clientcredentials.Config{ClientID: "client", ClientSecret: "secret", TokenURL: tokenURL}
	oc := &oauth2.Config{ClientID: "client", ClientSecret: "secret", Endpoint: oauth2.Endpoint{TokenURL: tokenURL}}
	te := TokenExchangeConfig{TokenURL: tokenURL, ClientID: "client", ClientSecret: "secret"}
	subject := staticSubject{&Token{AccessToken: "s"}}
	current := &Token{RefreshToken: "rt"}
	untrusted := context.WithValue(ctxBG, oauth2.HTTPClient, http.DefaultClient) // does not trust the test CA
	trusted := context.WithValue(ctxBG, oauth2.HTTPClient, client)
	for name, tc := range map[string]struct {
		with Refresher
		bare Refresher
	}{
		"ClientCredentials": {ClientCredentials(cc, WithHTTPClient(client)), ClientCredentials(cc)},
		"OAuth2Refresher":   {OAuth2Refresher(oc, WithHTTPClient(client)), OAuth2Refresher(oc)},
		"TokenExchange":     {TokenExchange(te, subject, WithHTTPClient(client)), TokenExchange(te, subject)},
	} {
		if _, err := tc.with.Refresh(ctxBG, current); err != nil {
			t.Errorf("%s with WithHTTPClient: %v", name, err)
		}
		if _, err := tc.with.Refresh(untrusted, current); err != nil {
			t.Errorf("%s: WithHTTPClient must take precedence over the context's client: %v", name, err)
		}
		if _, err := tc.bare.Refresh(trusted, current); err != nil {
			t.Errorf("%s with the context's client: %v", name, err)
		}
		if _, err := tc.bare.Refresh(ctxBG, current); err == nil {
			t.Errorf("%s with neither: want a TLS failure (the default client does not trust the test CA)", name)
		}
	}
}

// staticSubject is a SubjectSource without a Refresh method.
type staticSubject struct{ tok *Token }

func (s staticSubject) Token(context.Context) (*Token, error) { return s.tok, nil }

// BenchmarkAssertionSign measures making one private_key_jwt assertion per
// algorithm: the cost added to each token request (once per refresh), not
// to any RPC.
func BenchmarkAssertionSign(b *testing.B) {
	for _, k := range testKeys(b) {
		b.Run(string(k.alg), func(b *testing.B) {
			s, err := newAssertionSigner(k.key, "k")
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.sign("client", "https://as.test/token", time.Now()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
