package interceptor

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

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
	// itself means there is no newer token; the call is then not retried,
	// and its error says so. A source that also has a method
	// MinRefreshInterval() time.Duration returning more than 0 (as
	// *tokensource.Source does) is taken to hand back stale because of that
	// rate limit, and the error names it.
	Refresh(ctx context.Context, stale *tokensource.Token) (*tokensource.Token, error)
}

// UnaryClientInterceptor returns an interceptor that attaches a token from
// src to every unary call and, when the server rejects it, refreshes the
// token once and retries the call once.
//
// Used on its own (not through DialOptions), it adds the transport security
// check as a per-call credential (among the pooled call options it passes
// anyway, so at no cost); DialOptions installs it once per connection
// instead. It panics if src is nil, a nil pointer included, or an option is
// invalid (see WithHeader and WithScheme).
func UnaryClientInterceptor(src TokenSource, opts ...Option) grpc.UnaryClientInterceptor {
	return newInterceptor(src, newOptions(opts)).unary
}

// StreamClientInterceptor returns an interceptor that attaches a token from
// src when a stream opens and, when the server rejects it before the first
// response message, refreshes the token, reopens the stream and replays what
// was sent so far. See the package documentation for the details, and
// UnaryClientInterceptor for the transport security check (which costs a
// stream one small allocation when the interceptor is used on its own) and
// panics.
func StreamClientInterceptor(src TokenSource, opts ...Option) grpc.StreamClientInterceptor {
	return newInterceptor(src, newOptions(opts)).stream
}

// DialOptions returns the dial options that install both interceptors,
// sharing one configuration, with grpc.WithChainUnaryInterceptor and
// grpc.WithChainStreamInterceptor (so they compose with other chained
// interceptors in the order the dial options are given), plus, unless
// AllowInsecure is given, the transport security check as a connection-wide
// grpc.WithPerRPCCredentials. It panics if src is nil, a nil pointer
// included, or an option is invalid (see WithHeader and WithScheme).
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

// headerValue is what the interceptors attach for one token. vals and md are
// shared by every call that sends tok and never modified: grpc-go only reads
// outgoing metadata, and metadata.NewOutgoingContext merely requires that
// the MD given to it is not modified afterwards.
type headerValue struct {
	tok  *tokensource.Token
	vals []string    // {"<scheme> <access token>"}
	md   metadata.MD // {header: vals}
}

func newInterceptor(src TokenSource, o *options) *interceptor {
	if isNil(src) {
		// Now rather than at the first call, where it would be a nil
		// pointer dereference far from the mistake.
		msg := "interceptor: the TokenSource is nil"
		if src != nil {
			msg += fmt.Sprintf(" (a nil %T)", src)
		}
		panic(msg)
	}
	i := &interceptor{src: src, opts: o, guard: &guard{header: o.header}}
	if !o.allowInsecure && !o.guardInstalled {
		i.guardOpt = grpc.PerRPCCredentials(i.guard)
	}
	return i
}

func (i *interceptor) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	skip, waitForReady := i.skipped(ctx, method, opts)
	if skip {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	ctx, md := i.outgoing(ctx)
	tok, hv, err := i.token(ctx, waitForReady)
	if err != nil {
		return err
	}
	c := i.callOptions(opts)
	err = invoker(i.attach(ctx, md, hv), method, req, reply, cc, c.opts...)
	if err == nil {
		c.release()
		return nil
	}
	// A failed call's callMD is left to the collector, not pooled: an inner
	// interceptor that gave up waiting for its invoker (on a deadline, say)
	// may still have it in use.
	return i.retryUnary(ctx, method, req, reply, cc, invoker, c, tok, err, waitForReady)
}

// retryUnary deals with err, the failure of a unary call sent with tok and
// the options of c: the server's challenge, a rejection to refresh and
// retry once, or anything else, returned as is.
func (i *interceptor) retryUnary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, c *callMD, tok *tokensource.Token, err error, waitForReady bool) error {
	if cerr := challenged(err, c.header, c.trailer); cerr != nil {
		return cerr
	}
	if !i.rejected(ctx, method, err) {
		return err
	}
	_, hv, rerr := i.renew(ctx, method, tok, err, waitForReady)
	if rerr != nil {
		return rerr
	}
	i.opts.logger.DebugContext(ctx, "interceptor: token rejected, retrying with a new token", "method", method)
	c.reset()
	if err = invoker(i.attachAgain(ctx, hv), method, req, reply, cc, c.opts...); err != nil {
		if cerr := challenged(err, c.header, c.trailer); cerr != nil {
			return cerr
		}
	}
	return err
}

