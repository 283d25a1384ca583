package interceptor

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
)

// guard is a credentials.PerRPCCredentials that adds no metadata. grpc-go
// calls it inside the transport, the only place where a call's connection and
// therefore its security level are known, so it is where a token can still be
// stopped before it reaches the wire. It refuses a call that carries the
// token header on a connection below PrivacyAndIntegrity; every other call
// passes at the cost of a context lookup.
//
// RequireTransportSecurity is false on purpose: a true value would make
// grpc.NewClient refuse insecure connections outright, including those used
// only for SkipAuth calls, and would fail with a message that does not name
// this package.
type guard struct{ header string }

func (g *guard) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	ri, _ := credentials.RequestInfoFromContext(ctx)
	err := credentials.CheckSecurityLevel(ri.AuthInfo, credentials.PrivacyAndIntegrity)
	if err == nil || !hasHeader(ctx, g.header) {
		return nil, nil
	}
	return nil, insecureTransportError(err.Error())
}

func (g *guard) RequireTransportSecurity() bool { return false }

// guardedCreds runs the guard before per-call credentials the caller passed
// with grpc.PerRPCCredentials, which would otherwise replace the guard (grpc
// keeps only the last such call option).
type guardedCreds struct {
	guard *guard
	creds credentials.PerRPCCredentials
}

func (c guardedCreds) GetRequestMetadata(ctx context.Context, uri ...string) (map[string]string, error) {
	if _, err := c.guard.GetRequestMetadata(ctx, uri...); err != nil {
		return nil, err
	}
	return c.creds.GetRequestMetadata(ctx, uri...)
}

func (c guardedCreds) RequireTransportSecurity() bool { return c.creds.RequireTransportSecurity() }

// withGuard returns opts plus the guard as a per-call credential, for
// interceptors installed without DialOptions. It never modifies opts.
func (i *interceptor) withGuard(opts []grpc.CallOption) []grpc.CallOption {
	if i.guardOpt == nil {
		return opts
	}
	return i.appendGuard(make([]grpc.CallOption, 0, len(opts)+1), opts)
}

// appendGuard appends opts to dst, plus the guard as a per-call credential
// when this interceptor adds it per call.
func (i *interceptor) appendGuard(dst, opts []grpc.CallOption) []grpc.CallOption {
	dst = append(dst, opts...)
	if i.guardOpt == nil {
		return dst
	}
	for j := len(opts) - 1; j >= 0; j-- {
		if p, ok := opts[j].(grpc.PerRPCCredsCallOption); ok && p.Creds != nil {
			return append(dst, grpc.PerRPCCredsCallOption{Creds: guardedCreds{guard: i.guard, creds: p.Creds}})
		}
	}
	return append(dst, i.guardOpt)
}

// hasHeader reports whether the outgoing metadata in ctx has key name.
func hasHeader(ctx context.Context, name string) bool {
	md, ok := metadata.FromOutgoingContext(ctx)
	return ok && len(md[name]) > 0
}
