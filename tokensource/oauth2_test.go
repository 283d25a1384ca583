package tokensource

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// tokenEndpoint is an OAuth 2 authorization server's token endpoint, enough
// for the refresh-token and client-credentials grants.
type tokenEndpoint struct {
	mu       sync.Mutex
	valid    map[string]bool // refresh tokens it accepts
	rotate   bool            // issue a new refresh token on every refresh and revoke the old one
	issued   int
	status   int    // non-zero: answer every request with this status
	hang     bool   // never answer (until the client gives up)
	echo     bool   // answer 502 with a body that quotes the request, as a debugging proxy might
	code     string // non-empty: answer every request with this OAuth 2 error code
	requests int
	// The first failFirst requests are answered with failStatus and the
	// headers failHeader (a Retry-After, say).
	failFirst  int
	failStatus int
	failHeader http.Header
	arrived    chan struct{} // if set, told of every request that hangs
	stop       chan struct{} // closed before the server shuts down
}

func (e *tokenEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	e.requests++
	hang := e.hang
	e.mu.Unlock()
	if hang {
		// Read the body first: only then does net/http notice that the
		// client hung up and cancel r.Context().
		_, _ = io.Copy(io.Discard, r.Body)
		if e.arrived != nil {
			e.arrived <- struct{}{}
		}
		select {
		case <-r.Context().Done():
		case <-e.stop:
		}
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.requests <= e.failFirst {
		maps.Copy(w.Header(), e.failHeader)
		http.Error(w, "try again later", e.failStatus)
		return
	}
	if err := r.ParseForm(); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "invalid_request"})
		return
	}
	if e.echo {
		// A proxy in front of the server, quoting the request before the
		// server could check anything.
		http.Error(w, "<html>upstream failed; request was "+r.PostForm.Encode()+"</html>", http.StatusBadGateway)
		return
	}
	id, secret, ok := r.BasicAuth()
	if !ok {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	if id != "client" || secret != "client-secret" {
		writeJSON(w, http.StatusUnauthorized, map[string]any{"error": "invalid_client"})
		return
	}
	if e.status != 0 {
		http.Error(w, "try again later", e.status)
		return
	}
	if e.code != "" {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": e.code, "error_description": "refused by the test"})
		return
	}
	e.issued++
	resp := map[string]any{
		"access_token": fmt.Sprintf("at-%d", e.issued),
		"token_type":   "Bearer",
		"expires_in":   3600,
	}
	switch r.PostForm.Get("grant_type") {
	case "refresh_token":
		rt := r.PostForm.Get("refresh_token")
		if !e.valid[rt] {
			writeJSON(w, http.StatusBadRequest, map[string]any{"error": "invalid_grant", "error_description": "refresh token is invalid"})
			return
		}
		if e.rotate {
			delete(e.valid, rt)
			next := fmt.Sprintf("rt-%d", e.issued+1)
			e.valid[next] = true
			resp["refresh_token"] = next
		}
	case "client_credentials":
		resp["access_token"] = fmt.Sprintf("cc-%d", e.issued)
	default:
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "unsupported_grant_type"})
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// startEndpoint serves e on 127.0.0.1 and returns an oauth2.Config for it
// and a context carrying the server's HTTP client.
func startEndpoint(t *testing.T, e *tokenEndpoint) (*oauth2.Config, context.Context) {
	t.Helper()
	e.stop = make(chan struct{})
	srv := httptest.NewServer(e)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(e.stop) }) // runs first: no handler outlives the test
	cfg := &oauth2.Config{
		ClientID:     "client",
		ClientSecret: "client-secret",
		Endpoint:     oauth2.Endpoint{TokenURL: srv.URL + "/token", AuthStyle: oauth2.AuthStyleInHeader},
	}
	return cfg, context.WithValue(ctxBG, oauth2.HTTPClient, srv.Client())
}

