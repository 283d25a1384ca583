package tokensource

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/faultpoint"
)

// The fault-injection hook runs inside a FileStore's critical section: while
// it runs, no other FileStore on the path gets the lock.
func TestFileStoreFaultpointHoldsTheLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token.json")
	a, b := NewFileStore(path), NewFileStore(path)
	var lockedOut error
	faultpoint.SetFileStoreLocked(func(lockPath string) {
		if lockPath != path+".lock" {
			t.Errorf("hook called for %q, want %q", lockPath, path+".lock")
		}
		faultpoint.SetFileStoreLocked(nil) // once: b's attempt below must not recurse
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		lockedOut = b.locked(ctx, func(*os.File) error { return nil })
	})
	t.Cleanup(func() { faultpoint.SetFileStoreLocked(nil) })
	l, err := a.TryLease(t.Context())
	if err != nil || l == nil {
		t.Fatalf("TryLease = %v, %v", l, err)
	}
	_ = l.Release(t.Context())
	if !errors.Is(lockedOut, context.DeadlineExceeded) {
		t.Errorf("another FileStore's critical section during the hook: %v, want it kept out until its deadline", lockedOut)
	}
}
