package httpauth_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"

	"google.golang.org/grpc"

	"github.com/tokenrefresh/grpc-tokenrefresh/httpauth"
	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// One Source serves a gRPC connection and an http.Client: both carry its
// token, and when the token expires on the server, the one that meets the
// rejection first refreshes it for both.
func Example() {
	ctx := context.Background()
	// The bundled test server, and an HTTP API that accepts its tokens.
	srv := testserver.New()
	ep, err := srv.Start(ctx, testserver.TLS())
	if err != nil {
		log.Fatal(err)
	}
	defer ep.Stop()
	api := httptest.NewTLSServer(srv.HTTPHandler())
	defer api.Close()

	// README.md HTTP clients: from here.
	conn, src, err := interceptor.NewClient(ep.Target(), func(cc grpc.ClientConnInterface) *tokensource.Source {
		return tokensource.New(testserver.NewRefresher(cc, testserver.DefaultUser, testserver.DefaultPassword))
	}, ep.DialOptions()...)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	defer src.Close()
	echo := echov1.NewEchoServiceClient(conn)
	// The same Source behind net/http. nil instead of api.Client().Transport means http.DefaultTransport.
	client := &http.Client{Transport: httpauth.NewTransport(src, api.Client().Transport)}
	// README.md HTTP clients: to here.

	call := func() {
		r, err := echo.Echo(ctx, &echov1.EchoRequest{Message: "hello"})
		if err != nil {
			log.Fatal(err)
		}
		resp, err := client.Get(api.URL + "/echo?message=hello")
		if err != nil {
			log.Fatal(err)
		}
		defer resp.Body.Close()
		var body testserver.HTTPEchoResponse
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("gRPC: %s from %s; HTTP: %s %s from %s\n", r.GetMessage(), r.GetUser(), resp.Status, body.Message, body.User)
	}
	call()
	srv.ForceExpire() // the server rejects the token from now on
	call()            // the gRPC call meets the rejection and refreshes; the HTTP request uses the new token
	fmt.Println("refreshes:", srv.Counters().RefreshesOK)

	// Output:
	// gRPC: hello from demo; HTTP: 200 OK hello from demo
	// gRPC: hello from demo; HTTP: 200 OK hello from demo
	// refreshes: 1
}

// ChallengeError turns a response whose Bearer challenge says the token
// lacks a scope into an error that names it.
func ExampleChallengeError() {
	api := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="api", error="insufficient_scope", scope="orders:write"`)
		w.WriteHeader(http.StatusForbidden)
	}))
	defer api.Close()
	src := tokensource.New(tokensource.RefresherFunc(func(context.Context, *tokensource.Token) (*tokensource.Token, error) {
		return &tokensource.Token{AccessToken: "at_example"}, nil
	}))
	defer src.Close()
	client := &http.Client{Transport: httpauth.NewTransport(src, api.Client().Transport)}

	resp, err := client.Post(api.URL+"/orders", "application/json", nil)
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	err = httpauth.ChallengeError(resp)
	var scope *tokensource.ScopeError
	if errors.Is(err, tokensource.ErrInsufficientScope) && errors.As(err, &scope) {
		fmt.Println(resp.Status, "- needs scope", scope.Scope)
	}
	// Output:
	// 403 Forbidden - needs scope orders:write
}