func TestOAuth2RefresherKeepsRotatedRefreshToken(t *testing.T) {
	e := &tokenEndpoint{valid: map[string]bool{"rt-1": true}, rotate: true}
	cfg, ctx := startEndpoint(t, e)
	store := NewMemoryStore()
	s := New(OAuth2Refresher(cfg), WithStore(store), WithInitialToken(&Token{RefreshToken: "rt-1"}))
	defer mustClose(t, s)

	tok, err := s.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken != "at-1" || tok.RefreshToken != "rt-2" {
		t.Fatalf("first token = %q/%q, want at-1/rt-2", tok.AccessToken, tok.RefreshToken)
	}
	if life := time.Until(tok.Expiry); life < 59*time.Minute || life > time.Hour {
		t.Errorf("expiry in %v, want about 1h (expires_in)", life)
	}
	if saved, _ := store.Load(ctx); saved.RefreshToken != "rt-2" {
		t.Errorf("store holds refresh token %q, want the rotated rt-2", saved.RefreshToken)
	}
	// The server rejects the token: refresh with rt-2 (rt-1 is revoked now).
	tok2, err := s.Refresh(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	if tok2.AccessToken != "at-2" || tok2.RefreshToken != "rt-3" {
		t.Fatalf("second token = %q/%q, want at-2/rt-3", tok2.AccessToken, tok2.RefreshToken)
	}
	if saved, _ := store.Load(ctx); saved.RefreshToken != "rt-3" {
		t.Errorf("store holds refresh token %q, want rt-3", saved.RefreshToken)
	}
}

func TestOAuth2RefresherKeepsRefreshTokenWithoutRotation(t *testing.T) {
	e := &tokenEndpoint{valid: map[string]bool{"rt-1": true}}
	cfg, ctx := startEndpoint(t, e)
	r := OAuth2Refresher(cfg)
	cur := &Token{RefreshToken: "rt-1"}
	for i := 1; i <= 2; i++ {
		tok, err := r.Refresh(ctx, cur)
		if err != nil {
			t.Fatal(err)
		}
		if tok.AccessToken != fmt.Sprintf("at-%d", i) || tok.RefreshToken != "rt-1" {
			t.Fatalf("token %d = %q/%q, want the refresh token kept", i, tok.AccessToken, tok.RefreshToken)
		}
		cur = tok
	}
}

func TestOAuth2RefresherInvalidGrantRequiresReauth(t *testing.T) {
	e := &tokenEndpoint{valid: map[string]bool{}}
	cfg, ctx := startEndpoint(t, e)
	hook := make(chan error, 1)
	s := New(OAuth2Refresher(cfg), WithInitialToken(&Token{RefreshToken: "revoked"}),
		WithOnReauthRequired(func(err error) { hook <- err }))
	defer mustClose(t, s)
	_, err := s.Token(ctx)
	if !errors.Is(err, ErrReauthRequired) || !IsPermanent(err) {
		t.Fatalf("Token = %v, want ErrReauthRequired", err)
	}
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) || re.ErrorCode != "invalid_grant" {
		t.Errorf("the oauth2 error is not reachable with errors.As: %v", err)
	}
	if want := `tokensource: re-authentication required: refresh failed: oauth2: "invalid_grant"`; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error = %q, want it to start with %q", err, want)
	}
	if err := <-hook; !errors.Is(err, ErrReauthRequired) {
		t.Errorf("hook got %v", err)
	}
}

func TestOAuth2RefresherServerErrorIsTransient(t *testing.T) {
	e := &tokenEndpoint{valid: map[string]bool{"rt-1": true}, status: http.StatusServiceUnavailable}
	cfg, ctx := startEndpoint(t, e)
	s := New(OAuth2Refresher(cfg), WithInitialToken(&Token{RefreshToken: "rt-1"}))
	defer mustClose(t, s)
	_, err := s.Token(ctx)
	var re *oauth2.RetrieveError
	if err == nil || errors.Is(err, ErrReauthRequired) || !errors.As(err, &re) || re.Response.StatusCode != 503 {
		t.Fatalf("Token = %v, want a transient error carrying the 503", err)
	}
	if s.Stats().ReauthRequired {
		t.Error("a 503 put the source into the reauth state")
	}
}

