package tokensource

import "time"

// forcedBurst is how many forced refreshes the storm guard allows back to
// back before it limits them to one per WithMinRefreshInterval.
const forcedBurst = 2

// stormGuard limits forced refreshes (Source.Refresh of a rejected token)
// with a token bucket: it holds up to forcedBurst refreshes and refills at
// one per interval. A server that rejects every fresh token thus gets about
// one refresh per interval, while two separate revocations in quick
// succession are both refreshed. Only a forced refresh in which the
// Refresher ran spends from it: adopting a peer's token costs the
// authorization server nothing. The zero value is a full bucket.
type stormGuard struct {
	used float64   // refreshes spent and not yet refilled, as of at
	at   time.Time // when used was last brought up to date
}

// allows reports whether a forced refresh may start at now.
func (g *stormGuard) allows(now time.Time, interval time.Duration) bool {
	return interval <= 0 || g.refill(now, interval)+1 <= forcedBurst
}

// spend records a forced refresh in which the Refresher ran, at now.
func (g *stormGuard) spend(now time.Time, interval time.Duration) {
	if interval > 0 {
		g.used, g.at = g.refill(now, interval)+1, now
	}
}

// refill returns what is spent at now.
func (g *stormGuard) refill(now time.Time, interval time.Duration) float64 {
	if g.used == 0 {
		return 0
	}
	return max(g.used-float64(now.Sub(g.at))/float64(interval), 0)
}