func (i *interceptor) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	skip, waitForReady := i.skipped(ctx, method, opts)
	if skip {
		return streamer(ctx, desc, cc, method, opts...)
	}
	ctx, md := i.outgoing(ctx)
	tok, hv, err := i.token(ctx, waitForReady)
	if err != nil {
		return nil, err
	}
	opts = i.withGuard(opts)
	cs, err := streamer(i.attach(ctx, md, hv), desc, cc, method, opts...)
	retried := false
	if err != nil {
		if !i.rejected(ctx, method, err) {
			return nil, err
		}
		fresh, hv, rerr := i.renew(ctx, method, tok, err, waitForReady)
		if rerr != nil {
			return nil, rerr
		}
		i.opts.logger.DebugContext(ctx, "interceptor: token rejected at stream creation, retrying with a new token", "method", method)
		if cs, err = streamer(i.attachAgain(ctx, hv), desc, cc, method, opts...); err != nil {
			return nil, err
		}
		tok, retried = fresh, true
	}
	w := newClientStream(i, ctx, desc, cc, method, streamer, opts, cs, tok, retried)
	w.waitForReady = waitForReady
	return w, nil
}

// skipped reports whether a call goes out untouched: SkipAuth, a method in
// WithSkipMethods, or a call made by the token source's own Refresher
// (which must neither wait for the refresh it is part of nor start another).
// A Refresher's call keeps any header the Refresher set itself (a client
// credential for the token endpoint, say); it cannot inherit one from the
// call that started the refresh, because outgoing strips the token header
// from the context the source sees. waitForReady reports a call made with
// grpc.WaitForReady(true) (per call or as a default call option).
func (i *interceptor) skipped(ctx context.Context, method string, opts []grpc.CallOption) (skip, waitForReady bool) {
	for _, o := range opts {
		switch o := o.(type) {
		case skipAuthOption:
			return true, false
		case grpc.FailFastCallOption:
			waitForReady = !o.FailFast
		}
	}
	if len(i.opts.skip) > 0 {
		if _, ok := i.opts.skip[method]; ok {
			return true, false
		}
	}
	return tokensource.InRefresh(ctx), waitForReady
}

// rejected reports whether err means the server rejected the token, so that
// a refresh and a retry can help.
func (i *interceptor) rejected(ctx context.Context, method string, err error) bool {
	if ctx.Err() != nil || errors.Is(err, ErrInsecureTransport) {
		return false
	}
	return i.opts.rejected(ctx, method, err)
}

// token gets a token from the source. ctx must come from outgoing. A call
// made with grpc.WaitForReady(true) waits through the source's backoff, as
// grpc-go waits for a connection (tokensource.WaitForReady); it is asked
// again that way only after a failure, so that a valid token costs such a
// call nothing more.
func (i *interceptor) token(ctx context.Context, waitForReady bool) (*tokensource.Token, *headerValue, error) {
	tok, err := i.src.Token(ctx)
	if err != nil && waitForReady && ctx.Err() == nil {
		tok, err = i.src.Token(tokensource.WaitForReady(ctx))
	}
	if err != nil {
		return nil, nil, sourceError(ctx, err)
	}
	hv, err := i.headerValue(tok)
	return tok, hv, err
}

