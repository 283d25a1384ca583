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

// withRefreshMarker marks ctx as a refresh context for InRefresh.
func withRefreshMarker(ctx context.Context) context.Context {
	return context.WithValue(ctx, refreshMarkerKey{}, true)
}
