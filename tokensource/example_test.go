package tokensource_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

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
	// {Refreshes:1 Failures:0 Waiting:0 Waited:1 RateLimited:0 StoreFailures:0 InFlight:false ReauthRequired:false Generation:1}
}
