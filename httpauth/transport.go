package httpauth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"sync/atomic"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// TokenSource is what the transport needs from a token source.
// *tokensource.Source implements it, and so does what the gRPC interceptors
// take: one Source can serve an http.Client and gRPC connections together,
// with one refresh between them. The transport caches the header value of
// the last token by pointer, so a source should return the same *Token
// until the token changes.
type TokenSource interface {
	// Token returns a token to send, blocking (until ctx ends) while a
	// refresh is needed.
	Token(ctx context.Context) (*tokensource.Token, error)
	// Refresh reports that stale, exactly as returned by Token or Refresh,
	// was rejected, and returns the token to retry with. Returning stale
	// itself means there is no newer token; the request is then not
	// retried.
	Refresh(ctx context.Context, stale *tokensource.Token) (*tokensource.Token, error)
}

// ErrInsecureTransport is matched (errors.Is) by the error of a request to
// a plain http:// URL that would have carried a token while AllowInsecure
// was not given. Nothing is sent and no refresh is triggered.
var ErrInsecureTransport = errors.New("httpauth: refusing to send a token over a connection without transport security")

// maxDrain bounds how much of a rejected response's body is read before it
// is closed, so that a small body lets its connection be reused and a large
// one costs no more than this.
const maxDrain = 64 << 10

// NewTransport returns an http.RoundTripper that sends every request
// through base with a token from src, "Authorization: Bearer <token>" by
// default. A nil base means http.DefaultTransport.
//
// When the server answers 401 (see WithTokenRejected), the request waits for
// the one shared refresh of src (src.Refresh with the token it carried, so
// every request and every gRPC call rejected with that token shares one
// refresh) and is sent once more with the new token, when its body can be
// sent again: it has none, or it has GetBody (as requests built by
// http.NewRequest from a *bytes.Buffer, *bytes.Reader or *strings.Reader
// do). A request whose body cannot be sent again gets the 401 as is; src is
// refreshed all the same, so that the requests after it carry the new
// token. The first 401's body is drained (up to 64 KiB) and closed before
// the retry. A 401 whose Bearer challenge says that a new token cannot help
// (insufficient_scope, insufficient_user_authentication) is returned at once,
// without a refresh; ChallengeError turns it into an error.
//
// The transport keeps the http.RoundTripper contract: a response, whatever
// its status, comes back with a nil error, and the request given to
// RoundTrip is never modified (the token goes on a copy). It returns an
// error, and sends nothing, when it cannot obtain a token (the error wraps
// the token source's, so errors.Is finds tokensource.ErrReauthRequired, say),
// when the refresh after a 401 fails, and for a plain http:// URL without
// AllowInsecure (ErrInsecureTransport). No error carries token text.
//
// On a redirect, http.Client calls the transport again for the new URL. The
// transport adds the token only while every request of the redirect chain
// (found through Request.Response) went to the host and port of the first
// one: a redirect to another host, or to another port or scheme of the same
// host, goes out without it, and so does everything after it in the chain.
//
// Requests made inside a refresh of src (its Refresher's own requests, see
// tokensource.InRefresh) and requests that WithSkip selects go out
// untouched. NewTransport panics if src is nil, a nil pointer included, or
// an option is invalid (see WithHeader and WithScheme).
func NewTransport(src TokenSource, base http.RoundTripper, opts ...Option) http.RoundTripper {
	if isNil(src) {
		msg := "httpauth: the TokenSource is nil"
		if src != nil {
			msg += fmt.Sprintf(" (a nil %T)", src)
		}
		panic(msg)
	}
	if base == nil {
		base = http.DefaultTransport
	}
	return &transport{src: src, base: base, opts: newOptions(opts)}
}

type transport struct {
	src  TokenSource
	base http.RoundTripper
	opts *options
	// header caches the header value of the last token used, so that a
	// request neither locks nor rebuilds the string.
	header atomic.Pointer[headerValue]
}

// headerValue is what the transport sets for one token. vals is shared by
// every request that sends tok and never modified; its capacity is its
// length, so that an append by a later RoundTripper copies it.
type headerValue struct {
	tok  *tokensource.Token
	vals []string // {"<scheme> <access token>"}
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	if (t.opts.skip != nil && t.opts.skip(req)) || tokensource.InRefresh(ctx) || !sameHostChain(req) {
		return t.base.RoundTrip(req)
	}
	if !t.opts.allowInsecure && !strings.EqualFold(req.URL.Scheme, "https") {
		closeBody(req)
		return nil, fmt.Errorf("%w (%s://%s); use https, or httpauth.AllowInsecure() for local testing",
			ErrInsecureTransport, req.URL.Scheme, req.URL.Host)
	}
	tok, err := t.src.Token(ctx)
	if err != nil {
		closeBody(req)
		return nil, fmt.Errorf("httpauth: cannot obtain a token: %w", err)
	}
	hv, err := t.headerValue(tok)
	if err != nil {
		closeBody(req)
		return nil, err
	}
	resp, err := t.base.RoundTrip(t.authorize(req, hv))
	if err != nil || !t.opts.rejected(resp) {
		return resp, err
	}
	return t.retry(ctx, req, tok, resp)
}

