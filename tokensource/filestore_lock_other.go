//go:build !(darwin || dragonfly || freebsd || illumos || linux || netbsd || openbsd || windows)

package tokensource

import (
	"os"
	"path/filepath"
	"sync"
)

// On platforms without flock or LockFileEx the lock is a mutex per lock
// file in this process: it excludes the FileStores of one process, not
// other processes (see FileStore).
var processLocks sync.Map // absolute lock path → *sync.Mutex

func processLock(f *os.File) *sync.Mutex {
	key, err := filepath.Abs(f.Name())
	if err != nil {
		key = f.Name()
	}
	mu, _ := processLocks.LoadOrStore(key, new(sync.Mutex))
	return mu.(*sync.Mutex)
}

func tryLockFile(f *os.File) (bool, error) { return processLock(f).TryLock(), nil }

func unlockFile(f *os.File) { processLock(f).Unlock() }

func replaceFile(oldpath, newpath string) error { return os.Rename(oldpath, newpath) }
