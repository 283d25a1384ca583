package tokensource

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"runtime/debug"
	"time"
)

// errNotReturned is the cause in the timeout error of a Refresher that was
// still running when the refresh timeout released its waiters.
var errNotReturned = errors.New("the Refresher had not returned")

// ignoredContextGrace is how long after the refresh timeout a Refresher may
// take to return before the Source logs that it ignores its context.
const ignoredContextGrace = time.Second

type refResult struct {
	tok *Token
	err error
}

// startRefresher calls the Refresher with current on a goroutine of its own,
// so that the refresh timeout holds even for a Refresher that ignores its
// context. The result arrives on the returned channel; a panic in the
// Refresher arrives as the error of the refresh.
func (s *Source) startRefresher(ctx context.Context, current *Token) <-chan refResult {
	ch := make(chan refResult, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				// Recovered, and logged even without WithLogger: see
				// ErrRefresherPanicked and docs/design.md.
				l := cmp.Or(s.opts.logger, slog.Default())
				what := panicSummary(p)
				l.Error("tokensource: the Refresher panicked", "panic", what, "stack", string(debug.Stack()))
				ch <- refResult{err: fmt.Errorf("%w (%s)", ErrRefresherPanicked, what)}
			}
		}()
		t, err := s.refresher.Refresh(ctx, current)
		ch <- refResult{t, err}
	}()
	return ch
}

// awaitRefresher waits for the Refresher's result until the refresh timeout
// (ctx); inTime is false if the Refresher was still running then.
func awaitRefresher(ctx context.Context, ch <-chan refResult) (r refResult, inTime bool) {
	select {
	case r = <-ch:
		return r, true
	case <-ctx.Done():
		select {
		case r = <-ch:
			return r, true
		default:
			return refResult{}, false
		}
	}
}

// awaitLate waits for the result of a Refresher that outlived the refresh
// timeout, and says so in the log if it takes a while.
func (s *Source) awaitLate(ch <-chan refResult) refResult {
	grace := time.NewTimer(ignoredContextGrace)
	defer grace.Stop()
	select {
	case r := <-ch:
		return r
	case <-grace.C:
		s.log.Warn("tokensource: the Refresher ignores its context: still running after the refresh timeout; "+
			"its result will still be used if it arrives", "refresh_timeout", s.opts.refreshTimeout)
		return <-ch
	}
}

// checkResult turns the Refresher's result r for f into the flight's
// result; prev is the token being replaced. refused is a token the Source
// will not hand out (invalid, or the rejected token again), which may still
// carry a rotated refresh token. An accepted token is the Source's own copy:
// handed-out tokens must not change.
func (s *Source) checkResult(ctx context.Context, f *flight, prev *Token, r refResult) (res result, refused *Token) {
	switch {
	case r.err == nil:
	case IsPermanent(r.err):
		return result{kind: permanent, err: fmt.Errorf("%w: refresh failed: %w", ErrReauthRequired, r.err)}, nil
	case refreshTimedOut(ctx):
		return result{kind: failed, err: &timeoutError{after: s.opts.refreshTimeout, err: r.err}}, nil
	case errors.Is(r.err, ErrRefresherPanicked):
		return result{kind: failed, err: r.err}, nil // already says what failed, with the package's prefix
	default:
		return result{kind: failed, err: fmt.Errorf("tokensource: refresh failed: %w", r.err)}, nil
	}
	if err := validateToken(r.tok, s.now()); err != nil {
		return result{kind: failed, err: fmt.Errorf("tokensource: refresh failed: %w", err)}, r.tok
	}
	if f.forced && prev != nil && r.tok.AccessToken == prev.AccessToken {
		return result{kind: unchanged, err: ErrUnchangedToken}, r.tok
	}
	return result{kind: refreshed, tok: r.tok.clone(), changed: prev == nil || r.tok.AccessToken != prev.AccessToken}, nil
}

// panicSummary describes a Refresher's panic value without quoting it: a
// value of the caller's making (a string, an error from an HTTP client) may
// carry a token. Only the runtime's own errors, such as a nil dereference or
// an index out of range, are safe to quote.
func panicSummary(p any) string {
	if re, ok := p.(runtime.Error); ok {
		return re.Error()
	}
	return fmt.Sprintf("panic value of type %T", p)
}
