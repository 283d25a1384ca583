package tokensource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Token is an access token with the credential that renews it.
//
// A Token is immutable once a Source hands it out: the Source compares tokens
// by identity to tell a stale rejection from a fresh one, so callers must not
// modify a *Token they received. Token's String, GoString, Format and LogValue
// methods redact the secrets, so a Token can be passed to fmt or log/slog
// without leaking them.
type Token struct {
	// AccessToken is the bearer credential sent with every RPC.
	AccessToken string
	// RefreshToken is the credential a Refresher uses to obtain the next
	// token. It may be empty when the Refresher does not need one.
	RefreshToken string
	// Expiry is when AccessToken stops being accepted. The zero value means
	// the token never expires.
	Expiry time.Time
}

// Refresher obtains a new token. current is the token being replaced (nil
// when there is none). A Refresher returns Permanent(err) when retrying cannot
// help (the refresh credential was revoked, for example); any other error is
// treated as transient and retried later with backoff.
//
// The Source calls Refresh from at most one goroutine at a time, on a context
// that is detached from the callers' contexts and carries its own timeout.
type Refresher interface {
	// Refresh returns the token that replaces current (nil when there is
	// none), or an error; see the type's documentation for what the error
	// means to the Source.
	Refresh(ctx context.Context, current *Token) (*Token, error)
}

// RefresherFunc adapts an ordinary function to the Refresher interface.
type RefresherFunc func(ctx context.Context, current *Token) (*Token, error)

// Refresh calls f(ctx, current).
func (f RefresherFunc) Refresh(ctx context.Context, current *Token) (*Token, error) {
	return f(ctx, current)
}

// ErrReauthRequired reports that the refresh credential is no longer accepted
// and the user must log in again. Errors returned by a Source in that state
// match it with errors.Is.
var ErrReauthRequired = errors.New("tokensource: re-authentication required")

// Permanent wraps err to tell the Source that retrying the refresh cannot
// help (for example an OAuth 2 invalid_grant). The Source then enters the
// re-authentication-required state. Permanent(nil) returns nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err, or any error it wraps, was marked with
// Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// String returns a redacted description of t that is safe to log.
func (t *Token) String() string {
	if t == nil {
		return "<nil>"
	}
	return "tokensource.Token{AccessToken:" + redact(t.AccessToken) +
		" RefreshToken:" + redact(t.RefreshToken) +
		" Expiry:" + expiryString(t.Expiry) + "}"
}

// GoString is String, so that %#v redacts too.
func (t *Token) GoString() string { return t.String() }

// Format implements fmt.Formatter so that every verb (%v, %+v, %#v, %s, %q,
// %x) prints the redacted form, whether t is a Token or a *Token.
func (t Token) Format(f fmt.State, verb rune) {
	s := t.String()
	if verb == 'q' {
		s = fmt.Sprintf("%q", s)
	}
	_, _ = f.Write([]byte(s))
}

// LogValue implements slog.LogValuer: a Token logs as its expiry and whether
// each credential is set, never the credentials themselves.
func (t Token) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Bool("access_token_set", t.AccessToken != ""),
		slog.Bool("refresh_token_set", t.RefreshToken != ""),
		slog.String("expiry", expiryString(t.Expiry)),
	)
}

// clone returns a copy of t (nil for nil): a token the Source hands out, or
// one a Store returns, must not share memory with one the caller holds.
func (t *Token) clone() *Token {
	if t == nil {
		return nil
	}
	c := *t
	return &c
}

func redact(s string) string {
	if s == "" {
		return `""`
	}
	return "<redacted>"
}

func expiryString(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// ErrClosed is returned by a Source after Close.
var ErrClosed = errors.New("tokensource: source is closed")

// ErrInvalidToken is wrapped by the error a Source returns when its Refresher
// produced a token that cannot be used (nil, empty, already expired, or with
// characters that are not allowed in an HTTP/2 header value). Such a token is
// never stored nor handed out. Source.SetToken refuses such a token with an
// error matching ErrInvalidToken too.
var ErrInvalidToken = errors.New("tokensource: refresher returned an invalid token")
