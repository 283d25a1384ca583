package main

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// The idp-outage phase's timing. A refresh of n attempts waits at least
// outageBackoff/2 · (2^(n-1) - 1) between its first and its last token
// request (WithBackoff jitters each wait into [d/2, d]), so with the
// library's 3 attempts at least 1.2 s: longer than the outage, which
// therefore ends before the last attempt of the refresh that met it.
const (
	outageLength  = time.Second
	outageBackoff = tokensource.DefaultBackoffInitial // the library's default: the phase sets no backoff
	// revokeAfter separates the two outages: the revocation comes this long
	// after the Source recovered from the first.
	revokeAfter = 500 * time.Millisecond
	// outageSettle is how long the load goes on after the second recovery,
	// so that the calls waiting for it are seen to complete.
	outageSettle = 500 * time.Millisecond
)

// The causes of the phase's outages, in the order they happen.
const (
	causeExpiry     = "expiry"
	causeRevocation = "revocation"
)

// idpOutage is the embedded server's token endpoint going down on cue: once
// armed, the next Refresh request starts an outage, and every Refresh
// request for outageLength from then on fails with Unavailable, leaving the
// refresh token usable (testserver.WithRefreshFailureFunc). Logins are not
// affected.
type idpOutage struct {
	mu      sync.Mutex
	armed   string // the cause of the next outage; "" when none is armed
	windows []outageWindow
}

// outageWindow is one outage as the server saw it.
type outageWindow struct {
	cause      string
	start, end time.Time // end: the first instant the endpoint answers again
	failed     int       // token requests failed
	// recovered is when the Source first installed a token after start;
	// zero if it has not.
	recovered time.Time
}

func (o *idpOutage) fail(context.Context, string) error {
	now := time.Now()
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.armed != "" {
		o.windows = append(o.windows, outageWindow{cause: o.armed, start: now, end: now.Add(outageLength)})
		o.armed = ""
	}
	if n := len(o.windows); n > 0 && now.Before(o.windows[n-1].end) {
		o.windows[n-1].failed++
		return status.Error(codes.Unavailable, "demo: the token endpoint is down (idp-outage)")
	}
	return nil
}

func (o *idpOutage) arm(cause string) {
	o.mu.Lock()
	o.armed = cause
	o.mu.Unlock()
}

// refreshed notes a token the Source installed at t: the recovery from the
// outage in progress, if it is the first since that outage started.
// It reports the outage's cause, or "" if t recovers from none.
func (o *idpOutage) refreshed(t time.Time) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := len(o.windows)
	if n == 0 {
		return ""
	}
	w := &o.windows[n-1]
	if !w.recovered.IsZero() || t.Before(w.start) {
		return ""
	}
	w.recovered = t
	return w.cause
}

// snapshot returns a copy of the outages so far.
func (o *idpOutage) snapshot() []outageWindow {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]outageWindow(nil), o.windows...)
}

// play runs the phase's script against srv, the Source's successful
// refreshes arriving on recovered (their causes: see refreshed): the next
// token request, the early refresh of the current token, starts the first
// outage; revokeAfter after the Source has recovered from it the endpoint
// is armed again and every access token revoked, so that the forced refresh
// starts the second. play returns outageSettle after the Source has
// recovered from that one, or when ctx ends; it reports whether the script
// ran to its end.
func (o *idpOutage) play(ctx context.Context, srv *testserver.Server, recovered <-chan string) bool {
	awaitRecovery := func(cause string) bool {
		for {
			select {
			case c := <-recovered:
				if c == cause {
					return true
				}
			case <-ctx.Done():
				return false
			}
		}
	}
	pause := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-ctx.Done():
			return false
		}
	}
	o.arm(causeExpiry)
	if !awaitRecovery(causeExpiry) || !pause(revokeAfter) {
		return false
	}
	// Armed first: the forced refresh that the revocation causes must be
	// the request that starts the outage.
	o.arm(causeRevocation)
	srv.ForceExpire()
	return awaitRecovery(causeRevocation) && pause(outageSettle)
}