func TestOAuth2RefresherWithoutRefreshToken(t *testing.T) {
	e := &tokenEndpoint{valid: map[string]bool{}}
	cfg, ctx := startEndpoint(t, e)
	s := New(OAuth2Refresher(cfg))
	defer mustClose(t, s)
	if _, err := s.Token(ctx); !errors.Is(err, ErrReauthRequired) || !errors.Is(err, errNoRefreshToken) {
		t.Fatalf("Token = %v, want ErrReauthRequired (nothing to refresh with)", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.requests != 0 {
		t.Errorf("%d requests to the token endpoint, want 0", e.requests)
	}
}

func TestOAuth2RefresherHonoursRefreshTimeout(t *testing.T) {
	e := &tokenEndpoint{valid: map[string]bool{"rt-1": true}, hang: true}
	cfg, ctx := startEndpoint(t, e)
	s := New(OAuth2Refresher(cfg), WithInitialToken(&Token{RefreshToken: "rt-1"}),
		WithRefreshTimeout(50*time.Millisecond))
	defer mustClose(t, s)
	if _, err := s.Token(ctx); !errors.Is(err, ErrRefreshTimeout) {
		t.Fatalf("Token = %v, want ErrRefreshTimeout", err)
	}
}

func TestFromOAuth2(t *testing.T) {
	e := &tokenEndpoint{valid: map[string]bool{}}
	cfg, ctx := startEndpoint(t, e)
	cc := &clientcredentials.Config{ClientID: cfg.ClientID, ClientSecret: cfg.ClientSecret,
		TokenURL: cfg.Endpoint.TokenURL, AuthStyle: oauth2.AuthStyleInHeader}
	s := New(FromOAuth2(cc.TokenSource(ctx)))
	defer mustClose(t, s)
	tok, err := s.Token(ctxBG)
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken != "cc-1" || time.Until(tok.Expiry) < 59*time.Minute {
		t.Errorf("token = %q expiring %v, want cc-1 in about 1h", tok.AccessToken, tok.Expiry)
	}

	// invalid_grant from any oauth2.TokenSource is Permanent.
	revoked := New(FromOAuth2(cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: "revoked"})))
	defer mustClose(t, revoked)
	if _, err := revoked.Token(ctxBG); !errors.Is(err, ErrReauthRequired) {
		t.Errorf("Token = %v, want ErrReauthRequired", err)
	}
}

type tokenSourceFunc func() (*oauth2.Token, error)

func (f tokenSourceFunc) Token() (*oauth2.Token, error) { return f() }

func TestFromOAuth2MapsFieldsAndHonoursCancelledContext(t *testing.T) {
	exp := time.Now().Add(time.Hour).Round(0)
	calls := 0
	r := FromOAuth2(tokenSourceFunc(func() (*oauth2.Token, error) {
		calls++
		return &oauth2.Token{AccessToken: "a", RefreshToken: "r", Expiry: exp, TokenType: "Bearer"}, nil
	}))
	tok, err := r.Refresh(ctxBG, nil)
	if err != nil || tok.AccessToken != "a" || tok.RefreshToken != "r" || !tok.Expiry.Equal(exp) {
		t.Fatalf("Refresh = (%v, %v)", tok, err)
	}
	cancelled, cancel := context.WithCancel(ctxBG)
	cancel()
	if _, err := r.Refresh(cancelled, nil); !errors.Is(err, context.Canceled) || calls != 1 {
		t.Errorf("Refresh with a cancelled ctx = %v after %d calls", err, calls)
	}
	// A nil token from the oauth2 source is refused by the Source.
	s := New(FromOAuth2(tokenSourceFunc(func() (*oauth2.Token, error) { return nil, nil })))
	defer mustClose(t, s)
	if _, err := s.Token(ctxBG); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("Token = %v, want ErrInvalidToken", err)
	}
}

func TestSourceOAuth2View(t *testing.T) {
	e := &tokenEndpoint{valid: map[string]bool{"rt-1": true}}
	cfg, ctx := startEndpoint(t, e)
	s := New(OAuth2Refresher(cfg), WithInitialToken(&Token{RefreshToken: "rt-1"}))
	defer mustClose(t, s)
	if _, err := s.Token(ctx); err != nil { // the first refresh needs the test server's client
		t.Fatal(err)
	}

	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Header.Get("Authorization"))
	}))
	defer api.Close()
	client := oauth2.NewClient(context.WithValue(ctxBG, oauth2.HTTPClient, api.Client()), s.OAuth2())
	resp, err := client.Get(api.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if string(body) != "Bearer at-1" {
		t.Errorf("server saw Authorization %q, want the source's token", body)
	}

	ot, err := s.OAuth2().Token()
	if err != nil || ot.AccessToken != "at-1" || ot.Type() != "Bearer" || ot.RefreshToken != "" {
		t.Errorf("view Token = (%+v, %v), want the access token only", ot, err)
	}
	mustClose(t, s)
	if _, err := s.OAuth2().Token(); !errors.Is(err, ErrClosed) {
		t.Errorf("view after Close = %v, want ErrClosed", err)
	}
}

