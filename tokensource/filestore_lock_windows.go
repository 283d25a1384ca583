//go:build windows

package tokensource

import (
	"errors"
	"os"
	"time"

	"golang.org/x/sys/windows"
)

// lockOffsetHigh places the locked byte at offset 1<<62, far beyond the end
// of the lock file: LockFileEx locks are mandatory, and waiters read the
// lease record without the lock (see docs/design.md).
const lockOffsetHigh = 1 << 30

// tryLockFile takes an exclusive LockFileEx lock on f without blocking;
// false when another handle holds it. Like flock, and unlike fcntl on Unix,
// the lock belongs to the handle, so two handles of one process exclude
// each other.
func tryLockFile(f *os.File) (bool, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return false, err
	}
	var lerr error
	if err := rc.Control(func(fd uintptr) {
		ol := windows.Overlapped{OffsetHigh: lockOffsetHigh}
		lerr = windows.LockFileEx(windows.Handle(fd),
			windows.LOCKFILE_EXCLUSIVE_LOCK|windows.LOCKFILE_FAIL_IMMEDIATELY, 0, 1, 0, &ol)
	}); err != nil {
		return false, err
	}
	if errors.Is(lerr, windows.ERROR_LOCK_VIOLATION) || errors.Is(lerr, windows.ERROR_IO_PENDING) {
		return false, nil
	}
	return lerr == nil, lerr
}

// unlockFile releases the lock of f. Closing the handle would release it
// too, but Windows does that only eventually.
func unlockFile(f *os.File) {
	if rc, err := f.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) {
			ol := windows.Overlapped{OffsetHigh: lockOffsetHigh}
			_ = windows.UnlockFileEx(windows.Handle(fd), 0, 1, 0, &ol)
		})
	}
}

// replaceFile renames oldpath to newpath, replacing it, retried for up to a
// second while Windows refuses because a reader has the file open (Go opens
// files without FILE_SHARE_DELETE).
func replaceFile(oldpath, newpath string) error {
	deadline := time.Now().Add(time.Second)
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		err := os.Rename(oldpath, newpath)
		if err == nil || time.Now().After(deadline) ||
			!(errors.Is(err, windows.ERROR_ACCESS_DENIED) || errors.Is(err, windows.ERROR_SHARING_VIOLATION)) {
			return err
		}
		time.Sleep(delay)
	}
}
