package oauth2server_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// storage is the in-memory op.Storage behind the authorization server: the
// zitadel op package does the protocol (parsing, client authentication,
// PKCE, JWT signing and verification, error responses); storage keeps the
// state and the policy that the tests need:
//
//   - Refresh-token rotation: every refresh-token grant consumes the refresh
//     token presented and issues a new one of the same family.
//   - Reuse detection: presenting a consumed refresh token revokes its whole
//     family (every refresh and access token issued from one login), as
//     the OAuth 2.0 Security Best Current Practice (RFC 9700) recommends. Every
//     later presentation of any token of that family fails with
//     invalid_grant, and its access tokens stop introspecting as active.
//   - The client-credentials grant (op.ClientCredentialsStorage).
//   - Per-client access-token lifetimes, JWT access tokens whose ID (jti) is
//     looked up at introspection, so that revocation takes effect at once.
//
// Every issuance is recorded for the tests' counts.
type storage struct {
	key   *ecdsa.PrivateKey
	keyID string

	mu       sync.Mutex
	clients  map[string]*client
	requests map[string]*authRequest // by ID
	codes    map[string]string       // authorization code → request ID
	families map[string]*family
	refresh  map[string]*refreshToken // by token value
	access   map[string]*accessToken  // by token ID (the JWT's jti)

	issued        []issuance
	reuseDetected int
	refused       int // refresh-token grants refused (unknown, consumed or revoked token)
	introspected  int
	onIssue       func(issuance) // called with mu held; nil: nothing

	// exchangeVerifier checks token-exchange subjects the server did not
	// issue itself (set by startCredsServer; nil: none accepted).
	exchangeVerifier op.TokenExchangeTokensVerifierStorage
}

// family is the refresh tokens and access tokens that descend from one
// login.
type family struct {
	id       string
	subject  string
	clientID string
	scopes   []string
	authTime time.Time
	revoked  bool
	head     string // the refresh token that is valid now
}

type refreshToken struct {
	family *family
	used   bool
}

type accessToken struct {
	id       string
	subject  string
	clientID string
	scopes   []string
	family   *family // nil for client credentials
	issuedAt time.Time
	expiry   time.Time
	revoked  bool
}

// issuance records one token response.
type issuance struct {
	grant    oidc.GrantType
	clientID string
	family   string // "" for client credentials
	audience string // the audience asked for in a token exchange
	at       time.Time
}

func newStorage() *storage {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return &storage{
		key:      key,
		keyID:    randomString(8),
		clients:  map[string]*client{},
		requests: map[string]*authRequest{},
		codes:    map[string]string{},
		families: map[string]*family{},
		refresh:  map[string]*refreshToken{},
		access:   map[string]*accessToken{},
	}
}