// countingTransport counts the requests that go through it.
type countingTransport struct {
	rt http.RoundTripper
	n  atomic.Int64
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return c.rt.RoundTrip(r)
}

// clientCredentialsConfig is a clientcredentials.Config for e's server, and
// a context carrying an HTTP client that counts its requests.
func clientCredentialsConfig(t *testing.T, e *tokenEndpoint) (*clientcredentials.Config, context.Context, *countingTransport) {
	t.Helper()
	cfg, ctx := startEndpoint(t, e)
	client := ctx.Value(oauth2.HTTPClient).(*http.Client)
	tr := &countingTransport{rt: client.Transport}
	ctx = context.WithValue(ctxBG, oauth2.HTTPClient, &http.Client{Transport: tr})
	return &clientcredentials.Config{ClientID: cfg.ClientID, ClientSecret: cfg.ClientSecret,
		TokenURL: cfg.Endpoint.TokenURL, AuthStyle: oauth2.AuthStyleInHeader}, ctx, tr
}

// Every refresh is one token request, also a forced one while the cached
// token is still valid: nothing is reused.
func TestClientCredentialsOneRequestPerRefresh(t *testing.T) {
	e := &tokenEndpoint{valid: map[string]bool{}}
	cfg, ctx, tr := clientCredentialsConfig(t, e)
	s := New(ClientCredentials(cfg), WithMinRefreshInterval(0))
	defer mustClose(t, s)

	tok, err := s.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken != "cc-1" || tok.RefreshToken != "" || time.Until(tok.Expiry) < 59*time.Minute {
		t.Fatalf("first token = %q (refresh %q) expiring %v, want cc-1 for about 1h", tok.AccessToken, tok.RefreshToken, tok.Expiry)
	}
	for range 3 {
		if again, err := s.Token(ctx); err != nil || again != tok {
			t.Fatalf("Token = (%v, %v), want the cached token", again, err)
		}
	}
	for i := 2; i <= 4; i++ {
		// The server rejected the still-valid token.
		next, err := s.Refresh(ctx, tok)
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("cc-%d", i); next.AccessToken != want {
			t.Fatalf("forced refresh %d = %q, want %q", i-1, next.AccessToken, want)
		}
		tok = next
	}
	e.mu.Lock()
	requests := e.requests
	e.mu.Unlock()
	if requests != 4 || tr.n.Load() != 4 {
		t.Errorf("%d requests at the endpoint, %d through the ctx's client; want 4 each (one per refresh)", requests, tr.n.Load())
	}
	if st := s.Stats(); st.Refreshes != 4 {
		t.Errorf("Stats().Refreshes = %d, want 4", st.Refreshes)
	}
}

// The request runs on the refresh context: cancelling it aborts the HTTP
// request, and the Source's refresh timeout does the same.
func TestClientCredentialsHonoursContext(t *testing.T) {
	// Room for both requests' notices: the second is not waited for.
	e := &tokenEndpoint{valid: map[string]bool{}, hang: true, arrived: make(chan struct{}, 2)}
	cfg, ctx, _ := clientCredentialsConfig(t, e)
	r := ClientCredentials(cfg)

	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := r.Refresh(cctx, nil)
		done <- err
	}()
	<-e.arrived // the request reached the server
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) || IsPermanent(err) {
		t.Fatalf("Refresh after cancel = %v, want a transient error matching context.Canceled", err)
	}

	s := New(r, WithRefreshTimeout(200*time.Millisecond))
	defer mustClose(t, s)
	if _, err := s.Token(ctx); !errors.Is(err, ErrRefreshTimeout) {
		t.Fatalf("Token = %v, want ErrRefreshTimeout", err)
	}
}

