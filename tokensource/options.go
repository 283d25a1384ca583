package tokensource

import (
	"log/slog"
	"time"
)

// Defaults used by New. They are documented in the package overview, which
// also explains how the expiry leeway and the early-refresh window shrink for
// short-lived tokens.
const (
	// DefaultExpiryLeeway is how long before its Expiry a token counts as
	// expired. It matches golang.org/x/oauth2's expiryDelta.
	DefaultExpiryLeeway = 10 * time.Second
	// DefaultEarlyRefresh is how long before a token counts as expired the
	// Source starts one background refresh. It matches the default of
	// cloud.google.com/go/auth (3 m 45 s).
	DefaultEarlyRefresh = 225 * time.Second
	// DefaultRefreshTimeout bounds one call of the Refresher (and the store
	// load or save around it).
	DefaultRefreshTimeout = 30 * time.Second
	// DefaultMinRefreshInterval is the refill interval of the storm guard
	// of forced refreshes (Source.Refresh of the current token): after a
	// burst of two, one per interval (see WithMinRefreshInterval).
	DefaultMinRefreshInterval = time.Second
	// DefaultBackoffInitial and DefaultBackoffMax bound the wait after a
	// failed refresh: it starts at DefaultBackoffInitial, doubles with every
	// consecutive failure up to DefaultBackoffMax, and is jittered.
	DefaultBackoffInitial = time.Second // grpc-go's connection backoff starts there too
	DefaultBackoffMax     = 30 * time.Second
	// DefaultRefreshAttempts is how many Refresher calls one refresh makes
	// at most when they fail transiently.
	DefaultRefreshAttempts = 3
	// DefaultRepairInterval is how often a Source whose Coordinator is a
	// Restorer checks that the fleet's shared record is not behind its
	// token (see WithRepairInterval).
	DefaultRepairInterval = time.Second
)

// The caps that keep the leeway and the early window proportionate for
// short-lived tokens: leeway ≤ lifetime/leewayDivisor and early window ≤
// lifetime/earlyDivisor.
const (
	leewayDivisor = 10
	earlyDivisor  = 4
)

// Option configures a Source created by New.
type Option func(*options)

type options struct {
	initial            *Token
	store              Store
	leeway             time.Duration
	early              time.Duration
	refreshTimeout     time.Duration
	refreshAttempts    int
	minRefreshInterval time.Duration
	backoffInitial     time.Duration
	backoffMax         time.Duration
	clock              func() time.Time // nil: time.Now, called directly on the hot path
	observers          []func(Event)
	hooks              RefreshHooks
	logger             *slog.Logger
	uncoordinated      bool // refresh locally when the Coordinator is unavailable
	repairInterval     time.Duration
}

func defaultOptions() options {
	return options{
		leeway:             DefaultExpiryLeeway,
		early:              DefaultEarlyRefresh,
		refreshTimeout:     DefaultRefreshTimeout,
		refreshAttempts:    DefaultRefreshAttempts,
		minRefreshInterval: DefaultMinRefreshInterval,
		backoffInitial:     DefaultBackoffInitial,
		backoffMax:         DefaultBackoffMax,
		repairInterval:     DefaultRepairInterval,
	}
}

// WithInitialToken makes t the Source's first token, for example the token
// obtained at login. A token in the Store (see WithStore) takes precedence
// because it is the newer one. An expired t, or one without an access token,
// is not handed out; it is passed to the Refresher as the current token (so
// its RefreshToken is used). The Source keeps its own copy of t.
func WithInitialToken(t *Token) Option {
	return func(o *options) { o.initial = t.clone() }
}

// WithStore persists tokens in st: the Source loads it once, on first use,
// and saves every new token to it before handing that token out. The default
// is no persistence.
func WithStore(st Store) Option {
	return func(o *options) { o.store = st }
}

// WithExpiryLeeway sets how long before its Expiry a token counts as expired
// (default DefaultExpiryLeeway). The leeway never exceeds a tenth of the
// token's lifetime. Negative values are treated as 0.
func WithExpiryLeeway(d time.Duration) Option {
	return func(o *options) { o.leeway = max(d, 0) }
}

// WithEarlyRefresh sets the early-refresh window (default
// DefaultEarlyRefresh): that long before a token counts as expired, callers
// keep receiving it at once while one background refresh runs. The window
// never exceeds a quarter of the token's lifetime. 0 (or a negative value)
// disables background refresh.
func WithEarlyRefresh(d time.Duration) Option {
	return func(o *options) { o.early = max(d, 0) }
}

// WithRefreshTimeout bounds each refresh (default DefaultRefreshTimeout).
// When it elapses, the Refresher's context is cancelled and the waiters
// receive an error matching ErrRefreshTimeout. Values ≤ 0 select the default.
func WithRefreshTimeout(d time.Duration) Option {
	return func(o *options) {
		if d <= 0 {
			d = DefaultRefreshTimeout
		}
		o.refreshTimeout = d
	}
}

