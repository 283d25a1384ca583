package testutil

import (
	"sync"
	"time"
)

// Epoch is a start for a Clock whose tests do not care about the date: far
// from any real token's expiry, and in UTC so that failures print the same
// everywhere.
var Epoch = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// Clock is a clock that moves only by Advance and Set, for the WithClock
// options of tokensource and testserver. Its methods are safe for
// concurrent use; pass the method value c.Now where a func() time.Time is
// wanted.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a Clock that reads start until it is moved.
func NewClock(start time.Time) *Clock { return &Clock{now: start} }

// Now returns the Clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the Clock by d; a negative d moves it back, as a wall clock
// set back by NTP would.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// Set moves the Clock to t.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}