func randomString(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

var (
	errNotFound      = errors.New("storage: not found")
	errInactiveToken = errors.New("storage: token is not active")
)

func (s *storage) addClient(c *client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clients[c.id] = c
}

// --- the tests' view ---------------------------------------------------

// counts is a snapshot of what the server did.
type counts struct {
	refreshGrants, clientCredentialsGrants, codeGrants int
	reuseDetected, refused, introspected               int
}

func (s *storage) counts() counts {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := counts{reuseDetected: s.reuseDetected, refused: s.refused, introspected: s.introspected}
	for _, is := range s.issued {
		switch is.grant {
		case oidc.GrantTypeRefreshToken:
			c.refreshGrants++
		case oidc.GrantTypeClientCredentials:
			c.clientCredentialsGrants++
		case oidc.GrantTypeCode:
			c.codeGrants++
		}
	}
	return c
}

// issuances returns the recorded issuances of grant for clientID, oldest
// first.
func (s *storage) issuances(grant oidc.GrantType, clientID string) []issuance {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []issuance
	for _, is := range s.issued {
		if is.grant == grant && is.clientID == clientID {
			out = append(out, is)
		}
	}
	return out
}

// head returns the refresh token of family id that the server accepts now,
// and whether the family is revoked.
func (s *storage) head(id string) (rt string, revoked bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.families[id]
	if f == nil {
		return "", true
	}
	return f.head, f.revoked
}

// familyOf returns the family of refresh token rt ("" if unknown).
func (s *storage) familyOf(rt string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.refresh[rt]; e != nil {
		return e.family.id
	}
	return ""
}

// setOnIssue installs f to be told of every issuance (with the storage's
// lock held: f must not call back into the storage).
func (s *storage) setOnIssue(f func(issuance)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onIssue = f
}

// completeLogin marks the authorization request id as authenticated for
// subject: what a login UI does after checking the user's credentials.
func (s *storage) completeLogin(id, subject string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.requests[id]
	if r == nil {
		return errNotFound
	}
	r.subject, r.authTime, r.done = subject, time.Now(), true
	return nil
}

// --- minting (s.mu held) -----------------------------------------------

func (s *storage) mintAccessLocked(c *client, subject string, scopes []string, fam *family, grant oidc.GrantType) (string, time.Time) {
	now := time.Now()
	at := &accessToken{
		id: randomString(16), subject: subject, clientID: c.id, scopes: scopes, family: fam,
		issuedAt: now, expiry: now.Add(c.accessTTL),
	}
	s.access[at.id] = at
	is := issuance{grant: grant, clientID: c.id, at: now}
	if fam != nil {
		is.family = fam.id
	}
	s.issued = append(s.issued, is)
	if s.onIssue != nil {
		s.onIssue(is)
	}
	return at.id, at.expiry
}

func (s *storage) mintRefreshLocked(fam *family) string {
	rt := randomString(32)
	s.refresh[rt] = &refreshToken{family: fam}
	fam.head = rt
	return rt
}

// revokeFamilyLocked revokes every token of fam: its refresh tokens (they
// all point at fam) and its access tokens (introspection checks fam).
func (s *storage) revokeFamilyLocked(fam *family) {
	fam.revoked = true
	fam.head = ""
}

// activeLocked returns the access token with ID id if it may still be used.
func (s *storage) activeLocked(id string) (*accessToken, bool) {
	at := s.access[id]
	if at == nil || at.revoked || (at.family != nil && at.family.revoked) || !time.Now().Before(at.expiry) {
		return nil, false
	}
	return at, true
}

// --- op.AuthStorage -----------------------------------------------------

func (s *storage) CreateAuthRequest(_ context.Context, req *oidc.AuthRequest, _ string) (op.AuthRequest, error) {
	r := &authRequest{
		id: randomString(16), clientID: req.ClientID, redirectURI: req.RedirectURI, scopes: req.Scopes,
		state: req.State, nonce: req.Nonce, responseType: req.ResponseType, responseMode: req.ResponseMode,
	}
	if req.CodeChallenge != "" {
		r.challenge = &oidc.CodeChallenge{Challenge: req.CodeChallenge, Method: req.CodeChallengeMethod}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests[r.id] = r
	c := *r
	return &c, nil
}

func (s *storage) AuthRequestByID(_ context.Context, id string) (op.AuthRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.requests[id]
	if r == nil {
		return nil, errNotFound
	}
	c := *r // a snapshot: completeLogin may change the original
	return &c, nil
}

func (s *storage) AuthRequestByCode(ctx context.Context, code string) (op.AuthRequest, error) {
	s.mu.Lock()
	id, ok := s.codes[code]
	s.mu.Unlock()
	if !ok {
		return nil, errNotFound
	}
	return s.AuthRequestByID(ctx, id)
}

func (s *storage) SaveAuthCode(_ context.Context, id, code string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.requests[id] == nil {
		return errNotFound
	}
	s.codes[code] = id
	return nil
}

// DeleteAuthRequest is called once the code has been exchanged: the code
// cannot be used again.
func (s *storage) DeleteAuthRequest(_ context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.requests, id)
	for code, rid := range s.codes {
		if rid == id {
			delete(s.codes, code)
		}
	}
	return nil
}

// CreateAccessToken issues an access token without a refresh token: for
// the client-credentials grant (and a code grant without offline_access).
func (s *storage) CreateAccessToken(_ context.Context, req op.TokenRequest) (string, time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch r := req.(type) {
	case *clientCredentialsRequest:
		c := s.clients[r.clientID]
		if c == nil {
			return "", time.Time{}, oidc.ErrInvalidClient()
		}
		id, exp := s.mintAccessLocked(c, r.clientID, r.scopes, nil, oidc.GrantTypeClientCredentials)
		return id, exp, nil
	case *authRequest:
		c := s.clients[r.clientID]
		if c == nil {
			return "", time.Time{}, oidc.ErrInvalidClient()
		}
		id, exp := s.mintAccessLocked(c, r.subject, r.scopes, nil, oidc.GrantTypeCode)
		return id, exp, nil
	case op.TokenExchangeRequest:
		c := s.clients[r.GetClientID()]
		if c == nil {
			return "", time.Time{}, oidc.ErrInvalidClient()
		}
		id, exp := s.mintAccessLocked(c, r.GetSubject(), r.GetScopes(), nil, oidc.GrantTypeTokenExchange)
		is := &s.issued[len(s.issued)-1]
		is.audience = strings.Join(r.GetAudience(), " ")
		return id, exp, nil
	}
	return "", time.Time{}, oidc.ErrUnsupportedGrantType()
}

// CreateAccessAndRefreshTokens issues a token pair: for the code grant with
// offline_access (a new family) and for the refresh-token grant (rotation,
// with reuse detection for two presentations that raced past
// TokenRequestByRefreshToken).
func (s *storage) CreateAccessAndRefreshTokens(_ context.Context, req op.TokenRequest, current string) (string, string, time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch r := req.(type) {
	case *authRequest:
		c := s.clients[r.clientID]
		if c == nil {
			return "", "", time.Time{}, oidc.ErrInvalidClient()
		}
		fam := &family{id: randomString(8), subject: r.subject, clientID: r.clientID, scopes: r.scopes, authTime: r.authTime}
		s.families[fam.id] = fam
		rt := s.mintRefreshLocked(fam)
		id, exp := s.mintAccessLocked(c, r.subject, r.scopes, fam, oidc.GrantTypeCode)
		return id, rt, exp, nil
	case *refreshRequest:
		e := s.refresh[current]
		if e == nil || e.family.revoked {
			s.refused++
			return "", "", time.Time{}, oidc.ErrInvalidGrant()
		}
		if e.used {
			s.reuseDetected++
			s.refused++
			s.revokeFamilyLocked(e.family)
			return "", "", time.Time{}, oidc.ErrInvalidGrant().WithDescription("refresh token reuse detected; the token family is revoked")
		}
		c := s.clients[e.family.clientID]
		if c == nil {
			return "", "", time.Time{}, oidc.ErrInvalidClient()
		}
		e.used = true
		rt := s.mintRefreshLocked(e.family)
		id, exp := s.mintAccessLocked(c, e.family.subject, r.GetScopes(), e.family, oidc.GrantTypeRefreshToken)
		return id, rt, exp, nil
	}
	return "", "", time.Time{}, oidc.ErrUnsupportedGrantType()
}

// TokenRequestByRefreshToken looks rt up for the refresh-token grant. A
// consumed rt is a reuse: its family is revoked. Every error becomes
// invalid_grant in the op package.
func (s *storage) TokenRequestByRefreshToken(_ context.Context, rt string) (op.RefreshTokenRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.refresh[rt]
	switch {
	case e == nil:
		s.refused++
		return nil, errNotFound
	case e.family.revoked:
		s.refused++
		return nil, errInactiveToken
	case e.used:
		s.reuseDetected++
		s.refused++
		s.revokeFamilyLocked(e.family)
		return nil, errors.New("storage: refresh token reuse detected; the token family is revoked")
	}
	f := e.family
	return &refreshRequest{subject: f.subject, clientID: f.clientID, scopes: slices.Clone(f.scopes), authTime: f.authTime}, nil
}

func (s *storage) TerminateSession(_ context.Context, userID, clientID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.families {
		if f.subject == userID && f.clientID == clientID {
			s.revokeFamilyLocked(f)
		}
	}
	return nil
}

// RevokeToken implements RFC 7009 for both kinds of token: an access
// token's ID, or a refresh token (which revokes its family). A client may
// revoke only its own tokens; unknown tokens are not an error (RFC 7009,
// section 2.2).
func (s *storage) RevokeToken(_ context.Context, tokenOrID, _, clientID string) *oidc.Error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if at := s.access[tokenOrID]; at != nil {
		if at.clientID != clientID {
			return oidc.ErrInvalidClient().WithDescription("the token belongs to another client")
		}
		at.revoked = true
		return nil
	}
	if e := s.refresh[tokenOrID]; e != nil {
		if e.family.clientID != clientID {
			return oidc.ErrInvalidClient().WithDescription("the token belongs to another client")
		}
		s.revokeFamilyLocked(e.family)
	}
	return nil
}

