package bench_test

import (
	"net/http"
	"sync/atomic"
	"testing"

	"golang.org/x/oauth2"

	"github.com/tokenrefresh/grpc-tokenrefresh/httpauth"
)

// okTransport answers every request with the same 200 and does nothing
// else, so that what a benchmark measures is the attaching step.
type okTransport struct{ resp *http.Response }

func (t okTransport) RoundTrip(*http.Request) (*http.Response, error) { return t.resp, nil }

// constantTransport is the floor for HTTP: the least a RoundTripper that
// sends a bearer token can do without modifying the caller's request (which
// the http.RoundTripper contract forbids): a shallow copy with a copy of the
// header and one more value.
type constantTransport struct {
	value []string
	base  http.RoundTripper
}

func (t constantTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	r := new(http.Request)
	*r = *req
	r.Header = req.Header.Clone()
	r.Header["Authorization"] = t.value
	return t.base.RoundTrip(r)
}

// BenchmarkHTTPAttach measures the cost of putting a valid token on an HTTP
// request, with a base transport that does nothing: impl=floor is
// constantTransport, impl=httpauth is httpauth.NewTransport over a
// tokensource.Source, impl=oauth2 is golang.org/x/oauth2's Transport over
// an oauth2.ReuseTokenSource. The request carries two headers of its own,
// as a typical API request does. Each reports x-floor, its time per request
// over the floor's median in the same run.
func BenchmarkHTTPAttach(b *testing.B) {
	tok := longLived("at_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG")
	base := okTransport{resp: &http.Response{StatusCode: http.StatusOK, Body: http.NoBody}}
	req, err := http.NewRequest(http.MethodGet, "https://api.example/v1/items", nil)
	if err != nil {
		b.Fatal(err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("X-Request-Id", "42")
	var floor floorRef

	run := func(b *testing.B, rt http.RoundTripper, refreshes func() int64, isFloor bool) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := rt.RoundTrip(req); err != nil {
				b.Fatal(err)
			}
		}
		if n := refreshes(); n != 0 {
			b.Fatalf("%d refreshes with a valid token", n)
		}
		floor.report(b, isFloor)
	}
	b.Run("impl=floor", func(b *testing.B) {
		run(b, constantTransport{value: []string{"Bearer " + tok.AccessToken}, base: base}, func() int64 { return 0 }, true)
	})
	b.Run("impl=httpauth", func(b *testing.B) {
		src, r := hotSource(b, tok)
		run(b, httpauth.NewTransport(src, base), r.calls.Load, false)
	})
	b.Run("impl=oauth2", func(b *testing.B) {
		var calls atomic.Int64
		ts := oauth2.ReuseTokenSource(
			&oauth2.Token{AccessToken: tok.AccessToken, TokenType: "Bearer", Expiry: tok.Expiry},
			failingOAuth2{calls: &calls})
		run(b, &oauth2.Transport{Source: ts, Base: base}, calls.Load, false)
	})
}
