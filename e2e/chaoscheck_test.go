package e2e_test

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// The campaign's checkers. Definitions:
//
//   - A fault's window is [start, end + the recovery allowance]
//     (-chaos.recovery, 1.5 s): start and end are when the fault began and
//     ended (a kill: from the SIGKILL to the restarted process's start; a
//     stop: SIGSTOP to SIGCONT; a force-expiry: the instant of the call; a
//     FileStore stall: the sleep with the flock held, as the member reported
//     it; a Redis kill: from the SIGKILL to the restarted server answering
//     PING; a Cluster master kill or a Sentinel failover: from the SIGKILL
//     to the killed node back as a replica). A member fault (kill, stop)
//     scopes its window to the member it hit, unless that member held the
//     fleet's lease when it struck (the fleet waits for the lease: see
//     heldLease); every other fault's window covers the fleet. A lost session
//     (below) opens a fleet window until the campaign's relogin.
//   - A failed call belongs to a window when the call's span [start, end]
//     overlaps it, and is attributed to the overlapping window that began
//     last; a failed call overlapping none is "outside" (bound: 0).
//   - Failed calls per force-expiry: those attributed to each force-expiry
//     (bound: 20 for every one, except a force-expiry whose window overlaps
//     a store outage, a FileStore stall or a lost session, reported apart).
//   - Reuse: refresh tokens presented a second time, as the server detected
//     them (bound: 0). Sessions lost: episodes that began with a reuse or a
//     member requiring re-authentication, each ended by a relogin (bound: 0).
//     A reuse no coordination can prevent is reported apart and not counted:
//     the member that first presented the refresh token, the only one to
//     receive its rotation, was killed before it wrote anything to the
//     store, within 1 s of presenting it or while the store was down or
//     stalled, or was stopped for longer than the lease TTL and the repair
//     grace before writing it, or exited at the campaign's end (its Source
//     closed) before writing it, within 1 s of presenting it or with the
//     store down or in its recovery allowance; or its committed rotation
//     was lost by a fault of the store that began after the commit, and
//     every member that held it (committed or sent it) exited before the
//     store could take a restore (campaign.unfenceable); so is the lost
//     session it began.
//   - Stale sends: requests the server rejected for a member that had been
//     told, at least the stale allowance (-chaos.stale-allowance, 0.5 s)
//     earlier, that this very token was rejected, while another token was
//     committed to the store at least that allowance earlier and still valid
//     at the server (not expired, issued after every force-expiry and lost
//     session before the request, not wiped with the store since). Requests
//     while the store is down, and for the allowance after, are not judged:
//     a member cannot read what is committed then (bound: 0).
//   - Grants per token lifetime: the tokens the server issued (refreshes and
//     logins) per 1.8 s of the campaign.

// window is the span a fault, or a lost session, may fail calls in.
type window struct {
	label    string
	member   int // -1: the fleet
	from, to time.Time
	fault    *faultRec // nil for a lost session
}

// kindRow is one line of the summary table.
type kindRow struct {
	label                      string
	injected, missed           int
	failed, maxPerEvent, stale int
	reuse, lost                int
	perEvent                   []int
	reasons                    map[string]int // failed calls by code and message
}

type chaosReport struct {
	seed      uint64
	store     string
	elapsed   time.Duration
	calls     int64
	failed    int
	rows      map[string]*kindRow
	order     []string
	outside   []failureRec
	reuse     []string // the window each was detected in
	lost      []string
	stale     int
	staleKeys int
	repeats   int      // rejections of a token already rejected for the member at least the allowance before
	rejected  int      // access-token rejections
	inflight  []string // the refreshes in flight at an in-flight fault
	// unfenceable are the reuses that no coordination can prevent (see
	// campaign.unfenceable); they do not count against the bound.
	unfenceable []string
	staleLog    []string
	grants      int64
	refFailed   int64
	expiries    []int // failed calls per force-expiry
	// overBound describes the judged force-expiries over the bound: when,
	// and their failed calls by member.
	overBound []string
	// compoundExpiries are the failed calls of force-expiries that fell in
	// a store outage, a stall or a lost session (see compoundExpiry).
	compoundExpiries []int
	workerErr        []string
	sumStats         map[string]uint64
	start            time.Time
	faults           []*faultRec
}