// Error codes that refuse the client or its request are Permanent (the same
// request would be refused again); the others are transient.
func TestClientCredentialsErrorClassification(t *testing.T) {
	for _, tc := range []struct {
		name      string
		e         *tokenEndpoint
		secret    string
		permanent bool
	}{
		{"wrong secret: invalid_client", &tokenEndpoint{}, "wrong", true},
		{"unauthorized_client", &tokenEndpoint{code: "unauthorized_client"}, "", true},
		{"invalid_grant", &tokenEndpoint{code: "invalid_grant"}, "", true},
		{"invalid_scope", &tokenEndpoint{code: "invalid_scope"}, "", true},
		{"unsupported_grant_type", &tokenEndpoint{code: "unsupported_grant_type"}, "", true},
		{"server_error", &tokenEndpoint{code: "server_error"}, "", false},
		{"temporarily_unavailable", &tokenEndpoint{code: "temporarily_unavailable"}, "", false},
		{"HTTP 503 without a code", &tokenEndpoint{status: http.StatusServiceUnavailable}, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.e.valid = map[string]bool{}
			cfg, ctx, _ := clientCredentialsConfig(t, tc.e)
			if tc.secret != "" {
				cfg.ClientSecret = tc.secret
			}
			s := New(ClientCredentials(cfg))
			defer mustClose(t, s)
			_, err := s.Token(ctx)
			if err == nil {
				t.Fatal("Token succeeded")
			}
			if got := errors.Is(err, ErrReauthRequired); got != tc.permanent {
				t.Errorf("errors.Is(err, ErrReauthRequired) = %v, want %v (err: %v)", got, tc.permanent, err)
			}
			var re *oauth2.RetrieveError
			if !errors.As(err, &re) {
				t.Errorf("the oauth2 error is not reachable with errors.As: %v", err)
			}
			if strings.Contains(err.Error(), cfg.ClientSecret) {
				t.Errorf("error quotes the client secret: %q", err)
			}
		})
	}
}

// FromOAuth2 around an oauth2.ReuseTokenSource (what
// clientcredentials.Config.TokenSource returns) cannot obtain a new token on
// demand: a forced refresh gets the cached, rejected token back, which the
// Source reports as ErrUnchangedToken. ClientCredentials does not have this
// problem (TestClientCredentialsOneRequestPerRefresh).
func TestFromOAuth2ReuseTokenSourceReportsUnchangedToken(t *testing.T) {
	e := &tokenEndpoint{valid: map[string]bool{}}
	cfg, ctx, tr := clientCredentialsConfig(t, e)
	s := New(FromOAuth2(cfg.TokenSource(ctx)), WithMinRefreshInterval(0))
	defer mustClose(t, s)
	tok, err := s.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Refresh(ctx, tok)
	if !errors.Is(err, ErrUnchangedToken) {
		t.Fatalf("forced refresh = %v, want ErrUnchangedToken", err)
	}
	if n := tr.n.Load(); n != 1 {
		t.Errorf("%d token requests, want 1: the ReuseTokenSource answered the forced refresh from its cache", n)
	}
	if st := s.Stats(); st.Refreshes != 1 {
		t.Errorf("Stats().Refreshes = %d, want 1 (the unchanged result is not a refresh)", st.Refreshes)
	}
}

// oauth2's RetrieveError quotes the whole response body when the server sent
// no OAuth 2 error code. That body can echo the request, refresh token
// included (and is often a whole HTML page): the Source's errors leave it
// out, while errors.As still reaches the RetrieveError with the body.
func TestOAuth2ErrorsOmitResponseBody(t *testing.T) {
	const secret = "rt-s3cr3t"
	e := &tokenEndpoint{valid: map[string]bool{secret: true}, echo: true}
	cfg, ctx := startEndpoint(t, e)
	upstream := cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: secret, Expiry: time.Unix(1, 0)})
	// The client secret in the form, where the proxy's echo quotes it.
	cc := &clientcredentials.Config{ClientID: cfg.ClientID, ClientSecret: cfg.ClientSecret,
		TokenURL: cfg.Endpoint.TokenURL, AuthStyle: oauth2.AuthStyleInParams}
	for name, r := range map[string]Refresher{
		"OAuth2Refresher":   OAuth2Refresher(cfg),
		"ClientCredentials": ClientCredentials(cc),
		"FromOAuth2":        FromOAuth2(upstream),
		// A custom oauth2.TokenSource that wraps the RetrieveError: the
		// wrapper's message quotes the body as well.
		"FromOAuth2 wrapped": FromOAuth2(wrappingTokenSource{upstream}),
	} {
		t.Run(name, func(t *testing.T) {
			s := New(r, WithInitialToken(&Token{RefreshToken: secret}))
			defer mustClose(t, s)
			_, err := s.Token(ctx)
			if err == nil {
				t.Fatal("Token succeeded")
			}
			for _, sec := range []string{secret, cfg.ClientSecret, "<html>"} {
				if strings.Contains(err.Error(), sec) {
					t.Fatalf("error quotes the response body: %q", err)
				}
			}
			if !strings.Contains(err.Error(), "502") {
				t.Errorf("error %q does not name the HTTP status", err)
			}
			var re *oauth2.RetrieveError
			if !errors.As(err, &re) || re.Response.StatusCode != http.StatusBadGateway ||
				!(strings.Contains(string(re.Body), secret) || strings.Contains(string(re.Body), cfg.ClientSecret)) {
				t.Fatalf("errors.As(err, *oauth2.RetrieveError) does not reach the original error: %v", err)
			}
			if errors.Is(err, ErrReauthRequired) {
				t.Errorf("a 502 is not a reason to log in again: %v", err)
			}
		})
	}
}

