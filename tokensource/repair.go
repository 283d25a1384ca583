package tokensource

import (
	"context"
	"fmt"
	"time"
)

// A coordinated Source knows the version at which the fleet's shared record
// holds its token (adopted at the record's version, committed at the next).
// When the record is behind that version, a commit of this Source did not
// land (the coordinator did not answer) or the record went back (lost with a
// Redis restart, rolled back by a failover): its refresh token may already be
// spent, and presenting it would look like token theft to the authorization
// server. So the Source puts its token back (Restorer) before anyone
// refreshes from the stale record: at once in its own flights, and from a
// periodic check for the members whose tokens are still valid and would
// otherwise not look. A member about to present a refresh token from a
// record that may have lost a newer one waits for those restores first
// (waitForCandidates).

// fleetToken is a coordinated Source's token with the version at which the
// fleet's shared record holds it, or is to hold it (ver 0: neither).
// pending: its commit failed (the coordinator did not answer, or did not
// confirm the write's replication), and no Restore has succeeded since.
type fleetToken struct {
	tok     *Token
	ver     uint64
	pending bool
}

// holdLocked makes tok this Source's token in the fleet, at version ver of
// the shared record (0: none), committed there unless saveErr says the
// write failed: then it is pending, and the repair check puts it back at
// once. s.mu must be held.
func (s *Source) holdLocked(tok *Token, ver uint64, saveErr error) {
	s.fleet = fleetToken{tok: tok, ver: ver, pending: saveErr != nil}
	if ver == 0 {
		return
	}
	s.startRepairLocked()
	if saveErr == nil {
		s.noteLocked(ver)
		return
	}
	select {
	case s.repairNow <- struct{}{}:
	default:
	}
}

// noteLocked records v as a version of the fleet's record this Source has
// read (or committed). s.mu must be held.
func (s *Source) noteLocked(v uint64) {
	s.seen = max(s.seen, v)
}

// startRepairLocked starts the periodic check of the fleet's record, once.
// s.mu must be held.
func (s *Source) startRepairLocked() {
	if s.restorer == nil || s.opts.repairInterval <= 0 || s.stopRepair != nil || s.closed {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.stopRepair = cancel
	s.wg.Go(func() { s.repairLoop(ctx) })
}

// repairLoop checks the fleet's record every repair interval until ctx ends
// (Close), four times as often while a check fails, and at once when a
// commit of this Source has failed (repairNow): a peer that takes the lease
// over waits only the repair grace for it.
func (s *Source) repairLoop(ctx context.Context) {
	t := time.NewTimer(s.opts.repairInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.repairNow:
		}
		next := s.opts.repairInterval
		if !s.checkRecord(ctx) {
			next /= 4
		}
		t.Reset(next)
	}
}

// checkRecord reads the fleet's record and restores this Source's token if
// the record is behind it, or if its commit is pending. It reports whether
// the record holds that token or a newer one now; false when the
// Coordinator did not answer or refused. It asks even a Coordinator known
// to be down (a bounded probe), because the restores must land within the
// repair grace of the Coordinator answering again, before a peer presents a
// refresh token from the stale record; an answer also ends the known-down
// state for the callers. A pending commit is restored even when the record
// shows its version, because the write may not have been confirmed (a
// replica acknowledgement that did not come: the Coordinator waits for it
// again).
func (s *Source) checkRecord(ctx context.Context) bool {
	s.mu.Lock()
	ft := s.fleet
	s.mu.Unlock()
	if ft.ver == 0 {
		return true
	}
	rec, err := s.probeRecord(ctx)
	if err != nil {
		return false
	}
	if rec.Version >= ft.ver && !ft.pending {
		return true
	}
	rctx, cancel := context.WithTimeout(ctx, coordinatorProbe)
	defer cancel()
	return s.restore(rctx, ft, rec)
}

// restoreBehind restores this Source's token if rec, just read, is behind
// it, and reports whether it tried (the caller reads the record again).
func (s *Source) restoreBehind(ctx context.Context, rec Record) bool {
	ft, behind := s.behind(rec)
	if !behind {
		return false
	}
	rctx, cancel := context.WithTimeout(ctx, coordinatorProbe)
	defer cancel()
	s.restore(rctx, ft, rec)
	return true
}

// behind reports whether rec is older than this Source's token ft, which a
// restore can put back.
func (s *Source) behind(rec Record) (ft fleetToken, behind bool) {
	if s.restorer == nil {
		return ft, false
	}
	s.mu.Lock()
	ft = s.fleet
	s.mu.Unlock()
	return ft, ft.ver > rec.Version
}

// errStillBehind fails a flight that found the record still behind its
// Source's token after putting the token back: the Coordinator did not
// take the write.
var errStillBehind = fmt.Errorf("tokensource: the fleet's record is behind this member's token and putting the token back failed: %w",
	ErrCoordinatorUnavailable)

