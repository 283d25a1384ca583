package tokensource

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/oauth2"
)

// A token exchange sends the subject with its type, the audience, resource
// and scopes; after the subject changes, the next refresh presents the new
// subject.
func TestTokenExchangeRequestAndSubjectChange(t *testing.T) {
	e := &assertionEndpoint{}
	tokenURL, client := startAssertionEndpoint(t, e)
	subject := New(RefresherFunc(func(context.Context, *Token) (*Token, error) {
		return &Token{AccessToken: "subject-1", Expiry: time.Now().Add(time.Hour)}, nil
	}))
	defer subject.Close()
	r := TokenExchange(TokenExchangeConfig{TokenURL: tokenURL, ClientID: "svc", ClientSecret: "secret",
		Audience: []string{"orders"}, Resource: []string{"https://orders.test"}, Scopes: []string{"read", "write"},
		SubjectTokenType: TokenTypeJWT}, subject, WithHTTPClient(client))
	if _, err := r.Refresh(ctxBG, nil); err != nil {
		t.Fatal(err)
	}
	if err := subject.SetToken(ctxBG, &Token{AccessToken: "subject-2", Expiry: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Refresh(ctxBG, nil); err != nil {
		t.Fatal(err)
	}
	forms, _ := e.requests()
	f := forms[0]
	for k, want := range map[string]string{"grant_type": tokenExchangeGrant, "subject_token": "subject-1",
		"subject_token_type": TokenTypeJWT, "requested_token_type": TokenTypeAccessToken, "audience": "orders",
		"resource": "https://orders.test", "scope": "read write"} {
		if got := f.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if got := forms[1].Get("subject_token"); got != "subject-2" {
		t.Errorf("after the subject changed the refresh presented %q, want subject-2", got)
	}
}

// The server refuses the subject: with a subject Source over a token file
// that still holds it, the failure is transient (the file's writer will
// renew it); once the file was rotated, the refresh tells the subject
// Source, which reads the new subject, and the exchange is made again at
// once with it. A subject source without a Refresh method cannot renew:
// Permanent. So is a subject source that needs a login.
func TestTokenExchangeSubjectRefused(t *testing.T) {
	old, renewed := jwtFor(t, time.Now().Add(time.Hour)), jwtFor(t, time.Now().Add(2*time.Hour))
	e := &assertionEndpoint{refuse: map[string]bool{old: true}}
	tokenURL, client := startAssertionEndpoint(t, e)
	path := filepath.Join(t.TempDir(), "token")
	writeFile(t, path, old)
	subject := New(FromFile(path), WithMinRefreshInterval(time.Millisecond), WithBackoff(time.Millisecond, time.Millisecond))
	defer subject.Close()
	cfg := TokenExchangeConfig{TokenURL: tokenURL, ClientID: "svc", ClientSecret: "secret", AuthStyle: oauth2.AuthStyleInHeader,
		SubjectTokenType: TokenTypeJWT}
	r := TokenExchange(cfg, subject, WithHTTPClient(client))

	_, err := r.Refresh(ctxBG, nil)
	if err == nil || IsPermanent(err) || !errors.Is(err, errSubjectRefused) || !errors.Is(err, ErrUnchangedToken) {
		t.Fatalf("subject refused, file unchanged: %v; want a transient errSubjectRefused with ErrUnchangedToken", err)
	}
	vaultWrite(t, path, renewed)
	time.Sleep(2 * time.Millisecond) // past the subject Source's 1 ms backoff and rate limit
	tok, err := r.Refresh(ctxBG, nil)
	if err != nil {
		t.Fatalf("after the rotation: %v", err)
	}
	e.mu.Lock()
	subjects := slices.Clone(e.subjects)
	e.mu.Unlock()
	if want := []string{old, old, renewed}; !slices.Equal(subjects, want) || tok == nil {
		names := map[string]string{old: "old", renewed: "renewed"}
		var got []string
		for _, s := range subjects {
			got = append(got, names[s])
		}
		t.Errorf("subjects presented: %v, want the old one twice then the renewed one", got)
	}

	static := TokenExchange(cfg, staticSubject{&Token{AccessToken: old}}, WithHTTPClient(client))
	if _, err := static.Refresh(ctxBG, nil); !IsPermanent(err) || !errors.Is(err, errSubjectRefused) {
		t.Errorf("a subject source that cannot renew: %v, want Permanent", err)
	}
	needsLogin := New(RefresherFunc(func(context.Context, *Token) (*Token, error) {
		return nil, Permanent(errors.New("refresh token revoked"))
	}))
	defer needsLogin.Close()
	if _, err := TokenExchange(cfg, needsLogin, WithHTTPClient(client)).Refresh(ctxBG, nil); !IsPermanent(err) {
		t.Errorf("a subject source that requires re-authentication: %v, want Permanent", err)
	}
	e.mu.Lock()
	e.code = "invalid_target"
	e.mu.Unlock()
	if _, err := r.Refresh(ctxBG, nil); !IsPermanent(err) {
		t.Errorf("invalid_target: %v, want Permanent", err)
	}
}
