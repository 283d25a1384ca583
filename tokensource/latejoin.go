package tokensource

import "context"

// A rejection that joins a refresh begun before it: see "One shared
// refresh" in docs/contract.md.
//
// A server rejects a token that is still valid because it was revoked, at
// some instant before the rejection reached this Source. A refresh that was
// already running then (the early window's background refresh, say) may
// have obtained its token before that instant, so the same revocation may
// have hit it, and the rejected call's only retry would be rejected too.
// Only a token from a Refresher call made after the rejection arrived is
// certainly newer than the revocation. Two refreshes must never run side by
// side (they would present one refresh token twice), so the rejected
// callers wait for the running refresh and then, unless its token came from
// a Refresher call that began after they joined, share one forced refresh
// of that token before retrying.

// joinedLate reports whether a rejection of the current token that finds f
// in flight must refresh once more after it: f was not itself started by a
// rejection (a forced refresh begins after some server rejected the token,
// so after its revocation), nor is it SetToken's (no ID), which installs a
// login the application chose. s.mu must be held.
func joinedLate(f *flight) bool {
	return f != nil && !f.forced && f.id != 0
}

// refreshAfterUnlock answers a rejection of the current token while a
// refresh it joins late (see joinedLate) runs: it waits for that refresh,
// then refreshes its token once more unless its Refresher call began after
// the rejection arrived. s.mu must be held; refreshAfterUnlock unlocks it.
func (s *Source) refreshAfterUnlock(ctx context.Context) (*Token, error) {
	f, err := s.joinLocked(ctx, rejection) // s.flight, or an error
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	before := f.called.Load() // ordered with the flight's call by the atomic
	s.mu.Unlock()
	tok, err := s.await(ctx, f)
	if err != nil || (f.refreshed && !before) {
		return tok, err
	}
	s.log.Debug("tokensource: the rejected token's refresh began before the rejection; refreshing its result once more")
	return s.forceRefresh(ctx, tok, false)
}
