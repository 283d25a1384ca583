package oauth2server_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// The clients and identities of the credential tests.
const (
	keyClient       = "svc-key"      // client credentials, private_key_jwt
	keyID           = "svc-key-1"    // its registered key
	workloadClient  = "svc-workload" // client credentials, a federated assertion (the projected token)
	exchangeClient  = "exchanger"    // token exchange, private_key_jwt
	exchangeKeyID   = "exchanger-1"
	sidecarClient   = "sidecar" // client credentials with a secret: the stand-in for a sidecar's own identity
	clusterIssuer   = "https://kubernetes.default.svc.test"
	serviceAccount  = "system:serviceaccount:default:worker"
	audienceOrders  = "orders"
	audienceBilling = "billing"
)

// cluster stands in for a Kubernetes API server's service-account token
// issuer: it signs the projected tokens kubelet writes into a pod, which
// the authorization server trusts as federated client assertions and as
// token-exchange subjects.
type cluster struct {
	key *ecdsa.PrivateKey
	sig jose.Signer
}

func newCluster(t testing.TB) *cluster {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "cluster-1"))
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{key: key, sig: sig}
}

// projectedToken is a service-account token as kubelet requests it for a
// projected volume: for aud, valid ttl from now.
func (c *cluster) projectedToken(t testing.TB, aud string, ttl time.Duration) string {
	t.Helper()
	now := time.Now()
	tok, err := jwt.Signed(c.sig).Claims(jwt.Claims{Issuer: clusterIssuer, Subject: serviceAccount,
		Audience: jwt.Audience{aud}, ID: rand.Text(), IssuedAt: jwt.NewNumericDate(now),
		NotBefore: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(ttl))}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// VerifySignature makes c an oidc.KeySet for zitadel's verification of
// the assertions and subjects it signed.
func (c *cluster) VerifySignature(_ context.Context, jws *jose.JSONWebSignature) ([]byte, error) {
	return jws.Verify(&c.key.PublicKey)
}

// verify checks a projected token for aud as the authorization server
// would (signature, issuer, audience, expiry) and returns its claims.
func (c *cluster) verify(tok, aud string) (jwt.Claims, error) {
	parsed, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return jwt.Claims{}, err
	}
	var claims jwt.Claims
	if err := parsed.Claims(&c.key.PublicKey, &claims); err != nil {
		return jwt.Claims{}, err
	}
	return claims, claims.Validate(jwt.Expected{Issuer: clusterIssuer, AnyAudience: jwt.Audience{aud}, Time: time.Now()})
}

// credsServer is the authorization server's op.Server for the credential
// tests: zitadel's LegacyServer, with client authentication by assertion
// for every grant (zitadel's own token handlers accept client_assertion
// only for the code and refresh-token grants). The assertion is verified
// by zitadel's op.VerifyJWTAssertion: a private_key_jwt assertion against
// the client's registered key with the token endpoint as audience, and a
// federated one (a projected service-account token) against the cluster's
// key, mapped to its client by issuer and subject. It also refuses a
// private_key_jwt assertion whose jti it has seen (as RFC 7523 allows a
// server to) and records what came over the wire.
type credsServer struct {
	*op.LegacyServer
	a       *authServer
	cluster *cluster

	mu         sync.Mutex
	jtis       map[string]int // private_key_jwt assertions by jti
	replays    int
	assertions map[string]int // assertion-authenticated token requests by client
	secrets    map[string]int // token requests that carried a client secret, by client_id
	federated  map[string]int // federated assertions accepted, by the assertion's jti
	subjects   []string       // the jti of each token-exchange subject accepted, in order
	refused    map[string]int // assertion or subject refusals, by reason
	lastCause  string         // why the last refusal happened (zitadel's error)
}

// startCredsServer starts the authorization server with the credential
// tests' clients and the credsServer in front of its token endpoint.
func startCredsServer(t *testing.T) (*authServer, *credsServer) {
	t.Helper()
	a := startAuthServer(t)
	c := &credsServer{a: a, cluster: newCluster(t), jtis: map[string]int{}, assertions: map[string]int{},
		secrets: map[string]int{}, federated: map[string]int{}, refused: map[string]int{}}
	c.LegacyServer = op.NewLegacyServer(a.provider, *op.DefaultEndpoints)
	a.store.setExchangeVerifier(c)
	handler := op.RegisterLegacyServer(c, op.AuthorizeCallbackHandler(a.provider), op.WithFallbackLogger(slog.New(slog.DiscardHandler)))
	a.mu.Lock()
	a.token = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.recordWire(r)
		handler.ServeHTTP(w, r)
	})
	a.mu.Unlock()
	return a, c
}

