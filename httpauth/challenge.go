package httpauth

import (
	"net/http"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/challenge"
)

// ChallengeError returns what the Bearer challenge of resp (its
// WWW-Authenticate header, RFC 6750, read by the RFC 9110 grammar: several
// challenges in one field or across several fields, challenges for other
// schemes such as DPoP ignored) says a new token cannot fix, as an error:
//   - error="insufficient_scope": a *tokensource.ScopeError, matching
//     tokensource.ErrInsufficientScope, whose Scope is the scope the server
//     asked for;
//   - error="insufficient_user_authentication" (RFC 9470): a
//     *tokensource.StepUpError, matching tokensource.ErrStepUpRequired,
//     with the challenge's acr_values and max_age.
//
// It returns nil for a response that is not a 401 or a 403, that has no
// Bearer challenge, or whose challenge a refresh answers (invalid_token, or
// no error code; the transport has then already refreshed and retried once).
// It reads only the header, never the body.
func ChallengeError(resp *http.Response) error {
	if resp == nil || (resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden) {
		return nil
	}
	return challenge.Error(resp.Header.Values(challenge.Header))
}