const outsideLabel = "(outside windows)"

func (c *campaign) analyze() *chaosReport {
	c.mu.Lock()
	defer c.mu.Unlock()
	rep := &chaosReport{seed: c.seed, store: c.topo.name, elapsed: c.end.Sub(c.start), rows: map[string]*kindRow{},
		sumStats: map[string]uint64{}, start: c.start, faults: c.faults}
	row := func(label string) *kindRow {
		r := rep.rows[label]
		if r == nil {
			r = &kindRow{label: label}
			rep.rows[label] = r
			rep.order = append(rep.order, label)
		}
		return r
	}
	recovery := *chaosRecovery
	var wins []window
	for _, f := range c.faults {
		r := row(f.label())
		if f.missed != "" || f.start.IsZero() {
			r.missed++
			continue
		}
		r.injected++
		member := f.member
		if member >= 0 && c.heldLease(f.target, f.start) {
			member = -1 // the fleet waits for its lease: see heldLease
		}
		wins = append(wins, window{label: f.label(), member: member, from: f.start, to: f.end.Add(recovery), fault: f})
	}
	for _, ep := range c.episodes {
		end := ep.end
		if end.IsZero() {
			end = c.end
		}
		wins = append(wins, window{label: "session-lost", member: -1, from: ep.start, to: end.Add(recovery)})
	}
	attribute := func(member int, s, e time.Time) *window {
		var best *window
		for i := range wins {
			w := &wins[i]
			if member >= 0 && w.member >= 0 && w.member != member {
				continue
			}
			if w.from.After(e) || w.to.Before(s) {
				continue
			}
			if best == nil || w.from.After(best.from) {
				best = w
			}
		}
		return best
	}
	during := func(member int, at time.Time) string {
		var ls []string
		for i := range wins {
			w := &wins[i]
			if (member < 0 || w.member < 0 || w.member == member) && !w.from.After(at) && !w.to.Before(at) {
				l := w.label
				if w.member >= 0 {
					l += fmt.Sprintf(" of member %d", w.member)
				}
				ls = append(ls, fmt.Sprintf("%s (+%.3fs)", l, w.from.Sub(c.start).Seconds()))
			}
		}
		if len(ls) == 0 {
			return outsideLabel
		}
		return strings.Join(ls, ", ")
	}
	label := func(w *window) string {
		if w == nil {
			return outsideLabel
		}
		return w.label
	}

	// Calls and failures.
	for _, p := range c.procs {
		n, summarized := p.callCount()
		rep.calls += n
		if summarized {
			p.mu.Lock()
			st := p.summary.Stats
			p.mu.Unlock()
			if st != nil {
				rep.sumStats["refreshes"] += st.Refreshes
				rep.sumStats["adopted"] += st.Adopted
				rep.sumStats["rate-limited"] += st.RateLimited
				rep.sumStats["refresh failures"] += st.Failures
				rep.sumStats["store failures"] += st.StoreFailures
			}
		} else if !c.wasKilled(p) {
			rep.workerErr = append(rep.workerErr, fmt.Sprintf("worker %s ended without a summary (%v)\n%s",
				p.member, p.cmd.ProcessState, p.stderr))
		}
	}
	perFault := map[*faultRec]int{}
	faultCalls := map[*faultRec][]failureRec{}
	for _, fl := range c.failures {
		rep.failed++
		w := attribute(fl.idx, fl.start, fl.end)
		if fl.reauth {
			// A call failed for want of a session belongs to the lost
			// session, whatever fault began since.
			if lw := lostWindow(wins, fl.start, fl.end); lw != nil {
				w = lw
			}
		}
		r := row(label(w))
		r.failed++
		if r.reasons == nil {
			r.reasons = map[string]int{}
		}
		r.reasons[fl.code+": "+fl.msg]++
		if w == nil {
			rep.outside = append(rep.outside, fl)
		} else if w.fault != nil {
			perFault[w.fault]++
			faultCalls[w.fault] = append(faultCalls[w.fault], fl)
		}
	}
	for _, f := range c.faults {
		if f.missed != "" || f.start.IsZero() {
			continue
		}
		r := row(f.label())
		n := perFault[f]
		r.perEvent = append(r.perEvent, n)
		r.maxPerEvent = max(r.maxPerEvent, n)
		if f.kind == faultExpire {
			if compoundExpiry(wins, f) {
				rep.compoundExpiries = append(rep.compoundExpiries, n)
			} else {
				rep.expiries = append(rep.expiries, n)
				if n > chaosMaxPerExpiry {
					rep.overBound = append(rep.overBound, c.describeCalls(f, faultCalls[f]))
				}
			}
		}
	}

	// Reuse and lost sessions.
	unfenceableAt := map[int64]bool{}
	for _, u := range c.reuses {
		if why := c.unfenceable(u); why != "" {
			unfenceableAt[u.at.UnixNano()] = true
			rep.unfenceable = append(rep.unfenceable, fmt.Sprintf("+%.3fs by member %s: %s", u.at.Sub(c.start).Seconds(), u.member, why))
			continue
		}
		w := attribute(memberIndex(u.member), u.at, u.at)
		row(label(w)).reuse++
		first := "never seen before"
		if !u.first.at.IsZero() {
			first = fmt.Sprintf("first presented by member %s at +%.3fs", u.first.member, u.first.at.Sub(c.start).Seconds())
			if ended, ok := c.ended[u.first.member]; ok {
				first += fmt.Sprintf(", which exited at +%.3fs", ended.Sub(c.start).Seconds())
			}
		}
		rep.reuse = append(rep.reuse, fmt.Sprintf("+%.3fs by member %s (the refresh token was %s), in the windows of: %s",
			u.at.Sub(c.start).Seconds(), u.member, first, during(-1, u.at)))
	}
	for _, ep := range c.episodes {
		if unfenceableAt[ep.start.UnixNano()] {
			continue // began with an unfenceable reuse
		}
		// The episode's own window is the latest to begin: look just
		// before it.
		w := attribute(-1, ep.start.Add(-time.Nanosecond), ep.start.Add(-time.Nanosecond))
		row(label(w)).lost++
		rep.lost = append(rep.lost, fmt.Sprintf("+%.3fs %s, in the windows of: %s", ep.start.Sub(c.start).Seconds(), ep.why,
			during(-1, ep.start.Add(-time.Nanosecond))))
	}

	rep.rejected = len(c.rejections)
	c.staleSends(rep, row, attribute, label)
	for _, p := range c.inflightBy {
		rep.inflight = append(rep.inflight, fmt.Sprintf("+%.3fs by member %s", p.at.Sub(c.start).Seconds(), p.member))
	}

	counters := c.srv.Counters()
	rep.grants = counters.RefreshesOK + counters.Logins
	rep.refFailed = counters.RefreshesFailed
	return rep
}

