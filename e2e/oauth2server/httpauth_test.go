package oauth2server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jwtmiddleware "github.com/auth0/go-jwt-middleware/v2"
	"github.com/auth0/go-jwt-middleware/v2/jwks"
	"github.com/auth0/go-jwt-middleware/v2/validator"
	"github.com/zitadel/oidc/v3/pkg/client/rs"
	"github.com/zitadel/oidc/v3/pkg/oidc"

	"github.com/tokenrefresh/grpc-tokenrefresh/httpauth"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// requestIDHeader names each HTTP request of a test, so that the resource
// server can count how often one request reached it.
const requestIDHeader = "X-Request-Id"

// httpResource is an HTTP resource server built from Auth0's
// go-jwt-middleware: the middleware verifies the JWT access token (ES256
// signature against the provider's JWKS, issuer, audience, expiry) and
// answers 401 itself, with its default error handler, for a token it does
// not accept. Behind it:
//   - with revocation checks, each request's token is introspected at the
//     authorization server (RFC 7662), and a revoked one is answered with
//     401 and an invalid_token challenge;
//   - /admin needs the scope echo:admin, and a token without it is answered
//     with 403 and the insufficient_scope challenge Auth0's Node middleware
//     sends (the Go middleware leaves scopes to the application).
//
// Every other path answers with the token's subject.
type httpResource struct {
	srv          *httptest.Server
	introspector rs.ResourceServer // nil: no revocation checks

	accepted, rejected atomic.Int64
	// gate, when set, is called for each revocation rejection before it is
	// answered.
	gate func()

	mu       sync.Mutex
	arrivals map[string][]int // status codes answered, by request ID
}

// scopeClaims reads the JWT's "scope" claim (RFC 9068).
type scopeClaims struct {
	Scope string `json:"scope"`
}

func (*scopeClaims) Validate(context.Context) error { return nil }

func startHTTPResource(t *testing.T, a *authServer, checkRevocation bool) *httpResource {
	t.Helper()
	issuer, err := url.Parse(a.issuer)
	if err != nil {
		t.Fatal(err)
	}
	keys := jwks.NewCachingProvider(issuer, time.Minute, jwks.WithCustomClient(a.srv.Client()))
	v, err := validator.New(keys.KeyFunc, validator.ES256, a.issuer, []string{serviceClient, longClient},
		validator.WithCustomClaims(func() validator.CustomClaims { return &scopeClaims{} }))
	if err != nil {
		t.Fatal(err)
	}
	h := &httpResource{arrivals: map[string][]int{}}
	if checkRevocation {
		h.introspector, err = rs.NewResourceServerClientCredentials(context.Background(), a.issuer, rsClient, rsSecret,
			rs.WithClient(a.srv.Client()))
		if err != nil {
			t.Fatal(err)
		}
	}
	mw := jwtmiddleware.New(v.ValidateToken)
	h.srv = httptest.NewUnstartedServer(h.record(mw.CheckJWT(http.HandlerFunc(h.serve))))
	h.srv.TLS = a.srv.TLS.Clone() // the authorization server's certificate: one root for both
	h.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	h.srv.StartTLS()
	t.Cleanup(h.srv.Close)
	return h
}

// record counts what each request was answered, by request ID.
func (h *httpResource) record(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(rec, r)
		if rec.code == http.StatusOK {
			h.accepted.Add(1)
		} else {
			h.rejected.Add(1)
		}
		if id := r.Header.Get(requestIDHeader); id != "" {
			h.mu.Lock()
			h.arrivals[id] = append(h.arrivals[id], rec.code)
			h.mu.Unlock()
		}
	})
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