// registerKeyClient registers a private_key_jwt client with pub under kid.
func (c *credsServer) registerKeyClient(id, kid string, pub crypto.PublicKey, alg jose.SignatureAlgorithm, grants ...oidc.GrantType) {
	c.a.store.addClient(&client{id: id, authMethod: oidc.AuthMethodPrivateKeyJWT, grants: grants, accessTTL: accessTTL,
		keys:      map[string]*jose.JSONWebKey{kid: {Key: pub, KeyID: kid, Algorithm: string(alg), Use: "sig"}},
		audiences: []string{audienceOrders, audienceBilling}})
}

func (c *credsServer) tokenURL() string { return c.a.issuer + "/oauth/token" }

// recordWire notes whether a token request carried a client secret, in the
// Authorization header or the form.
func (c *credsServer) recordWire(r *http.Request) {
	_ = r.ParseForm() // zitadel reads r.Form again
	id, _, basic := r.BasicAuth()
	if !basic {
		id = r.PostForm.Get("client_id")
	}
	if basic || r.PostForm.Has("client_secret") {
		c.mu.Lock()
		c.secrets[id]++
		c.mu.Unlock()
	}
}

func (c *credsServer) refuse(reason string, err error) error {
	c.mu.Lock()
	c.refused[reason]++
	if err != nil {
		c.lastCause = reason + ": " + err.Error()
	}
	c.mu.Unlock()
	return oidc.ErrInvalidClient().WithDescription("%s", reason).WithParent(err)
}

// VerifyClient authenticates a token request's client: by assertion when
// there is one, else as zitadel's LegacyServer does (by secret).
func (c *credsServer) VerifyClient(ctx context.Context, r *op.Request[op.ClientCredentials]) (op.Client, error) {
	assertion := r.Data.ClientAssertion
	if assertion == "" {
		return c.LegacyServer.VerifyClient(ctx, r)
	}
	if r.Data.ClientAssertionType != oidc.ClientAssertionTypeJWTAssertion {
		return nil, c.refuse("client_assertion_type", nil)
	}
	var peek jwt.Claims
	if parsed, err := jwt.ParseSigned(assertion, []jose.SignatureAlgorithm{jose.ES256, jose.RS256, jose.PS256, jose.EdDSA}); err != nil {
		return nil, c.refuse("assertion is not a JWS", err)
	} else if err := parsed.UnsafeClaimsWithoutVerification(&peek); err != nil {
		return nil, c.refuse("assertion claims", err)
	}
	if peek.Issuer == clusterIssuer {
		return c.verifyFederated(ctx, assertion, peek)
	}
	verifier := op.NewJWTProfileVerifier(c.a.store, c.tokenURL(), 2*assertionMaxAge, 0)
	profile, err := op.VerifyJWTAssertion(ctx, assertion, verifier)
	if err != nil {
		return nil, c.refuse("private_key_jwt assertion rejected", err)
	}
	cl, err := c.a.store.GetClientByClientID(ctx, profile.Issuer)
	if err != nil || cl.AuthMethod() != oidc.AuthMethodPrivateKeyJWT {
		return nil, c.refuse("client does not use private_key_jwt", err)
	}
	jti, _ := profile.GetCustomClaim("jti").(string)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.jtis[jti]++
	if jti == "" || c.jtis[jti] > 1 {
		c.replays++
		c.refused["replayed jti"]++
		return nil, oidc.ErrInvalidClient().WithDescription("assertion replayed")
	}
	c.assertions[cl.GetID()]++
	return cl, nil
}

// assertionMaxAge bounds how old an assertion's iat may be.
const assertionMaxAge = time.Minute

// verifyFederated accepts a projected service-account token of the
// cluster, issued for the token endpoint, as the assertion of the client
// the service account is federated with.
func (c *credsServer) verifyFederated(ctx context.Context, assertion string, peek jwt.Claims) (op.Client, error) {
	verifier := op.NewJWTProfileVerifierKeySet(c.cluster, c.tokenURL(), time.Hour, 0,
		op.SubjectCheck(func(req *oidc.JWTTokenRequest) error {
			if req.Issuer != clusterIssuer || req.Subject != serviceAccount {
				return errors.New("no federation for this issuer and subject")
			}
			return nil
		}))
	if _, err := op.VerifyJWTAssertion(ctx, assertion, verifier); err != nil {
		return nil, c.refuse("federated assertion rejected", err)
	}
	cl, err := c.a.store.GetClientByClientID(ctx, workloadClient)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.federated[peek.ID]++
	c.assertions[workloadClient]++
	return cl, nil
}

// VerifyExchangeSubjectToken accepts a projected token of the cluster for
// the "sts" audience as a token-exchange subject (zitadel calls it for a
// subject it did not issue itself).
func (c *credsServer) VerifyExchangeSubjectToken(_ context.Context, token string, tokenType oidc.TokenType) (string, string, map[string]any, error) {
	if tokenType != oidc.JWTTokenType {
		return "", "", nil, c.refuse("subject_token_type", nil)
	}
	claims, err := c.cluster.verify(token, "sts")
	if err != nil {
		return "", "", nil, c.refuse("subject rejected", err)
	}
	c.mu.Lock()
	c.subjects = append(c.subjects, claims.ID)
	c.mu.Unlock()
	return claims.ID, claims.Subject, nil, nil
}