// WithRefreshAttempts sets how many Refresher calls one refresh makes at
// most (default DefaultRefreshAttempts): a transient failure (an
// authorization server answering 503 for a moment, say) is tried again
// after a jittered wait from WithBackoff, or after the Retry-After the error
// carries (see RetryAfter), capped by WithBackoff's maximum, while the
// callers keep waiting within their own ctx. Only when the attempts are
// spent, or the next wait would outlast the refresh timeout, do the callers
// get the failure. A Permanent error, ErrUnchangedToken, an invalid token,
// the refresh timeout and a panic are not tried again. 1 makes one call per refresh; values < 1
// select the default.
func WithRefreshAttempts(n int) Option {
	return func(o *options) {
		if n < 1 {
			n = DefaultRefreshAttempts
		}
		o.refreshAttempts = n
	}
}

// WithMinRefreshInterval sets the storm guard of forced refreshes
// (Source.Refresh of the current token; default DefaultMinRefreshInterval):
// two may run back to back, then one per d. Past the guard, Refresh returns
// the current token without refreshing (or a newer one a peer of the fleet
// committed), so a server that rejects every fresh token gets about one
// refresh per d, while two separate revocations in quick succession are both
// refreshed. Only a forced refresh that got a token from the Refresher (or
// the rejected one back) counts: adopting a peer's token does not, nor does a
// failed one, after which the backoff holds the next one back. 0 disables the
// limit; negative values are treated as 0.
func WithMinRefreshInterval(d time.Duration) Option {
	return func(o *options) { o.minRefreshInterval = max(d, 0) }
}

// MinRefreshInterval returns the interval of the storm guard of forced
// refreshes (WithMinRefreshInterval; 0 means no limit). When the guard holds
// a forced refresh back, Refresh hands back the rejected token instead of
// refreshing, and a caller such as the interceptor package can say so in the
// error of the call it does not retry.
func (s *Source) MinRefreshInterval() time.Duration { return s.opts.minRefreshInterval }

// WithBackoff sets the wait after failed refreshes: initial after the first
// failure, doubling with every consecutive failure up to maxWait, each wait
// jittered to between half and all of its nominal value. A success resets
// it. Non-positive values select the defaults; maxWait is raised to initial
// if it is smaller.
func WithBackoff(initial, maxWait time.Duration) Option {
	return func(o *options) {
		if initial <= 0 {
			initial = DefaultBackoffInitial
		}
		if maxWait <= 0 {
			maxWait = DefaultBackoffMax
		}
		o.backoffInitial, o.backoffMax = initial, max(maxWait, initial)
	}
}

// WithClock replaces time.Now for expiry decisions, backoff and rate limits
// (for tests). The refresh timeout always runs on real time. nil restores
// time.Now.
func WithClock(now func() time.Time) Option {
	return func(o *options) { o.clock = now }
}

// WithObserver registers f to receive every Event (see EventKind). It may be
// given several times: every observer receives every event, in the order the
// options were given (an adapter's observer, such as the otel package's, and
// one of your own can sit side by side). f is called without any lock held,
// from the goroutine that did the work (usually the refresh goroutine, after
// the waiters have been released); it must be quick and safe for concurrent
// use, and must not call Close or wait for a token from the same Source.
// Close waits for the calls made by refresh goroutines. A nil f is ignored.
func WithObserver(f func(Event)) Option {
	return func(o *options) {
		if f != nil {
			o.observers = append(o.observers, f)
		}
	}
}

// WithOnReauthRequired is a shortcut for an observer (see WithObserver) of
// the ReauthRequired event: f is told, once each time the Source enters the
// re-authentication-required state, that the user must log in again (call
// Source.SetToken with the new token). err is the event's Err: it matches
// ErrReauthRequired and the Refresher's error. f is called after the waiting
// callers have received the error; it may call SetToken.
func WithOnReauthRequired(f func(err error)) Option {
	if f == nil {
		return func(*options) {}
	}
	return WithObserver(func(e Event) {
		if e.Kind == ReauthRequired {
			f(e.Err)
		}
	})
}

// WithLogger makes the Source log refresh activity to l: successes at Debug,
// failures at Warn, re-authentication and store failures at Error. Tokens are
// never logged. The default discards everything.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.logger = l }
}

// WithUncoordinatedRefresh lets a Source whose Store is a Coordinator refresh
// on its own, without the fleet's lease, when the Coordinator is unavailable
// (errors matching ErrCoordinatorUnavailable, such as Redis being down). The
// default is off: without the lease two members could present one rotating
// refresh token twice, which authorization servers with reuse detection
// answer by revoking the whole token family. Turn it on only for grants where
// a second refresh is harmless, such as client credentials. A token obtained
// this way is used at once and saved to the Store on a best-effort basis.
func WithUncoordinatedRefresh() Option {
	return func(o *options) { o.uncoordinated = true }
}

// WithRepairInterval sets how often a Source whose Store is a Coordinator
// that implements Restorer checks, off the hot path, that the fleet's shared
// record is not behind the token it holds (default DefaultRepairInterval),
// and puts its token back if it is: a commit of this Source that failed, or
// a record lost or rolled back (a Redis restart without persistence, a
// failover to a lagging replica). While the Coordinator does not answer, or a
// restore has not landed, it looks four times as often. A member that is
// about to present a refresh token from a record that may have lost a newer
// one (it took the lease over from a holder that stopped renewing it, or the
// record is empty or older than a version it has seen) first waits d + d/4
// for such a restore. The check runs on one goroutine per Source, started
// with its first token from the fleet and stopped by Close. 0 disables both
// the check and the wait; negative values are treated as 0.
func WithRepairInterval(d time.Duration) Option {
	return func(o *options) { o.repairInterval = max(d, 0) }
}