// restore puts ft back into the fleet's record rec, which is behind it. It
// reports whether the record holds ft or a newer token now.
func (s *Source) restore(ctx context.Context, ft fleetToken, rec Record) bool {
	wrote, err := s.restorer.Restore(ctx, Record{Token: ft.tok.clone(), Version: ft.ver})
	if err != nil {
		s.log.Warn("tokensource: putting this member's token back into the fleet's record failed; trying again",
			"error", err, "record_version", rec.Version, "version", ft.ver)
		return false
	}
	if wrote {
		s.log.Warn("tokensource: put this member's token back into the fleet's record, which was behind it",
			"record_version", rec.Version, "version", ft.ver)
		s.emit(Event{Kind: TokenRestored, Time: s.now(), Generation: s.cur.Load().gen})
	}
	s.mu.Lock()
	if wrote {
		s.restoredAt = s.now()
	}
	s.noteLocked(ft.ver) // the record holds ft, or a newer token
	if s.fleet.tok == ft.tok {
		s.fleet.pending = false
	}
	s.mu.Unlock()
	return true
}

// repairGrace is how long a member waits for restores before it presents a
// refresh token from a record that may have lost a newer one: one check of
// every member, and a quarter more for the slowest.
func (s *Source) repairGrace() time.Duration {
	return s.opts.repairInterval + s.opts.repairInterval/4
}

// mayHaveLost reports whether the record under lease, from which this
// Source is about to present presenting's refresh token, may have lost a
// newer token a live member holds: the lease was taken over from a holder
// that stopped renewing it (its commit may be pending), the record is empty
// or older than a version this Source has seen, or it was put back after a
// loss, by this Source (restored) or a peer (Record.Restored), and a member
// may hold a newer token still: a holder whose commit failed with the loss,
// and whose lease was lost with it. Or the Coordinator failed in the last
// recentOutage: a failover to a replica that missed both the last commit and
// its lease looks like an ordinary record to a member that never read the
// newer version, and only the grace gives its holder time to restore it.
func (s *Source) mayHaveLost(lease Lease, presenting *Token, restored bool) bool {
	if s.restorer == nil || s.opts.repairInterval <= 0 || presenting == nil || presenting.RefreshToken == "" {
		return false // without a refresh token to present there is nothing to spend twice
	}
	rec := lease.Record()
	s.mu.Lock()
	defer s.mu.Unlock()
	outage := !s.coordFailedAt.IsZero() && s.now().Sub(s.coordFailedAt) < recentOutage
	return restored || rec.Restored || lease.TakenOver() || rec.Version == 0 || rec.Version < s.seen || outage
}

// graceMark is what a flight remembers of the last repair grace it waited:
// when it ended, and the record under the lease it waited on.
type graceMark struct {
	at       time.Time // zero: none yet
	ver      uint64
	restored bool
}

// markGrace records a grace that has just ended under lease.
func (s *Source) markGrace(lease Lease) graceMark {
	rec := lease.Record()
	return graceMark{at: s.now(), ver: rec.Version, restored: rec.Restored}
}

// graceDue reports whether a flight about to present presenting's refresh
// token under lease waits the repair grace first (see mayHaveLost): the
// first time, and again only if it met a new loss after the grace it waited
// (last), because a grace gives the members time to put back what one loss
// took. A new loss is a record older than the one the grace was waited on,
// or put back since at the same version; a failure of the Coordinator seen
// since; or a restore by this Source since. A flight that waited on a
// peer's lease through a Redis restart may see any one of them alone: the
// restart looks like an empty record if nobody has restored yet, and like
// an ordinary restored one if this Source restored it.
func (s *Source) graceDue(lease Lease, presenting *Token, restored bool, last graceMark) bool {
	if !s.mayHaveLost(lease, presenting, restored) {
		return false
	}
	if last.at.IsZero() {
		return true
	}
	if rec := lease.Record(); rec.Version < last.ver || (rec.Version == last.ver && rec.Restored && !last.restored) {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.coordFailedAt.After(last.at) || s.restoredAt.After(last.at)
}

// recentOutage is how long after a failure of the Coordinator a member still
// waits the repair grace before presenting a refresh token: the failure may
// have been a failover that rolled the record back.
const recentOutage = 2 * coordinatorRetry

// waitForCandidates waits the repair grace under lease, then reports
// whether the record has moved on meanwhile (a member restored a newer
// token, or a previous holder's pending commit landed).
func (s *Source) waitForCandidates(wctx context.Context, lease Lease) (moved bool, err error) {
	v := lease.Record().Version
	s.log.Info("tokensource: waiting for a newer token from the fleet before presenting a refresh token",
		"record_version", v, "taken_over", lease.TakenOver(), "grace", s.repairGrace())
	t := time.NewTimer(s.repairGrace())
	defer t.Stop()
	select {
	case <-wctx.Done():
		return false, wctx.Err()
	case <-t.C:
	}
	rec, err := s.loadRecord(wctx)
	if err != nil {
		return false, err
	}
	return rec.Version != v, nil
}
