package httpauth_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tokenrefresh/grpc-tokenrefresh/httpauth"
	"github.com/tokenrefresh/grpc-tokenrefresh/internal/testutil"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// rig is a TLS server that accepts only the token its refresher issued
// last, and a Source on that refresher.
type rig struct {
	srv       *httptest.Server
	src       *tokensource.Source
	refreshes atomic.Int64 // Refresher calls
	valid     atomic.Value // string: the accepted access token
	requests  atomic.Int64 // requests that reached the handler
	rejected  atomic.Int64 // 401s sent
	bodies    chan string  // the body of every accepted request, when not nil
	conns     atomic.Int64 // TCP connections the server accepted
	handler   http.HandlerFunc
	// gate, when set, holds every rejection until it is closed, so that
	// concurrent requests all meet the rejection of the same token.
	gate func()
}

func newRig(t *testing.T, opts ...tokensource.Option) *rig {
	t.Helper()
	r := &rig{}
	r.valid.Store("")
	r.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.requests.Add(1)
		if r.handler != nil {
			r.handler(w, req)
			return
		}
		if req.Header.Get("Authorization") != "Bearer "+r.valid.Load().(string) {
			r.rejected.Add(1)
			if r.gate != nil {
				r.gate()
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="test", error="invalid_token"`)
			http.Error(w, "token rejected: "+strings.Repeat("x", 1000), http.StatusUnauthorized)
			return
		}
		body, _ := io.ReadAll(req.Body)
		if r.bodies != nil {
			r.bodies <- string(body)
		}
		_, _ = fmt.Fprint(w, "ok")
	}))
	r.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	r.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			r.conns.Add(1)
		}
	}
	r.srv.StartTLS()
	t.Cleanup(r.srv.Close)
	r.src = tokensource.New(tokensource.RefresherFunc(func(context.Context, *tokensource.Token) (*tokensource.Token, error) {
		tok := fmt.Sprintf("tok-%d", r.refreshes.Add(1))
		r.valid.Store(tok)
		return &tokensource.Token{AccessToken: tok}, nil
	}), append([]tokensource.Option{tokensource.WithMinRefreshInterval(0)}, opts...)...)
	t.Cleanup(func() { _ = r.src.Close() })
	return r
}

// revoke makes the server reject every token issued so far.
func (r *rig) revoke() { r.valid.Store("revoked") }

func (r *rig) client(opts ...httpauth.Option) *http.Client {
	return &http.Client{Transport: httpauth.NewTransport(r.src, r.srv.Client().Transport, opts...)}
}

func get(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestTokenOnEveryRequest(t *testing.T) {
	r := newRig(t)
	c := r.client()
	for range 3 {
		if code, _ := get(t, c, r.srv.URL); code != http.StatusOK {
			t.Fatalf("status %d", code)
		}
	}
	if n := r.refreshes.Load(); n != 1 {
		t.Errorf("%d refreshes, want 1 (the first token)", n)
	}
}

// The request given to the transport is never modified: the token goes on
// a copy, and the caller's header map is untouched.
func TestRequestNotModified(t *testing.T) {
	r := newRig(t)
	req, _ := http.NewRequest(http.MethodGet, r.srv.URL, nil)
	req.Header.Set("X-Request-Id", "42")
	before := req.Header.Clone()
	resp, err := r.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if len(req.Header) != len(before) || req.Header.Get("X-Request-Id") != "42" || req.Header.Get("Authorization") != "" {
		t.Errorf("request header changed: %v, was %v", req.Header, before)
	}
}

// Concurrent requests rejected with the same token share one refresh and
// are each retried once.
func TestRejectedRequestsShareOneRefresh(t *testing.T) {
	r := newRig(t)
	c := r.client()
	if code, _ := get(t, c, r.srv.URL); code != http.StatusOK {
		t.Fatalf("status %d", code)
	}
	r.revoke()
	const n = 50
	all := make(chan struct{})
	var arrived atomic.Int64
	r.gate = func() {
		if arrived.Add(1) == n {
			close(all)
		}
		<-all
	}
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range n {
		wg.Go(func() {
			resp, err := c.Get(r.srv.URL)
			if err != nil {
				failed.Add(1)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	if failed.Load() != 0 {
		t.Errorf("%d of %d requests failed", failed.Load(), n)
	}
	if got := r.refreshes.Load(); got != 2 {
		t.Errorf("%d Refresher calls, want 2 (the first token, one refresh after the revocation)", got)
	}
	if got, want := r.requests.Load(), int64(1+2*n); got != want || r.rejected.Load() != n {
		t.Errorf("%d requests reached the server, %d rejected; want %d, %d (each rejected once, retried once)", got, r.rejected.Load(), want, n)
	}
}

// A body with GetBody is sent again, whole; the rejected response's body is
// drained and closed first, so the retry reuses the connection.
func TestReplayableBodyRetried(t *testing.T) {
	r := newRig(t)
	r.bodies = make(chan string, 1)
	c := r.client()
	if _, err := r.src.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.revoke()
	resp, err := c.Post(r.srv.URL, "text/plain", strings.NewReader("payload"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if got := <-r.bodies; got != "payload" {
		t.Errorf("retried body %q", got)
	}
	if got := r.conns.Load(); got != 1 {
		t.Errorf("%d connections, want 1: the 401's body was not drained and closed before the retry", got)
	}
}

// A body that cannot be sent again gets the 401 as is; the Source is
// refreshed all the same, and the next request carries the new token.
func TestNonReplayableBodyNotRetried(t *testing.T) {
	r := newRig(t)
	c := r.client()
	if _, err := r.src.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.revoke()
	body := io.NopCloser(bytes.NewReader([]byte("once"))) // no GetBody
	req, _ := http.NewRequest(http.MethodPost, r.srv.URL, body)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(string(b), "token rejected") {
		t.Fatalf("status %d, body %.20q: want the 401 as the server sent it", resp.StatusCode, b)
	}
	if got := r.requests.Load(); got != 1 {
		t.Errorf("%d requests, want 1 (not retried)", got)
	}
	if got := r.refreshes.Load(); got != 2 {
		t.Errorf("%d Refresher calls, want 2 (refreshed for later requests)", got)
	}
	if code, _ := get(t, c, r.srv.URL); code != http.StatusOK {
		t.Errorf("next request: status %d", code)
	}
	if got := r.refreshes.Load(); got != 2 {
		t.Errorf("%d Refresher calls after the next request, want 2", got)
	}
}

// Only a 401 triggers a refresh: a 403 or a 500 comes back as is.
func TestOnly401Refreshes(t *testing.T) {
	for _, code := range []int{http.StatusForbidden, http.StatusInternalServerError, http.StatusBadRequest} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			r := newRig(t)
			r.handler = func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(code) }
			if got, _ := get(t, r.client(), r.srv.URL); got != code {
				t.Fatalf("status %d", got)
			}
			if got := r.refreshes.Load(); got != 1 {
				t.Errorf("%d Refresher calls, want 1 (the first token)", got)
			}
			if got := r.requests.Load(); got != 1 {
				t.Errorf("%d requests, want 1", got)
			}
		})
	}
}

// WithTokenRejected widens the rule to a server that answers 403 for a stale
// token.
func TestWithTokenRejected(t *testing.T) {
	r := newRig(t)
	var n atomic.Int64
	r.handler = func(w http.ResponseWriter, _ *http.Request) {
		if n.Add(1) == 1 {
			w.WriteHeader(http.StatusForbidden)
		}
	}
	c := r.client(httpauth.WithTokenRejected(func(resp *http.Response) bool { return resp.StatusCode == http.StatusForbidden }))
	if got, _ := get(t, c, r.srv.URL); got != http.StatusOK {
		t.Fatalf("status %d", got)
	}
	if got := r.refreshes.Load(); got != 2 {
		t.Errorf("%d Refresher calls, want 2", got)
	}
}

// A 401 or 403 whose Bearer challenge says insufficient_scope or
// insufficient_user_authentication costs no refresh and no retry, and
// ChallengeError turns it into the matching error.
func TestChallengeNotRefreshed(t *testing.T) {
	for _, tc := range []struct {
		code   int
		header []string
		want   error
	}{
		{http.StatusForbidden, []string{`Bearer realm="api", error="insufficient_scope", error_description="Insufficient Scope", scope="echo:admin"`}, tokensource.ErrInsufficientScope},
		{http.StatusUnauthorized, []string{`DPoP algs="ES256"`, `Bearer error="insufficient_scope", scope="echo:admin"`}, tokensource.ErrInsufficientScope},
		{http.StatusUnauthorized, []string{`Bearer error="insufficient_user_authentication", acr_values="gold", max_age=300`}, tokensource.ErrStepUpRequired},
	} {
		t.Run(fmt.Sprint(tc.code, tc.want), func(t *testing.T) {
			r := newRig(t)
			r.handler = func(w http.ResponseWriter, _ *http.Request) {
				w.Header()["Www-Authenticate"] = tc.header
				w.WriteHeader(tc.code)
			}
			resp, err := r.client().Get(r.srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.code {
				t.Fatalf("status %d", resp.StatusCode)
			}
			cerr := httpauth.ChallengeError(resp)
			if !errors.Is(cerr, tc.want) {
				t.Fatalf("ChallengeError = %v, want %v", cerr, tc.want)
			}
			var se *tokensource.ScopeError
			if errors.As(cerr, &se) && (se.Scope != "echo:admin" || !strings.Contains(cerr.Error(), `"echo:admin"`)) {
				t.Errorf("ScopeError %+v (%v): want scope echo:admin named", se, cerr)
			}
			var su *tokensource.StepUpError
			if errors.As(cerr, &su) && (su.ACRValues != "gold" || !su.HasMaxAge || su.MaxAge.Seconds() != 300) {
				t.Errorf("StepUpError %+v", su)
			}
			if got := r.refreshes.Load(); got != 1 {
				t.Errorf("%d Refresher calls, want 1 (no refresh for the challenge)", got)
			}
			if got := r.requests.Load(); got != 1 {
				t.Errorf("%d requests, want 1 (no retry)", got)
			}
		})
	}
	if err := httpauth.ChallengeError(nil); err != nil {
		t.Errorf("ChallengeError(nil) = %v", err)
	}
	ok := &http.Response{StatusCode: http.StatusOK, Header: http.Header{"Www-Authenticate": {`Bearer error="insufficient_scope"`}}}
	if err := httpauth.ChallengeError(ok); err != nil {
		t.Errorf("ChallengeError(200) = %v", err)
	}
}

// No token goes to a plain http:// URL unless AllowInsecure is given; the
// request's body is closed, as the RoundTripper contract requires.
func TestInsecureRefused(t *testing.T) {
	r := newRig(t)
	var hits atomic.Int64
	plain := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	defer plain.Close()
	body := &closeRecorder{Reader: strings.NewReader("x")}
	req, _ := http.NewRequest(http.MethodPost, plain.URL, body)
	_, err := r.client().Do(req)
	if !errors.Is(err, httpauth.ErrInsecureTransport) {
		t.Fatalf("err = %v, want ErrInsecureTransport", err)
	}
	if hits.Load() != 0 || r.refreshes.Load() != 0 || !body.closed.Load() {
		t.Errorf("hits %d, refreshes %d, body closed %v: want nothing sent, no token, the body closed", hits.Load(), r.refreshes.Load(), body.closed.Load())
	}
	c := &http.Client{Transport: httpauth.NewTransport(r.src, nil, httpauth.AllowInsecure())}
	if code, _ := get(t, c, plain.URL); code != http.StatusOK || hits.Load() != 1 {
		t.Errorf("with AllowInsecure: status %d, hits %d", code, hits.Load())
	}
}

type closeRecorder struct {
	io.Reader
	closed atomic.Bool
}

func (c *closeRecorder) Close() error { c.closed.Store(true); return nil }

// A redirect to another host (here, another port of the same address)
// goes out without the token, and so does a redirect back from there; a
// redirect on the same host keeps it.
func TestRedirectKeepsTokenOnItsHost(t *testing.T) {
	r := newRig(t)
	other := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if v := req.Header.Get("Authorization"); v != "" {
			t.Errorf("the other host got Authorization %q", v)
		}
		if req.URL.Path == "/bounce" {
			http.Redirect(w, req, r.srv.URL+"/landed-back", http.StatusFound)
		}
	}))
	defer other.Close()
	var landedBack atomic.Value
	landedBack.Store("")
	r.handler = func(w http.ResponseWriter, req *http.Request) {
		switch req.URL.Path {
		case "/away":
			http.Redirect(w, req, other.URL+"/there", http.StatusFound)
		case "/round-trip":
			http.Redirect(w, req, other.URL+"/bounce", http.StatusFound)
		case "/here":
			http.Redirect(w, req, "/landed", http.StatusFound)
		case "/landed":
			if req.Header.Get("Authorization") == "" {
				t.Error("a redirect on the same host lost the token")
			}
		case "/landed-back":
			landedBack.Store(req.Header.Get("Authorization"))
		}
	}
	tr := r.srv.Client().Transport.(*http.Transport).Clone()
	tr.TLSClientConfig.RootCAs.AddCert(other.Certificate())
	c := &http.Client{Transport: httpauth.NewTransport(r.src, tr)}
	for _, path := range []string{"/away", "/here", "/round-trip"} {
		if code, _ := get(t, c, r.srv.URL+path); code != http.StatusOK {
			t.Errorf("%s: status %d", path, code)
		}
	}
	if v := landedBack.Load().(string); v != "" {
		t.Errorf("back on the first host after another: Authorization %q, want none", v)
	}
}

// A refresh that fails after a 401 is the request's error, wrapping the
// source's (errors.Is reaches tokensource.ErrReauthRequired), and no error
// carries the token.
func TestRefreshFailure(t *testing.T) {
	const secret = "tok-secret-value"
	var calls atomic.Int64
	src := tokensource.New(tokensource.RefresherFunc(func(context.Context, *tokensource.Token) (*tokensource.Token, error) {
		if calls.Add(1) == 1 {
			return &tokensource.Token{AccessToken: secret}, nil
		}
		return nil, tokensource.Permanent(errors.New("refresh token revoked"))
	}), tokensource.WithMinRefreshInterval(0))
	defer src.Close()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusUnauthorized)
	}))
	defer srv.Close()
	c := &http.Client{Transport: httpauth.NewTransport(src, srv.Client().Transport)}
	_, err := c.Get(srv.URL)
	if !errors.Is(err, tokensource.ErrReauthRequired) {
		t.Fatalf("err = %v, want ErrReauthRequired", err)
	}
	if strings.Contains(err.Error(), secret) {
		t.Errorf("the error carries the token: %v", err)
	}
	// The next request cannot get a token at all.
	_, err = c.Get(srv.URL)
	if !errors.Is(err, tokensource.ErrReauthRequired) || strings.Contains(err.Error(), secret) {
		t.Errorf("next request: err = %v", err)
	}
}

// WithSkip and a request made inside the Source's own refresh go out
// untouched; WithHeader and WithScheme change what is sent.
func TestSkipAndHeaderOptions(t *testing.T) {
	var got atomic.Value
	got.Store("")
	srv := httptest.NewTLSServer(http.HandlerFunc(func(_ http.ResponseWriter, req *http.Request) {
		got.Store(req.Header.Get("X-Api-Key") + "|" + req.Header.Get("Authorization"))
	}))
	defer srv.Close()
	var c *http.Client
	src := tokensource.New(tokensource.RefresherFunc(func(ctx context.Context, _ *tokensource.Token) (*tokensource.Token, error) {
		// The Refresher calls through the same client: untouched, no self-wait.
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/token", nil)
		resp, err := c.Do(req)
		if err != nil {
			return nil, err
		}
		resp.Body.Close()
		if v := got.Load().(string); v != "|" {
			t.Errorf("the Refresher's own request carried %q", v)
		}
		return &tokensource.Token{AccessToken: "k1"}, nil
	}))
	defer src.Close()
	c = &http.Client{Transport: httpauth.NewTransport(src, srv.Client().Transport,
		httpauth.WithHeader("x-api-key"), httpauth.WithScheme(""),
		httpauth.WithSkip(func(req *http.Request) bool { return req.URL.Path == "/public" }))}
	if code, _ := get(t, c, srv.URL+"/api"); code != http.StatusOK || got.Load().(string) != "k1|" {
		t.Errorf("status %d, sent %q, want X-Api-Key k1 and no Authorization", code, got.Load())
	}
	if code, _ := get(t, c, srv.URL+"/public"); code != http.StatusOK || got.Load().(string) != "|" {
		t.Errorf("skipped request: status %d, sent %q", code, got.Load())
	}
}

func TestNewTransportPanics(t *testing.T) {
	for name, f := range map[string]func(){
		"nil source":         func() { httpauth.NewTransport(nil, nil) },
		"nil *Source":        func() { httpauth.NewTransport((*tokensource.Source)(nil), nil) },
		"bad header":         func() { httpauth.NewTransport(tokensource.New(nil), nil, httpauth.WithHeader("a b")) },
		"scheme with spaces": func() { httpauth.NewTransport(tokensource.New(nil), nil, httpauth.WithScheme("Be arer")) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("no panic")
				}
			}()
			f()
		})
	}
}
