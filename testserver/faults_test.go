package testserver_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
)

// TestRefreshLatency runs in a synctest bubble, so the latency is measured on
// the bubble's fake clock: exact, and without waiting.
func TestRefreshLatency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := testserver.New(testserver.WithRefreshLatency(10 * time.Second))
		_, c := start(t, srv, testserver.Bufconn())
		tok, err := srv.IssueToken("lat")
		if err != nil {
			t.Fatal(err)
		}

		begin := time.Now()
		next, err := refresh(t.Context(), c, tok.RefreshToken)
		if err != nil {
			t.Fatalf("Refresh: %v", err)
		}
		if got := time.Since(begin); got != 10*time.Second {
			t.Errorf("Refresh took %v, want the configured 10s", got)
		}

		// A caller that gives up during the latency gets its own deadline
		// error, and its refresh token is not consumed.
		srv.SetRefreshLatency(time.Hour)
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		begin = time.Now()
		_, err = refresh(ctx, c, next.GetRefreshToken())
		wantCode(t, "Refresh abandoned during the latency", err, codes.DeadlineExceeded)
		if got := time.Since(begin); got != time.Minute {
			t.Errorf("abandoned Refresh returned after %v, want at the 1m deadline", got)
		}

		srv.SetRefreshLatency(0)
		begin = time.Now()
		if _, err := refresh(t.Context(), c, next.GetRefreshToken()); err != nil {
			t.Errorf("Refresh with the token the abandoned call presented: %v", err)
		}
		if got := time.Since(begin); got != 0 {
			t.Errorf("Refresh without latency took %v of fake time, want 0", got)
		}
		if got := srv.Counters(); got.RefreshesOK != 2 || got.RefreshesFailed != 1 {
			t.Errorf("Counters() refreshes ok/failed = %d/%d, want 2/1", got.RefreshesOK, got.RefreshesFailed)
		}
	})
}

func TestRefreshFailures(t *testing.T) {
	srv := testserver.New(testserver.WithRefreshFailures(2, codes.Unavailable))
	_, c := start(t, srv)
	tok, err := srv.IssueToken("flaky")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		_, err := refresh(t.Context(), c, tok.RefreshToken)
		wantCode(t, fmt.Sprintf("injected failure #%d", i+1), err, codes.Unavailable)
	}
	// Injected failures do not consume the refresh token.
	next, err := refresh(t.Context(), c, tok.RefreshToken)
	if err != nil {
		t.Fatalf("Refresh after the injected failures: %v", err)
	}

	srv.FailNextRefreshes(1, codes.PermissionDenied)
	_, err = refresh(t.Context(), c, next.GetRefreshToken())
	wantCode(t, "FailNextRefreshes", err, codes.PermissionDenied)
	srv.FailNextRefreshes(1, codes.OK) // documented to mean Unavailable
	_, err = refresh(t.Context(), c, next.GetRefreshToken())
	wantCode(t, "FailNextRefreshes with codes.OK", err, codes.Unavailable)
	srv.FailNextRefreshes(5, codes.Internal)
	srv.FailNextRefreshes(0, codes.Internal) // cancels
	if _, err := refresh(t.Context(), c, next.GetRefreshToken()); err != nil {
		t.Errorf("Refresh after cancelling the failures: %v", err)
	}

	if got := srv.Counters(); got.RefreshesOK != 2 || got.RefreshesFailed != 4 {
		t.Errorf("Counters() refreshes ok/failed = %d/%d, want 2/4", got.RefreshesOK, got.RefreshesFailed)
	}
	// Login is not subject to refresh faults.
	srv.FailNextRefreshes(1, codes.Unavailable)
	login(t, c, testserver.DefaultUser, testserver.DefaultPassword)
}

func TestRefreshFailureFunc(t *testing.T) {
	var victim atomic.Value // the refresh token the predicate fails
	victim.Store("")
	srv := testserver.New(testserver.WithRefreshFailureFunc(func(_ context.Context, refreshToken string) error {
		if refreshToken == victim.Load() {
			return status.Error(codes.ResourceExhausted, "quota")
		}
		return nil
	}))
	_, c := start(t, srv)
	a, err := srv.IssueToken("a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := srv.IssueToken("b")
	if err != nil {
		t.Fatal(err)
	}
	victim.Store(a.RefreshToken)

	_, err = refresh(t.Context(), c, a.RefreshToken)
	wantCode(t, "Refresh the predicate picks", err, codes.ResourceExhausted)
	if _, err := refresh(t.Context(), c, b.RefreshToken); err != nil {
		t.Errorf("Refresh the predicate lets through: %v", err)
	}
	if got := srv.Counters(); got.RefreshesOK != 1 || got.RefreshesFailed != 1 {
		t.Errorf("Counters() refreshes ok/failed = %d/%d, want 1/1", got.RefreshesOK, got.RefreshesFailed)
	}
}

// TestRefreshFailureFuncBlocks holds a Refresh inside the predicate until
// the test releases it.
func TestRefreshFailureFuncBlocks(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	srv := testserver.New(testserver.WithRefreshFailureFunc(func(ctx context.Context, _ string) error {
		close(entered)
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}))
	_, c := start(t, srv)
	tok, err := srv.IssueToken("held")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := refresh(t.Context(), c, tok.RefreshToken)
		done <- err
	}()
	<-entered
	select {
	case err := <-done:
		t.Fatalf("Refresh returned (%v) while the predicate was holding it", err)
	default:
	}
	if got := srv.Counters(); got.RefreshesOK != 0 {
		t.Fatalf("Counters().RefreshesOK = %d while held, want 0", got.RefreshesOK)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("Refresh after release: %v", err)
	}
	if got := srv.Counters(); got.RefreshesOK != 1 {
		t.Errorf("Counters().RefreshesOK = %d, want 1", got.RefreshesOK)
	}
}

func TestRefreshFailureFuncPlainError(t *testing.T) {
	srv := testserver.New(testserver.WithRefreshFailureFunc(func(context.Context, string) error {
		return errors.New("boom")
	}))
	_, c := start(t, srv)
	tok, err := srv.IssueToken("x")
	if err != nil {
		t.Fatal(err)
	}
	_, err = refresh(t.Context(), c, tok.RefreshToken)
	wantCode(t, "Refresh failed by a plain error", err, codes.Unknown)
}
