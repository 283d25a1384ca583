package tokensource

import (
	"context"
	"time"
)

// trigger is why a flight starts.
type trigger uint8

const (
	demand       trigger = iota // a caller needs a token and the current one is not valid
	rejection                   // Source.Refresh of the current, still valid, token: a server rejected it
	early                       // the early window: a background refresh
	consultation                // a rejection the Source may not refresh for (storm guard, backoff): see runConsult
)

// rateLimitedUnlock answers a forced refresh of the valid current token st
// that the storm guard holds back, and unlocks s.mu, which the caller holds.
// Without a Coordinator the answer is st's token, unchanged. With one, a
// consultation asks the fleet's record first: a peer may have committed a
// token newer than the rejected one, and handing that back is what keeps a
// member from sending a rejected token while a valid one is committed.
func (s *Source) rateLimitedUnlock(ctx context.Context, st *state, now time.Time) (*Token, error) {
	s.rateLimited.Add(1)
	var f *flight
	if s.coord != nil {
		f = s.startLocked(ctx, st, consultation, nil)
		f.waiters++
	}
	s.mu.Unlock()
	s.log.Debug("tokensource: forced refresh rate-limited", "min_interval", s.opts.minRefreshInterval)
	s.emit(Event{Kind: RefreshRateLimited, Time: now, Forced: true, Generation: st.gen})
	if f == nil {
		return st.tok, nil
	}
	return s.await(ctx, f)
}

// runConsult obtains the token of a consultation: the fleet's record when a
// peer has replaced prev there, and otherwise no token at all (declined):
// the flight's declined error, or prev itself for a rate-limited refresh.
// The Refresher is not called, so the storm guard is not spent.
func (s *Source) runConsult(wctx context.Context, f *flight, prev *Token) result {
	if rec, err := s.loadRecord(wctx); err == nil {
		if cand, seed, need := s.decide(rec, prev); !need && !seed {
			return s.adopt(cand, prev, rec.Version)
		}
	}
	if f.declined != nil {
		return result{kind: declined, err: f.declined}
	}
	return result{kind: declined, tok: prev}
}