// unfenceable says why reuse u is one no coordination can prevent, or "":
// the rotation died with every member that held it, a loss the
// documentation names as possible (killedBeforeWriting, closedAtEnd,
// lostWithHolders), or its holder was paused past what the lease and the
// repair grace fence (stoppedPastGrace).
func (c *campaign) unfenceable(u reuseRec) string {
	if u.first.at.IsZero() {
		return ""
	}
	for _, rule := range []func(reuseRec) string{c.killedBeforeWriting, c.closedAtEnd, c.lostWithHolders, c.stoppedPastGrace} {
		if why := rule(u); why != "" {
			return why
		}
	}
	return ""
}

// killedBeforeWriting says why reuse u is unfenceable, or "": the member
// that first presented the refresh token (and so was the only one to
// receive its rotation) was killed before it wrote anything to the store,
// within unfenceableWithin of presenting it or while the store could take
// no write (or killed with the request in flight, just before the server
// received it), and the reuse came after. A member stopped instead is
// alive: its pause counts against the bound unless it outlasted the lease
// and the repair grace (stoppedPastGrace).
func (c *campaign) killedBeforeWriting(u reuseRec) string {
	p := u.first
	for _, f := range c.faults {
		// A kill just before the server saw the request counts too: the
		// request was in flight, and its rotation went to a dead process.
		if f.kind != faultKill || f.target != p.member || f.start.Before(p.at.Add(-unfenceableWithin)) || f.start.After(u.at) {
			continue
		}
		for _, w := range c.writes {
			if strings.HasPrefix(w.by, p.member+" ") && w.at.After(p.at) && w.at.Before(f.start) {
				return ""
			}
		}
		// It had no time to write: killed within a commit's time (the
		// refresh latency, a commit, a pending commit's first retry), or
		// while the store could take no write from it.
		if f.start.Sub(p.at) > unfenceableWithin && !c.storeUnavailable(p.at, f.start) {
			return ""
		}
		return fmt.Sprintf("member %s presented the refresh token at +%.3fs (as the server received it) and was killed at +%.3fs before it wrote anything to the store",
			p.member, p.at.Sub(c.start).Seconds(), f.start.Sub(c.start).Seconds())
	}
	return ""
}