// wrappingTokenSource wraps the errors of ts, as custom token sources do.
type wrappingTokenSource struct{ ts oauth2.TokenSource }

func (w wrappingTokenSource) Token() (*oauth2.Token, error) {
	t, err := w.ts.Token()
	if err != nil {
		return nil, fmt.Errorf("custom source: %w", err)
	}
	return t, nil
}

// A 429 or 5xx response's Retry-After, in seconds or as an HTTP-date, is the
// wait before the next attempt of the refresh (capped by WithBackoff's
// maximum), for every adapter; without one, with one that cannot be parsed,
// or on another status, the Source's own jittered backoff applies.
func TestOAuth2RetryAfter(t *testing.T) {
	const initial = 40 * time.Millisecond // WithBackoff's: the first wait is 20–40 ms
	date := time.Now().UTC().Truncate(time.Second)
	for _, tc := range []struct {
		name       string
		status     int
		header     http.Header
		backoffMax time.Duration // 0: the default
		want       time.Duration // 0: WithBackoff's jittered wait
	}{
		{"503, Retry-After in seconds", http.StatusServiceUnavailable, http.Header{"Retry-After": {"1"}}, 0, time.Second},
		{"429, Retry-After in seconds", http.StatusTooManyRequests, http.Header{"Retry-After": {"1"}}, 0, time.Second},
		{"502, Retry-After as an HTTP-date", http.StatusBadGateway, http.Header{
			"Date":        {date.Format(http.TimeFormat)},
			"Retry-After": {date.Add(time.Second).Format(http.TimeFormat)},
		}, 0, time.Second},
		{"503, Retry-After beyond WithBackoff's maximum", http.StatusServiceUnavailable,
			http.Header{"Retry-After": {"86400"}}, 150 * time.Millisecond, 150 * time.Millisecond},
		{"503 without Retry-After", http.StatusServiceUnavailable, nil, 0, 0},
		{"503, unparsable Retry-After", http.StatusServiceUnavailable, http.Header{"Retry-After": {"soon"}}, 0, 0},
		{"400 with Retry-After", http.StatusBadRequest, http.Header{"Retry-After": {"1"}}, 0, 0},
	} {
		for _, adapter := range []string{"ClientCredentials", "OAuth2Refresher", "FromOAuth2"} {
			t.Run(tc.name+"/"+adapter, func(t *testing.T) {
				t.Parallel()
				e := &tokenEndpoint{valid: map[string]bool{"rt-1": true}, failFirst: 1, failStatus: tc.status, failHeader: tc.header}
				cfg, ctx := startEndpoint(t, e)
				var r Refresher
				switch adapter {
				case "ClientCredentials":
					r = ClientCredentials(&clientcredentials.Config{ClientID: cfg.ClientID, ClientSecret: cfg.ClientSecret,
						TokenURL: cfg.Endpoint.TokenURL, AuthStyle: oauth2.AuthStyleInHeader})
				case "OAuth2Refresher":
					r = OAuth2Refresher(cfg)
				case "FromOAuth2":
					r = FromOAuth2(cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: "rt-1", Expiry: time.Unix(1, 0)}))
				}
				var evs events
				s := New(r, WithInitialToken(&Token{RefreshToken: "rt-1"}), WithObserver(evs.observe),
					WithBackoff(initial, tc.backoffMax))
				defer mustClose(t, s)
				if _, err := s.Token(ctx); err != nil {
					t.Fatalf("Token = %v, want the second attempt's token", err)
				}
				mustClose(t, s) // the observer calls are over

				failed := evs.of(RefreshAttemptFailed)
				if len(failed) != 1 {
					t.Fatalf("%d RefreshAttemptFailed events, want 1", len(failed))
				}
				var re *oauth2.RetrieveError
				if !errors.As(failed[0].Err, &re) || re.Response.StatusCode != tc.status || failed[0].Attempts != 1 {
					t.Errorf("RefreshAttemptFailed: attempt %d, error %v; want attempt 1 with the HTTP %d", failed[0].Attempts, failed[0].Err, tc.status)
				}
				switch d := failed[0].Duration; {
				case tc.want != 0 && d != tc.want:
					t.Errorf("next attempt after %v, want %v", d, tc.want)
				case tc.want == 0 && (d < initial/2 || d > initial):
					t.Errorf("next attempt after %v, want WithBackoff's first wait (%v to %v)", d, initial/2, initial)
				}
				if ok := evs.of(RefreshSucceeded); len(ok) != 1 || ok[0].Attempts != 2 {
					t.Errorf("RefreshSucceeded events %+v, want one after 2 attempts", ok)
				}
				e.mu.Lock()
				defer e.mu.Unlock()
				if e.requests != 2 {
					t.Errorf("%d token requests, want 2", e.requests)
				}
			})
		}
	}
}

