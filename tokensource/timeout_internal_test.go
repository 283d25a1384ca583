package tokensource

import (
	"context"
	"testing"
	"time"
)

// deadlineCtx is a context whose deadline has a chosen value and whose Err
// stays nil: the state of a refresh context in the instant between its
// deadline passing and its timer firing, when a Refresher may already have
// returned the error of a server that enforced the same (propagated)
// deadline.
type deadlineCtx struct {
	context.Context
	deadline time.Time
}

func (c deadlineCtx) Deadline() (time.Time, bool) { return c.deadline, true }

// refreshTimedOut must not depend on the context's timer having fired; the
// end-to-end TestFaultRefreshTimeoutMatchesErrRefreshTimeout can only hit
// that window by chance.
func TestRefreshTimedOutBeforeTimerFires(t *testing.T) {
	past := deadlineCtx{Context: context.Background(), deadline: time.Now().Add(-time.Millisecond)}
	if !refreshTimedOut(past) {
		t.Error("refreshTimedOut = false for a passed deadline whose timer has not fired")
	}
	future := deadlineCtx{Context: context.Background(), deadline: time.Now().Add(time.Hour)}
	if refreshTimedOut(future) {
		t.Error("refreshTimedOut = true before the deadline")
	}
	if refreshTimedOut(context.Background()) {
		t.Error("refreshTimedOut = true without a deadline")
	}
	ctx, cancel := context.WithTimeoutCause(context.Background(), time.Hour, ErrRefreshTimeout)
	cancel() // cancelled, not timed out: the cause is context.Canceled
	if refreshTimedOut(ctx) {
		t.Error("refreshTimedOut = true for a cancelled context")
	}
}