// renew asks the source for the token that replaces stale, which the server
// rejected with rejection, and tells the retry observer (WithRetryObserver)
// when the caller is about to retry with it. The error is the one the caller
// sees: the mapped refresh failure, or rejection, saying why it was not
// retried, when the source handed back stale (its rate limit for forced
// refreshes, say). ctx must come from outgoing; waitForReady is as for token.
func (i *interceptor) renew(ctx context.Context, method string, stale *tokensource.Token, rejection error, waitForReady bool) (*tokensource.Token, *headerValue, error) {
	if waitForReady {
		ctx = tokensource.WaitForReady(ctx) // a rejected call is the slow path anyway
	}
	tok, err := i.src.Refresh(ctx, stale)
	if err != nil {
		i.opts.logger.DebugContext(ctx, "interceptor: token rejected, refresh failed", "method", method, "error", err)
		return nil, nil, sourceError(ctx, err)
	}
	if tok == stale {
		return nil, nil, i.notRetried(rejection)
	}
	hv, err := i.headerValue(tok)
	if err == nil && i.opts.retried != nil {
		// Every caller of renew retries when it succeeds: this is the one
		// place that sees all three retry sites.
		i.opts.retried(ctx, method, rejection)
	}
	return tok, hv, err
}

// notRetried returns rejection as the caller sees it when the source had no
// newer token: its code and details, errors.Is and errors.As reaching it,
// and a message that says why it was not retried.
func (i *interceptor) notRetried(rejection error) error {
	why := "the token source has no newer token"
	if s, ok := i.src.(interface{ MinRefreshInterval() time.Duration }); ok {
		if d := s.MinRefreshInterval(); d > 0 {
			why = fmt.Sprintf("forced refresh rate-limited (WithMinRefreshInterval %v)", d)
		}
	}
	p := status.Convert(rejection).Proto()
	p.Message += "; not retried: " + why
	return &statusError{st: status.FromProto(p), causes: []error{rejection}}
}

// headerValue returns what to attach for tok, from the cache when tok is the
// token last used.
func (i *interceptor) headerValue(tok *tokensource.Token) (*headerValue, error) {
	if h := i.header.Load(); h != nil && h.tok == tok {
		return h, nil
	}
	// Any TokenSource may be plugged in, not only a *tokensource.Source
	// (which never hands out such a token): check once per token.
	if err := tok.Sendable(); err != nil {
		return nil, invalidTokenError(err)
	}
	value := tok.AccessToken
	if i.opts.scheme != "" {
		value = i.opts.scheme + " " + value
	}
	vals := []string{value}
	h := &headerValue{tok: tok, vals: vals, md: metadata.MD{i.opts.header: vals}}
	i.header.Store(h)
	return h, nil
}

// outgoing returns ctx without the token header in its outgoing metadata,
// and a private copy of that metadata for attach to consume (nil when ctx
// has no outgoing metadata).
//
// The returned ctx is also what the token source sees. That matters: a
// refresh runs on a context that keeps the values of the context that
// started it, so a header the caller set (or an outer interceptor) would
// otherwise ride along on the Refresher's own RPCs.
//
// grpc-go offers no public way to look at the outgoing metadata without
// copying it, so a context that carries outgoing metadata costs one copy;
// attach then uses that copy, so the header costs no second one.
func (i *interceptor) outgoing(ctx context.Context) (context.Context, metadata.MD) {
	md, ok := metadata.FromOutgoingContext(ctx)
	if !ok {
		return ctx, nil
	}
	if _, set := md[i.opts.header]; set {
		delete(md, i.opts.header)
		ctx = metadata.NewOutgoingContext(ctx, md)
		md = md.Copy()
	}
	return ctx, md
}

// attach returns ctx, which comes from outgoing and so has no token header,
// with the header of hv. md is the copy outgoing returned for ctx (nil:
// ctx has no outgoing metadata); attach consumes it.
//
// Without other metadata this is cheaper than
// metadata.AppendToOutgoingContext: hv's metadata is shared, and
// metadata.NewOutgoingContext only wraps it.
func (i *interceptor) attach(ctx context.Context, md metadata.MD, hv *headerValue) context.Context {
	if md == nil {
		return metadata.NewOutgoingContext(ctx, hv.md)
	}
	md[i.opts.header] = hv.vals
	return metadata.NewOutgoingContext(ctx, md)
}

// attachAgain is attach for a further attempt on ctx (from outgoing), whose
// metadata copy the first attempt consumed.
func (i *interceptor) attachAgain(ctx context.Context, hv *headerValue) context.Context {
	md, _ := metadata.FromOutgoingContext(ctx)
	return i.attach(ctx, md, hv)
}
