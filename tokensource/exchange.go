package tokensource

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"

	"golang.org/x/oauth2"
)

// Token type identifiers of RFC 8693, section 3, for TokenExchangeConfig.
const (
	TokenTypeAccessToken = "urn:ietf:params:oauth:token-type:access_token"
	TokenTypeJWT         = "urn:ietf:params:oauth:token-type:jwt"
	TokenTypeIDToken     = "urn:ietf:params:oauth:token-type:id_token"
)

// tokenExchangeGrant is the grant_type of RFC 8693.
const tokenExchangeGrant = "urn:ietf:params:oauth:grant-type:token-exchange"

// TokenExchangeConfig configures TokenExchange: where to exchange, as which
// client, and for what.
type TokenExchangeConfig struct {
	// TokenURL is the authorization server's token endpoint.
	TokenURL string
	// ClientID and ClientSecret authenticate the client, unless
	// WithPrivateKeyJWT or WithClientAssertionFile is given (then no
	// secret is sent). Both may be empty for a server that lets
	// unauthenticated clients exchange.
	ClientID, ClientSecret string
	// AuthStyle is where the secret goes; the zero value lets
	// golang.org/x/oauth2 find out, as oauth2.Endpoint's does.
	AuthStyle oauth2.AuthStyle
	// Audience, Resource and Scopes say what the token is for (the
	// audience, resource and scope parameters). One Source per audience:
	// a token for one service is of no use to another.
	Audience, Resource, Scopes []string
	// SubjectTokenType is the type of the subject's token; empty means
	// TokenTypeAccessToken. A Kubernetes service-account token or another
	// identity provider's JWT is TokenTypeJWT.
	SubjectTokenType string
	// RequestedTokenType is the type of token asked for; empty means
	// TokenTypeAccessToken.
	RequestedTokenType string
}

// SubjectSource supplies the subject token of TokenExchange. A *Source is
// one (over FromFile for a token file, or over any Refresher).
//
// When the subject source also has the method
//
//	Refresh(ctx context.Context, stale *Token) (*Token, error)
//
// as a *Source does, TokenExchange tells it when the authorization server
// refused its subject, and asks for a newer one.
type SubjectSource interface {
	Token(ctx context.Context) (*Token, error)
}

// subjectRefresher is a SubjectSource that can be told its token was
// refused.
type subjectRefresher interface {
	Refresh(ctx context.Context, stale *Token) (*Token, error)
}

// tokenExchangePermanent are the error codes that no subject can change:
// the client, its grant, the scope or the target are not accepted.
var tokenExchangePermanent = []string{"invalid_client", "unauthorized_client", "invalid_scope", "invalid_target", "unsupported_grant_type"}

// subjectRefusedCodes are the codes with which a server refuses the
// subject token: RFC 8693 prescribes invalid_request, many servers say
// invalid_grant.
var subjectRefusedCodes = []string{"invalid_grant", "invalid_request"}

// errSubjectRefused says why a token exchange failed when the server
// refused the subject token.
var errSubjectRefused = errors.New("tokensource: token exchange: the authorization server refused the subject token")

