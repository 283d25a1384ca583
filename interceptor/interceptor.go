package interceptor

import (
	"context"
	"errors"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// TokenSource is what the interceptors need from a token source.
// *tokensource.Source implements it. The interceptors cache the header value
// of the last token by pointer, so a source should return the same *Token
// until the token changes (a source that returns a new *Token every time
// works, at the cost of building the header value on every call).
type TokenSource interface {
	// Token returns a token to send, blocking (until ctx ends) while a
	// refresh is needed.
	Token(ctx context.Context) (*tokensource.Token, error)
	// Refresh reports that stale, exactly as returned by Token or Refresh,
	// was rejected, and returns the token to retry with. Returning stale
	// itself means there is no newer token; the call is then not retried.
	Refresh(ctx context.Context, stale *tokensource.Token) (*tokensource.Token, error)
}

// UnaryClientInterceptor returns an interceptor that attaches a token from
// src to every unary call and, when the server rejects it, refreshes the
// token once and retries the call once.
//
// Used on its own (not through DialOptions), it adds the transport security
// check as a per-call credential, which costs one small allocation per call;
// DialOptions installs it once per connection instead. It panics if src is
// nil or an option is invalid (see WithHeader and WithScheme).
func UnaryClientInterceptor(src TokenSource, opts ...Option) grpc.UnaryClientInterceptor {
	return newInterceptor(src, newOptions(opts)).unary
}

// StreamClientInterceptor returns an interceptor that attaches a token from
// src when a stream opens and, when the server rejects it before the first
// response message, refreshes the token, reopens the stream and replays what
// was sent so far. See the package documentation for the details, and
// UnaryClientInterceptor for the transport security check and panics.
func StreamClientInterceptor(src TokenSource, opts ...Option) grpc.StreamClientInterceptor {
	return newInterceptor(src, newOptions(opts)).stream
}

// DialOptions returns the dial options that install both interceptors,
// sharing one configuration, with grpc.WithChainUnaryInterceptor and
// grpc.WithChainStreamInterceptor (so they compose with other chained
// interceptors in the order the dial options are given), plus, unless
// AllowInsecure is given, the transport security check as a connection-wide
// grpc.WithPerRPCCredentials. It panics if src is nil or an option is
// invalid (see WithHeader and WithScheme).
func DialOptions(src TokenSource, opts ...Option) []grpc.DialOption {
	o := newOptions(opts)
	o.guardInstalled = !o.allowInsecure
	i := newInterceptor(src, o)
	dopts := []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(i.unary),
		grpc.WithChainStreamInterceptor(i.stream),
	}
	if o.guardInstalled {
		dopts = append(dopts, grpc.WithPerRPCCredentials(i.guard))
	}
	return dopts
}

// SkipAuth returns a call option under which the call carries no token and
// never triggers a refresh, whatever the interceptors' configuration.
func SkipAuth() grpc.CallOption { return skipAuthOption{} }

type skipAuthOption struct{ grpc.EmptyCallOption }

type interceptor struct {
	src   TokenSource
	opts  *options
	guard *guard
	// guardOpt is the guard as a call option, or nil when the connection
	// already has it (DialOptions) or AllowInsecure was given.
	guardOpt grpc.CallOption
	// header caches the header value of the last token used, so that the
	// hot path neither locks nor rebuilds the string.
	header atomic.Pointer[headerValue]
}

type headerValue struct {
	tok   *tokensource.Token
	value string
}

func newInterceptor(src TokenSource, o *options) *interceptor {
	if src == nil {
		panic("interceptor: nil TokenSource")
	}
	i := &interceptor{src: src, opts: o, guard: &guard{header: o.header}}
	if !o.allowInsecure && !o.guardInstalled {
		i.guardOpt = grpc.PerRPCCredentials(i.guard)
	}
	return i
}

func (i *interceptor) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if i.skipped(ctx, method, opts) {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	tok, value, err := i.token(ctx)
	if err != nil {
		return err
	}
	opts = i.withGuard(opts)
	err = invoker(i.attach(ctx, value), method, req, reply, cc, opts...)
	if err == nil || !i.rejected(ctx, method, err) {
		return err
	}
	fresh, value, rerr := i.renew(ctx, tok)
	if rerr != nil {
		i.opts.logger.DebugContext(ctx, "interceptor: token rejected, refresh failed", "method", method, "error", rerr)
		return rerr
	}
	if fresh == tok {
		// The source has nothing newer (its rate limit for forced
		// refreshes, say): the same token would be rejected again.
		return err
	}
	i.opts.logger.DebugContext(ctx, "interceptor: token rejected, retrying with a new token", "method", method)
	return invoker(i.attach(ctx, value), method, req, reply, cc, opts...)
}

