package tokensource

import (
	"context"
	"time"
)

// The look for a peer: how a forced refresh of a token older than the
// fleet's record decides between the record's token and the one a peer is
// refreshing to (see runCoordinated).

// lookForPeer reports whether a flight that found a record token newer
// than the one it replaces should first look for a peer refreshing that
// token, under the lease, instead of adopting it at once. A rejected token
// older than the record's means this member missed a rotation, while its
// server revoked what it held: if the revocation hit the record's token
// too (two revocations in a row), a peer is replacing it, and the retry of
// a call that adopted it would be rejected with no retry left. The look
// waits for that peer's commit for peerLook at most (the peer may be
// paused, or only refreshing early), then adopts the newest token in the
// record; with no peer refreshing, the lease is taken and released and the
// record's token adopted. One look per flight.
func lookForPeer(f *flight, waited bool) bool {
	return f.forced && !waited
}

// peerLook bounds a look for a peer (lookForPeer): a peer's refresh
// normally takes well under it.
const peerLook = time.Second

// waitForPeer waits for the commit of the peer holding the lease over
// version v, or for its lease to end; within peerLook only when the flight
// could adopt the record's token instead (look).
func (s *Source) waitForPeer(wctx context.Context, v uint64, look bool) error {
	if !look {
		return s.coord.Wait(wctx, v)
	}
	lctx, cancel := context.WithTimeout(wctx, peerLook)
	defer cancel()
	return s.coord.Wait(lctx, v)
}
