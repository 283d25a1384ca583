package interceptor

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// ErrInsecureTransport is matched (errors.Is) by the error of a call that
// would have sent a token over a connection without transport security while
// AllowInsecure was not given. The call fails with codes.Unauthenticated, no
// token is sent, and no refresh is triggered.
var ErrInsecureTransport = errors.New("interceptor: refusing to send a token over a connection without transport security")

// statusError is an error with a gRPC status (status.Code and
// status.FromError see its code, message and details) that still unwraps to
// its causes for errors.Is. Its message never contains token text: causes
// come from the token source, whose errors never carry tokens, from this
// package, or from the server.
type statusError struct {
	st     *status.Status
	causes []error
}

func newStatusError(code codes.Code, msg string, causes ...error) *statusError {
	return &statusError{st: status.New(code, msg), causes: causes}
}

func (e *statusError) Error() string {
	return fmt.Sprintf("rpc error: code = %s desc = %s", e.st.Code(), e.st.Message())
}

// GRPCStatus lets status.FromError, status.Code and grpc-go itself read the
// error's status.
func (e *statusError) GRPCStatus() *status.Status { return e.st }

// Unwrap returns the causes for errors.Is and errors.As.
func (e *statusError) Unwrap() []error { return e.causes }

// sourceError maps a failure of the token source to the error the caller
// sees:
//   - the caller's ctx ended: the ctx error's code (Canceled,
//     DeadlineExceeded), still matching context.Canceled or
//     context.DeadlineExceeded;
//   - errors.Is(err, tokensource.ErrReauthRequired): Unauthenticated;
//   - errors.Is(err, tokensource.ErrUnchangedToken): Unauthenticated, since
//     the refresh handed back the token the server had just rejected;
//   - ErrNoSource (a call from inside NewClient's newSource):
//     FailedPrecondition;
//   - errors.Is(err, tokensource.ErrStoreUnusable): FailedPrecondition, since
//     the Store cannot work as configured (a FileStore's directory is
//     missing, say) and retrying cannot help until that is fixed;
//   - anything else (a transient refresh failure, such as a token file
//     that cannot be used now, tokensource.ErrTokenFile; ErrClosed,
//     ErrInvalidToken, a refresh that hit its own timeout): Unavailable.
func sourceError(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil &&
		(errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		causes := []error{err}
		if !errors.Is(err, ctxErr) {
			causes = append(causes, ctxErr)
		}
		return newStatusError(status.FromContextError(ctxErr).Code(), "interceptor: waiting for a token: "+err.Error(), causes...)
	}
	code := codes.Unavailable
	if errors.Is(err, ErrNoSource) || errors.Is(err, tokensource.ErrStoreUnusable) {
		code = codes.FailedPrecondition
	} else if errors.Is(err, tokensource.ErrReauthRequired) || errors.Is(err, tokensource.ErrUnchangedToken) {
		code = codes.Unauthenticated
	}
	return newStatusError(code, "interceptor: cannot obtain a token: "+err.Error(), err)
}

// invalidTokenError reports a token the interceptor will not send; err,
// from tokensource's Sendable, describes the problem without quoting the
// token and matches tokensource.ErrInvalidToken.
func invalidTokenError(err error) error {
	return newStatusError(codes.Unavailable, "interceptor: cannot use the token from the token source: "+err.Error(), err)
}

func insecureTransportError(detail string) error {
	return newStatusError(codes.Unauthenticated, ErrInsecureTransport.Error()+" ("+detail+"); "+
		"use TLS transport credentials, or interceptor.AllowInsecure() for local testing", ErrInsecureTransport)
}
