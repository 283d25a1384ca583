package testserver

import (
	"context"
	"log/slog"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// rejection says why a token was not accepted. Its text is safe to send to
// the client and to log: it never contains the token.
type rejection string

const (
	rejectNoHeader    rejection = `no authorization header, want "Bearer <access token>"`
	rejectManyHeaders rejection = "more than one authorization header"
	rejectMalformed   rejection = `malformed authorization header, want "Bearer <access token>"`
	rejectUnknown     rejection = "unknown token"
	rejectExpired     rejection = "token expired"
	rejectRevoked     rejection = "token revoked"
	rejectReused      rejection = "refresh token reuse detected; token family revoked"
	rejectAll         rejection = "access tokens are not accepted"
)

// messagePrefix begins the message of every status the server itself
// answers with, so that all of them, whichever check failed, read
// "testserver: <reason>" (see the package documentation).
const messagePrefix = "testserver: "

// bearerToken returns the token of the request's "authorization: Bearer
// <token>" header, or why there is none. The header is parsed here rather
// than with go-grpc-middleware's auth.AuthFromMD, whose errors carry
// wordings of their own ("Request unauthenticated with bearer", "Bad
// authorization string"). The scheme is matched case-insensitively (RFC 9110,
// section 11.1); two headers are refused rather than one of them picked,
// because a client that sends two has a bug a test should see.
func bearerToken(ctx context.Context) (string, rejection) {
	vals := metadata.ValueFromIncomingContext(ctx, "authorization")
	switch {
	case len(vals) == 0:
		return "", rejectNoHeader
	case len(vals) > 1:
		return "", rejectManyHeaders
	}
	scheme, token, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || token == "" {
		return "", rejectMalformed
	}
	return token, ""
}

// reject logs a rejected token with the method and the reason (never the
// token), and returns the Unauthenticated status the client gets. what names
// the kind of token: "access token" or "refresh token". Rejections are
// logged at Info level, so that the default level shows why a client was
// turned away; a reused refresh token, which revokes a whole family, at Warn.
func (s *Server) reject(ctx context.Context, what string, why rejection, attrs ...any) error {
	method, _ := grpc.Method(ctx)
	level := slog.LevelInfo
	if why == rejectReused {
		level = slog.LevelWarn
	}
	s.logger.Log(ctx, level, what+" rejected", append([]any{"method", method, "reason", string(why)}, attrs...)...)
	return status.Error(codes.Unauthenticated, messagePrefix+string(why))
}