// closedAtEnd says why reuse u comes from the campaign's own shutdown, or
// "": the member that first presented the refresh token stopped calling at
// the campaign's end and exited (closing its Source, which ends the repair
// that would have put a pending commit into the store) before the reuse,
// having written nothing to the store since presenting, and it exited
// within unfenceableWithin of presenting or while the store could take no
// write (an outage, until the recovery allowance after it). Its rotation
// left with it: every member holding the newest token was gone, the loss
// the documentation names; the peers still finishing their last calls
// then present the older token. A holder that outlived the outage and its
// recovery allowance without its commit landing is not excused.
func (c *campaign) closedAtEnd(u reuseRec) string {
	p := u.first
	ended, ok := c.ended[p.member]
	if !ok || ended.Before(c.end) || ended.After(u.at) || ended.Before(p.at) {
		return "" // killed during the campaign (judged above), or alive at the reuse
	}
	for _, w := range c.writes {
		if strings.HasPrefix(w.by, p.member+" ") && w.at.After(p.at) && !w.at.After(ended) {
			return ""
		}
	}
	if ended.Sub(p.at) > unfenceableWithin && !c.storeRecovering(p.at, ended) {
		return ""
	}
	return fmt.Sprintf("member %s presented the refresh token at +%.3fs (as the server received it) and exited at the campaign's end, at +%.3fs, with the store down or recovering and nothing written to it",
		p.member, p.at.Sub(c.start).Seconds(), ended.Sub(c.start).Seconds())
}

// lostWithHolders says why reuse u is the loss the documentation names, or
// "": the member that first presented the refresh token committed its
// rotation, a fleet-wide fault of the store that can drop an acknowledged
// write (faultKind.lossy) began after that commit and lost it (the reuse
// shows the record went back), nobody wrote it again,
// and every member that held it (its committer, and every member that sent
// it) exited before the reuse while that fault kept restores out of the
// store (down, or in its recovery allowance). No live member held the
// newest token, so none could put it back: a member alive past the fault's
// recovery allowance without restoring it is not excused.
func (c *campaign) lostWithHolders(u reuseRec) string {
	p := u.first
	var commit *writeRec
	for i := range c.writes {
		if w := &c.writes[i]; strings.HasPrefix(w.by, p.member+" ") && w.at.After(p.at) {
			commit = w
			break
		}
	}
	if commit == nil {
		return ""
	}
	var lost *faultRec
	for _, f := range c.faults {
		if f.member < 0 && f.kind.lossy[f.sched.variant] && f.missed == "" && !f.start.IsZero() && !f.start.Before(commit.at) && f.start.Before(u.at) {
			lost = f
			break
		}
	}
	if lost == nil {
		return ""
	}
	holders := map[string]bool{p.member: true}
	for _, w := range c.writes {
		if w.fp == commit.fp {
			if w.at.After(lost.start) {
				return "" // written again after the loss
			}
			holders[strings.Fields(w.by)[0]] = true
		}
	}
	for m := range c.uses[commit.fp] {
		holders[m] = true
	}
	names := make([]string, 0, len(holders))
	for m := range holders {
		ended, ok := c.ended[m]
		if !ok || ended.After(u.at) || ended.After(lost.end.Add(*chaosRecovery)) {
			return ""
		}
		names = append(names, fmt.Sprintf("%s at +%.3fs", m, ended.Sub(c.start).Seconds()))
	}
	slices.Sort(names)
	return fmt.Sprintf("member %s presented the refresh token at +%.3fs and committed its rotation at +%.3fs, which the %s from +%.3fs lost; every member that held it exited before the store took a restore (%s)",
		p.member, p.at.Sub(c.start).Seconds(), commit.at.Sub(c.start).Seconds(), lost.label(), lost.start.Sub(c.start).Seconds(),
		strings.Join(names, ", "))
}