func (h *httpResource) serve(w http.ResponseWriter, r *http.Request) {
	claims := r.Context().Value(jwtmiddleware.ContextKey{}).(*validator.ValidatedClaims)
	if h.introspector != nil {
		tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		resp, err := rs.Introspect[*oidc.IntrospectionResponse](r.Context(), h.introspector, tok)
		if err != nil {
			http.Error(w, "introspection failed", http.StatusServiceUnavailable)
			return
		}
		if !resp.Active {
			if h.gate != nil {
				h.gate()
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="api", error="invalid_token", error_description="the token was revoked"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
	}
	if r.URL.Path == "/admin" {
		scopes := strings.Fields(claims.CustomClaims.(*scopeClaims).Scope)
		if !slices.Contains(scopes, "echo:admin") {
			w.Header().Set("WWW-Authenticate", `Bearer realm="api", error="insufficient_scope", error_description="Insufficient Scope", scope="echo:admin"`)
			w.WriteHeader(http.StatusForbidden)
			return
		}
	}
	_, _ = io.Copy(io.Discard, r.Body)
	_, _ = fmt.Fprint(w, claims.RegisteredClaims.Subject)
}

// arrivalsOf returns the status codes answered to request id, in order.
func (h *httpResource) arrivalsOf(id string) []int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.arrivals[id])
}

// httpClient is an http.Client whose transport puts src's token on every
// request, over the transport that trusts the servers' certificate.
func httpClient(a *authServer, src httpauth.TokenSource) *http.Client {
	return &http.Client{Transport: httpauth.NewTransport(src, a.srv.Client().Transport)}
}

// serviceSource is a Source on the client-credentials grant of client id
// with the scope echo:read, reaching the token endpoint through the client
// that trusts the authorization server's certificate.
func serviceSource(a *authServer, id string, opts ...tokensource.Option) *tokensource.Source {
	cfg := a.serviceConfig(id)
	cfg.Scopes = []string{"echo:read"}
	return tokensource.New(tokensource.ClientCredentials(cfg, tokensource.WithHTTPClient(a.srv.Client())), opts...)
}

// getAs sends GET path with request ID id and checks that the answer is
// want's subject.
func getAs(ctx context.Context, c *http.Client, url, id, want string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set(requestIDHeader, id)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	if string(body) != want {
		return fmt.Errorf("the resource server saw subject %q, want %q", body, want)
	}
	return nil
}

// httpLoad is runLoad for HTTP: workers goroutines send GET requests back
// to back until stop is closed.
func httpLoad(ctx context.Context, c *http.Client, url string, workers int, stop <-chan struct{}, want string) *loadResult {
	res := &loadResult{}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				cctx, cancel := context.WithTimeout(ctx, callTimeout)
				res.record(getAs(cctx, c, url, fmt.Sprintf("w%d-%d", w, i), want))
				cancel()
				time.Sleep(5 * time.Millisecond) // pacing, not synchronisation
			}
		})
	}
	wg.Wait()
	return res
}

// One Source serves a gRPC connection and an http.Client under load across
// four expiries: no call and no request fails, and each expiry costs one
// grant between the two transports (two grants would come within
// milliseconds of each other, which checkGaps rejects).
func TestHTTPAndGRPCShareOneRefreshPerExpiry(t *testing.T) {
	a := startAuthServer(t)
	// Introspecting every call of both transports' load on a loaded 2-core
	// machine under -race queues calls for longer than a token lives.
	r := startCachingResourceServer(t, a, time.Second)
	h := startHTTPResource(t, a, false)
	events := newEventLog()
	src := serviceSource(a, serviceClient, tokensource.WithObserver(events.observe))
	defer src.Close()
	echo := dial(t, r.addr, a.clientTLS(), src)
	client := httpClient(a, src)
	ctx := a.httpContext(context.Background())

	const expiries = 4
	reached := grantsReached(a.store, oidc.GrantTypeClientCredentials, serviceClient, expiries+1)
	halt := make(chan struct{})
	grpcDone, httpDone := make(chan *loadResult, 1), make(chan *loadResult, 1)
	go func() { grpcDone <- runLoad(ctx, echo, workers/4, 0, halt, serviceClient) }()
	go func() { httpDone <- httpLoad(ctx, client, h.srv.URL+"/echo", workers/4, halt, serviceClient) }()
	select {
	case <-reached:
	case <-time.After(hangGuard):
		t.Errorf("%d grants did not happen within %v", expiries+1, hangGuard)
	}
	close(halt)
	grpcRes, httpRes := <-grpcDone, <-httpDone
	_ = src.Close()

	grants := a.store.issuances(oidc.GrantTypeClientCredentials, serviceClient)
	succeeded, forced := events.count(tokensource.RefreshSucceeded)
	gap := checkGaps(t, grants)
	t.Logf("gRPC and HTTP on one Source | gRPC: %v | HTTP: %v | %d grants (the first token and %d expiries), %d forced, smallest gap %v; HTTP resource server: %d accepted, %d rejected",
		grpcRes, httpRes, len(grants), expiries, forced, gap.Round(time.Millisecond), h.accepted.Load(), h.rejected.Load())
	if grpcRes.failed.Load() != 0 || httpRes.failed.Load() != 0 {
		t.Errorf("failed: gRPC %v; HTTP %v", grpcRes, httpRes)
	}
	if grpcRes.calls.Load() == 0 || httpRes.calls.Load() == 0 {
		t.Errorf("a transport made no call: gRPC %v; HTTP %v", grpcRes, httpRes)
	}
	if len(grants) < expiries+1 || len(grants) != succeeded {
		t.Errorf("server made %d grants, the Source %d refreshes; want them equal (≥ %d)", len(grants), succeeded, expiries+1)
	}
}

