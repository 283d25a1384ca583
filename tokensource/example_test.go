package tokensource_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// A Source shares one refresh among all callers and hands out the cached
// token until it nears expiry.
func Example() {
	calls := 0
	refresher := tokensource.RefresherFunc(func(ctx context.Context, current *tokensource.Token) (*tokensource.Token, error) {
		calls++ // the Source never calls a Refresher concurrently
		return &tokensource.Token{
			AccessToken:  fmt.Sprintf("access-%d", calls),
			RefreshToken: "refresh",
			Expiry:       time.Now().Add(time.Hour),
		}, nil
	})
	src := tokensource.New(refresher)
	defer src.Close()

	ctx := context.Background()
	for range 3 {
		tok, err := src.Token(ctx)
		if err != nil {
			fmt.Println("error:", err)
			return
		}
		fmt.Println(tok.AccessToken)
	}
	fmt.Println("refresher calls:", calls)
	// Output:
	// access-1
	// access-1
	// access-1
	// refresher calls: 1
}

// A Refresher reports that the refresh credential was rejected with
// Permanent; the Source then asks for a new login instead of retrying.
func ExampleRefresherFunc() {
	errRevoked := errors.New("refresh token revoked")
	refresher := tokensource.RefresherFunc(func(ctx context.Context, current *tokensource.Token) (*tokensource.Token, error) {
		if current == nil || current.RefreshToken != "valid" {
			return nil, tokensource.Permanent(errRevoked)
		}
		return &tokensource.Token{AccessToken: "fresh", RefreshToken: "valid", Expiry: time.Now().Add(time.Hour)}, nil
	})
	loginNeeded := make(chan error, 1)
	src := tokensource.New(refresher,
		tokensource.WithInitialToken(&tokensource.Token{RefreshToken: "stale"}),
		tokensource.WithOnReauthRequired(func(err error) { loginNeeded <- err }),
	)

	ctx := context.Background()
	_, err := src.Token(ctx)
	fmt.Println(errors.Is(err, tokensource.ErrReauthRequired), errors.Is(err, errRevoked))
	fmt.Println("hook:", <-loginNeeded)

	// After the login the application hands the Source the new token.
	_ = src.SetToken(ctx, &tokensource.Token{AccessToken: "login", RefreshToken: "valid", Expiry: time.Now().Add(time.Hour)})
	tok, _ := src.Token(ctx)
	fmt.Println(tok.AccessToken)
	_ = src.Close()
	// Output:
	// true true
	// hook: tokensource: re-authentication required: refresh failed: refresh token revoked
	// login
}

