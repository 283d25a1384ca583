package tokensource

import (
	"context"
	"net/http"
	"net/url"
	"slices"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// OAuth2Option configures the token requests of the OAuth 2 adapters
// (ClientCredentials, OAuth2Refresher and TokenExchange): the HTTP client
// that reaches the token endpoint, and how the client authenticates there.
type OAuth2Option func(*oauth2Options)

type oauth2Options struct {
	httpClient *http.Client
	// assertion, when set, authenticates the client with a JWT
	// (client_assertion, RFC 7521/7523) instead of a client secret: it
	// returns the assertion for one request to tokenURL by clientID.
	assertion func(ctx context.Context, clientID, tokenURL string) (string, error)
	// assertionAudience overrides the token endpoint as the aud of a
	// private_key_jwt assertion.
	assertionAudience string
	// assertionFile: the assertion is WithClientAssertionFile's, which
	// another process renews.
	assertionFile bool
}

// permanent returns the OAuth 2 error codes that make a refresh Permanent
// for an adapter whose list is codes. With an assertion file, a refused
// client authentication is transient: the credential is the file's, which
// its writer renews (an assertion that expired on its way to the server,
// one about to be replaced), and presenting it again after a backoff reads
// the file again and can trip no lockout, as a guessed secret could.
func (o *oauth2Options) permanent(codes []string) []string {
	if !o.assertionFile {
		return codes
	}
	return slices.DeleteFunc(slices.Clone(codes), func(c string) bool {
		return c == "invalid_client" || c == "unauthorized_client"
	})
}

func newOAuth2Options(opts []OAuth2Option) *oauth2Options {
	o := &oauth2Options{}
	for _, opt := range opts {
		if opt != nil {
			opt(o)
		}
	}
	return o
}

// jwtBearerAssertionType is the client_assertion_type of a JWT assertion
// (RFC 7523, section 2.2).
const jwtBearerAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// grantRequest is one token request: a grant's parameters, sent to tokenURL
// with the client authentication the options say.
type grantRequest struct {
	tokenURL     string
	clientID     string
	clientSecret string
	authStyle    oauth2.AuthStyle
	scopes       []string
	params       url.Values // grant_type and the grant's own parameters
}

// do sends r with ctx (the refresh context) and o's HTTP client. With a
// client assertion the secret is left out and the assertion, a new one for
// this request, goes in the form. The request is made by
// golang.org/x/oauth2's clientcredentials package, whose grant_type may be
// overridden: its request encoding, response parsing and *RetrieveError
// are then the same for every grant.
func (o *oauth2Options) do(ctx context.Context, r grantRequest) (*oauth2.Token, error) {
	c := clientcredentials.Config{
		ClientID:       r.clientID,
		ClientSecret:   r.clientSecret,
		TokenURL:       r.tokenURL,
		Scopes:         r.scopes,
		EndpointParams: r.params,
		AuthStyle:      r.authStyle,
	}
	if o.assertion != nil {
		a, err := o.assertion(ctx, r.clientID, r.tokenURL)
		if err != nil {
			return nil, err
		}
		params := make(url.Values, len(r.params)+2)
		for k, v := range r.params {
			params[k] = v
		}
		params.Set("client_assertion_type", jwtBearerAssertionType)
		params.Set("client_assertion", a)
		// In the form, not the Authorization header: with no secret, basic
		// authentication (or x/oauth2's probing of both styles) would send
		// an empty one.
		c.ClientSecret, c.AuthStyle, c.EndpointParams = "", oauth2.AuthStyleInParams, params
	}
	return c.Token(o.httpContext(ctx))
}
