package tokensource

import (
	"context"
	"crypto"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
	"github.com/go-jose/go-jose/v4/jwt"
)

// AssertionLifetime is how long a private_key_jwt assertion made by
// WithPrivateKeyJWT is valid: long enough for a token request on a slow
// network or a skewed clock, short enough that one copied from a log or a
// proxy is of little use. Each request gets a new one.
const AssertionLifetime = time.Minute

// WithPrivateKeyJWT makes the OAuth 2 adapters authenticate the client
// with private_key_jwt (RFC 7523, section 2.2; OpenID Connect Core, section
// 9) instead of a client secret: every token request carries a new JWT
// signed with key, whose iss and sub are the client ID, aud the token
// endpoint URL (see WithAssertionAudience), jti 128 random bits, iat the
// time of the request and exp AssertionLifetime later, with keyID as the
// JWS kid header when it is not empty. No client secret is sent, even if
// the configuration has one; the assertion goes in the form
// (client_assertion), so a proxy that logs Authorization headers sees no
// credential, and a captured assertion expires within a minute and, by its
// jti, can be refused as a replay.
//
// The signing algorithm follows from the type of key.Public(): ES256,
// ES384 or ES512 for an ECDSA key on P-256, P-384 or P-521; RS256 for an
// RSA key (the algorithm every server that accepts private_key_jwt must
// support; PS256 would need a choice the key type does not make); EdDSA
// for an Ed25519 key. key may be any crypto.Signer of those types, so a
// key held in a KMS or an HSM works too. Signing is done by
// github.com/go-jose/go-jose/v4, once per token request, never on the
// path of an RPC.
//
// A nil key or one of another type, or a configuration without a client
// ID, makes every refresh fail with a Permanent error (ErrReauthRequired):
// no retry can fix the configuration. A server that does not know the key
// answers invalid_client, which is Permanent too.
//
// WithPrivateKeyJWT and WithClientAssertionFile replace each other: the
// last one given is used.
func WithPrivateKeyJWT(key crypto.Signer, keyID string) OAuth2Option {
	s, err := newAssertionSigner(key, keyID)
	return func(o *oauth2Options) {
		o.assertionFile = false
		o.assertion = func(_ context.Context, clientID, tokenURL string) (string, error) {
			if err != nil {
				return "", Permanent(err)
			}
			if clientID == "" {
				return "", Permanent(errors.New("tokensource: private_key_jwt needs a client ID (the assertion's iss and sub)"))
			}
			aud := tokenURL
			if o.assertionAudience != "" {
				aud = o.assertionAudience
			}
			return s.sign(clientID, aud, time.Now())
		}
	}
}

// WithAssertionAudience makes the aud of WithPrivateKeyJWT's assertions
// aud instead of the token endpoint URL. Servers differ: most accept the
// token endpoint, some want their issuer identifier, which
// draft-ietf-oauth-rfc7523bis makes the only value to use. It has no
// effect on WithClientAssertionFile, whose assertion is made by someone
// else.
func WithAssertionAudience(aud string) OAuth2Option {
	return func(o *oauth2Options) { o.assertionAudience = aud }
}

// assertionSigner signs private_key_jwt assertions with one key.
type assertionSigner struct {
	signer jose.Signer
	alg    jose.SignatureAlgorithm
}

func newAssertionSigner(key crypto.Signer, keyID string) (*assertionSigner, error) {
	if key == nil {
		return nil, errors.New("tokensource: WithPrivateKeyJWT was given a nil key")
	}
	op := cryptosigner.Opaque(key)
	algs := op.Algs()
	if len(algs) == 0 {
		return nil, fmt.Errorf("tokensource: WithPrivateKeyJWT: a key of type %T has no JWS algorithm (use ECDSA P-256/P-384/P-521, RSA or Ed25519)", key.Public())
	}
	alg := algs[0] // RS256 first for RSA: see WithPrivateKeyJWT
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if keyID != "" {
		opts = opts.WithHeader(jose.HeaderKey("kid"), keyID)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: op}, opts)
	if err != nil {
		return nil, fmt.Errorf("tokensource: WithPrivateKeyJWT: %w", err)
	}
	return &assertionSigner{signer: signer, alg: alg}, nil
}

// sign returns a new assertion by clientID for aud, issued at now.
func (s *assertionSigner) sign(clientID, aud string, now time.Time) (string, error) {
	claims := jwt.Claims{
		Issuer:   clientID,
		Subject:  clientID,
		Audience: jwt.Audience{aud},
		ID:       rand.Text(), // 128 bits from crypto/rand: a replay cache can rely on it
		IssuedAt: jwt.NewNumericDate(now),
		Expiry:   jwt.NewNumericDate(now.Add(AssertionLifetime)),
	}
	a, err := jwt.Signed(s.signer).Claims(claims).Serialize()
	if err != nil {
		// Transient: a KMS or HSM that holds the key may be unreachable.
		return "", fmt.Errorf("tokensource: signing the client assertion: %w", err)
	}
	return a, nil
}

// WithClientAssertionFile makes the OAuth 2 adapters authenticate the
// client with the JWT in the file at path as its client_assertion (RFC
// 7521 and 7523): workload identity federation, where a Kubernetes
// projected service-account token, a SPIFFE JWT-SVID or a CI job's OIDC
// token, written and rotated by another process, is accepted by the
// authorization server in place of a secret. The file is read for every
// token request, following symlinks, so a rotation (kubelet's swap of the
// ..data symlink, a rename over the file) is used by the next request. No
// client secret is sent.
//
// The file is read as FromFile reads its token, without verifying the
// signature (the authorization server does): a file that is missing,
// empty, half-written, not a JWT, or holds a JWT whose exp has passed
// makes the token request fail before it is sent with a transient error
// matching ErrTokenFile that names the path, never the content; the Source
// backs off and reads the file again when it tries again.
//
// With an assertion file, a server's "invalid_client" or
// "unauthorized_client" is transient, unlike with a secret or a private
// key: the credential belongs to the file's writer, which renews it (an
// assertion can expire on its way to the server, or be about to be
// replaced), and presenting the next one cannot trip a lockout. The Source
// backs off (codes.Unavailable through the interceptors, the error naming
// the server's code) and reads the file again, so a federation fixed at the
// identity provider is picked up without a restart.
//
// WithPrivateKeyJWT and WithClientAssertionFile replace each other: the
// last one given is used.
func WithClientAssertionFile(path string) OAuth2Option {
	f := &watchedFile{path: path}
	return func(o *oauth2Options) {
		o.assertionFile = true
		o.assertion = func(context.Context, string, string) (string, error) {
			r, err := f.read(time.Now())
			if err != nil {
				return "", err
			}
			if !r.jwt {
				return "", f.errorf("does not hold a JWT, which a client assertion must be")
			}
			return r.token, nil
		}
	}
}
