package interceptor

import (
	"context"
	"errors"
	"reflect"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// ErrNoSource is matched (errors.Is) by the error of a call made through a
// connection from NewClient before its TokenSource exists: a call that
// newSource itself makes through cc, outside a refresh. The call fails with
// codes.FailedPrecondition, carries no token and triggers no refresh. Calls
// the Source's Refresher makes through cc are not affected: they run inside
// the refresh and pass through (tokensource.InRefresh).
var ErrNoSource = errors.New("interceptor: the connection's token source does not exist yet (a call from inside newSource)")

// NewClient creates a client connection with grpc.NewClient, with this
// package's interceptors installed as DialOptions installs them, and then
// calls newSource with that connection to create the TokenSource the
// interceptors use. It returns both.
//
// It exists for the Refresher that calls its authentication service over
// the very connection it supplies tokens for (testserver.NewRefresher, say):
// the Refresher needs the connection, the connection needs the source, the
// source needs the Refresher. NewClient breaks the circle without a window
// in which a call could find no source:
//
//	conn, src, err := interceptor.NewClient(target, func(cc grpc.ClientConnInterface) *tokensource.Source {
//		return tokensource.New(testserver.NewRefresher(cc, user, password))
//	}, grpc.WithTransportCredentials(creds))
//	if err != nil { ... }
//	defer conn.Close()
//	defer src.Close() // runs first: it waits for a refresh in flight, which may be using conn
//
// opts are passed to grpc.NewClient; interceptor options go in
// WithInterceptorOptions among them. newSource runs once, after the
// connection was created and before NewClient returns; it is not called if
// grpc.NewClient fails. If it returns nil, a nil pointer included,
// NewClient closes the connection and returns an error (the source exists
// only at run time, and NewClient reports its failures as errors): no call
// ever meets a nil source. A call newSource makes through cc outside a
// refresh fails with ErrNoSource. The caller closes both: the source first,
// because Source.Close lets a Refresher call in flight finish (and save a
// rotated refresh token), and that call may be using the connection.
//
// A call through the connection costs what it costs with DialOptions plus
// one atomic load: no lock, no allocation.
func NewClient[S TokenSource](target string, newSource func(cc grpc.ClientConnInterface) S, opts ...grpc.DialOption) (*grpc.ClientConn, S, error) {
	var zero S
	if newSource == nil {
		return nil, zero, errors.New("interceptor: NewClient called with a nil newSource")
	}
	var iopts []Option
	dopts := make([]grpc.DialOption, 0, len(opts)+3)
	for _, o := range opts {
		if io, ok := o.(interceptorOptions); ok {
			iopts = append(iopts, io.opts...)
			continue
		}
		dopts = append(dopts, o)
	}
	late := &lateSource{}
	conn, err := grpc.NewClient(target, append(dopts, DialOptions(late, iopts...)...)...)
	if err != nil {
		return nil, zero, err
	}
	src := newSource(conn)
	if isNil(src) {
		conn.Close()
		return nil, zero, errors.New("interceptor: NewClient: newSource returned a nil TokenSource")
	}
	late.bind(src)
	return conn, src, nil
}

// WithInterceptorOptions passes opts to the interceptors that NewClient
// installs. It is a grpc.DialOption so that it can go among NewClient's
// other dial options; grpc.NewClient itself ignores it (it embeds
// grpc.EmptyDialOption), so a stray one does no harm, and no good either:
// with DialOptions, pass the options to DialOptions.
func WithInterceptorOptions(opts ...Option) grpc.DialOption {
	return interceptorOptions{opts: opts}
}

type interceptorOptions struct {
	grpc.EmptyDialOption
	opts []Option
}

// lateSource is the TokenSource of a connection made by NewClient: the
// real one is bound once, right after the connection exists.
type lateSource struct {
	p atomic.Pointer[boundSource]
}

type boundSource struct{ TokenSource }

func (l *lateSource) bind(src TokenSource) { l.p.Store(&boundSource{src}) }

func (l *lateSource) Token(ctx context.Context) (*tokensource.Token, error) {
	if b := l.p.Load(); b != nil {
		return b.Token(ctx)
	}
	return nil, ErrNoSource
}

func (l *lateSource) Refresh(ctx context.Context, stale *tokensource.Token) (*tokensource.Token, error) {
	if b := l.p.Load(); b != nil {
		return b.Refresh(ctx, stale)
	}
	return nil, ErrNoSource
}

// MinRefreshInterval is that of the bound source, if it has one (see
// TokenSource), for the message of a call that is not retried.
func (l *lateSource) MinRefreshInterval() time.Duration {
	if b := l.p.Load(); b != nil {
		if s, ok := b.TokenSource.(interface{ MinRefreshInterval() time.Duration }); ok {
			return s.MinRefreshInterval()
		}
	}
	return 0
}

// isNil reports whether src is nil or a typed nil pointer (or other nil
// reference) in an interface, which would panic on the first call.
func isNil(src any) bool {
	if src == nil {
		return true
	}
	switch v := reflect.ValueOf(src); v.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Func, reflect.Interface, reflect.Chan, reflect.Slice:
		return v.IsNil()
	}
	return false
}
