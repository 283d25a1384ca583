package tokenrefreshotel

import (
	"context"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
)

// InterceptorOption returns the interceptor option that reports retried
// calls to o: give it to interceptor.DialOptions (or to
// UnaryClientInterceptor and StreamClientInterceptor) next to the Source
// that o observes.
//
//	conn, err := grpc.NewClient(target, append(creds,
//		interceptor.DialOptions(src, obs.InterceptorOption())...)...)
//
// Each call retried with a new token after the server rejected its token
// adds one to tokenrefresh.rpc.retries and marks the span found in the
// call's context (see the package documentation). Calls whose token is
// accepted never reach o.
func (o *Observer) InterceptorOption() interceptor.Option {
	return interceptor.WithRetryObserver(o.retried)
}

// retried is the interceptor's retry observer.
func (o *Observer) retried(ctx context.Context, method string, rejection error) {
	code := semconv.RPCResponseStatusCodeKey.String(codeName(uint32(status.Code(rejection))))
	rpcMethod := semconv.RPCMethod(strings.TrimPrefix(method, "/"))
	o.retries.Add(ctx, 1, o.with(semconv.RPCSystemNameGRPC, rpcMethod, code))

	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(RetriedKey.Bool(true))
	span.AddEvent(EventRetry, trace.WithAttributes(rpcMethod, code))
	o.mu.Lock()
	// The refresh this call waited on (told by the Wait hook), else the
	// one started last: without the hooks, the one the call waited on
	// unless another started since; when the Source had moved on before
	// the rejection came, the one that installed the newer token unless
	// another (a background refresh, say) started since.
	target, ok := o.waitedOnLocked(span.SpanContext().SpanID())
	if !ok {
		target = o.last
	}
	o.mu.Unlock()
	if target.IsValid() {
		span.AddLink(trace.Link{SpanContext: target, Attributes: []attribute.KeyValue{LinkKey.String(LinkRefresh)}})
	}
}
