package testserver_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
)

// The HTTP handler accepts the tokens the gRPC services accept, by the same
// rules, and answers a rejection with an RFC 6750 challenge that does not
// name the token.
func TestHTTPHandler(t *testing.T) {
	srv := testserver.New()
	h := httptest.NewServer(srv.HTTPHandler())
	defer h.Close()
	tok, err := srv.IssueToken("bob")
	if err != nil {
		t.Fatal(err)
	}
	do := func(auth string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, h.URL+"/echo?message=hi", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}

	resp, body := do("bearer " + tok.AccessToken)
	var echo testserver.HTTPEchoResponse
	if err := json.Unmarshal([]byte(body), &echo); err != nil || resp.StatusCode != http.StatusOK || echo != (testserver.HTTPEchoResponse{Message: "hi", User: "bob"}) {
		t.Fatalf("valid token: %s %q (%v)", resp.Status, body, err)
	}

	resp, _ = do("")
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") != `Bearer realm="testserver"` {
		t.Errorf("no header: %s, challenge %q", resp.Status, resp.Header.Get("WWW-Authenticate"))
	}

	srv.ForceExpire()
	resp, body = do("Bearer " + tok.AccessToken)
	want := `Bearer realm="testserver", error="invalid_token", error_description="token expired"`
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") != want ||
		strings.TrimSpace(body) != "testserver: token expired" {
		t.Errorf("expired token: %s, challenge %q, body %q", resp.Status, resp.Header.Get("WWW-Authenticate"), body)
	}
	if strings.Contains(body, tok.AccessToken) || strings.Contains(resp.Header.Get("WWW-Authenticate"), tok.AccessToken) {
		t.Error("the rejection names the token")
	}
}