// storeRecovering reports whether a fleet-wide fault that keeps writes out
// of the store overlaps [from, to] and its window (the recovery allowance
// after its end) still covers to.
func (c *campaign) storeRecovering(from, to time.Time) bool {
	for _, f := range c.faults {
		if f.member < 0 && f.kind != faultExpire && f.missed == "" && !f.start.IsZero() &&
			!f.start.After(to) && !f.end.Before(from) && !f.end.Add(*chaosRecovery).Before(to) {
			return true
		}
	}
	return false
}

// stoppedPastGrace says why reuse u is the pause the documentation names as
// unfenceable, or "": the member that first presented the refresh token was
// stopped before it wrote anything to the store (within unfenceableWithin
// of presenting), stayed stopped longer than the lease's TTL plus the repair
// grace, and the reuse came while it was stopped. Its lease had expired and
// the member that took it over had waited its grace in vain: only a
// rotation grace period at the authorization server covers that pause.
func (c *campaign) stoppedPastGrace(u reuseRec) string {
	p := u.first
	fenced := *chaosLeaseTTL + repairGrace
	for _, f := range c.faults {
		if f.kind != faultStop || f.target != p.member || f.start.Before(p.at) || f.start.Sub(p.at) > unfenceableWithin ||
			f.end.Sub(f.start) <= fenced || u.at.Before(f.start) || u.at.After(f.end) {
			continue
		}
		for _, w := range c.writes {
			if strings.HasPrefix(w.by, p.member+" ") && w.at.After(p.at) && w.at.Before(f.start) {
				return ""
			}
		}
		return fmt.Sprintf("member %s presented the refresh token at +%.3fs and was stopped from +%.3fs for %v, longer than the lease TTL and the repair grace (%v), before it wrote anything to the store",
			p.member, p.at.Sub(c.start).Seconds(), f.start.Sub(c.start).Seconds(), f.end.Sub(f.start).Round(time.Millisecond), fenced)
	}
	return ""
}

// heldLease reports whether member held the fleet's lease at t. A member
// killed or stopped while it holds the lease stalls every member's refresh
// (the lease serialises them) until the lease's TTL ends and the member that
// takes it over has waited the repair grace (2.25 s), and then often a
// second grace for the record the stopped holder restores on resuming: its
// window covers the fleet, as a store outage's does.
func (c *campaign) heldLease(member string, t time.Time) bool {
	for _, s := range c.leases[member] {
		if !s.from.After(t) && (s.to.IsZero() || !s.to.Before(t)) {
			return true
		}
	}
	return false
}

// repairGrace is the Sources' repair grace at the default repair interval
// (tokensource.WithRepairInterval: the interval and a quarter).
const repairGrace = tokensource.DefaultRepairInterval + tokensource.DefaultRepairInterval/4

