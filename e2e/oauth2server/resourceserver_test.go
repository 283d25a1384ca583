package oauth2server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"maps"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
// bearer token is active (a stream's, when it opens), with a method of each
// RPC kind. The authorization server verifies the JWT
// (signature, issuer, expiry) and the storage checks that it was not
// revoked, so every Unauthenticated comes from the real server's check.
type resourceServer struct {
	echov1.UnimplementedEchoServiceServer
	introspector rs.ResourceServer
	srv          *grpc.Server
	addr         string

	accepted atomic.Int64
	rejected atomic.Int64

	// cacheFor > 0: an active token's introspection is reused for that
	// long (never past the token's expiry), as resource servers may do
	// (RFC 7662, section 4), so that a revocation takes effect within it;
	// the calls that find no fresh one share one introspection.
	cacheFor time.Duration
	mu       sync.Mutex
	cache    map[string]*introspection // by token
}

// introspection is one introspection of a token, shared by the calls that
// wait for it (done) and reused until until.
type introspection struct {
	done    chan struct{}
	fetched bool // guarded by resourceServer.mu, like until
	until   time.Time
	resp    *oidc.IntrospectionResponse // set before done is closed
	err     error
}

func startResourceServer(t *testing.T, a *authServer) *resourceServer {
	return startCachingResourceServer(t, a, 0)
}

// startCachingResourceServer starts a resource server that reuses an active
// token's introspection for cacheFor (0: never). Under the load of 200
// callers, introspecting every call would be the bottleneck of the test.
func startCachingResourceServer(t *testing.T, a *authServer, cacheFor time.Duration) *resourceServer {
	t.Helper()
	introspector, err := rs.NewResourceServerClientCredentials(context.Background(), a.issuer, rsClient, rsSecret,
		rs.WithClient(a.srv.Client()))
	if err != nil {
		t.Fatal(err)
	}
	r := &resourceServer{introspector: introspector, cacheFor: cacheFor, cache: map[string]*introspection{}}
	// The same certificate as the authorization server (httptest's, valid
	// for 127.0.0.1), so one root serves both.
	creds := credentials.NewTLS(&tls.Config{Certificates: a.srv.TLS.Certificates, MinVersion: tls.VersionTLS12})
	r.srv = grpc.NewServer(grpc.Creds(creds), grpc.UnaryInterceptor(r.authenticate), grpc.StreamInterceptor(r.authenticateStream))
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
	ctx, err := r.check(ctx)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// authenticateStream checks a stream's token once, when it opens, before
// any message is read.
func (r *resourceServer) authenticateStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if _, err := r.check(ss.Context()); err != nil {
		return err
	}
	return handler(srv, ss)
}

// check introspects the call's bearer token and returns ctx carrying its
// subject.
func (r *resourceServer) check(ctx context.Context) (context.Context, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	auth := md.Get("authorization")
	if len(auth) != 1 || !strings.HasPrefix(auth[0], "Bearer ") {
		r.rejected.Add(1)
		return nil, status.Error(codes.Unauthenticated, "resource server: no bearer token")
	}
	resp, err := r.introspect(ctx, strings.TrimPrefix(auth[0], "Bearer "))
	if err != nil {
		return nil, status.Error(codes.Unavailable, "resource server: introspection failed")
	}
	if !resp.Active {
		r.rejected.Add(1)
		return nil, status.Error(codes.Unauthenticated, "resource server: token is not active")
	}
	r.accepted.Add(1)
	return context.WithValue(ctx, subjectKey{}, resp.Subject), nil
}

// introspect asks the authorization server about tok, or, with cacheFor,
// reuses a fresh answer that said it was active or waits for the
// introspection another call has started.
func (r *resourceServer) introspect(ctx context.Context, tok string) (*oidc.IntrospectionResponse, error) {
	if r.cacheFor == 0 {
		return rs.Introspect[*oidc.IntrospectionResponse](ctx, r.introspector, tok)
	}
	now := time.Now()
	r.mu.Lock()
	c := r.cache[tok]
	fetch := c == nil || c.fetched && !now.Before(c.until)
	if fetch {
		c = &introspection{done: make(chan struct{})}
		r.cache[tok] = c
	}
	r.mu.Unlock()
	if fetch {
		// Not bounded by this call's deadline: other calls share the answer.
		ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), callTimeout)
		c.resp, c.err = rs.Introspect[*oidc.IntrospectionResponse](ictx, r.introspector, tok)
		cancel()
		now = time.Now()
		until := now // a failure or an inactive token is asked about again
		if c.err == nil && c.resp.Active {
			until = now.Add(r.cacheFor)
			if exp := c.resp.Expiration.AsTime(); exp.Before(until) {
				until = exp
			}
		}
		r.mu.Lock()
		c.fetched, c.until = true, until
		maps.DeleteFunc(r.cache, func(_ string, c *introspection) bool { return c.fetched && !now.Before(c.until) })
		r.mu.Unlock()
		close(c.done)
	}
	select {
	case <-c.done:
		return c.resp, c.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (r *resourceServer) Echo(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	sub, _ := ctx.Value(subjectKey{}).(string)
	return &echov1.EchoResponse{Message: req.GetMessage(), User: sub}, nil
}

func (r *resourceServer) ServerStreamEcho(req *echov1.ServerStreamEchoRequest, stream grpc.ServerStreamingServer[echov1.ServerStreamEchoResponse]) error {
	for i := range req.GetCount() {
		if err := stream.Send(&echov1.ServerStreamEchoResponse{Message: req.GetMessage(), Index: i}); err != nil {
			return err
		}
	}
	return nil
}

func (r *resourceServer) ClientStreamEcho(stream grpc.ClientStreamingServer[echov1.ClientStreamEchoRequest, echov1.ClientStreamEchoResponse]) error {
	var msgs []string
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&echov1.ClientStreamEchoResponse{Count: int32(len(msgs)), Messages: msgs})
		}
		if err != nil {
			return err
		}
		msgs = append(msgs, m.GetMessage())
	}
}

func (r *resourceServer) BidiStreamEcho(stream grpc.BidiStreamingServer[echov1.BidiStreamEchoRequest, echov1.BidiStreamEchoResponse]) error {
	for i := int32(0); ; i++ {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&echov1.BidiStreamEchoResponse{Message: m.GetMessage(), Index: i}); err != nil {
			return err
		}
	}
}

// clientTLS returns the transport credentials a client of either
// server needs: trust in the httptest certificate.
func (a *authServer) clientTLS() credentials.TransportCredentials {
	pool := x509.NewCertPool()
	pool.AddCert(a.srv.Certificate())
	return credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
}