// retry deals with resp, the rejection of req sent with stale: it refreshes
// the token and sends req once more when that can help and req can be sent
// again, and otherwise returns resp.
func (t *transport) retry(ctx context.Context, req *http.Request, stale *tokensource.Token, resp *http.Response) (*http.Response, error) {
	if ChallengeError(resp) != nil {
		// The server says which scope or authentication it wants: a new
		// token from the same grant would be refused the same way.
		return resp, nil
	}
	replayable := req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
	fresh, err := t.src.Refresh(ctx, stale)
	if !replayable {
		// The body is spent: the caller gets the 401, the requests after
		// it the new token.
		if err != nil {
			t.opts.logger.DebugContext(ctx, "httpauth: token rejected, refresh failed", "url", redact(req.URL), "error", err)
		}
		return resp, nil
	}
	if err != nil {
		t.opts.logger.DebugContext(ctx, "httpauth: token rejected, refresh failed", "url", redact(req.URL), "error", err)
		discard(resp)
		return nil, fmt.Errorf("httpauth: the server rejected the token and the refresh failed: %w", err)
	}
	if fresh == stale {
		return resp, nil // no newer token: it would be rejected again
	}
	hv, err := t.headerValue(fresh)
	if err != nil {
		discard(resp)
		return nil, err
	}
	r := t.authorize(req, hv)
	if req.Body != nil && req.Body != http.NoBody {
		if r.Body, err = req.GetBody(); err != nil {
			discard(resp)
			return nil, fmt.Errorf("httpauth: the server rejected the token; cannot send the body again: %w", err)
		}
	}
	discard(resp)
	t.opts.logger.DebugContext(ctx, "httpauth: token rejected, retrying with a new token", "url", redact(req.URL))
	return t.base.RoundTrip(r)
}

// authorize returns a shallow copy of req whose header is a copy of req's
// with the token header set: req itself is never modified.
func (t *transport) authorize(req *http.Request, hv *headerValue) *http.Request {
	r := new(http.Request)
	*r = *req
	r.Header = req.Header.Clone()
	if r.Header == nil {
		r.Header = make(http.Header, 1)
	}
	r.Header[t.opts.header] = hv.vals
	return r
}

// headerValue returns what to set for tok, from the cache when tok is the
// token last used.
func (t *transport) headerValue(tok *tokensource.Token) (*headerValue, error) {
	if h := t.header.Load(); h != nil && h.tok == tok {
		return h, nil
	}
	if err := tok.Sendable(); err != nil {
		return nil, fmt.Errorf("httpauth: cannot use the token from the token source: %w", err)
	}
	value := tok.AccessToken
	if t.opts.scheme != "" {
		value = t.opts.scheme + " " + value
	}
	h := &headerValue{tok: tok, vals: []string{value}}
	t.header.Store(h)
	return h, nil
}

// sameHostChain reports whether req and every request before it in its
// redirect chain went to the same host and port. http.Client sets
// Request.Response on a request it makes to follow a redirect, and that
// response's Request is the request before; the first request has none.
func sameHostChain(req *http.Request) bool {
	if req.Response == nil {
		return true
	}
	host := hostPort(req.URL)
	for prev := req.Response.Request; prev != nil; {
		if hostPort(prev.URL) != host {
			return false
		}
		if prev.Response == nil {
			break
		}
		prev = prev.Response.Request
	}
	return true
}

// hostPort returns u's host, lower-cased, with the scheme's default port
// made explicit, so that https://Example.com and https://example.com:443
// compare equal and http://example.com does not.
func hostPort(u *url.URL) string {
	host, port := strings.ToLower(u.Hostname()), u.Port()
	if port == "" {
		switch strings.ToLower(u.Scheme) {
		case "https":
			port = "443"
		case "http":
			port = "80"
		}
	}
	return net.JoinHostPort(host, port)
}

// discard drains a little of resp's body, so that its connection can be
// reused, and closes it.
func discard(resp *http.Response) {
	_, _ = io.CopyN(io.Discard, resp.Body, maxDrain)
	_ = resp.Body.Close()
}

// closeBody closes the body of a request that is not sent, as the
// http.RoundTripper contract requires.
func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

// redact returns u for a log record: without its query, which may carry
// secrets, and without user information.
func redact(u *url.URL) string {
	return u.Scheme + "://" + u.Host + u.Path
}

func isNil(src TokenSource) bool {
	if src == nil {
		return true
	}
	v := reflect.ValueOf(src)
	switch v.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Func, reflect.Chan, reflect.Slice, reflect.Interface:
		return v.IsNil()
	}
	return false
}