// describeCalls says when fault f began, which members' calls failed in
// its window (how many, when the first and the last began, when the last
// ended), and which faults struck within 3 s of it: the lead for a
// force-expiry over the bound.
func (c *campaign) describeCalls(f *faultRec, calls []failureRec) string {
	type span struct {
		n                 int
		first, last, ends time.Time
	}
	by := map[string]*span{}
	var members []string
	for _, fl := range calls {
		sp := by[fl.member]
		if sp == nil {
			sp = &span{first: fl.start, last: fl.start, ends: fl.end}
			by[fl.member] = sp
			members = append(members, fl.member)
		}
		sp.n++
		if fl.start.Before(sp.first) {
			sp.first = fl.start
		}
		if fl.start.After(sp.last) {
			sp.last = fl.start
		}
		if fl.end.After(sp.ends) {
			sp.ends = fl.end
		}
	}
	slices.Sort(members)
	rel := func(t time.Time) float64 { return t.Sub(c.start).Seconds() }
	parts := make([]string, 0, len(members))
	for _, m := range members {
		sp := by[m]
		parts = append(parts, fmt.Sprintf("member %s: %d calls begun +%.3fs–+%.3fs, the last ended +%.3fs", m, sp.n, rel(sp.first), rel(sp.last), rel(sp.ends)))
	}
	var near []string
	for _, g := range c.faults {
		if g != f && g.missed == "" && !g.start.IsZero() && g.start.Sub(f.start).Abs() <= 3*time.Second {
			near = append(near, fmt.Sprintf("%s of member %d at +%.3fs–+%.3fs", g.label(), g.member, rel(g.start), rel(g.end)))
		}
	}
	// The writes just before it, and who had sent each token by the end:
	// a member still on an older token when a commit landed shortly before
	// the revocation adopts a token the revocation also hit.
	var writes []string
	for _, w := range c.writes {
		if d := f.start.Sub(w.at); d >= 0 && d <= 2*time.Second {
			senders := slices.Sorted(maps.Keys(c.uses[w.fp]))
			writes = append(writes, fmt.Sprintf("%s at +%.3fs (sent by %s)", w.by, rel(w.at), strings.Join(senders, ", ")))
		}
	}
	return fmt.Sprintf("force-expiry at +%.3fs: %s; writes in the 2 s before it: %s; faults within 3 s: %s",
		rel(f.start), strings.Join(parts, "; "), strings.Join(writes, ", "), strings.Join(near, ", "))
}

// compoundExpiry reports whether force-expiry f's window overlaps the
// window of a fleet-wide fault of another kind, or a lost session: then its
// calls fail for want of a store as much as for want of a token, and the
// per-force-expiry bound does not apply to it. (Two force-expiries close
// together are judged by the bound.)
func compoundExpiry(wins []window, f *faultRec) bool {
	var own *window
	for i := range wins {
		if wins[i].fault == f {
			own = &wins[i]
		}
	}
	if own == nil {
		return false
	}
	for i := range wins {
		w := &wins[i]
		if w.member < 0 && (w.fault == nil || w.fault.kind != faultExpire) && !w.from.After(own.to) && !w.to.Before(own.from) {
			return true
		}
	}
	return false
}

// unfenceableWithin is how soon after presenting a refresh token a member
// may be killed without having written its rotation, the store answering.
const unfenceableWithin = time.Second

// storeUnavailable reports whether a fleet-wide fault that keeps writes out
// of the store (an outage, a FileStore stall) overlaps [from, to].
func (c *campaign) storeUnavailable(from, to time.Time) bool {
	for _, f := range c.faults {
		if f.member < 0 && f.kind != faultExpire && f.missed == "" && !f.start.IsZero() &&
			!f.start.After(to) && !f.end.Before(from) {
			return true
		}
	}
	return false
}

// lostWindow returns the lost session's window that overlaps [s, e], if
// any.
func lostWindow(wins []window, s, e time.Time) *window {
	for i := range wins {
		w := &wins[i]
		if w.fault == nil && !w.from.After(e) && !w.to.Before(s) {
			return w
		}
	}
	return nil
}

// staleSends runs the stale-send checker (see the definitions above).
func (c *campaign) staleSends(rep *chaosReport, row func(string) *kindRow,
	attribute func(int, time.Time, time.Time) *window, label func(*window) string) {
	allow := *chaosStaleAllowance
	rejs := slices.Clone(c.rejections)
	slices.SortStableFunc(rejs, func(a, b rejectionRec) int { return a.at.Compare(b.at) })
	first := map[string]time.Time{}
	seen := map[string]bool{}
	for _, r := range rejs {
		if r.fp == "" || r.member == "" {
			continue
		}
		key := r.member + "/" + r.fp
		told, ok := first[key]
		if !ok {
			first[key] = r.at
			continue
		}
		if r.at.Sub(told) < allow || c.storeDownAt(r.at, allow) {
			continue
		}
		rep.repeats++
		w, ok := c.validCommitted(r.at, r.fp, allow)
		if !ok {
			continue
		}
		rep.stale++
		win := attribute(memberIndex(r.member), r.at, r.at)
		row(label(win)).stale++
		if !seen[key] {
			seen[key] = true
			rep.staleKeys++
			if len(rep.staleLog) < 5 {
				rep.staleLog = append(rep.staleLog, fmt.Sprintf(
					"+%.3fs member %s sent a token rejected for it at +%.3fs (%s); a valid token was committed at +%.3fs by %s; during %s",
					r.at.Sub(c.start).Seconds(), r.member, told.Sub(c.start).Seconds(), r.reason,
					w.at.Sub(c.start).Seconds(), w.by, label(win)))
			}
		}
	}
}

