package oauth2server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/zitadel/oidc/v3/pkg/client/rs"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
)

// resourceServer is a gRPC server (EchoService) that accepts a call only if
// the authorization server's introspection endpoint (RFC 7662) says the
// bearer token is active. The authorization server verifies the JWT
// (signature, issuer, expiry) and the storage checks that it was not
// revoked, so every Unauthenticated comes from the real server's check.
type resourceServer struct {
	echov1.UnimplementedEchoServiceServer
	introspector rs.ResourceServer
	srv          *grpc.Server
	addr         string

	accepted atomic.Int64
	rejected atomic.Int64
}

func startResourceServer(t *testing.T, a *authServer) *resourceServer {
	t.Helper()
	introspector, err := rs.NewResourceServerClientCredentials(context.Background(), a.issuer, rsClient, rsSecret,
		rs.WithClient(a.srv.Client()))
	if err != nil {
		t.Fatal(err)
	}
	r := &resourceServer{introspector: introspector}
	// The same certificate as the authorization server (httptest's, valid
	// for 127.0.0.1), so one root serves both.
	creds := credentials.NewTLS(&tls.Config{Certificates: a.srv.TLS.Certificates, MinVersion: tls.VersionTLS12})
	r.srv = grpc.NewServer(grpc.Creds(creds), grpc.UnaryInterceptor(r.authenticate))
	echov1.RegisterEchoServiceServer(r.srv, r)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = lis.Addr().String()
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = r.srv.Serve(lis)
	}()
	t.Cleanup(func() {
		r.srv.Stop()
		<-served
	})
	return r
}

type subjectKey struct{}

func (r *resourceServer) authenticate(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	auth := md.Get("authorization")
	if len(auth) != 1 || !strings.HasPrefix(auth[0], "Bearer ") {
		r.rejected.Add(1)
		return nil, status.Error(codes.Unauthenticated, "resource server: no bearer token")
	}
	resp, err := rs.Introspect[*oidc.IntrospectionResponse](ctx, r.introspector, strings.TrimPrefix(auth[0], "Bearer "))
	if err != nil {
		return nil, status.Error(codes.Unavailable, "resource server: introspection failed")
	}
	if !resp.Active {
		r.rejected.Add(1)
		return nil, status.Error(codes.Unauthenticated, "resource server: token is not active")
	}
	r.accepted.Add(1)
	return handler(context.WithValue(ctx, subjectKey{}, resp.Subject), req)
}

func (r *resourceServer) Echo(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	sub, _ := ctx.Value(subjectKey{}).(string)
	return &echov1.EchoResponse{Message: req.GetMessage(), User: sub}, nil
}

// clientTLS returns the transport credentials a client of either
// server needs: trust in the httptest certificate.
func (a *authServer) clientTLS() credentials.TransportCredentials {
	pool := x509.NewCertPool()
	pool.AddCert(a.srv.Certificate())
	return credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
}
