// Package faultpoint lets the project's fault-injection tests (the chaos
// campaign in e2e) stall a component at a point no signal can reach
// reliably: inside a FileStore's critical section, with the lock file's
// flock held. It is not part of the API. With no hook installed, which is
// always the case outside those tests, a point costs one atomic load.
package faultpoint

import "sync/atomic"

var fileStoreLocked atomic.Pointer[func(lockPath string)]

// SetFileStoreLocked installs f, called by every FileStore critical section
// right after it acquired the flock on lockPath and before it reads
// anything, on the goroutine that holds the lock. A stall in f is a stall
// with the lock held. nil removes the hook.
func SetFileStoreLocked(f func(lockPath string)) {
	if f == nil {
		fileStoreLocked.Store(nil)
		return
	}
	fileStoreLocked.Store(&f)
}

// FileStoreLocked runs the installed hook, if any.
func FileStoreLocked(lockPath string) {
	if f := fileStoreLocked.Load(); f != nil {
		(*f)(lockPath)
	}
}
