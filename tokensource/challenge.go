package tokensource

import (
	"errors"
	"strconv"
	"strings"
	"time"
)

// ErrInsufficientScope is matched (errors.Is) by the error of a call that a
// resource server refused with a Bearer challenge whose error code is
// insufficient_scope (RFC 6750): the token is valid but lacks a scope the
// call needs. A refresh cannot help, so none is made and the call is not
// retried. The error is a *ScopeError, which names the scope the server
// asked for.
var ErrInsufficientScope = errors.New("tokensource: the server requires a scope the token lacks")

// ErrStepUpRequired is matched (errors.Is) by the error of a call that a
// resource server refused with a Bearer challenge whose error code is
// insufficient_user_authentication (RFC 9470): the user must authenticate
// again, more strongly or more recently, before the call can succeed. A
// refresh cannot help (a refresh token carries the old authentication), so
// none is made and the call is not retried. The error is a *StepUpError,
// which carries the acr_values and max_age the server asked for.
var ErrStepUpRequired = errors.New("tokensource: the server requires a stronger or more recent user authentication")

// ScopeError is a resource server's insufficient_scope challenge. It
// matches ErrInsufficientScope; get it with errors.As. Its message names
// the scope, never a token.
type ScopeError struct {
	// Scope is the challenge's scope parameter: the space-separated scopes
	// the call needs, as the server sent it. It may be empty: RFC 6750 makes
	// the parameter optional.
	Scope string
	// Description is the challenge's error_description, if any.
	Description string
}

func (e *ScopeError) Error() string {
	msg := ErrInsufficientScope.Error()
	if e.Scope != "" {
		msg += ": the server requires scope " + strconv.Quote(e.Scope)
	}
	return msg + describe(e.Description)
}

// Is reports whether target is ErrInsufficientScope.
func (e *ScopeError) Is(target error) bool { return target == ErrInsufficientScope }

// StepUpError is a resource server's insufficient_user_authentication
// challenge (RFC 9470). It matches ErrStepUpRequired; get it with errors.As
// and start a new authorization request with its ACRValues and MaxAge.
type StepUpError struct {
	// ACRValues is the challenge's acr_values parameter: space-separated
	// authentication context class references, in order of preference, as
	// the server sent it (empty when the challenge has none).
	ACRValues string
	// MaxAge is the challenge's max_age parameter: the longest time since
	// the user last authenticated that the server accepts. It is meaningful
	// only when HasMaxAge is true (0 then asks for a fresh authentication).
	MaxAge time.Duration
	// HasMaxAge reports whether the challenge carried a valid max_age.
	HasMaxAge bool
	// Description is the challenge's error_description, if any.
	Description string
}

func (e *StepUpError) Error() string {
	msg := ErrStepUpRequired.Error()
	var what []string
	if e.ACRValues != "" {
		what = append(what, "acr_values "+strconv.Quote(e.ACRValues))
	}
	if e.HasMaxAge {
		what = append(what, "max_age "+e.MaxAge.String())
	}
	if len(what) > 0 {
		msg += " (" + strings.Join(what, ", ") + ")"
	}
	return msg + describe(e.Description)
}

// Is reports whether target is ErrStepUpRequired.
func (e *StepUpError) Is(target error) bool { return target == ErrStepUpRequired }

// describe renders a server's error_description for a message: quoted, so
// that control characters or a forged line cannot slip into a log, and
// bounded.
func describe(d string) string {
	if d == "" {
		return ""
	}
	const maxLen = 200
	if len(d) > maxLen {
		d = d[:maxLen] + "..."
	}
	return ": " + strconv.Quote(d)
}
