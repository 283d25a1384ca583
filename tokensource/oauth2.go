package tokensource

import (
	"cmp"
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// errNoRefreshToken is the Permanent error of OAuth2Refresher when there is
// no refresh token to use: only a new login can help.
var errNoRefreshToken = errors.New("tokensource: no refresh token to refresh with")

// FromOAuth2 adapts any other oauth2.TokenSource to a Refresher, one for
// which this package has no adapter of its own (for the client-credentials
// grant use ClientCredentials, for the refresh-token grant OAuth2Refresher).
// Each refresh calls ts.Token once. An OAuth 2 error response with the code
// "invalid_grant" (the refresh credential was revoked or has expired) is
// returned as a Permanent error, so the Source asks for re-authentication
// instead of retrying. The Retry-After of a 429 or 5xx response (RFC 9110:
// seconds or an HTTP-date), capped at an hour, replaces the backoff before
// the next attempt (see RetryAfter). An error response without an OAuth 2
// error code is reported by its HTTP status, without its body (which may
// quote credentials); errors.As still reaches the *oauth2.RetrieveError,
// body included.
//
// What FromOAuth2 cannot do:
//
//   - Pass a context. oauth2.TokenSource.Token takes none, so neither the
//     refresh timeout nor Close can interrupt the call, and values of the
//     refresh context (an *http.Client under oauth2.HTTPClient, trace IDs)
//     do not reach it. The Source still releases its waiters at the refresh
//     timeout (ErrRefreshTimeout) and starts no second refresh while the call
//     runs, but the HTTP request goes on until ts gives up: give ts an
//     *http.Client with a Timeout.
//   - Obtain a new token on demand. ts decides whether to fetch; the
//     current token is not passed to it. A caching source, such as the
//     oauth2.ReuseTokenSource that oauth2.Config.TokenSource and
//     clientcredentials.Config.TokenSource return, hands back its cached
//     token even after a server rejected it. The Source then reports the
//     forced refresh as failed with ErrUnchangedToken, and the call fails
//     with Unauthenticated until the cached token expires.
func FromOAuth2(ts oauth2.TokenSource) Refresher {
	return RefresherFunc(func(ctx context.Context, _ *Token) (*Token, error) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		ot, err := ts.Token()
		return fromOAuth2(ot, err, refreshPermanent, "")
	})
}

// ClientCredentials returns a Refresher that performs the OAuth 2
// client-credentials grant (RFC 6749, section 4.4) at cfg's token endpoint:
// every refresh is one new token request, with nothing cached in between, so
// a forced refresh after a server rejected a still-valid token obtains a
// different token. (FromOAuth2(cfg.TokenSource(ctx)) would not: that is an
// oauth2.ReuseTokenSource.) The HTTP request uses the refresh context, so
// the refresh timeout cancels it, and the *http.Client of WithHTTPClient
// (or else one stored in the refresh context under oauth2.HTTPClient). cfg
// must not be modified while the Refresher is in use.
//
// The client authenticates with cfg.ClientSecret, or, with
// WithPrivateKeyJWT or WithClientAssertionFile, with a signed assertion
// and no secret at all.
//
// The OAuth 2 error codes "invalid_client" (the client ID, secret or
// assertion is not accepted), "unauthorized_client" (the client may not use
// this grant), "invalid_grant", "invalid_scope" and "unsupported_grant_type"
// are Permanent errors: the same request with the same cfg will be refused
// again, and repeating a rejected client secret every backoff period can
// trip an authorization server's lockout. The Source then reports
// ErrReauthRequired (codes.Unauthenticated through the interceptors) until
// its owner fixes the client's registration, secret or key and calls
// SetToken or builds a new Source (with WithClientAssertionFile,
// "invalid_client" and "unauthorized_client" are transient: see there).
// Other failures (HTTP errors without an OAuth 2 code, "server_error",
// "temporarily_unavailable", a network error, an assertion file that
// cannot be used) are transient and retried with backoff, or after a 429
// or 5xx response's Retry-After. Error messages never contain the response
// body; errors.As reaches the *oauth2.RetrieveError.
//
// The token endpoint's response normally carries no refresh token; one that
// does is kept in the Token (and the Store) but never used.
func ClientCredentials(cfg *clientcredentials.Config, opts ...OAuth2Option) Refresher {
	o := newOAuth2Options(opts)
	return RefresherFunc(func(ctx context.Context, _ *Token) (*Token, error) {
		var ot *oauth2.Token
		var err error
		if o.assertion == nil {
			// Config.Token builds a new token source on each call, so
			// nothing is reused, and sends the request with ctx.
			ot, err = cfg.Token(o.httpContext(ctx))
		} else {
			ot, err = o.do(ctx, grantRequest{tokenURL: cfg.TokenURL, clientID: cfg.ClientID,
				scopes: cfg.Scopes, params: cfg.EndpointParams})
		}
		return fromOAuth2(ot, err, o.permanent(clientCredentialsPermanent), "")
	})
}