// TokenExchange returns a Refresher that performs the OAuth 2 token
// exchange (RFC 8693) at cfg.TokenURL: every refresh takes the current
// token of subject and exchanges it for a token for cfg's audience,
// resource and scopes. Build one Source per audience over one subject
// source: each exchanges the subject for its own audience when its own
// token needs renewing. Every refresh asks subject for its token again, so
// the first refresh after the subject changed (a rotated token file, a
// refreshed subject Source) presents the new subject; a token already
// exchanged stays in use until it expires or is rejected.
//
// The request uses the refresh context (the refresh timeout also bounds
// waiting for subject) and the HTTP client and client authentication of
// opts, as for ClientCredentials.
//
// Errors:
//
//   - subject fails: the exchange is not attempted; the failure is
//     Permanent when subject's is (or matches ErrReauthRequired: the
//     subject needs a login), else transient.
//   - the server refuses the subject ("invalid_request", as RFC 8693
//     prescribes, or "invalid_grant"): when subject has a Refresh method
//     (a *Source), it is told the subject was refused; if it then has a
//     different token, the exchange is made again at once with it (one
//     more request in the same refresh). If subject has nothing newer yet
//     (a token file its writer has not renewed: ErrUnchangedToken), the
//     failure is transient, and the next attempt asks again. It is
//     Permanent when subject has no Refresh method, when its Refresh fails
//     permanently, and when the server refuses a newer subject too: the
//     subject credential is not one the server accepts.
//   - "invalid_client", "unauthorized_client", "invalid_scope",
//     "invalid_target", "unsupported_grant_type": Permanent (the
//     configuration or the client's registration must change).
//   - anything else (network errors, 5xx, "server_error",
//     "temporarily_unavailable"): transient, with Retry-After honoured.
//
// All of them reach the Source as for ClientCredentials: Permanent errors
// as ErrReauthRequired (codes.Unauthenticated), transient ones as
// codes.Unavailable while the Source backs off; no message quotes a token
// or a response body.
func TokenExchange(cfg TokenExchangeConfig, subject SubjectSource, opts ...OAuth2Option) Refresher {
	if subject == nil {
		panic("tokensource: TokenExchange called with a nil SubjectSource")
	}
	o := newOAuth2Options(opts)
	return RefresherFunc(func(ctx context.Context, _ *Token) (*Token, error) {
		subj, err := subject.Token(ctx)
		if err != nil {
			return nil, subjectError(err)
		}
		ot, err := exchangeOnce(ctx, o, cfg, subj)
		if !subjectRefused(err) {
			return fromOAuth2(ot, err, o.permanent(tokenExchangePermanent), "")
		}
		sr, ok := subject.(subjectRefresher)
		if !ok {
			return nil, Permanent(fmt.Errorf("%w (and the subject source cannot renew it): %w", errSubjectRefused, classifyOAuth2Error(err, nil)))
		}
		next, rerr := sr.Refresh(ctx, subj)
		if rerr != nil {
			if isPermanentSubject(rerr) {
				return nil, Permanent(fmt.Errorf("%w, and the subject source cannot renew it: %w", errSubjectRefused, rerr))
			}
			return nil, fmt.Errorf("%w; the subject source has no newer one yet: %w", errSubjectRefused, rerr)
		}
		if next == nil || next.AccessToken == subj.AccessToken {
			return nil, fmt.Errorf("%w; the subject source has no newer one yet", errSubjectRefused)
		}
		ot, err = exchangeOnce(ctx, o, cfg, next)
		if subjectRefused(err) {
			return nil, Permanent(fmt.Errorf("%w, a renewed one too: %w", errSubjectRefused, classifyOAuth2Error(err, nil)))
		}
		return fromOAuth2(ot, err, o.permanent(tokenExchangePermanent), "")
	})
}

// exchangeOnce makes one token-exchange request with subj.
func exchangeOnce(ctx context.Context, o *oauth2Options, cfg TokenExchangeConfig, subj *Token) (*oauth2.Token, error) {
	if subj == nil || subj.AccessToken == "" {
		return nil, errors.New("tokensource: token exchange: the subject source returned no token")
	}
	params := url.Values{
		"grant_type":           {tokenExchangeGrant},
		"subject_token":        {subj.AccessToken},
		"subject_token_type":   {cmp.Or(cfg.SubjectTokenType, TokenTypeAccessToken)},
		"requested_token_type": {cmp.Or(cfg.RequestedTokenType, TokenTypeAccessToken)},
	}
	if len(cfg.Audience) > 0 {
		params["audience"] = slices.Clone(cfg.Audience)
	}
	if len(cfg.Resource) > 0 {
		params["resource"] = slices.Clone(cfg.Resource)
	}
	return o.do(ctx, grantRequest{tokenURL: cfg.TokenURL, clientID: cfg.ClientID, clientSecret: cfg.ClientSecret,
		authStyle: cfg.AuthStyle, scopes: cfg.Scopes, params: params})
}

// subjectRefused reports whether err is the server's refusal of the
// subject token.
func subjectRefused(err error) bool {
	var re *oauth2.RetrieveError
	return errors.As(err, &re) && slices.Contains(subjectRefusedCodes, re.ErrorCode)
}

// isPermanentSubject reports whether the subject source's err means it
// cannot produce a token without outside help.
func isPermanentSubject(err error) bool {
	return IsPermanent(err) || errors.Is(err, ErrReauthRequired)
}

// subjectError is the failure of a refresh whose subject source failed.
func subjectError(err error) error {
	err = fmt.Errorf("tokensource: token exchange: the subject source: %w", err)
	if isPermanentSubject(err) {
		return Permanent(err)
	}
	return err
}