func (s *storage) GetRefreshTokenInfo(_ context.Context, _ string, token string) (string, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.refresh[token]; e != nil {
		return e.family.subject, token, nil
	}
	return "", "", op.ErrInvalidRefreshToken
}

func (s *storage) SigningKey(context.Context) (op.SigningKey, error) {
	return signingKey{id: s.keyID, key: s.key}, nil
}

func (s *storage) SignatureAlgorithms(context.Context) ([]jose.SignatureAlgorithm, error) {
	return []jose.SignatureAlgorithm{jose.ES256}, nil
}

func (s *storage) KeySet(context.Context) ([]op.Key, error) {
	return []op.Key{publicKey{id: s.keyID, key: &s.key.PublicKey}}, nil
}

// --- op.OPStorage -------------------------------------------------------

func (s *storage) GetClientByClientID(_ context.Context, id string) (op.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.clients[id]; c != nil {
		return c, nil
	}
	return nil, errNotFound
}

func (s *storage) AuthorizeClientIDSecret(_ context.Context, id, secret string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.clients[id]
	if c == nil || subtle.ConstantTimeCompare([]byte(c.secret), []byte(secret)) != 1 {
		return errors.New("storage: client authentication failed")
	}
	return nil
}

func (s *storage) SetUserinfoFromScopes(context.Context, *oidc.UserInfo, string, string, []string) error {
	return nil // deprecated by the op package; SetUserinfoFromToken does the work
}

