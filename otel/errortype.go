package tokenrefreshotel

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// errorClasses map the tokensource sentinel errors to error.type values, in
// the order they are tried: a refresh that timed out while waiting for a
// lease is a timeout first.
var errorClasses = []struct {
	err  error
	name string
}{
	{tokensource.ErrRefreshTimeout, "timeout"},
	{tokensource.ErrUnchangedToken, "unchanged_token"},
	{tokensource.ErrReauthRequired, "reauth_required"},
	{tokensource.ErrInvalidToken, "invalid_token"},
	{tokensource.ErrCoordinatorUnavailable, "coordinator_unavailable"},
	{tokensource.ErrLeaseLost, "lease_lost"},
	{tokensource.ErrCorruptStore, "corrupt_store"},
	{tokensource.ErrClosed, "closed"},
	{context.DeadlineExceeded, "deadline_exceeded"},
	{context.Canceled, "canceled"},
}

// errorType classifies err into a low-cardinality error.type attribute: a
// tokensource sentinel it matches, else the gRPC status code of a Refresher
// that made an RPC (such as "UNAVAILABLE"), else "_OTHER". It never uses the
// error's text, which may be long and varied.
func errorType(err error) attribute.KeyValue {
	if err == nil {
		return semconv.ErrorTypeOther
	}
	for _, c := range errorClasses {
		if errors.Is(err, c.err) {
			return semconv.ErrorTypeKey.String(c.name)
		}
	}
	if s, ok := status.FromError(err); ok && s.Code() != 0 {
		return semconv.ErrorTypeKey.String(codeName(uint32(s.Code())))
	}
	return semconv.ErrorTypeOther
}

// grpcCodeNames are the gRPC status codes as the gRPC specification spells
// them, the form semantic conventions use for rpc.response.status_code.
var grpcCodeNames = [...]string{
	"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
	"PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
	"UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
}

func codeName(c uint32) string {
	if int(c) < len(grpcCodeNames) {
		return grpcCodeNames[c]
	}
	return "_OTHER"
}
