package httpauth

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/textproto"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/challenge"
)

// Option configures the transport built by NewTransport.
type Option func(*options)

type options struct {
	header        string
	scheme        string
	skip          func(*http.Request) bool // nil: none
	rejected      func(*http.Response) bool
	allowInsecure bool
	logger        *slog.Logger
}

func newOptions(opts []Option) *options {
	o := &options{header: "Authorization", scheme: "Bearer", rejected: defaultRejected}
	for _, opt := range opts {
		opt(o)
	}
	if o.logger == nil {
		o.logger = slog.New(slog.DiscardHandler)
	}
	if err := validateHeaderName(o.header); err != nil {
		panic(err)
	}
	if err := validateScheme(o.scheme); err != nil {
		panic(err)
	}
	return o
}

func defaultRejected(resp *http.Response) bool { return resp.StatusCode == http.StatusUnauthorized }

// WithHeader sets the request header that carries the token. The default
// is "Authorization". The name is canonicalized (textproto's
// CanonicalMIMEHeaderKey). NewTransport panics if the name is not a valid
// HTTP field name: that is a programming error that must surface at
// start-up, not as a failed request.
func WithHeader(name string) Option {
	return func(o *options) { o.header = textproto.CanonicalMIMEHeaderKey(name) }
}

// WithScheme sets the authentication scheme written before the token, as in
// "Bearer <token>". The default is "Bearer". An empty scheme sends the bare
// token (for headers such as "X-Api-Key"). NewTransport panics if the scheme
// contains characters outside visible ASCII.
func WithScheme(scheme string) Option {
	return func(o *options) { o.scheme = scheme }
}

// WithSkip sets a predicate for requests that go out untouched: no token,
// and a 401 never triggers a refresh (a request to the authorization server
// itself, or to a public endpoint). It may be given several times: a
// request is skipped when any of them says so. nil is ignored.
func WithSkip(skip func(req *http.Request) bool) Option {
	return func(o *options) {
		switch prev := o.skip; {
		case skip == nil:
		case prev == nil:
			o.skip = skip
		default:
			o.skip = func(req *http.Request) bool { return prev(req) || skip(req) }
		}
	}
}

// WithTokenRejected replaces the predicate that decides whether a response
// means "the server rejected the token", which triggers one refresh and one
// retry. The default is resp.StatusCode == http.StatusUnauthorized: a 403
// means the token was understood and is not enough, which a refresh does
// not change. A predicate can widen the rule (a server that answers 403
// for an expired token) or veto it. Whatever it says, a response whose
// Bearer challenge says insufficient_scope or
// insufficient_user_authentication is never retried (see ChallengeError).
// The predicate must not read the body. nil restores the default.
func WithTokenRejected(rejected func(resp *http.Response) bool) Option {
	return func(o *options) {
		if rejected == nil {
			rejected = defaultRejected
		}
		o.rejected = rejected
	}
}

// AllowInsecure lets the transport send tokens to plain http:// URLs.
// Without it, such a request fails with an error matching
// ErrInsecureTransport and nothing is sent. Use it for local testing only.
func AllowInsecure() Option {
	return func(o *options) { o.allowInsecure = true }
}

// WithLogger sets the logger for refreshes and retries (at Debug level). No
// token ever appears in a log record. By default nothing is logged.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.logger = l }
}

func validateHeaderName(name string) error {
	if name == "" {
		return fmt.Errorf("httpauth: WithHeader: empty header name")
	}
	if !challenge.IsToken(name) {
		return fmt.Errorf("httpauth: WithHeader(%q): not a valid HTTP field name", name)
	}
	return nil
}

func validateScheme(scheme string) error {
	for i := 0; i < len(scheme); i++ {
		if c := scheme[i]; c < 0x21 || c > 0x7e {
			return fmt.Errorf("httpauth: WithScheme(%q): only visible ASCII characters are allowed", scheme)
		}
	}
	return nil
}