func (s *storage) SetUserinfoFromToken(_ context.Context, ui *oidc.UserInfo, tokenID, subject, _ string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.activeLocked(tokenID); !ok {
		return errInactiveToken
	}
	ui.Subject = subject
	return nil
}

// SetIntrospectionFromToken answers RFC 7662 introspection: the op package
// has verified the JWT's signature, issuer and expiry; here the token must
// also not have been revoked (directly, or through its family).
func (s *storage) SetIntrospectionFromToken(_ context.Context, resp *oidc.IntrospectionResponse, tokenID, subject, _ string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.introspected++
	at, ok := s.activeLocked(tokenID)
	if !ok || at.subject != subject {
		return errInactiveToken
	}
	resp.Subject = at.subject
	resp.ClientID = at.clientID
	resp.Scope = at.scopes
	resp.TokenType = oidc.BearerToken
	resp.JWTID = at.id
	resp.IssuedAt = oidc.FromTime(at.issuedAt)
	resp.Expiration = oidc.FromTime(at.expiry)
	return nil
}

// GetPrivateClaimsFromScopes puts the granted scopes in the JWT access
// token's "scope" claim (RFC 9068), where a resource server that verifies
// the JWT itself finds them.
func (s *storage) GetPrivateClaimsFromScopes(_ context.Context, _, _ string, scopes []string) (map[string]any, error) {
	if len(scopes) == 0 {
		return nil, nil
	}
	return map[string]any{"scope": strings.Join(scopes, " ")}, nil
}

// GetKeyByIDAndClientID returns a public key registered for a
// private_key_jwt client, for the op package's verification of its
// assertions.
func (s *storage) GetKeyByIDAndClientID(_ context.Context, keyID, clientID string) (*jose.JSONWebKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.clients[clientID]
	if c == nil || c.keys[keyID] == nil {
		return nil, errors.New("storage: no such key for the client")
	}
	return c.keys[keyID], nil
}

func (s *storage) ValidateJWTProfileScopes(context.Context, string, []string) ([]string, error) {
	return nil, errors.New("storage: the JWT profile grant is not supported")
}

func (s *storage) Health(context.Context) error { return nil }

// --- op.ClientCredentialsStorage ----------------------------------------

func (s *storage) ClientCredentials(ctx context.Context, id, secret string) (op.Client, error) {
	if err := s.AuthorizeClientIDSecret(ctx, id, secret); err != nil {
		return nil, err
	}
	return s.GetClientByClientID(ctx, id)
}

