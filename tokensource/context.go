package tokensource

import "context"

type refreshMarkerKey struct{}

// InRefresh reports whether ctx is, or derives from, the context on which a
// Source runs its Refresher. Interceptors use it to let the RPCs a Refresher
// makes (a call to an auth service over the same connection, say) pass
// through untouched, so such a Refresher can neither deadlock waiting for
// itself nor recurse into another refresh.
func InRefresh(ctx context.Context) bool {
	return ctx.Value(refreshMarkerKey{}) != nil
}

// withRefreshMarker marks ctx as a refresh context of s, for InRefresh and
// refreshingSource.
func withRefreshMarker(ctx context.Context, s *Source) context.Context {
	return context.WithValue(ctx, refreshMarkerKey{}, s)
}

// refreshingSource returns the Source whose refresh ctx belongs to (nil
// outside a refresh), so that a Source can refuse to wait for itself.
func refreshingSource(ctx context.Context) *Source {
	s, _ := ctx.Value(refreshMarkerKey{}).(*Source)
	return s
}

type waitForReadyKey struct{}

// WaitForReady returns a copy of ctx with which Token and Refresh, while the
// Source backs off after a failed refresh (or a Refresher the refresh timeout
// gave up on still runs), wait for the next refresh within ctx instead of
// failing at once with the last error: what grpc.WaitForReady(true) does for
// a connection in TRANSIENT_FAILURE. The interceptors set it for calls made
// with grpc.WaitForReady(true), per call or through
// grpc.WithDefaultCallOptions. A caller whose ctx ends while it waits gets an
// error matching ctx.Err() and the last refresh error.
func WaitForReady(ctx context.Context) context.Context {
	return context.WithValue(ctx, waitForReadyKey{}, true)
}

// waitsForReady reports whether ctx waits for ready. Not inside a refresh:
// a refresh context keeps the values of its initiator's, and a Refresher's
// own calls (to another Source, say) must not wait through backoffs.
func waitsForReady(ctx context.Context) bool {
	return ctx.Value(waitForReadyKey{}) != nil && !InRefresh(ctx)
}
