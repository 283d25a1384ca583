package tokensource

import (
	"errors"
	"fmt"
	"strconv"
	"time"
)

// ErrRefreshTimeout is matched (errors.Is) by the error a refresh returns
// when the refresh timeout (WithRefreshTimeout) cut it off. That error
// deliberately does not match context.DeadlineExceeded, so a caller can tell
// "the refresh timed out" (retry later) from "my own deadline expired".
var ErrRefreshTimeout = errors.New("tokensource: refresh timed out")

// ErrRefresherPanicked is matched (errors.Is) by the error of a refresh whose
// Refresher panicked. The Source recovers the panic instead of crashing the
// process: every waiter gets the error, the Source backs off as after any
// failure, and the stack is logged at Error, to the WithLogger logger or,
// without one, to slog.Default(). The error and the log name the panic
// value's type, never the value itself (it may hold a token), except for the
// runtime's own errors such as a nil dereference.
var ErrRefresherPanicked = errors.New("tokensource: the Refresher panicked")

// ErrSelfWait is returned instead of deadlocking when code running inside a
// Source's own refresh (its Refresher, or an RPC the Refresher makes through
// an interceptor that ignored InRefresh) asks the same Source for a token it
// would have to wait for. It is a bug in the wiring, not a transient failure.
var ErrSelfWait = errors.New("tokensource: token requested from inside the same Source's refresh (it would wait for itself)")

// timeoutError is the failure of a refresh cut off by the refresh timeout.
// It has no Unwrap on purpose: the Refresher's own error then almost always
// wraps context.DeadlineExceeded, and a caller's errors.Is on that must not
// mistake the refresh timing out for its own deadline.
type timeoutError struct {
	after time.Duration
	err   error
}

func (e *timeoutError) Error() string {
	return "tokensource: refresh failed: timed out after " + e.after.String() + ": " + e.err.Error()
}

func (e *timeoutError) Is(target error) bool { return target == ErrRefreshTimeout }

// invalidTokenError says what is wrong with a token without quoting it.
type invalidTokenError struct{ problem string }

func (e *invalidTokenError) Error() string { return "invalid token: " + e.problem }

func (e *invalidTokenError) Is(target error) bool { return target == ErrInvalidToken }

// Sendable reports whether t can be sent as "authorization: Bearer <t>": t
// is not nil and its access token is not empty and consists of visible ASCII
// (0x21–0x7E). That is the character set of an HTTP/2 (and gRPC) header value
// minus space and tab, which a bearer token (RFC 6750's b64token) never
// contains and which would be trimmed or split by intermediaries. Sendable
// does not look at Expiry: whether a token has expired depends on the
// caller's clock. The error matches ErrInvalidToken and names the problem
// and, for a bad byte, its offset, never the token.
func (t *Token) Sendable() error {
	if t == nil {
		return &invalidTokenError{"the token is nil"}
	}
	if t.AccessToken == "" {
		return &invalidTokenError{"the access token is empty"}
	}
	for i := 0; i < len(t.AccessToken); i++ {
		if c := t.AccessToken[i]; c < 0x21 || c > 0x7e {
			return &invalidTokenError{"the access token has a byte outside visible ASCII (0x21-0x7E) at offset " +
				strconv.Itoa(i) + " of " + strconv.Itoa(len(t.AccessToken)) + "; it cannot be sent in a header"}
		}
	}
	return nil
}

// validateToken checks that t is Sendable and has not expired at now.
func validateToken(t *Token, now time.Time) error {
	if err := t.Sendable(); err != nil {
		return err
	}
	if !t.Expiry.IsZero() && !now.Before(t.Expiry.Round(0)) { // wall clock, as in newState
		return &invalidTokenError{fmt.Sprintf("the token expired at %s (now %s)",
			t.Expiry.UTC().Format(time.RFC3339Nano), now.UTC().Format(time.RFC3339Nano))}
	}
	return nil
}

// ErrUnchangedToken is matched (errors.Is) by the error of a forced refresh
// whose Refresher returned the very access token the server had just
// rejected. Retrying with it cannot help, so the refresh counts as failed
// (with backoff) and the interceptors return Unauthenticated. The usual
// cause is a Refresher that caches, such as FromOAuth2 around an
// oauth2.ReuseTokenSource (see FromOAuth2).
var ErrUnchangedToken = errors.New("tokensource: the refresh returned the token the server had just rejected")

// ErrStoreUnusable is matched (errors.Is) by the errors of a Store that
// cannot work as configured: a FileStore whose directory does not exist, is
// not a directory or cannot be written, say. Retrying cannot help until the
// configuration is fixed, so such an error does not match
// ErrCoordinatorUnavailable, which means a transient outage. The error names
// what is wrong (the file or directory, and the cause) and wraps the
// operating system's error.
var ErrStoreUnusable = errors.New("tokensource: the token store cannot work as configured")

// RetryAfter wraps err, a Refresher's transient failure, with the wait the
// authorization server asked for (an HTTP Retry-After, say): the refresh
// tries again after d (capped by WithBackoff's maximum) instead of its own
// backoff. The OAuth 2 adapters do this themselves. errors.Is and errors.As
// see err through it. A nil err stays nil.
func RetryAfter(err error, d time.Duration) error {
	if err == nil {
		return nil
	}
	return &retryAfterError{err: err, after: max(d, 0)}
}

type retryAfterError struct {
	err   error
	after time.Duration
}

func (e *retryAfterError) Error() string             { return e.err.Error() }
func (e *retryAfterError) Unwrap() error             { return e.err }
func (e *retryAfterError) RetryAfter() time.Duration { return e.after }

// retryAfter returns the wait an error in err's chain asks for with a
// RetryAfter() time.Duration method (RetryAfter's, or one of its own).
func retryAfter(err error) (time.Duration, bool) {
	var ra interface{ RetryAfter() time.Duration }
	if errors.As(err, &ra) {
		return ra.RetryAfter(), true
	}
	return 0, false
}
