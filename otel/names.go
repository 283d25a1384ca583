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
)

// The values of OutcomeKey.
const (
	OutcomeSuccess        = "success"         // RefreshSucceeded: a new token is current
	OutcomeFailure        = "failure"         // RefreshFailed: transient; the Source backs off
	OutcomeReauthRequired = "reauth_required" // ReauthRequired: the user must log in again
	OutcomeUnchanged      = "unchanged"       // RefreshUnchanged: the rejected token came back
	OutcomeAdopted        = "adopted"         // TokenAdopted: a peer's token, no Refresher call
	// OutcomeUnknown is set only on a span that was still open when the
	// next refresh started: its end was never reported.
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
