package interceptor

import (
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/challenge"
)

// challenged returns the error the caller sees for rejection, a call's
// error, when the server's Bearer challenge (the www-authenticate key of
// the response header or trailer metadata, as Envoy's jwt_authn sends it)
// says that a new token cannot help: insufficient_scope, or RFC 9470's
// insufficient_user_authentication. It returns nil otherwise, and looks at
// the metadata only for Unauthenticated and PermissionDenied, the codes a
// resource server refuses a token with.
func challenged(rejection error, header, trailer metadata.MD) error {
	switch status.Code(rejection) {
	case codes.Unauthenticated, codes.PermissionDenied:
	default:
		return nil
	}
	cerr := challenge.Error(header[challenge.HeaderKey], trailer[challenge.HeaderKey])
	if cerr == nil {
		return nil
	}
	// The server's code and details, a message that says what the server
	// asked for, errors.Is reaching both the server's error and the
	// tokensource sentinel.
	p := status.Convert(rejection).Proto()
	p.Message += "; not retried: " + cerr.Error()
	return &statusError{st: status.FromProto(p), causes: []error{rejection, cerr}}
}

// callMD is what a unary call needs to read the server's response metadata
// when it fails: grpc.Header and grpc.Trailer call options pointing at its
// own fields, and room for the call's options. A call that succeeds puts it
// back in a pool, so that it allocates nothing for it.
type callMD struct {
	header, trailer metadata.MD
	get             [2]grpc.CallOption // grpc.Header(&header), grpc.Trailer(&trailer)
	opts            []grpc.CallOption
	buf             [8]grpc.CallOption
}

// maxPooledOpts bounds the option slice a pooled callMD keeps.
const maxPooledOpts = 32

var callMDPool = sync.Pool{New: func() any {
	c := &callMD{}
	c.get = [2]grpc.CallOption{grpc.Header(&c.header), grpc.Trailer(&c.trailer)}
	c.opts = c.buf[:0]
	return c
}}

// callOptions returns a callMD whose opts are opts, plus the transport
// security check when this interceptor adds it per call, plus its own
// header and trailer options.
func (i *interceptor) callOptions(opts []grpc.CallOption) *callMD {
	c := callMDPool.Get().(*callMD)
	c.opts = append(i.appendGuard(c.opts[:0], opts), c.get[0], c.get[1])
	return c
}

// reset forgets the metadata of an attempt before another one.
func (c *callMD) reset() { c.header, c.trailer = nil, nil }

// release returns c to the pool, keeping no reference to the call.
func (c *callMD) release() {
	c.reset()
	clear(c.opts)
	if cap(c.opts) > maxPooledOpts {
		c.opts = c.buf[:0]
	}
	callMDPool.Put(c)
}