// storeDownAt reports whether the store was down at t or came back less
// than allow before it.
func (c *campaign) storeDownAt(t time.Time, allow time.Duration) bool {
	for _, s := range c.storeDown {
		if !t.Before(s.from) && !t.After(s.to.Add(allow)) {
			return true
		}
	}
	// A kill whose restart is still pending has no span yet.
	for _, w := range c.wipes {
		if !t.Before(w) && !c.restartedAfter(w, t) {
			return true
		}
	}
	return false
}

func (c *campaign) restartedAfter(kill, t time.Time) bool {
	for _, s := range c.storeDown {
		if s.from.Equal(kill) {
			return true
		}
	}
	return false
}

// validCommitted returns a token other than fp that was written to the store
// at least allow before t, not wiped since, and valid at the server at t.
func (c *campaign) validCommitted(t time.Time, fp string, allow time.Duration) (writeRec, bool) {
	var lastWipe time.Time
	for _, w := range c.wipes {
		if !w.After(t) && w.After(lastWipe) {
			lastWipe = w
		}
	}
	for _, w := range c.writes {
		if w.fp == fp || w.at.After(t.Add(-allow)) || !w.at.After(lastWipe) || !w.expiry.After(t) {
			continue
		}
		issued := w.expiry.Add(-chaosTokenTTL)
		valid := true
		for _, inv := range c.invalidations {
			if !inv.from.After(t) && !issued.After(inv.to) {
				valid = false
				break
			}
		}
		if valid {
			return w, true
		}
	}
	return writeRec{}, false
}

func (c *campaign) wasKilled(p *chaosProc) bool {
	// A killed incarnation is one a later incarnation replaced before the
	// end: the slot no longer points at it.
	return c.slots[p.idx].proc != p
}

// memberIndex is the index of member "<index>.<incarnation>", or -1.
func memberIndex(member string) int {
	i, _, _ := strings.Cut(member, ".")
	n, err := strconv.Atoi(i)
	if err != nil {
		return -1
	}
	return n
}

func (r *chaosReport) log(t *testing.T) {
	lifetimes := r.elapsed.Seconds() / chaosTokenTTL.Seconds()
	t.Logf("chaos | seed=%d store=%s: %d calls, %d failed (%d outside fault windows), reuse %d, sessions lost %d, stale sends %d (%d member-token pairs), grants %d (%.2f per %v token lifetime), failed refreshes at the server %d",
		r.seed, r.store, r.calls, r.failed, len(r.outside), len(r.reuse), len(r.lost), r.stale, r.staleKeys,
		r.grants, float64(r.grants)/lifetimes, chaosTokenTTL, r.refFailed)
	t.Logf("chaos | failed calls per force-expiry: %v; in a store outage, a stall or a lost session (not judged): %v",
		r.expiries, r.compoundExpiries)
	t.Logf("chaos | members' stats: %v; access tokens rejected at the server: %d, %d of them again to a member told at least %v before",
		r.sumStats, r.rejected, r.repeats, *chaosStaleAllowance)
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "fault kind\tinjected\tmissed\tfailed calls\tper event (mean)\tmax\tstale sends\treuse\tsessions lost\t")
	order := slices.Clone(r.order)
	slices.Sort(order)
	for _, l := range order {
		row := r.rows[l]
		mean := "-"
		if len(row.perEvent) > 0 {
			mean = strconv.FormatFloat(float64(row.failed)/float64(len(row.perEvent)), 'f', 1, 64)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%d\t%d\t%d\t%d\t\n", l, row.injected, row.missed, row.failed, mean,
			row.maxPerEvent, row.stale, row.reuse, row.lost)
	}
	_ = tw.Flush()
	for _, line := range strings.Split(strings.TrimRight(b.String(), "\n"), "\n") {
		t.Logf("chaos | %s %s", r.store, line)
	}
	for _, l := range order {
		type reason struct {
			what string
			n    int
		}
		var rs []reason
		for what, n := range r.rows[l].reasons {
			rs = append(rs, reason{what, n})
		}
		slices.SortFunc(rs, func(a, b reason) int { return b.n - a.n })
		for _, x := range rs[:min(len(rs), 3)] {
			t.Logf("chaos | %s %s: %d× %s", r.store, l, x.n, x.what)
		}
	}
	for _, u := range r.unfenceable {
		t.Logf("chaos | unfenceable reuse (not counted against the bound): %s", u)
	}
	if len(r.inflight) > 0 {
		t.Logf("chaos | refreshes in flight at in-flight faults: %s", strings.Join(r.inflight, "; "))
	}
	for _, f := range r.faults {
		what := fmt.Sprintf("+%.3fs–+%.3fs", f.start.Sub(r.start).Seconds(), f.end.Sub(r.start).Seconds())
		if f.missed != "" {
			what = "missed: " + f.missed
		}
		t.Logf("chaos | applied %s (member %d): %s", f.label(), f.member, what)
	}
}

