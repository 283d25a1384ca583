package tokensource

import (
	"context"
	"errors"
	"strconv"
	"time"

	"golang.org/x/oauth2"
)

// errNoRefreshToken is the Permanent error of OAuth2Refresher when there is
// no refresh token to use: only a new login can help.
var errNoRefreshToken = errors.New("tokensource: no refresh token to refresh with")

// FromOAuth2 adapts an oauth2.TokenSource to a Refresher: each refresh calls
// ts.Token once. An OAuth 2 error response with the code "invalid_grant"
// (the refresh credential was revoked or has expired) is returned as a
// Permanent error, so the Source asks for re-authentication instead of
// retrying. An error response without an OAuth 2 error code is reported by
// its HTTP status, without its body (which may quote credentials); errors.As
// still reaches the *oauth2.RetrieveError, body included.
//
// oauth2.TokenSource.Token takes no context, so the refresh timeout cannot
// interrupt it: give ts an HTTP client with a timeout. ts should fetch a new
// token on every call; an oauth2.ReuseTokenSource would hand back its cached
// token even after a server rejected it. The current token is not passed to
// ts; use OAuth2Refresher for the refresh-token grant.
func FromOAuth2(ts oauth2.TokenSource) Refresher {
	return RefresherFunc(func(ctx context.Context, _ *Token) (*Token, error) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		ot, err := ts.Token()
		if err != nil {
			return nil, classifyOAuth2Error(err)
		}
		return fromOAuth2Token(ot, ""), nil
	})
}

// OAuth2Refresher returns a Refresher that performs the OAuth 2 refresh-token
// grant (RFC 6749, section 6) at cfg's token endpoint with the current
// token's RefreshToken. When the server rotates the refresh token, the new
// one is in the returned token (and so reaches the Source's Store); when it
// does not, the current refresh token is kept. The HTTP request uses ctx:
// it is cancelled by the refresh timeout, and an *http.Client stored in the
// context under oauth2.HTTPClient (for example in the ctx of the Token call
// that started the refresh) is used for it.
//
// A missing refresh token and an "invalid_grant" response are Permanent
// errors: the user must log in again. Other failures are transient; their
// errors are as described for FromOAuth2.
func OAuth2Refresher(cfg *oauth2.Config) Refresher {
	return RefresherFunc(func(ctx context.Context, current *Token) (*Token, error) {
		if current == nil || current.RefreshToken == "" {
			return nil, Permanent(errNoRefreshToken)
		}
		// No access token and a past expiry make the oauth2 package
		// refresh at once instead of returning the token it was given.
		ts := cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: current.RefreshToken, Expiry: time.Unix(1, 0)})
		ot, err := ts.Token()
		if err != nil {
			return nil, classifyOAuth2Error(err)
		}
		return fromOAuth2Token(ot, current.RefreshToken), nil
	})
}

// classifyOAuth2Error marks invalid_grant as Permanent and keeps the
// response body of an *oauth2.RetrieveError out of the error text.
func classifyOAuth2Error(err error) error {
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		return err
	}
	if re.ErrorCode == "" {
		// Also when a wrapper (a custom oauth2.TokenSource) carries it: the
		// wrapper's text would quote the body too, so it is dropped.
		err = &retrieveError{re}
	}
	if re.ErrorCode == "invalid_grant" {
		return Permanent(err)
	}
	return err
}

// retrieveError is an *oauth2.RetrieveError without an OAuth 2 error code,
// whose message names the HTTP status but leaves out the response body:
// oauth2 quotes the body whole, and that body (an HTML error page, a
// proxy's echo of the request) can hold the refresh token or the client
// secret, and would end up in every error the Source hands out. errors.As
// still reaches the RetrieveError, body included.
type retrieveError struct{ re *oauth2.RetrieveError }

func (e *retrieveError) Error() string {
	status := "no HTTP response"
	if e.re.Response != nil {
		status = e.re.Response.Status
	}
	return "oauth2: cannot fetch token: " + status + " (response body of " + strconv.Itoa(len(e.re.Body)) + " bytes not shown)"
}

func (e *retrieveError) Unwrap() error { return e.re }

// fromOAuth2Token maps the fields the Source uses; keepRefresh is used when
// the response carried no refresh token.
func fromOAuth2Token(ot *oauth2.Token, keepRefresh string) *Token {
	if ot == nil {
		return nil // rejected by the Source's validation
	}
	t := &Token{AccessToken: ot.AccessToken, RefreshToken: ot.RefreshToken, Expiry: ot.Expiry}
	if t.RefreshToken == "" {
		t.RefreshToken = keepRefresh
	}
	return t
}

// OAuth2 returns a view of s as an oauth2.TokenSource, for code such as
// oauth2.Transport that wants one. Its Token method calls s.Token with
// context.Background() (oauth2.TokenSource has no context parameter) and
// returns the access token as a "Bearer" token with its expiry; the refresh
// token is left out, since the view's users need only the access token.
func (s *Source) OAuth2() oauth2.TokenSource {
	return oauth2View{s}
}

type oauth2View struct{ s *Source }

func (v oauth2View) Token() (*oauth2.Token, error) {
	t, err := v.s.Token(context.Background())
	if err != nil {
		return nil, err
	}
	return &oauth2.Token{AccessToken: t.AccessToken, TokenType: "Bearer", Expiry: t.Expiry}, nil
}