// retryAfterHeader's edge cases: values a server should not send are
// ignored or capped, never trusted blindly.
func TestRetryAfterHeader(t *testing.T) {
	date := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		name   string
		status int
		header http.Header
		want   time.Duration
		ok     bool
	}{
		{"zero seconds", 503, http.Header{"Retry-After": {"0"}}, 0, true},
		{"seconds", 500, http.Header{"Retry-After": {"120"}}, 2 * time.Minute, true},
		{"capped at an hour", 503, http.Header{"Retry-After": {"86400"}}, time.Hour, true},
		{"beyond uint64, capped", 503, http.Header{"Retry-After": {"123456789012345678901234567890"}}, time.Hour, true},
		{"negative", 503, http.Header{"Retry-After": {"-1"}}, 0, false},
		{"signed", 503, http.Header{"Retry-After": {"+1"}}, 0, false},
		{"fraction", 503, http.Header{"Retry-After": {"1.5"}}, 0, false},
		{"garbage", 503, http.Header{"Retry-After": {"soon"}}, 0, false},
		{"absent", 503, nil, 0, false},
		{"HTTP-date, from the response's Date", 503, http.Header{"Date": {date.Format(http.TimeFormat)},
			"Retry-After": {date.Add(90 * time.Second).Format(http.TimeFormat)}}, 90 * time.Second, true},
		{"HTTP-date in RFC 850 form", 503, http.Header{"Date": {date.Format(http.TimeFormat)},
			"Retry-After": {date.Add(time.Minute).Format(time.RFC850)}}, time.Minute, true},
		{"HTTP-date in the past", 503, http.Header{"Date": {date.Format(http.TimeFormat)},
			"Retry-After": {date.Add(-time.Minute).Format(http.TimeFormat)}}, 0, true},
		{"HTTP-date far ahead, without Date", 503, http.Header{"Retry-After": {"Fri, 31 Dec 9999 23:59:59 GMT"}}, time.Hour, true},
		{"not a transient status", 400, http.Header{"Retry-After": {"1"}}, 0, false},
		{"success", 200, http.Header{"Retry-After": {"1"}}, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, ok := retryAfterHeader(&http.Response{StatusCode: tc.status, Header: tc.header})
			if d != tc.want || ok != tc.ok {
				t.Errorf("retryAfterHeader = (%v, %v), want (%v, %v)", d, ok, tc.want, tc.ok)
			}
		})
	}
	if _, ok := retryAfterHeader(nil); ok {
		t.Error("retryAfterHeader(nil) reports a wait")
	}
	// A Permanent code stays Permanent, whatever the status and headers.
	re := &oauth2.RetrieveError{ErrorCode: "invalid_grant",
		Response: &http.Response{StatusCode: 503, Header: http.Header{"Retry-After": {"1"}}}}
	err := classifyOAuth2Error(re, refreshPermanent)
	if _, ok := retryAfter(err); !IsPermanent(err) || ok {
		t.Errorf("classifyOAuth2Error(invalid_grant with Retry-After) = %v, want Permanent without a Retry-After", err)
	}
}