// A FileStore keeps the rotated refresh token across restarts.
func ExampleNewFileStore() {
	dir, err := os.MkdirTemp("", "tokensource-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	store := tokensource.NewFileStore(filepath.Join(dir, "token.json"))

	ctx := context.Background()
	tok := &tokensource.Token{AccessToken: "a", RefreshToken: "r", Expiry: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	if err := store.Save(ctx, tok); err != nil {
		fmt.Println(err)
		return
	}
	loaded, err := store.Load(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(loaded) // tokens print redacted
	info, _ := os.Stat(store.Path())
	fmt.Println(info.Mode().Perm())

	// A Source loads the store on first use and saves every new token to
	// it before handing that token out.
	src := tokensource.New(tokensource.RefresherFunc(func(ctx context.Context, current *tokensource.Token) (*tokensource.Token, error) {
		return nil, errors.New("not called: the stored token is valid")
	}), tokensource.WithStore(store))
	defer src.Close()
	_, err = src.Token(ctx)
	fmt.Println(err)
	// Output:
	// tokensource.Token{AccessToken:<redacted> RefreshToken:<redacted> Expiry:2030-01-01T00:00:00Z}
	// -rw-------
	// <nil>
}

// Token values are safe to log: they print and log redacted.
func ExampleToken_String() {
	tok := &tokensource.Token{AccessToken: "secret", RefreshToken: "also-secret"}
	fmt.Println(tok)
	fmt.Printf("%+v\n", *tok)
	// Output:
	// tokensource.Token{AccessToken:<redacted> RefreshToken:<redacted> Expiry:never}
	// tokensource.Token{AccessToken:<redacted> RefreshToken:<redacted> Expiry:never}
}

// An observer receives events suitable for metrics.
func ExampleWithObserver() {
	src := tokensource.New(tokensource.RefresherFunc(func(ctx context.Context, current *tokensource.Token) (*tokensource.Token, error) {
		return &tokensource.Token{AccessToken: "a", Expiry: time.Now().Add(time.Hour)}, nil
	}), tokensource.WithObserver(func(e tokensource.Event) {
		fmt.Println(e.Kind, e.Err)
	}))
	_, _ = src.Token(context.Background())
	_ = src.Close() // waits for the observer calls
	fmt.Printf("%+v\n", src.Stats())
	// Output:
	// RefreshStarted <nil>
	// RefreshSucceeded <nil>
	// {Refreshes:1 Failures:0 Waiting:0 Waited:1 RateLimited:0 StoreFailures:0 Unchanged:0 Adopted:0 InFlight:false ReauthRequired:false Generation:1}
}

// ClientCredentials performs a new client-credentials grant on every
// refresh, so a token the server rejected before its expiry is replaced.
func ExampleClientCredentials() {
	// A token endpoint that issues "service-1", "service-2", ...
	var issued atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if id, secret, ok := r.BasicAuth(); !ok || id != "my-service" || secret != "s3cret" || r.FormValue("grant_type") != "client_credentials" {
			http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":"service-%d","token_type":"Bearer","expires_in":3600}`, issued.Add(1))
	}))
	defer srv.Close()

	cfg := &clientcredentials.Config{
		ClientID:     "my-service",
		ClientSecret: "s3cret",
		TokenURL:     srv.URL + "/token",
		AuthStyle:    oauth2.AuthStyleInHeader,
	}
	src := tokensource.New(tokensource.ClientCredentials(cfg))
	defer src.Close()

	// The HTTP client for the token endpoint travels in the context of the
	// call that starts the refresh.
	ctx := context.WithValue(context.Background(), oauth2.HTTPClient, srv.Client())
	tok, _ := src.Token(ctx)
	again, _ := src.Token(ctx)
	fmt.Println(tok.AccessToken, again.AccessToken) // cached until it nears expiry

	// A server rejected the token (revoked before its expiry): one forced
	// refresh, one new grant.
	fresh, err := src.Refresh(ctx, tok)
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	fmt.Println(fresh.AccessToken)
	fmt.Println("grants:", issued.Load())
	// Output:
	// service-1 service-1
	// service-2
	// grants: 2
}

// OAuth2Refresher performs the refresh-token grant and keeps the rotated
// refresh token, which a Store then persists before the new access token is
// handed out.
func ExampleOAuth2Refresher() {
	// A token endpoint that rotates refresh tokens: refresh-N is accepted
	// once and answered with access-N+1 and refresh-N+1.
	var generation atomic.Int64
	generation.Store(1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := generation.Load()
		if r.FormValue("grant_type") != "refresh_token" || r.FormValue("refresh_token") != fmt.Sprintf("refresh-%d", n) ||
			!generation.CompareAndSwap(n, n+1) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprint(w, `{"error":"invalid_grant"}`)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":"access-%d","refresh_token":"refresh-%d","token_type":"Bearer","expires_in":3600}`, n+1, n+1)
	}))
	defer srv.Close()

	cfg := &oauth2.Config{
		ClientID:     "my-app",
		ClientSecret: "s3cret",
		Endpoint:     oauth2.Endpoint{TokenURL: srv.URL + "/token", AuthStyle: oauth2.AuthStyleInHeader},
	}
	// The token from the login (an authorization-code grant, for example).
	login := &tokensource.Token{AccessToken: "access-1", RefreshToken: "refresh-1", Expiry: time.Now().Add(time.Hour)}
	store := tokensource.NewMemoryStore() // NewFileStore(path) survives restarts
	src := tokensource.New(tokensource.OAuth2Refresher(cfg),
		tokensource.WithInitialToken(login), tokensource.WithStore(store))
	defer src.Close()

	ctx := context.WithValue(context.Background(), oauth2.HTTPClient, srv.Client())
	tok, _ := src.Token(ctx)
	fmt.Println(tok.AccessToken)

	// A server rejected access-1: refresh with refresh-1, which the server
	// rotates.
	fresh, err := src.Refresh(ctx, tok)
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	saved, _ := store.Load(ctx)
	fmt.Println(fresh.AccessToken, saved.RefreshToken)
	// Output:
	// access-1
	// access-2 refresh-2
}

// FromOAuth2 adapts any other oauth2.TokenSource. It passes no context (so
// give the source an HTTP client with a timeout) and cannot make a caching
// source fetch: around an oauth2.ReuseTokenSource a forced refresh gets the
// rejected token back and fails with ErrUnchangedToken.
func ExampleFromOAuth2() {
	// An internal token service that issues "internal-1", "internal-2", ...
	var issued atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "internal-%d", issued.Add(1))
	}))
	defer srv.Close()
	client := &http.Client{Timeout: 10 * time.Second} // FromOAuth2 cannot cancel the request
	fetch := tokenSourceFunc(func() (*oauth2.Token, error) {
		resp, err := client.Get(srv.URL)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		var b [64]byte
		n, _ := resp.Body.Read(b[:])
		return &oauth2.Token{AccessToken: string(b[:n]), Expiry: time.Now().Add(time.Hour)}, nil
	})
	ctx := context.Background()

	// A source that fetches on every call works like any Refresher.
	src := tokensource.New(tokensource.FromOAuth2(fetch))
	tok, _ := src.Token(ctx)
	fresh, _ := src.Refresh(ctx, tok)
	fmt.Println(tok.AccessToken, fresh.AccessToken)
	_ = src.Close()

	// A caching source hands back its cached token even after a server
	// rejected it.
	cached := tokensource.New(tokensource.FromOAuth2(oauth2.ReuseTokenSource(nil, fetch)))
	defer cached.Close()
	tok, _ = cached.Token(ctx)
	_, err := cached.Refresh(ctx, tok)
	fmt.Println(tok.AccessToken, errors.Is(err, tokensource.ErrUnchangedToken))
	// Output:
	// internal-1 internal-2
	// internal-3 true
}

type tokenSourceFunc func() (*oauth2.Token, error)

func (f tokenSourceFunc) Token() (*oauth2.Token, error) { return f() }