func (c *credsServer) VerifyExchangeActorToken(context.Context, string, oidc.TokenType) (string, string, map[string]any, error) {
	return "", "", nil, errors.New("no actor tokens in these tests")
}

// snapshot is what the credsServer has seen so far.
type credsSnapshot struct {
	jtis, replays int
	assertions    map[string]int
	secrets       map[string]int
	federated     int // distinct projected tokens used as assertions
	subjects      []string
	refused       map[string]int
	lastCause     string
}

func (c *credsServer) snapshot() credsSnapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	cp := func(m map[string]int) map[string]int {
		out := map[string]int{}
		for k, v := range m {
			out[k] = v
		}
		return out
	}
	return credsSnapshot{jtis: len(c.jtis), replays: c.replays, assertions: cp(c.assertions), secrets: cp(c.secrets),
		federated: len(c.federated), subjects: append([]string(nil), c.subjects...), refused: cp(c.refused),
		lastCause: c.lastCause}
}

// --- the writers of token files ------------------------------------------

// kubeletVolume is a projected volume written as kubelet's AtomicWriter
// writes it: each payload in a new timestamped directory, the ..data
// symlink to it replaced by a rename, the old directory removed, and the
// token path a symlink to ..data/token.
type kubeletVolume struct {
	dir string
	mu  sync.Mutex
	n   int
}

func newKubeletVolume(t testing.TB) *kubeletVolume {
	t.Helper()
	v := &kubeletVolume{dir: t.TempDir()}
	if err := os.Symlink(filepath.Join("..data", "token"), filepath.Join(v.dir, "token")); err != nil {
		t.Fatal(err)
	}
	return v
}

func (v *kubeletVolume) path() string { return filepath.Join(v.dir, "token") }

func (v *kubeletVolume) write(token string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.n++
	ts := fmt.Sprintf("..%s.%d", time.Now().UTC().Format("2006_01_02_15_04_05"), v.n)
	if err := os.Mkdir(filepath.Join(v.dir, ts), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(v.dir, ts, "token"), []byte(token), 0o600); err != nil {
		return err
	}
	old, _ := os.Readlink(filepath.Join(v.dir, "..data"))
	tmp := filepath.Join(v.dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(v.dir, "..data")); err != nil {
		return err
	}
	if old != "" {
		return os.RemoveAll(filepath.Join(v.dir, old))
	}
	return nil
}

// vaultSink is a Vault agent's file sink: the token written to a temporary
// file in the same directory and renamed over the sink's path.
type vaultSink struct{ file string }

func (v vaultSink) path() string { return v.file }

func (v vaultSink) write(token string) error {
	tmp := v.file + ".tmp." + rand.Text()[:8]
	if err := os.WriteFile(tmp, []byte(token), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, v.file)
}

type tokenWriter interface {
	path() string
	write(token string) error
}

// rotateAt80 keeps w holding a token from next, renewed at 80 % of each
// token's remaining lifetime when it was written (by its exp claim, or
// life for a token without one), as kubelet renews projected tokens. It
// writes the first token before it returns. The returned stop ends the
// writing and returns how many tokens were written; it is also called at
// the test's cleanup.
func rotateAt80(t *testing.T, w tokenWriter, life time.Duration, next func() (string, error)) (stop func() int) {
	t.Helper()
	write := func() (time.Duration, error) {
		tok, err := next()
		if err != nil {
			return 0, err
		}
		if err := w.write(tok); err != nil {
			return 0, err
		}
		left := life
		if parsed, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.ES256, jose.RS256}); err == nil {
			var c jwt.Claims
			if parsed.UnsafeClaimsWithoutVerification(&c) == nil && c.Expiry != nil {
				left = time.Until(c.Expiry.Time())
			}
		}
		return left * 8 / 10, nil
	}
	wait, err := write()
	if err != nil {
		t.Fatal(err)
	}
	halt, out := make(chan struct{}), make(chan int, 1)
	go func() {
		writes := 1
		defer func() { out <- writes }()
		timer := time.NewTimer(wait)
		defer timer.Stop()
		for {
			select {
			case <-halt:
				return
			case <-timer.C:
			}
			wait, err := write()
			if err != nil {
				t.Errorf("token writer: %v", err)
				return
			}
			writes++
			timer.Reset(wait)
		}
	}()
	var once sync.Once
	var writes int
	stop = func() int {
		once.Do(func() {
			close(halt)
			writes = <-out
		})
		return writes
	}
	t.Cleanup(func() { stop() })
	return stop
}
