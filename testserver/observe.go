package testserver

import "context"

// Rejection describes a token the server turned away, as reported to the
// function installed with WithRejectionObserver. It never contains the token.
type Rejection struct {
	// Kind is "access token" or "refresh token".
	Kind string
	// Reason is what the client was told, without the "testserver: "
	// prefix: "token expired", "token revoked", "unknown token", and so on.
	Reason string
	// Reuse reports a refresh token presented a second time: the server
	// revoked its family.
	Reuse bool
	// Family is the id of the refresh token's family when the server knew
	// it; 0 for access tokens and unknown refresh tokens.
	Family uint64
}

// WithRejectionObserver installs f, called for every access or refresh token
// the server rejects, before the client gets its answer, with the RPC's
// context (whose incoming metadata identify the caller). Fault-injection
// tests use it to count refresh-token reuse and to see who sent a rejected
// token when. f runs on the RPC's goroutine, concurrently for concurrent
// RPCs, and must be quick. The default is none; nil is ignored.
func WithRejectionObserver(f func(ctx context.Context, r Rejection)) Option {
	return func(o *options) {
		if f != nil {
			o.onReject = f
		}
	}
}

// observeRejection reports r to the observer, if there is one.
func (s *Server) observeRejection(ctx context.Context, r Rejection) {
	if s.onReject != nil {
		s.onReject(ctx, r)
	}
}
