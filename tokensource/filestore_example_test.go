package tokensource_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// Sources that share a token file, in one process or in several on one
// host, make one Refresher call between them: here the second Source adopts
// the token the first one refreshed and committed.
func ExampleFileStore() {
	dir, err := os.MkdirTemp("", "example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "token.json")

	var calls atomic.Int64
	refresher := tokensource.RefresherFunc(func(_ context.Context, cur *tokensource.Token) (*tokensource.Token, error) {
		calls.Add(1)
		return &tokensource.Token{AccessToken: "at-1", RefreshToken: "rt-1", Expiry: time.Now().Add(time.Hour)}, nil
	})
	newSource := func() *tokensource.Source {
		// Each process makes its own FileStore on the shared path.
		store := tokensource.NewFileStore(path, tokensource.WithFileLeaseTTL(5*time.Second))
		return tokensource.New(refresher, tokensource.WithStore(store),
			tokensource.WithInitialToken(&tokensource.Token{RefreshToken: "rt-0"}))
	}
	a, b := newSource(), newSource()
	defer a.Close()
	defer b.Close()

	ta, err := a.Token(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	tb, err := b.Token(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ta.AccessToken, tb.AccessToken, "refreshes:", calls.Load())
	// Output: at-1 at-1 refreshes: 1
}