func (s *storage) ClientCredentialsTokenRequest(_ context.Context, clientID string, scopes []string) (op.TokenRequest, error) {
	return &clientCredentialsRequest{clientID: clientID, scopes: scopes}, nil
}

// --- op.TokenExchangeStorage ---------------------------------------------

// ValidateTokenExchangeRequest lets a client exchange for the audiences it
// is registered for, and issues access tokens.
func (s *storage) ValidateTokenExchangeRequest(_ context.Context, req op.TokenExchangeRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.clients[req.GetClientID()]
	if c == nil {
		return oidc.ErrInvalidClient()
	}
	if len(req.GetAudience()) != 1 || !slices.Contains(c.audiences, req.GetAudience()[0]) {
		return oidc.ErrInvalidTarget().WithDescription("audience not allowed for this client")
	}
	if req.GetRequestedTokenType() == "" {
		req.SetRequestedTokenType(oidc.AccessTokenType)
	}
	return nil
}

func (s *storage) CreateTokenExchangeRequest(context.Context, op.TokenExchangeRequest) error {
	return nil
}

func (s *storage) GetPrivateClaimsFromTokenExchangeRequest(context.Context, op.TokenExchangeRequest) (map[string]any, error) {
	return nil, nil
}

func (s *storage) SetUserinfoFromTokenExchangeRequest(context.Context, *oidc.UserInfo, op.TokenExchangeRequest) error {
	return nil
}

// VerifyExchangeSubjectToken and VerifyExchangeActorToken delegate to the
// exchangeVerifier (op.TokenExchangeTokensVerifierStorage).
func (s *storage) VerifyExchangeSubjectToken(ctx context.Context, token string, tokenType oidc.TokenType) (string, string, map[string]any, error) {
	v := s.verifier()
	if v == nil {
		return "", "", nil, errors.New("storage: no foreign subject tokens accepted")
	}
	return v.VerifyExchangeSubjectToken(ctx, token, tokenType)
}

func (s *storage) VerifyExchangeActorToken(ctx context.Context, token string, tokenType oidc.TokenType) (string, string, map[string]any, error) {
	v := s.verifier()
	if v == nil {
		return "", "", nil, errors.New("storage: no foreign actor tokens accepted")
	}
	return v.VerifyExchangeActorToken(ctx, token, tokenType)
}

func (s *storage) verifier() op.TokenExchangeTokensVerifierStorage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.exchangeVerifier
}

func (s *storage) setExchangeVerifier(v op.TokenExchangeTokensVerifierStorage) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.exchangeVerifier = v
}

// --- request types -------------------------------------------------------

// authRequest is an authorization request (op.AuthRequest) and, after the
// code exchange, the op.TokenRequest of the code grant.
type authRequest struct {
	id, clientID, redirectURI, state, nonce string
	scopes                                  []string
	responseType                            oidc.ResponseType
	responseMode                            oidc.ResponseMode
	challenge                               *oidc.CodeChallenge
	subject                                 string
	authTime                                time.Time
	done                                    bool
}

func (r *authRequest) GetID() string                         { return r.id }
func (r *authRequest) GetACR() string                        { return "" }
func (r *authRequest) GetAMR() []string                      { return []string{"pwd"} }
func (r *authRequest) GetAudience() []string                 { return []string{r.clientID} }
func (r *authRequest) GetAuthTime() time.Time                { return r.authTime }
func (r *authRequest) GetClientID() string                   { return r.clientID }
func (r *authRequest) GetCodeChallenge() *oidc.CodeChallenge { return r.challenge }
func (r *authRequest) GetNonce() string                      { return r.nonce }
func (r *authRequest) GetRedirectURI() string                { return r.redirectURI }
func (r *authRequest) GetResponseType() oidc.ResponseType    { return r.responseType }
func (r *authRequest) GetResponseMode() oidc.ResponseMode    { return r.responseMode }
func (r *authRequest) GetScopes() []string                   { return r.scopes }
func (r *authRequest) GetState() string                      { return r.state }
func (r *authRequest) GetSubject() string                    { return r.subject }
func (r *authRequest) Done() bool                            { return r.done }

