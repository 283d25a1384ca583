package tokensource

import (
	"context"
	"net/http"

	"golang.org/x/oauth2"
)

// WithHTTPClient makes the OAuth 2 adapters send their token requests with
// c: one that trusts a private CA, presents a client certificate (mTLS to
// the token endpoint, RFC 8705), or goes through a proxy. The refresh
// timeout (WithRefreshTimeout) cancels the request whatever c's own
// Timeout.
//
// c takes precedence over an *http.Client stored under oauth2.HTTPClient in
// the refresh context: a refresh context keeps the values of the call that
// started it, which may be any caller's, while c is the adapter's own
// configuration. Without WithHTTPClient the context value is used as
// before, and without either http.DefaultClient. A nil c is ignored.
func WithHTTPClient(c *http.Client) OAuth2Option {
	return func(o *oauth2Options) {
		if c != nil {
			o.httpClient = c
		}
	}
}

// httpContext returns ctx with o's HTTP client where golang.org/x/oauth2
// looks for it.
func (o *oauth2Options) httpContext(ctx context.Context) context.Context {
	if o.httpClient == nil {
		return ctx
	}
	return context.WithValue(ctx, oauth2.HTTPClient, o.httpClient)
}
