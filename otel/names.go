package tokenrefreshotel

import "go.opentelemetry.io/otel/attribute"

// ScopeName is the instrumentation scope of the Observer's meter and tracer.
const ScopeName = "github.com/tokenrefresh/grpc-tokenrefresh/otel"

// The names of the Observer's instruments. The package documentation
// describes each one.
const (
	MetricRefreshes           = "tokenrefresh.refreshes"
	MetricRefreshDuration     = "tokenrefresh.refresh.duration"
	MetricCallersWaited       = "tokenrefresh.callers.waited"
	MetricRefreshRateLimited  = "tokenrefresh.refresh.rate_limited"
	MetricStoreFailures       = "tokenrefresh.store.failures"
	MetricTokensAdopted       = "tokenrefresh.tokens.adopted"
	MetricLeaseWaitDuration   = "tokenrefresh.lease.wait.duration"
	MetricLeaseTakeovers      = "tokenrefresh.lease.takeovers"
	MetricTokensRestored      = "tokenrefresh.tokens.restored"
	MetricRPCRetries          = "tokenrefresh.rpc.retries"
	MetricCallersWaiting      = "tokenrefresh.callers.waiting"
	MetricRefreshActive       = "tokenrefresh.refresh.active"
	MetricReauthRequiredState = "tokenrefresh.reauth.required"
)

// SpanRefresh is the name of the span that covers one refresh.
const SpanRefresh = "tokenrefresh.refresh"

// The attribute keys the Observer sets. error.type and the rpc.* keys are
// OpenTelemetry's semantic conventions; the others are this package's own.
const (
	// OutcomeKey says how a refresh ended: one of the Outcome… values.
	OutcomeKey = attribute.Key("tokenrefresh.outcome")
	// TriggerKey says why a refresh ran: one of the Trigger… values.
	TriggerKey = attribute.Key("tokenrefresh.trigger")
	// WaitersKey is the number of callers that blocked on a refresh (on
	// its span).
	WaitersKey = attribute.Key("tokenrefresh.waiters")
	// GenerationKey is the Source's token generation after a refresh (on
	// its span; Event.Generation).
	GenerationKey = attribute.Key("tokenrefresh.generation")
	// RetriedKey is set to true on the span of a call that was retried
	// with a new token.
	RetriedKey = attribute.Key("tokenrefresh.retried")
	// RefreshIDKey is Event.Refresh, the refresh's number within its
	// Source (on refresh spans and on the tokenrefresh.wait event).
	RefreshIDKey = attribute.Key("tokenrefresh.refresh.id")
	// LateKey is set to true on the span of a late result: a Refresher
	// that returned after the refresh timeout had ended its refresh span.
	LateKey = attribute.Key("tokenrefresh.late")
	// LinkKey says, on a link to or from a refresh span, what the link
	// means: one of the Link… values.
	LinkKey = attribute.Key("tokenrefresh.link")
)

// The values of LinkKey.
const (
	// LinkWaited: from the span of a caller that waited on the refresh.
	LinkWaited = "wait"
	// LinkRefresh: from the span of a call retried with the refresh's
	// token.
	LinkRefresh = "refresh"
	// LinkTriggeredBy: from a background refresh's (root) span to the span
	// of the caller whose Token call noticed the early window.
	LinkTriggeredBy = "triggered_by"
	// LinkTimedOut: from a late result's span to the span of the refresh
	// whose timeout ended before the result came.
	LinkTimedOut = "timed_out"
)

// The names of the span events the Observer adds.
const (
	// EventWait is added to the span of a caller that waits on a refresh.
	EventWait = "tokenrefresh.wait"
	// EventRetry is added to the span of a call retried with a new token.
	EventRetry = "tokenrefresh.retry"
	// EventRefresherCalled is added to a refresh span when the Refresher is
	// called, if the span began before (with the hooks, or lease work).
	EventRefresherCalled = "tokenrefresh.refresher_called"
)

// The values of OutcomeKey.
const (
	OutcomeSuccess        = "success"         // RefreshSucceeded: a new token is current
	OutcomeFailure        = "failure"         // RefreshFailed: transient; the Source backs off
	OutcomeReauthRequired = "reauth_required" // ReauthRequired: the user must log in again
	OutcomeUnchanged      = "unchanged"       // RefreshUnchanged: the rejected token came back
	OutcomeAdopted        = "adopted"         // TokenAdopted: a peer's token, no Refresher call
	// OutcomeNone is set only on a span (no measurement has it): the
	// refresh ended without a result event, because the Store held a valid
	// token (or the login token was used), or the Refresher handed back
	// the token it was given.
	OutcomeNone = "none"
	// OutcomeUnknown is set only on a span, without the hooks (Observe
	// alone), that was still open when the next refresh started: its end
	// was never reported.
	OutcomeUnknown = "unknown"
)

// The values of TriggerKey, derived from Event.Forced and Event.Background.
const (
	// TriggerExpiry: a caller needed a token and the Source had no valid
	// one (the first token, or the current one expired); callers wait.
	TriggerExpiry = "expiry"
	// TriggerEarly: a background refresh in the early window while the
	// current token stays valid; nobody waits unless it runs late.
	TriggerEarly = "early"
	// TriggerForced: a server rejected the current token (Source.Refresh).
	TriggerForced = "forced"
)