// The middleware's own 401 (here for a token it cannot parse) carries no
// challenge: concurrent requests rejected with it share one refresh and are
// each retried once.
func TestHTTPMiddlewareRejectionRefreshes(t *testing.T) {
	a := startAuthServer(t)
	h := startHTTPResource(t, a, false)
	src := serviceSource(a, longClient, tokensource.WithInitialToken(&tokensource.Token{
		AccessToken: "not-a-jwt", Expiry: time.Now().Add(time.Hour)}))
	defer src.Close()
	res := concurrentGets(t, a.httpContext(context.Background()), httpClient(a, src), h, 16)
	grants := len(a.store.issuances(oidc.GrantTypeClientCredentials, longClient))
	t.Logf("token the middleware cannot parse | %v; %d grants", res, grants)
	if res.failed.Load() != 0 || grants != 1 {
		t.Errorf("%v, %d grants: want no failure and 1 grant", res, grants)
	}
}

// concurrentGets sends n GET requests at once, each with its own request
// ID, and checks that each reached the server at most twice, the first
// time rejected.
func concurrentGets(t *testing.T, ctx context.Context, c *http.Client, h *httpResource, n int) *loadResult {
	t.Helper()
	res := &loadResult{}
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, callTimeout)
			defer cancel()
			res.record(getAs(cctx, c, h.srv.URL+"/echo", fmt.Sprintf("%s-%d", t.Name(), i), longClient))
		})
	}
	wg.Wait()
	for i := range n {
		got := h.arrivalsOf(fmt.Sprintf("%s-%d", t.Name(), i))
		if len(got) == 0 || len(got) > 2 || got[len(got)-1] != http.StatusOK || (len(got) == 2 && got[0] != http.StatusUnauthorized) {
			t.Errorf("request %d was answered %v: want [200] or [401 200]", i, got)
		}
	}
	return res
}

// A revoked token: every one of 32 concurrent requests is rejected with it
// (the server holds the rejections until all have arrived), the Source makes
// one grant for all of them, and each request is retried once; the gRPC
// connection on the same Source then carries the new token without another
// grant.
func TestHTTPRevocationOneRefreshEachRetriedOnce(t *testing.T) {
	a := startAuthServer(t)
	r := startResourceServer(t, a)
	h := startHTTPResource(t, a, true)
	events := newEventLog()
	src := serviceSource(a, longClient, tokensource.WithObserver(events.observe))
	defer src.Close()
	client := httpClient(a, src)
	echo := dial(t, r.addr, a.clientTLS(), src)
	ctx := a.httpContext(context.Background())
	if err := getAs(ctx, client, h.srv.URL+"/echo", "", longClient); err != nil {
		t.Fatal(err)
	}
	tok, err := src.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.revokeAccessToken(ctx, longClient, serviceSecret, tok.AccessToken); err != nil {
		t.Fatal(err)
	}

	const n = 32
	all := make(chan struct{})
	var held atomic.Int64
	h.gate = func() {
		if held.Add(1) == n {
			close(all)
		}
		select {
		case <-all:
		case <-time.After(hangGuard):
		}
	}
	res := concurrentGets(t, ctx, client, h, n)
	grants := len(a.store.issuances(oidc.GrantTypeClientCredentials, longClient)) - 1
	_, forced := events.count(tokensource.RefreshSucceeded)
	grpcRes := runLoad(ctx, echo, 8, 3, nil, longClient)
	grantsAfterGRPC := len(a.store.issuances(oidc.GrantTypeClientCredentials, longClient)) - 1
	t.Logf("revoked token | HTTP: %v, %d rejected by revocation; %d grants, %d forced refreshes | then gRPC: %v, %d grants in all",
		res, held.Load(), grants, forced, grpcRes, grantsAfterGRPC)
	if res.failed.Load() != 0 || held.Load() != n {
		t.Errorf("%v; %d rejections: want no failure, %d rejections", res, held.Load(), n)
	}
	if grants != 1 || forced != 1 {
		t.Errorf("%d grants, %d forced refreshes after the revocation: want 1 each", grants, forced)
	}
	if grpcRes.failed.Load() != 0 || grantsAfterGRPC != 1 {
		t.Errorf("gRPC after the refresh: %v, %d grants: want no failure and no other grant", grpcRes, grantsAfterGRPC)
	}
}

