package testserver

import (
	"context"
	"crypto/subtle"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	authv1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/auth/v1"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
)

// Register registers AuthService and EchoService on reg. Combine it with
// ServerOptions, which carries the authentication the services rely on.
func (s *Server) Register(reg grpc.ServiceRegistrar) {
	authv1.RegisterAuthServiceServer(reg, authService{s: s})
	echov1.RegisterEchoServiceServer(reg, echoService{})
}

// authService implements tokenrefresh.auth.v1.AuthService on a Server.
type authService struct {
	authv1.UnimplementedAuthServiceServer
	s *Server
}

var _ authv1.AuthServiceServer = authService{}

func (a authService) Login(ctx context.Context, req *authv1.LoginRequest) (*authv1.LoginResponse, error) {
	s := a.s
	method, _ := grpc.Method(ctx)
	want, ok := s.users[req.GetUser()]
	// Compare even for an unknown user so the answer time does not reveal
	// which users exist.
	match := subtle.ConstantTimeCompare([]byte(want), []byte(req.GetPassword())) == 1
	if !ok || !match {
		s.counters.loginsFailed.Add(1)
		s.logger.InfoContext(ctx, "login failed", "method", method, "user", req.GetUser())
		return nil, status.Error(codes.Unauthenticated, messagePrefix+"invalid user or password")
	}
	p := s.newFamily(req.GetUser())
	s.counters.logins.Add(1)
	s.logger.InfoContext(ctx, "login", "method", method, "user", req.GetUser(), "expiry", p.expiry)
	return &authv1.LoginResponse{Token: p.proto()}, nil
}

func (a authService) Refresh(ctx context.Context, req *authv1.RefreshRequest) (*authv1.RefreshResponse, error) {
	s := a.s
	p, err := s.refreshToken(ctx, req.GetRefreshToken())
	if err != nil {
		s.counters.refreshesFailed.Add(1)
		return nil, err
	}
	s.counters.refreshesOK.Add(1)
	return &authv1.RefreshResponse{Token: p.proto()}, nil
}

// refreshToken applies the injected faults, then rotates the refresh token.
// Injected faults leave the refresh token unused, so a client may retry it.
// It logs every failure once: a rejected refresh token through reject, any
// other failure as "refresh failed" at Info level.
func (s *Server) refreshToken(ctx context.Context, refreshToken string) (pair, error) {
	if refreshToken == "" {
		return pair{}, s.refreshFailed(ctx, status.Error(codes.InvalidArgument, messagePrefix+"refresh_token is required"))
	}
	if latency := s.refreshLatency(); latency > 0 {
		t := time.NewTimer(latency)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return pair{}, s.refreshFailed(ctx, status.FromContextError(ctx.Err()).Err())
		}
	}
	if code, fail := s.takeInjectedFailure(); fail {
		return pair{}, s.refreshFailed(ctx, status.Errorf(code, messagePrefix+"injected refresh failure (%v)", code))
	}
	if s.failFunc != nil {
		if err := s.failFunc(ctx, refreshToken); err != nil {
			return pair{}, s.refreshFailed(ctx, err)
		}
	}
	p, famID, why := s.rotate(refreshToken)
	if why != "" {
		s.observeRejection(ctx, Rejection{Kind: "refresh token", Reason: string(why), Reuse: why == rejectReused, Family: famID})
		return pair{}, s.reject(ctx, "refresh token", why, "family", famID)
	}
	method, _ := grpc.Method(ctx)
	s.logger.DebugContext(ctx, "refresh", "method", method, "family", famID, "expiry", p.expiry)
	return p, nil
}

// refreshFailed logs a Refresh call that failed for a reason other than its
// refresh token, and returns err.
func (s *Server) refreshFailed(ctx context.Context, err error) error {
	method, _ := grpc.Method(ctx)
	s.logger.InfoContext(ctx, "refresh failed", "method", method, "code", status.Code(err).String())
	return err
}

func (a authService) Revoke(ctx context.Context, req *authv1.RevokeRequest) (*authv1.RevokeResponse, error) {
	if req.GetToken() == "" {
		return nil, status.Error(codes.InvalidArgument, messagePrefix+"token is required")
	}
	a.s.counters.revokes.Add(1)
	a.s.RevokeToken(req.GetToken())
	return &authv1.RevokeResponse{}, nil
}

func (p pair) proto() *authv1.TokenPair {
	return &authv1.TokenPair{
		AccessToken:       p.access,
		RefreshToken:      p.refresh,
		ExpireTime:        timestamppb.New(p.expiry),
		RefreshExpireTime: timestamppb.New(p.refreshExpiry),
	}
}
