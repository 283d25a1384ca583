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