// refreshRequest is the op.RefreshTokenRequest of the refresh-token grant:
// the original login's data.
type refreshRequest struct {
	subject, clientID string
	scopes            []string
	authTime          time.Time
}

func (r *refreshRequest) GetAMR() []string             { return []string{"pwd"} }
func (r *refreshRequest) GetAudience() []string        { return []string{r.clientID} }
func (r *refreshRequest) GetAuthTime() time.Time       { return r.authTime }
func (r *refreshRequest) GetClientID() string          { return r.clientID }
func (r *refreshRequest) GetScopes() []string          { return r.scopes }
func (r *refreshRequest) GetSubject() string           { return r.subject }
func (r *refreshRequest) SetCurrentScopes(sc []string) { r.scopes = sc }

// clientCredentialsRequest is the op.TokenRequest of the client-credentials
// grant: the client is its own subject.
type clientCredentialsRequest struct {
	clientID string
	scopes   []string
}

func (r *clientCredentialsRequest) GetSubject() string    { return r.clientID }
func (r *clientCredentialsRequest) GetAudience() []string { return []string{r.clientID} }
func (r *clientCredentialsRequest) GetScopes() []string   { return r.scopes }

// --- keys ----------------------------------------------------------------

type signingKey struct {
	id  string
	key *ecdsa.PrivateKey
}

func (k signingKey) SignatureAlgorithm() jose.SignatureAlgorithm { return jose.ES256 }
func (k signingKey) Key() any                                    { return k.key }
func (k signingKey) ID() string                                  { return k.id }

type publicKey struct {
	id  string
	key *ecdsa.PublicKey
}

func (k publicKey) ID() string                         { return k.id }
func (k publicKey) Algorithm() jose.SignatureAlgorithm { return jose.ES256 }
func (k publicKey) Use() string                        { return "sig" }
func (k publicKey) Key() any                           { return k.key }

// --- clients -------------------------------------------------------------

// client is a registered confidential client (client_secret_basic, or
// private_key_jwt with keys) with JWT access tokens of lifetime accessTTL.
type client struct {
	id, secret  string
	authMethod  oidc.AuthMethod             // "": client_secret_basic
	keys        map[string]*jose.JSONWebKey // private_key_jwt: the public keys by kid
	audiences   []string                    // token exchange: the audiences it may ask for
	grants      []oidc.GrantType
	redirectURI string // for the code grant
	loginURL    string // the login UI; the auth request ID is appended
	accessTTL   time.Duration
}

func (c *client) GetID() string                       { return c.id }
func (c *client) RedirectURIs() []string              { return []string{c.redirectURI} }
func (c *client) PostLogoutRedirectURIs() []string    { return nil }
func (c *client) ApplicationType() op.ApplicationType { return op.ApplicationTypeWeb }
func (c *client) AuthMethod() oidc.AuthMethod {
	if c.authMethod == "" {
		return oidc.AuthMethodBasic
	}
	return c.authMethod
}
func (c *client) ResponseTypes() []oidc.ResponseType {
	return []oidc.ResponseType{oidc.ResponseTypeCode}
}
func (c *client) GrantTypes() []oidc.GrantType         { return c.grants }
func (c *client) LoginURL(id string) string            { return c.loginURL + id }
func (c *client) AccessTokenType() op.AccessTokenType  { return op.AccessTokenTypeJWT }
func (c *client) IDTokenLifetime() time.Duration       { return time.Minute }
func (c *client) DevMode() bool                        { return false }
func (c *client) IsScopeAllowed(string) bool           { return false }
func (c *client) IDTokenUserinfoClaimsAssertion() bool { return false }
func (c *client) ClockSkew() time.Duration             { return 0 }
func (c *client) RestrictAdditionalIdTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}
func (c *client) RestrictAdditionalAccessTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}

var (
	_ op.Storage                  = (*storage)(nil)
	_ op.ClientCredentialsStorage = (*storage)(nil)
	_ op.TokenExchangeStorage     = (*storage)(nil)
	_ op.AuthRequest              = (*authRequest)(nil)
	_ op.RefreshTokenRequest      = (*refreshRequest)(nil)
	_ op.Client                   = (*client)(nil)
)
