package testserver

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	authv1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/auth/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// Refresher is the client side of AuthService as a tokensource.Refresher:
// it logs in with a user's password when there is no token to renew, and
// otherwise exchanges the current refresh token for the next pair.
//
// A Refresher keeps no state of its own (the refresh token travels in the
// current token), so it is safe for concurrent use; a tokensource.Source
// calls it from one goroutine at a time anyway, which is what rotating
// refresh tokens need.
type Refresher struct {
	client   authv1.AuthServiceClient
	user     string
	password string
}

var _ tokensource.Refresher = (*Refresher)(nil)

// NewRefresher returns a Refresher that calls AuthService over conn as user.
// conn may be the same connection that carries the protected RPCs, with the
// interceptor package installed: the AuthService calls are made on the
// Source's refresh context, which the interceptors let through untouched.
func NewRefresher(conn grpc.ClientConnInterface, user, password string) *Refresher {
	return &Refresher{client: authv1.NewAuthServiceClient(conn), user: user, password: password}
}

// Refresh returns a new token. With current nil or without a refresh token
// it calls Login; otherwise it calls Refresh with current.RefreshToken, which
// the server then no longer accepts.
//
// A Login or Refresh answered with codes.Unauthenticated or
// codes.PermissionDenied (wrong password; a reused, revoked or expired
// refresh token) is returned wrapped in tokensource.Permanent, because trying
// again cannot help. Other errors, such as codes.Unavailable, are transient.
// status.Code reports the server's code for every error, and no error
// contains a token.
func (r *Refresher) Refresh(ctx context.Context, current *tokensource.Token) (*tokensource.Token, error) {
	var (
		pair *authv1.TokenPair
		op   string
		err  error
	)
	if current == nil || current.RefreshToken == "" {
		op = "login"
		var resp *authv1.LoginResponse
		resp, err = r.client.Login(ctx, &authv1.LoginRequest{User: r.user, Password: r.password})
		pair = resp.GetToken()
	} else {
		op = "refresh"
		var resp *authv1.RefreshResponse
		resp, err = r.client.Refresh(ctx, &authv1.RefreshRequest{RefreshToken: current.RefreshToken})
		pair = resp.GetToken()
	}
	if err != nil {
		err = fmt.Errorf("testserver: %s: %w", op, err)
		switch status.Code(err) {
		case codes.Unauthenticated, codes.PermissionDenied:
			return nil, tokensource.Permanent(err)
		}
		return nil, err
	}
	if pair.GetAccessToken() == "" {
		return nil, errors.New("testserver: " + op + ": the response carries no access token")
	}
	tok := &tokensource.Token{AccessToken: pair.GetAccessToken(), RefreshToken: pair.GetRefreshToken()}
	if pair.GetExpireTime() != nil {
		tok.Expiry = pair.GetExpireTime().AsTime()
	}
	return tok, nil
}