// A route that needs a scope the token lacks answers 403 with an
// insufficient_scope challenge: the transport hands the response back
// without a refresh (the token endpoint gets no request), and
// ChallengeError names the scope.
func TestHTTPInsufficientScopeNoRefresh(t *testing.T) {
	a := startAuthServer(t)
	h := startHTTPResource(t, a, false)
	events := newEventLog()
	src := serviceSource(a, longClient, tokensource.WithObserver(events.observe))
	defer src.Close()
	client := httpClient(a, src)
	ctx := a.httpContext(context.Background())
	if err := getAs(ctx, client, h.srv.URL+"/echo", "", longClient); err != nil {
		t.Fatal(err)
	}
	tokenRequests, _ := a.faults.counts()
	resp, err := client.Get(h.srv.URL + "/admin")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cerr := httpauth.ChallengeError(resp)
	var se *tokensource.ScopeError
	if resp.StatusCode != http.StatusForbidden || !errors.Is(cerr, tokensource.ErrInsufficientScope) ||
		!errors.As(cerr, &se) || se.Scope != "echo:admin" || !strings.Contains(cerr.Error(), "echo:admin") {
		t.Fatalf("status %d, ChallengeError %v: want 403 and ErrInsufficientScope naming echo:admin", resp.StatusCode, cerr)
	}
	after, _ := a.faults.counts()
	if got := after - tokenRequests; got != 0 {
		t.Errorf("%d token requests for the insufficient scope, want 0", got)
	}
	if _, forced := events.count(tokensource.RefreshStarted); forced != 0 {
		t.Errorf("%d forced refreshes, want 0", forced)
	}
	t.Logf("insufficient scope | %s, %v; %d token requests", resp.Status, cerr, after-tokenRequests)
}

// A request whose body cannot be sent again gets the 401 of a revoked token
// as the server sent it and is not retried; the Source is refreshed, and the
// next request carries the new token.
func TestHTTPNonReplayableBodyNotRetried(t *testing.T) {
	a := startAuthServer(t)
	h := startHTTPResource(t, a, true)
	src := serviceSource(a, longClient)
	defer src.Close()
	client := httpClient(a, src)
	ctx := a.httpContext(context.Background())
	tok, err := src.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.revokeAccessToken(ctx, longClient, serviceSecret, tok.AccessToken); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.srv.URL+"/echo", io.NopCloser(strings.NewReader("once")))
	req.Header.Set(requestIDHeader, "post")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	grants := len(a.store.issuances(oidc.GrantTypeClientCredentials, longClient))
	if resp.StatusCode != http.StatusUnauthorized || !slices.Equal(h.arrivalsOf("post"), []int{http.StatusUnauthorized}) {
		t.Errorf("status %d, answered %v: want the 401, sent once", resp.StatusCode, h.arrivalsOf("post"))
	}
	if grants != 2 {
		t.Errorf("%d grants, want 2 (the Source refreshed for later requests)", grants)
	}
	if err := getAs(ctx, client, h.srv.URL+"/echo", "next", longClient); err != nil {
		t.Errorf("next request: %v", err)
	}
	if got := len(a.store.issuances(oidc.GrantTypeClientCredentials, longClient)); got != 2 {
		t.Errorf("%d grants after the next request, want 2", got)
	}
}
