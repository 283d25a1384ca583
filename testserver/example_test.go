package testserver_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// Example starts the test server, logs in through AuthService and makes an
// authenticated call: the few lines a test needs.
func Example() {
	ctx := context.Background()
	srv := testserver.New()
	ep, err := srv.Start(ctx) // loopback TCP; add testserver.TLS() or testserver.Bufconn()
	if err != nil {
		log.Fatal(err)
	}
	defer ep.Stop()
	conn, err := ep.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	// The Refresher is what a tokensource.Source would call.
	tok, err := testserver.NewRefresher(conn, testserver.DefaultUser, testserver.DefaultPassword).Refresh(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok.AccessToken)
	resp, err := echov1.NewEchoServiceClient(conn).Echo(ctx, &echov1.EchoRequest{Message: "hello"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(resp.GetMessage(), "from", resp.GetUser())
	fmt.Println("logins:", srv.Counters().Logins)
	// Output:
	// hello from demo
	// logins: 1
}

// ExampleServer_ForceExpire expires every access token at once, as if time
// had passed, so the next call is rejected.
func ExampleServer_ForceExpire() {
	ctx := context.Background()
	srv := testserver.New()
	ep, err := srv.Start(ctx, testserver.Bufconn())
	if err != nil {
		log.Fatal(err)
	}
	defer ep.Stop()
	conn, err := ep.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	client := echov1.NewEchoServiceClient(conn)

	tok, err := srv.IssueToken("alice") // no RPC needed
	if err != nil {
		log.Fatal(err)
	}
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok.AccessToken)
	_, err = client.Echo(ctx, &echov1.EchoRequest{})
	fmt.Println("before:", status.Code(err))
	srv.ForceExpire()
	_, err = client.Echo(ctx, &echov1.EchoRequest{})
	fmt.Println("after:", status.Code(err))
	fmt.Println("unauthenticated answers:", srv.Counters().Unauthenticated)
	// Output:
	// before: OK
	// after: Unauthenticated
	// unauthenticated answers: 1
}

// ExampleWithRefreshFailures makes the first Refresh fail with Unavailable;
// the refresh token is not consumed, so a retry succeeds.
func ExampleWithRefreshFailures() {
	ctx := context.Background()
	srv := testserver.New(testserver.WithRefreshFailures(1, codes.Unavailable))
	ep, err := srv.Start(ctx, testserver.Bufconn())
	if err != nil {
		log.Fatal(err)
	}
	defer ep.Stop()
	conn, err := ep.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	r := testserver.NewRefresher(conn, testserver.DefaultUser, testserver.DefaultPassword)

	tok, err := r.Refresh(ctx, nil) // Login
	if err != nil {
		log.Fatal(err)
	}
	_, err = r.Refresh(ctx, tok)
	fmt.Println("first refresh:", status.Code(err))
	_, err = r.Refresh(ctx, tok)
	fmt.Println("second refresh:", status.Code(err))
	c := srv.Counters()
	fmt.Println("ok:", c.RefreshesOK, "failed:", c.RefreshesFailed)
	// Output:
	// first refresh: Unavailable
	// second refresh: OK
	// ok: 1 failed: 1
}

// Example_quickStart is the Quick start of README.md, run against the same
// server in process instead of `make testserver`: TLS, its certificate in a
// file, a Source whose Refresher logs in over a connection of its own, and a
// call through the interceptors. The lines between the markers are the
// README's main function line for line (TestReadmeQuickStartIsExample checks
// it), so the README's program compiles and works as printed.
func Example_quickStart() {
	// What `make testserver` does: serve TLS and write the certificate
	// clients must trust to a file.
	ep, err := testserver.New().Start(context.Background(), testserver.TLS())
	if err != nil {
		log.Fatal(err)
	}
	defer ep.Stop()
	dir, err := os.MkdirTemp("", "quickstart")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.WriteFile(filepath.Join(dir, "testserver.pem"), ep.CertificatePEM(), 0o644); err != nil {
		log.Fatal(err)
	}
	addr, caFile := ep.Addr(), filepath.Join(dir, "testserver.pem")

	// README.md Quick start: from here.
	ctx := context.Background()

	// The server's self-signed certificate is the CA to trust (for a public API: credentials.NewTLS(nil)).
	creds, err := credentials.NewClientTLSFromFile(caFile, "")
	if err != nil {
		log.Fatal(err)
	}
	// Every call on conn carries the token. It is renewed before it expires; a call the server rejects
	// waits for one shared refresh and is retried once. The Refresher logs in and rotates the refresh
	// token over conn itself: NewClient hands it the connection before any call can be made.
	conn, src, err := interceptor.NewClient(addr, func(cc grpc.ClientConnInterface) *tokensource.Source {
		return tokensource.New(testserver.NewRefresher(cc, testserver.DefaultUser, testserver.DefaultPassword))
	}, grpc.WithTransportCredentials(creds))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	defer src.Close() // first: it lets a refresh in flight on conn finish and keeps its rotated token

	resp, err := echov1.NewEchoServiceClient(conn).Echo(ctx, &echov1.EchoRequest{Message: "hello"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(resp.GetMessage(), "from", resp.GetUser())
	// README.md Quick start: to here.

	// Output:
	// hello from demo
}
