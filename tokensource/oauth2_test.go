package tokensource

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
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
	status   int  // non-zero: answer every request with this status
	hang     bool // never answer (until the client gives up)
	echo     bool // answer 502 with a body that quotes the request, as a debugging proxy might
	requests int
	stop     chan struct{} // closed before the server shuts down
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
		select {
		case <-r.Context().Done():
		case <-e.stop:
		}
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if id, secret, ok := r.BasicAuth(); !ok || id != "client" || secret != "client-secret" {
		writeJSON(w, http.StatusUnauthorized, map[string]any{"error": "invalid_client"})
		return
	}
	if e.status != 0 {
		http.Error(w, "try again later", e.status)
		return
	}
	if err := r.ParseForm(); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "invalid_request"})
		return
	}
	if e.echo {
		http.Error(w, "<html>upstream failed; request was "+r.PostForm.Encode()+"</html>", http.StatusBadGateway)
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

// oauth2's RetrieveError quotes the whole response body when the server sent
// no OAuth 2 error code. That body can echo the request, refresh token
// included (and is often a whole HTML page): the Source's errors leave it
// out, while errors.As still reaches the RetrieveError with the body.
func TestOAuth2ErrorsOmitResponseBody(t *testing.T) {
	const secret = "rt-s3cr3t"
	e := &tokenEndpoint{valid: map[string]bool{secret: true}, echo: true}
	cfg, ctx := startEndpoint(t, e)
	upstream := cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: secret, Expiry: time.Unix(1, 0)})
	for name, r := range map[string]Refresher{
		"OAuth2Refresher": OAuth2Refresher(cfg),
		"FromOAuth2":      FromOAuth2(upstream),
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
			if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "<html>") {
				t.Fatalf("error quotes the response body: %q", err)
			}
			if !strings.Contains(err.Error(), "502") {
				t.Errorf("error %q does not name the HTTP status", err)
			}
			var re *oauth2.RetrieveError
			if !errors.As(err, &re) || re.Response.StatusCode != http.StatusBadGateway || !strings.Contains(string(re.Body), secret) {
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
