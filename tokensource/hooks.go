package tokensource

import (
	"context"
	"time"
)

// RefreshInfo describes a refresh to RefreshHooks.Context.
type RefreshInfo struct {
	// ID identifies the refresh among those of its Source; every Event of
	// the refresh carries it as Event.Refresh.
	ID uint64
	// Time is when the refresh started, by the Source's clock.
	Time time.Time
	// Forced and Background are those of the refresh's events.
	Forced     bool
	Background bool
	// Generation is the generation of the token being replaced.
	Generation uint64
}

// RefreshHooks tell an observer (a tracer, typically) who a refresh is for,
// which Events cannot: an Event carries no context. Each field is optional.
// The hooks are called only on the slow path, never for a token served from
// the cache. Install them with WithRefreshHooks.
type RefreshHooks struct {
	// Context is called when a refresh starts, before any of its events,
	// with the values of the context of the caller that started it (its
	// cancellation removed). It returns the context whose values the
	// refresh runs with (the Refresher's context and the Store's): ctx
	// itself or a context derived from it, carrying a span, say, so that
	// the Refresher's own RPCs nest under it. Only the returned context's
	// values are used, never its cancellation or deadline; nil means ctx.
	// For a background refresh (r.Background) ctx is that of the caller
	// whose Token call noticed the early window, which does not wait for it.
	//
	// Context is called with the Source's lock held, so that it precedes
	// every Wait call of the refresh: it must be quick, must not block and
	// must not call the Source's methods other than Stats.
	Context func(ctx context.Context, r RefreshInfo) context.Context
	// Wait is called, without any lock held, each time a caller of Token
	// or Refresh is about to block on refresh refresh (the ID of
	// RefreshInfo and Event.Refresh), with that caller's ctx: once per
	// caller counted in the refresh's Event.Waiters, from the caller's
	// goroutine. It must be quick and safe for concurrent use.
	Wait func(ctx context.Context, refresh uint64)
	// End is called once refresh refresh is over: after its last Event
	// (including that of a late result, see ErrRefreshTimeout), also for a
	// refresh that ends without a result event (the token came from the
	// Store, say). It is called from the refresh goroutine without any
	// lock held; Close waits for it.
	End func(refresh uint64)
}

// WithRefreshHooks installs h (see RefreshHooks). The default is none; a
// later WithRefreshHooks replaces an earlier one.
func WithRefreshHooks(h RefreshHooks) Option {
	return func(o *options) { o.hooks = h }
}

// refreshContext is the context whose values a refresh started by ctx runs
// with, from the hooks' Context if there is one. s.mu must be held.
func (s *Source) refreshContext(ctx context.Context, f *flight) context.Context {
	base := context.WithoutCancel(ctx)
	h := s.opts.hooks.Context
	if h == nil {
		return base
	}
	hc := h(base, RefreshInfo{ID: f.id, Time: s.now(), Forced: f.forced, Background: f.background, Generation: f.gen})
	if hc == nil || hc == base {
		return base
	}
	// Values only: the refresh must not end with a context of the hook's.
	return context.WithoutCancel(hc)
}