// assert fails t with each of the report's violations.
func (r *chaosReport) assert(t *testing.T) {
	for _, v := range r.violations() {
		t.Error(v)
	}
}

// violations checks the checkers' bounds; each violation names the checker,
// the faults involved, the store and the seed.
func (r *chaosReport) violations() []string {
	var out []string
	errorf := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	at := fmt.Sprintf("chaos seed=%d store=%s", r.seed, r.store)
	for _, e := range r.workerErr {
		errorf("%s: %s", at, e)
	}
	if r.calls == 0 {
		errorf("%s: no calls were made", at)
	}
	if len(r.reuse) > 0 {
		errorf("%s: checker refresh-token-reuse = %d, want 0:\n  %s", at, len(r.reuse), strings.Join(r.reuse, "\n  "))
	}
	if len(r.lost) > 0 {
		errorf("%s: checker sessions-lost = %d, want 0:\n  %s", at, len(r.lost), strings.Join(r.lost, "\n  "))
	}
	if n := len(r.outside); n > 0 {
		var lines []string
		for _, f := range r.outside[:min(n, 5)] {
			lines = append(lines, fmt.Sprintf("member %s, call +%.3fs–+%.3fs: %s: %s (last fault before: %s)", f.member,
				f.start.Sub(r.start).Seconds(), f.end.Sub(r.start).Seconds(), f.code, f.msg, r.lastFaultBefore(f.end)))
		}
		errorf("%s: checker failed-calls-outside-fault-windows = %d, want 0; first ones:\n  %s", at, n, strings.Join(lines, "\n  "))
	}
	if m := slices.Max(append([]int{0}, r.expiries...)); m > chaosMaxPerExpiry {
		errorf("%s: checker failed-calls-per-force-expiry: max %d, want <= %d (per force-expiry: %v; not judged, in a store outage, a stall or a lost session: %v):\n  %s",
			at, m, chaosMaxPerExpiry, r.expiries, r.compoundExpiries, strings.Join(r.overBound, "\n  "))
	}
	if r.stale > 0 {
		errorf("%s: checker stale-sends (a member sending a rejected token while a valid one is committed) = %d requests by %d member-token pairs, want 0; first ones:\n  %s",
			at, r.stale, r.staleKeys, strings.Join(r.staleLog, "\n  "))
	}
	return out
}

func (r *chaosReport) lastFaultBefore(t time.Time) string {
	var best *faultRec
	for _, f := range r.faults {
		if f.missed == "" && !f.start.IsZero() && !f.start.After(t) && (best == nil || f.start.After(best.start)) {
			best = f
		}
	}
	if best == nil {
		return "none"
	}
	return fmt.Sprintf("%s of member %d at +%.3fs–+%.3fs", best.label(), best.member,
		best.start.Sub(r.start).Seconds(), best.end.Sub(r.start).Seconds())
}
