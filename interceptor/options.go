package interceptor

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DefaultMaxReplayBytes is the default bound of the per-stream replay buffer
// (see WithMaxReplayBytes). It matches grpc-go's own retry buffer default.
const DefaultMaxReplayBytes = 256 << 10

// Option configures the interceptors built by UnaryClientInterceptor,
// StreamClientInterceptor and DialOptions.
type Option func(*options)

type options struct {
	header         string
	scheme         string
	skip           map[string]struct{}
	rejected       func(ctx context.Context, method string, err error) bool
	allowInsecure  bool
	maxReplayBytes int
	logger         *slog.Logger
	retried        func(ctx context.Context, method string, rejection error) // nil: none

	// guardInstalled is set by DialOptions, which installs the transport
	// security guard once for the whole connection.
	guardInstalled bool
}

func newOptions(opts []Option) *options {
	o := &options{
		header:         "authorization",
		scheme:         "Bearer",
		rejected:       defaultRejected,
		maxReplayBytes: DefaultMaxReplayBytes,
	}
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

func defaultRejected(_ context.Context, _ string, err error) bool {
	return status.Code(err) == codes.Unauthenticated
}

// WithHeader sets the metadata key that carries the token. The default is
// "authorization". The name is lower-cased (gRPC metadata keys are lower
// case). The interceptor constructors panic if the name is not a valid,
// non-reserved, non-binary gRPC metadata key: that is a programming error
// that must surface at start-up, not as a failed call.
func WithHeader(name string) Option {
	return func(o *options) { o.header = strings.ToLower(name) }
}

// WithScheme sets the authentication scheme written before the token, as in
// "Bearer <token>". The default is "Bearer". An empty scheme sends the bare
// token (for headers such as "x-api-key"). The interceptor constructors panic
// if the scheme contains characters outside visible ASCII.
func WithScheme(scheme string) Option {
	return func(o *options) { o.scheme = scheme }
}

// WithSkipMethods lists full method names ("/package.Service/Method") that
// are called without a token and never trigger a refresh, such as a login
// RPC. It may be given several times; the lists add up.
func WithSkipMethods(fullMethods ...string) Option {
	return func(o *options) {
		if o.skip == nil {
			o.skip = make(map[string]struct{}, len(fullMethods))
		}
		for _, m := range fullMethods {
			o.skip[m] = struct{}{}
		}
	}
}

// WithTokenRejected replaces the predicate that decides whether an error
// returned by a call means "the server rejected the token", which triggers
// one refresh and one retry. The default is
// status.Code(err) == codes.Unauthenticated. A predicate can widen the rule
// (a server that answers PermissionDenied for an expired token) or veto it
// (an Unauthenticated that is not about the token). The interceptor's own
// errors, such as ErrInsecureTransport, never reach the predicate. nil
// restores the default.
func WithTokenRejected(rejected func(ctx context.Context, fullMethod string, err error) bool) Option {
	return func(o *options) {
		if rejected == nil {
			rejected = defaultRejected
		}
		o.rejected = rejected
	}
}

// AllowInsecure lets the interceptors send tokens over connections without
// transport security (plain TCP, insecure.NewCredentials()). Without it, a
// call that would carry a token on such a connection fails with an error
// matching ErrInsecureTransport and no token leaves the process. Use it for
// local testing only.
func AllowInsecure() Option {
	return func(o *options) { o.allowInsecure = true }
}

// WithMaxReplayBytes bounds the messages a stream keeps, before its first
// response, so that it can be reopened and replayed after the server rejected
// its token. The default is DefaultMaxReplayBytes (256 KiB); each message
// counts as its encoded size plus the 5-byte gRPC frame header. Once a stream
// has sent more than n bytes, it stops buffering and a later rejection is
// returned to the caller as is (the source is still refreshed for later
// calls). n <= 0 disables stream replay.
func WithMaxReplayBytes(n int) Option {
	return func(o *options) { o.maxReplayBytes = max(n, 0) }
}

// WithLogger sets the logger for refreshes and retries (at Debug level). No
// token ever appears in a log record. By default nothing is logged.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.logger = l }
}

// WithRetryObserver registers f to be told of every call that is retried
// with a new token after the server rejected its token (a unary call sent
// again, a stream reopened and replayed). ctx is the call's context, so f can
// find the call's span in it; method is the full method name
// ("/package.Service/Method"); rejection is the error with which the server
// rejected the token. f is never given a token.
//
// f is called on the goroutine that retries (for a stream, the one whose
// SendMsg, RecvMsg or Header came upon the rejection), after the new token
// was obtained and just before the retry goes out, at most once per call. It
// must be quick and safe for concurrent use. It is not called for a rejection
// that is not retried (the refresh failed, there was no newer token, a
// stream had already received a response). The option may be given several
// times; every f is called, in order. nil is ignored.
//
// Calls whose token is accepted never reach f: the hook costs nothing on the
// hot path.
func WithRetryObserver(f func(ctx context.Context, method string, rejection error)) Option {
	return func(o *options) {
		switch prev := o.retried; {
		case f == nil:
		case prev == nil:
			o.retried = f
		default:
			o.retried = func(ctx context.Context, method string, rejection error) {
				prev(ctx, method, rejection)
				f(ctx, method, rejection)
			}
		}
	}
}

// reservedHeader reports keys grpc-go sets itself and silently drops or
// overwrites when they appear in user metadata.
func reservedHeader(name string) bool {
	switch name {
	case "content-type", "user-agent", "te":
		return true
	}
	return strings.HasPrefix(name, "grpc-") || strings.HasPrefix(name, ":")
}

func validateHeaderName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("interceptor: WithHeader: empty header name")
	case reservedHeader(name):
		return fmt.Errorf("interceptor: WithHeader(%q): the name is reserved by gRPC", name)
	case strings.HasSuffix(name, "-bin"):
		return fmt.Errorf("interceptor: WithHeader(%q): binary (-bin) headers cannot carry a token", name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' && c != '_' && c != '.' {
			return fmt.Errorf("interceptor: WithHeader(%q): only [0-9a-z-_.] are allowed in a gRPC metadata key", name)
		}
	}
	return nil
}

func validateScheme(scheme string) error {
	for i := 0; i < len(scheme); i++ {
		if c := scheme[i]; c < 0x21 || c > 0x7e {
			return fmt.Errorf("interceptor: WithScheme(%q): only visible ASCII characters are allowed", scheme)
		}
	}
	return nil
}
