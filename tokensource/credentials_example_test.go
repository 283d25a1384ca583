package tokensource_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// exampleServer is a token endpoint over TLS (with its own CA, as a
// private one would be) that describes how each request authenticated.
func exampleServer(seen func(r *http.Request) string) *httptest.Server {
	var issued atomic.Int64
	return httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":"%s-%d","token_type":"Bearer","expires_in":3600}`, seen(r), issued.Add(1))
	}))
}

// clientAuth names how a token request authenticated its client.
func clientAuth(r *http.Request) string {
	_, secret, basic := r.BasicAuth()
	switch {
	case r.PostForm.Get("client_assertion") != "":
		return "assertion"
	case basic && secret != "", r.PostForm.Get("client_secret") != "":
		return "secret"
	}
	return "none"
}

// WithPrivateKeyJWT authenticates the client with a JWT signed by its
// private key, new for every token request; no secret exists to leak.
// WithHTTPClient gives the adapter the client that trusts the token
// endpoint's private CA.
func ExampleWithPrivateKeyJWT() {
	srv := exampleServer(func(r *http.Request) string {
		a, _ := jwt.ParseSigned(r.PostForm.Get("client_assertion"), []jose.SignatureAlgorithm{jose.ES256})
		var c jwt.Claims
		_ = a.UnsafeClaimsWithoutVerification(&c) // the server verifies with the registered public key
		return fmt.Sprintf("%s-%s-for-%s", clientAuth(r), a.Headers[0].Algorithm, c.Issuer)
	})
	defer srv.Close()

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader) // in production: loaded, or a KMS crypto.Signer
	cfg := &clientcredentials.Config{ClientID: "billing", TokenURL: srv.URL + "/token"}
	src := tokensource.New(tokensource.ClientCredentials(cfg,
		tokensource.WithPrivateKeyJWT(key, "billing-key-1"),
		tokensource.WithHTTPClient(srv.Client())))
	defer src.Close()

	tok, err := src.Token(context.Background())
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	fmt.Println(tok.AccessToken)
	// Output: assertion-ES256-for-billing-1
}

// WithClientAssertionFile is workload identity federation: the projected
// service-account token that kubelet keeps fresh is the client's
// assertion, read again for every token request.
func ExampleWithClientAssertionFile() {
	srv := exampleServer(clientAuth)
	defer srv.Close()
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "token") // /var/run/secrets/tokens/idp-token in a pod
	_ = os.WriteFile(path, []byte(exampleJWT(time.Hour)), 0o600)

	cfg := &clientcredentials.Config{ClientID: "orders", TokenURL: srv.URL + "/token"}
	src := tokensource.New(tokensource.ClientCredentials(cfg,
		tokensource.WithClientAssertionFile(path), tokensource.WithHTTPClient(srv.Client())))
	defer src.Close()
	tok, err := src.Token(context.Background())
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	fmt.Println(tok.AccessToken)
	// Output: assertion-1
}

// FromFile serves the token another process writes: here a JWT, whose exp
// claim gives the expiry; an opaque token needs WithTokenLifetime.
func ExampleFromFile() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "token")
	first := exampleJWT(time.Hour)
	_ = os.WriteFile(path, []byte(first+"\n"), 0o600)

	src := tokensource.New(tokensource.FromFile(path))
	defer src.Close()
	ctx := context.Background()
	tok, _ := src.Token(ctx)
	fmt.Println(tok.AccessToken == first, time.Until(tok.Expiry).Round(time.Hour))

	// The sidecar renews the file (write, then rename over it); a server
	// rejects the old token: the forced refresh reads the new one.
	second := exampleJWT(2 * time.Hour)
	_ = os.WriteFile(path+".tmp", []byte(second), 0o600)
	_ = os.Rename(path+".tmp", path)
	tok, _ = src.Refresh(ctx, tok)
	fmt.Println(tok.AccessToken == second)

	// A missing file is transient (the sidecar may not have written it
	// yet): the error names the path, never the content.
	_, err := tokensource.FromFile(filepath.Join(dir, "missing")).Refresh(ctx, nil)
	fmt.Println(errors.Is(err, tokensource.ErrTokenFile), tokensource.IsPermanent(err))

	opaque := filepath.Join(dir, "vault-token")
	_ = os.WriteFile(opaque, []byte("hvs.example"), 0o600)
	vault := tokensource.New(tokensource.FromFile(opaque, tokensource.WithTokenLifetime(time.Hour)))
	defer vault.Close()
	tok, _ = vault.Token(ctx)
	fmt.Println(tok.AccessToken, time.Until(tok.Expiry).Round(time.Hour))
	// Output:
	// true 1h0m0s
	// true
	// true false
	// hvs.example 1h0m0s
}

// TokenExchange turns one subject credential (here the workload's token
// file) into a token per audience: one Source per audience, one subject
// Source shared by them.
func ExampleTokenExchange() {
	srv := exampleServer(func(r *http.Request) string {
		return r.PostForm.Get("audience") + "-from-" + r.PostForm.Get("subject_token_type")[len("urn:ietf:params:oauth:token-type:"):]
	})
	defer srv.Close()
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "token")
	_ = os.WriteFile(path, []byte(exampleJWT(time.Hour)), 0o600)

	subject := tokensource.New(tokensource.FromFile(path))
	defer subject.Close()
	ctx := context.Background()
	for _, aud := range []string{"orders", "billing"} {
		src := tokensource.New(tokensource.TokenExchange(tokensource.TokenExchangeConfig{
			TokenURL: srv.URL + "/token", ClientID: "gateway", ClientSecret: "s3cret",
			Audience: []string{aud}, SubjectTokenType: tokensource.TokenTypeJWT,
		}, subject, tokensource.WithHTTPClient(srv.Client())))
		defer src.Close()
		tok, err := src.Token(ctx)
		if err != nil {
			fmt.Println("error:", err)
			return
		}
		fmt.Println(tok.AccessToken)
	}
	// Output:
	// orders-from-jwt-1
	// billing-from-jwt-2
}

// exampleJWT is a JWT expiring after life, as a token file would hold.
func exampleJWT(life time.Duration) string {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sig, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, nil)
	tok, _ := jwt.Signed(sig).Claims(jwt.Claims{Subject: "system:serviceaccount:default:app",
		Expiry: jwt.NewNumericDate(time.Now().Add(life))}).Serialize()
	return tok
}
