package testserver

import (
	"context"
	"strings"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	authv1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/auth/v1"
)

// ServerOptions returns the interceptors that count every RPC and require a
// valid bearer token on every service except AuthService and server
// reflection. Use them with Register to run the test server on a grpc.Server
// of your own:
//
//	gs := grpc.NewServer(srv.ServerOptions()...)
//	srv.Register(gs)
//
// A missing, unknown, expired or revoked token is answered with
// codes.Unauthenticated before the handler runs, so the client receives a
// trailers-only response.
func (s *Server) ServerOptions() []grpc.ServerOption {
	authn := auth.AuthFunc(s.authenticate)
	needsToken := selector.MatchFunc(requiresToken)
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(
			s.countUnary,
			selector.UnaryServerInterceptor(auth.UnaryServerInterceptor(authn), needsToken),
		),
		grpc.ChainStreamInterceptor(
			s.countStream,
			selector.StreamServerInterceptor(auth.StreamServerInterceptor(authn), needsToken),
		),
	}
}

// requiresToken exempts the services a client must reach without a token:
// AuthService (to obtain one) and reflection (so grpcurl can list services).
func requiresToken(_ context.Context, c interceptors.CallMeta) bool {
	switch {
	case c.Service == authv1.AuthService_ServiceDesc.ServiceName:
		return false
	case strings.HasPrefix(c.Service, "grpc.reflection."):
		return false
	}
	return true
}

type userKey struct{}

// UserFromContext returns the user whose access token authenticated the RPC
// running on ctx. It reports false on AuthService and reflection RPCs, which
// need no token.
func UserFromContext(ctx context.Context) (string, bool) {
	u, ok := ctx.Value(userKey{}).(string)
	return u, ok
}

// authenticate is the go-grpc-middleware auth.AuthFunc. Every rejection,
// a missing or malformed header included, is logged and worded by reject;
// none contains the presented token.
func (s *Server) authenticate(ctx context.Context) (context.Context, error) {
	token, why := bearerToken(ctx)
	var user string
	if why == "" {
		user, why = s.checkAccess(token)
	}
	if why != "" {
		s.observeRejection(ctx, Rejection{Kind: "access token", Reason: string(why)})
		return nil, s.reject(ctx, "access token", why)
	}
	return context.WithValue(ctx, userKey{}, user), nil
}

func (s *Server) countUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	s.countRequest(ctx, info.FullMethod)
	resp, err := handler(ctx, req)
	s.countAnswer(err)
	return resp, err
}

func (s *Server) countStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	s.countRequest(ss.Context(), info.FullMethod)
	err := handler(srv, ss)
	s.countAnswer(err)
	return err
}

func (s *Server) countRequest(ctx context.Context, fullMethod string) {
	s.counters.countRPC(fullMethod)
	if len(metadata.ValueFromIncomingContext(ctx, "authorization")) > 0 {
		s.counters.withToken.Add(1)
	} else {
		s.counters.withoutToken.Add(1)
	}
}

func (s *Server) countAnswer(err error) {
	if status.Code(err) == codes.Unauthenticated {
		s.counters.unauthenticated.Add(1)
	}
}
