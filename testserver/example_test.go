package testserver_test

import (
	"context"
	"fmt"
	"log"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
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