// OAuth2Refresher returns a Refresher that performs the OAuth 2 refresh-token
// grant (RFC 6749, section 6) at cfg's token endpoint with the current
// token's RefreshToken. When the server rotates the refresh token, the new
// one is in the returned token (and so reaches the Source's Store); when it
// does not, the current refresh token is kept. The HTTP request uses the
// refresh context and HTTP client as for ClientCredentials, and the client
// authenticates with cfg.ClientSecret or, with WithPrivateKeyJWT or
// WithClientAssertionFile, with an assertion and no secret.
//
// A missing refresh token and an "invalid_grant" response are Permanent
// errors: the user must log in again. With an assertion, "invalid_client"
// and "unauthorized_client" are Permanent too (the server does not accept
// the key or the assertion's issuer, which no retry changes). Other
// failures are transient; their errors are as described for FromOAuth2.
func OAuth2Refresher(cfg *oauth2.Config, opts ...OAuth2Option) Refresher {
	o := newOAuth2Options(opts)
	return RefresherFunc(func(ctx context.Context, current *Token) (*Token, error) {
		if current == nil || current.RefreshToken == "" {
			return nil, Permanent(errNoRefreshToken)
		}
		if o.assertion != nil {
			ot, err := o.do(ctx, grantRequest{tokenURL: cfg.Endpoint.TokenURL, clientID: cfg.ClientID,
				params: url.Values{"grant_type": {"refresh_token"}, "refresh_token": {current.RefreshToken}}})
			return fromOAuth2(ot, err, o.permanent(assertionRefreshPermanent), current.RefreshToken)
		}
		// No access token and a past expiry make the oauth2 package
		// refresh at once instead of returning the token it was given.
		ts := cfg.TokenSource(o.httpContext(ctx), &oauth2.Token{RefreshToken: current.RefreshToken, Expiry: time.Unix(1, 0)})
		ot, err := ts.Token()
		return fromOAuth2(ot, err, refreshPermanent, current.RefreshToken)
	})
}

// The OAuth 2 error codes (RFC 6749, section 5.2) that make a refresh
// Permanent: OAuth2Refresher and ClientCredentials say why.
var (
	refreshPermanent           = []string{"invalid_grant"}
	assertionRefreshPermanent  = []string{"invalid_grant", "invalid_client", "unauthorized_client"}
	clientCredentialsPermanent = []string{"invalid_client", "unauthorized_client", "invalid_grant", "invalid_scope", "unsupported_grant_type"}
)

// classifyOAuth2Error marks the error codes in permanent as Permanent and
// keeps the response body of an *oauth2.RetrieveError out of the error text.
func classifyOAuth2Error(err error, permanent []string) error {
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		return err
	}
	if re.ErrorCode == "" {
		// Also when a wrapper (a custom oauth2.TokenSource) carries it: the
		// wrapper's text would quote the body too, so it is dropped.
		err = &retrieveError{re}
	}
	if slices.Contains(permanent, re.ErrorCode) {
		return Permanent(err)
	}
	if d, ok := retryAfterHeader(re.Response); ok {
		return RetryAfter(err, d)
	}
	return err
}

// retryAfterHeader returns the wait asked for by the Retry-After header of a
// 429 or 5xx response, capped at an hour (a longer one is likelier a mistake
// than a plan). An HTTP-date is measured from the response's Date, the
// server's own clock, so that clock skew does not distort it.
func retryAfterHeader(resp *http.Response) (time.Duration, bool) {
	if resp == nil || resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode/100 != 5 {
		return 0, false
	}
	v := resp.Header.Get("Retry-After")
	if n, err := strconv.ParseUint(v, 10, 64); err == nil || errors.Is(err, strconv.ErrRange) {
		return time.Duration(min(n, 3600)) * time.Second, true
	}
	at, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	now, err := http.ParseTime(resp.Header.Get("Date"))
	if err != nil {
		now = time.Now()
	}
	return min(max(at.Sub(now), 0), time.Hour), true
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

// fromOAuth2 converts the outcome of an oauth2 token request: err through
// classifyOAuth2Error, ot to the fields the Source uses, with keepRefresh
// when the response carried no refresh token.
func fromOAuth2(ot *oauth2.Token, err error, permanent []string, keepRefresh string) (*Token, error) {
	if err != nil {
		return nil, classifyOAuth2Error(err, permanent)
	}
	if ot == nil {
		return nil, nil // rejected by the Source's validation
	}
	return &Token{AccessToken: ot.AccessToken, RefreshToken: cmp.Or(ot.RefreshToken, keepRefresh), Expiry: ot.Expiry}, nil
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