func (i *interceptor) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if i.skipped(ctx, method, opts) {
		return streamer(ctx, desc, cc, method, opts...)
	}
	tok, value, err := i.token(ctx)
	if err != nil {
		return nil, err
	}
	opts = i.withGuard(opts)
	cs, err := streamer(i.attach(ctx, value), desc, cc, method, opts...)
	retried := false
	if err != nil {
		if !i.rejected(ctx, method, err) {
			return nil, err
		}
		fresh, value, rerr := i.renew(ctx, tok)
		if rerr != nil {
			return nil, rerr
		}
		if fresh == tok {
			return nil, err
		}
		i.opts.logger.DebugContext(ctx, "interceptor: token rejected at stream creation, retrying with a new token", "method", method)
		if cs, err = streamer(i.attach(ctx, value), desc, cc, method, opts...); err != nil {
			return nil, err
		}
		tok, retried = fresh, true
	}
	return newClientStream(i, ctx, desc, cc, method, streamer, opts, cs, tok, retried), nil
}

// skipped reports whether a call goes out untouched: SkipAuth, a method in
// WithSkipMethods, or a call made by the token source's own Refresher
// (which must neither wait for the refresh it is part of nor start another).
func (i *interceptor) skipped(ctx context.Context, method string, opts []grpc.CallOption) bool {
	for _, o := range opts {
		if _, ok := o.(skipAuthOption); ok {
			return true
		}
	}
	if len(i.opts.skip) > 0 {
		if _, ok := i.opts.skip[method]; ok {
			return true
		}
	}
	return tokensource.InRefresh(ctx)
}

// rejected reports whether err means the server rejected the token, so that
// a refresh and a retry can help.
func (i *interceptor) rejected(ctx context.Context, method string, err error) bool {
	if ctx.Err() != nil || errors.Is(err, ErrInsecureTransport) {
		return false
	}
	return i.opts.rejected(ctx, method, err)
}

func (i *interceptor) token(ctx context.Context) (*tokensource.Token, string, error) {
	tok, err := i.src.Token(ctx)
	if err != nil {
		return nil, "", sourceError(ctx, err)
	}
	value, err := i.headerValue(tok)
	return tok, value, err
}

// renew asks the source for the token that replaces stale.
func (i *interceptor) renew(ctx context.Context, stale *tokensource.Token) (*tokensource.Token, string, error) {
	tok, err := i.src.Refresh(ctx, stale)
	if err != nil {
		return nil, "", sourceError(ctx, err)
	}
	value, err := i.headerValue(tok)
	return tok, value, err
}

// headerValue returns "<scheme> <access token>" for tok, from the cache when
// tok is the token last used.
func (i *interceptor) headerValue(tok *tokensource.Token) (string, error) {
	if h := i.header.Load(); h != nil && h.tok == tok {
		return h.value, nil
	}
	if tok == nil {
		return "", invalidTokenError("no token")
	}
	if tok.AccessToken == "" {
		return "", invalidTokenError("empty access token")
	}
	for j := 0; j < len(tok.AccessToken); j++ {
		if c := tok.AccessToken[j]; c < 0x21 || c > 0x7e {
			return "", invalidTokenError("the access token contains a character that is not visible ASCII")
		}
	}
	value := tok.AccessToken
	if i.opts.scheme != "" {
		value = i.opts.scheme + " " + value
	}
	i.header.Store(&headerValue{tok: tok, value: value})
	return value, nil
}

// attach returns ctx with the token header set to value. An existing value
// for the header (set by the caller, say) is replaced, never duplicated.
//
// grpc-go (v1.84) offers no public way to look at the outgoing
// metadata without copying it, so a context that already carries outgoing
// metadata costs one copy; the copy is then attached as is.
func (i *interceptor) attach(ctx context.Context, value string) context.Context {
	if md, ok := metadata.FromOutgoingContext(ctx); ok {
		md[i.opts.header] = []string{value}
		return metadata.NewOutgoingContext(ctx, md)
	}
	return metadata.AppendToOutgoingContext(ctx, i.opts.header, value)
}
