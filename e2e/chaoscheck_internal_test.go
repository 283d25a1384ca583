package e2e_test

import (
	"context"
	"encoding/json"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// The checkers judge a synthetic record as their definitions say (see
// chaoscheck_test.go), so that a campaign that reports zeros reports them
// because nothing happened, not because a checker cannot see: a member that
// keeps sending a token it was told is rejected while a valid one is
// committed is a stale send, and only then; a failed call outside every
// window is outside, a member fault's window covers that member alone
// unless it held the fleet's lease, and failures are counted per
// force-expiry, apart for one in a store outage.
func TestChaosCheckers(t *testing.T) {
	allow, recovery := *chaosStaleAllowance, *chaosRecovery
	t0 := time.Now()
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	c := &campaign{t: t, topo: &chaosTopology{name: "synthetic"}, srv: testserver.New(), start: t0, end: at(14 * time.Second),
		leases: map[string][]span{}}
	for i := range c.slots {
		c.slots[i] = &memberSlot{idx: i}
	}

	expiry := &faultRec{kind: faultExpire, member: -1, start: at(time.Second), end: at(time.Second)}
	stop := &faultRec{kind: faultStop, member: 0, start: at(4 * time.Second), end: at(4*time.Second + 500*time.Millisecond)}
	// A second force-expiry during a store outage: not judged by the
	// per-force-expiry bound.
	outage := &faultRec{kind: &faultKind{name: "store-outage"}, member: -1, start: at(6 * time.Second), end: at(7 * time.Second)}
	expiry2 := &faultRec{kind: faultExpire, member: -1, start: at(6500 * time.Millisecond), end: at(6500 * time.Millisecond)}
	// Member 3 stopped while it held the fleet's lease (granted before the
	// stop, never given up): its window covers the fleet.
	holderStop := &faultRec{kind: faultStop, member: 3, target: "3.1", start: at(11 * time.Second), end: at(11500 * time.Millisecond)}
	c.leases["3.1"] = []span{{from: at(10900 * time.Millisecond)}}
	c.leases["0.1"] = []span{{from: at(3 * time.Second), to: at(3200 * time.Millisecond)}} // given up before its stop
	stop.target = "0.1"
	c.faults = []*faultRec{expiry, stop, outage, expiry2, holderStop}
	c.invalidations = []span{{expiry.start, expiry.end}}

	fpOld, fpNew := tokenFingerprint("at_old"), tokenFingerprint("at_new")
	c.writes = []writeRec{
		{at: t0, fp: fpOld, expiry: at(chaosTokenTTL), by: "seed"},
		// Issued after the force-expiry, committed 0.1 s after it.
		{at: at(1100 * time.Millisecond), fp: fpNew, expiry: at(1050*time.Millisecond + chaosTokenTTL), by: "1.1 commit"},
	}
	told := at(1010 * time.Millisecond)
	c.rejections = []rejectionRec{
		{at: told, member: "2.1", fp: fpOld},                                                    // told
		{at: told.Add(allow / 2), member: "2.1", fp: fpOld},                                     // within the allowance: not judged
		{at: at(1100*time.Millisecond + allow + 10*time.Millisecond), member: "2.1", fp: fpOld}, // stale
		{at: at(1700 * time.Millisecond), member: "3.1", fp: fpOld},                             // its first rejection: not stale
	}

	// 21 failed calls in the force-expiry's window, one by member 1 during
	// member 0's stop (outside: the stop is member 0's), one by member 0
	// then (inside), one long after everything (outside).
	for range 21 {
		c.failures = append(c.failures, failureRec{member: "1.1", idx: 1, start: at(900 * time.Millisecond), end: at(1200 * time.Millisecond)})
	}
	for range 30 {
		c.failures = append(c.failures, failureRec{member: "2.1", idx: 2, start: at(6600 * time.Millisecond), end: at(6700 * time.Millisecond)})
	}
	late := expiry2.end.Add(recovery).Add(time.Second)
	c.failures = append(c.failures,
		failureRec{member: "1.1", idx: 1, start: at(4200 * time.Millisecond), end: at(4300 * time.Millisecond)},
		failureRec{member: "0.1", idx: 0, start: at(4200 * time.Millisecond), end: at(4300 * time.Millisecond)},
		failureRec{member: "4.1", idx: 4, start: late, end: late.Add(100 * time.Millisecond)},
		failureRec{member: "2.1", idx: 2, start: at(11200 * time.Millisecond), end: at(12 * time.Second)}, // in the holder's stop
	)

	rep := c.analyze()
	rep.log(t)
	if rep.stale != 1 || rep.staleKeys != 1 {
		t.Errorf("stale sends %d by %d member-token pairs, want 1 by 1", rep.stale, rep.staleKeys)
	}
	if n := len(rep.outside); n != 2 {
		t.Errorf("%d failed calls outside windows, want 2", n)
	}
	if len(rep.expiries) != 1 || rep.expiries[0] != 21 {
		t.Errorf("failed calls per force-expiry %v, want [21]", rep.expiries)
	}
	if len(rep.compoundExpiries) != 1 || rep.compoundExpiries[0] != 30 {
		t.Errorf("failed calls per force-expiry in an outage %v, want [30]", rep.compoundExpiries)
	}
	if r := rep.rows[faultStop.name]; r == nil || r.failed != 2 {
		t.Errorf("worker-stop row %+v, want 2 failed calls (member 0's own, and member 2's in the lease holder's stop)", r)
	}

	// The bounds fail on this record, naming the checkers and the seed.
	v := rep.violations()
	for _, want := range []string{"checker failed-calls-outside-fault-windows = 2", "checker failed-calls-per-force-expiry: max 21", "force-expiry at +1.000s: member",
		"checker stale-sends", "seed=0 store=synthetic"} {
		if !slices.ContainsFunc(v, func(s string) bool { return strings.Contains(s, want) }) {
			t.Errorf("no violation mentions %q; violations:\n%s", want, strings.Join(v, "\n"))
		}
	}
}

// A reuse at the campaign's very end whose first presenter exited with the
// campaign, its commit still pending in a store outage's recovery, is the
// loss no coordination prevents (every member holding the newest token
// gone), as in seed 7's Cluster run: member 2.3 presented at +57.165s, the
// master was killed with its refresh in flight, 2.3 exited at the end with
// its Source (and its repair) closed, and 4.2, finishing its last call,
// presented the older token at +61.294s. A holder alive at the reuse, or
// one that outlived the outage's recovery allowance without committing, is
// counted.
func TestChaosCheckersCampaignEnd(t *testing.T) {
	recovery := *chaosRecovery
	t0 := time.Now()
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	c := &campaign{t: t, topo: &chaosTopology{name: "synthetic"}, srv: testserver.New(), start: t0, end: at(60 * time.Second),
		ended: map[string]time.Time{}, firstPresented: map[string]presentation{}, lastPresented: map[string]string{}}
	for i := range c.slots {
		c.slots[i] = &memberSlot{idx: i}
	}
	outage := &faultRec{kind: &faultKind{name: "store-outage"}, member: -1, start: at(57312 * time.Millisecond), end: at(59709 * time.Millisecond)}
	c.faults = []*faultRec{outage}
	afterRecovery := outage.end.Add(recovery)

	// The seed-7 case: unfenceable.
	c.ended["2.3"] = at(60050 * time.Millisecond)
	seed7 := reuseRec{at: at(61294 * time.Millisecond), member: "4.2", first: presentation{at: at(57165 * time.Millisecond), member: "2.3"}}
	// Its holder still running at the reuse: counted.
	c.ended["1.1"] = at(62 * time.Second)
	alive := reuseRec{at: at(61500 * time.Millisecond), member: "3.1", first: presentation{at: at(57200 * time.Millisecond), member: "1.1"}}
	// Its holder outlived the outage's recovery allowance: counted.
	c.ended["5.1"] = afterRecovery.Add(200 * time.Millisecond)
	outlived := reuseRec{at: afterRecovery.Add(time.Second), member: "0.1", first: presentation{at: at(57250 * time.Millisecond), member: "5.1"}}
	c.reuses = []reuseRec{seed7, alive, outlived}
	for _, u := range c.reuses {
		c.episodes = append(c.episodes, &episode{start: u.at, end: u.at.Add(chaosReloginDelay), why: "refresh-token reuse by member " + u.member})
	}
	// A holder that committed after presenting is not excused either, even
	// when it exited in the outage's recovery.
	c.ended["2.2"] = at(60100 * time.Millisecond)
	c.writes = []writeRec{{at: at(59900 * time.Millisecond), by: "2.2 commit"}}
	wrote := reuseRec{at: at(63 * time.Second), member: "4.3", first: presentation{at: at(57300 * time.Millisecond), member: "2.2"}}
	c.reuses = append(c.reuses, wrote)
	c.episodes = append(c.episodes, &episode{start: wrote.at, end: wrote.at.Add(chaosReloginDelay), why: "refresh-token reuse by member 4.3"})

	rep := c.analyze()
	rep.log(t)
	if len(rep.unfenceable) != 1 || !strings.Contains(rep.unfenceable[0], "member 2.3") {
		t.Errorf("unfenceable reuses %q, want member 2.3's alone", rep.unfenceable)
	}
	if len(rep.reuse) != 3 || len(rep.lost) != 3 {
		t.Errorf("%d reuses and %d lost sessions counted, want 3 and 3:\n%s\n%s", len(rep.reuse), len(rep.lost),
			strings.Join(rep.reuse, "\n"), strings.Join(rep.lost, "\n"))
	}
	v := rep.violations()
	if !slices.ContainsFunc(v, func(s string) bool { return strings.Contains(s, "checker refresh-token-reuse = 3") }) {
		t.Errorf("no violation counts 3 reuses; violations:\n%s", strings.Join(v, "\n"))
	}
}

// A rotation committed just before a failover to a lagging replica lost it,
// held by its committer alone, which was killed while the store was still
// failing over (the seed-7 Sentinel run: member 2.1 committed at +7.1s, the
// master was killed at +7.145s, 2.1 was killed at +8.306s, and 3.1
// presented the older refresh token at +10.533s): every holder was gone, a
// loss the documentation names. A peer that sent the lost token and lived
// past the failover's recovery allowance could have restored it: counted.
// So is a rotation that a fault which began before the commit did not
// lose, one that was written again after the loss, and one followed only by
// a fault that cannot drop an acknowledged write (a FileStore stall).
func TestChaosCheckersLostWithItsHolders(t *testing.T) {
	recovery := *chaosRecovery
	t0 := time.Now()
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	ms := time.Millisecond
	c := &campaign{t: t, topo: &chaosTopology{name: "synthetic"}, srv: testserver.New(), start: t0, end: at(60 * time.Second),
		ended: map[string]time.Time{}, uses: map[string]map[string]bool{}, firstPresented: map[string]presentation{}, lastPresented: map[string]string{}}
	for i := range c.slots {
		c.slots[i] = &memberSlot{idx: i}
	}
	lossy := [2]bool{true, true}
	failover := &faultRec{kind: &faultKind{name: "sentinel-failover-lagging", lossy: lossy}, member: -1, start: at(7145 * ms), end: at(9245 * ms)}
	later := &faultRec{kind: &faultKind{name: "sentinel-failover", lossy: lossy}, member: -1, start: at(28 * time.Second), end: at(30 * time.Second)}
	stall := &faultRec{kind: &faultKind{name: "filestore-stall"}, member: -1, start: at(40 * time.Second), end: at(42 * time.Second)}
	c.faults = []*faultRec{failover, later, stall}

	// The seed-7 case: unfenceable.
	c.writes = append(c.writes, writeRec{at: at(7100 * ms), fp: "t1", by: "2.1 commit"})
	c.uses["t1"] = map[string]bool{"2.1": true}
	c.ended["2.1"] = at(8309 * ms)
	seed7 := reuseRec{at: at(10533 * ms), member: "3.1", first: presentation{at: at(7017 * ms), member: "2.1"}}
	// A peer sent the lost token and outlived the recovery allowance.
	c.writes = append(c.writes, writeRec{at: at(7120 * ms), fp: "t2", by: "1.1 commit"})
	c.uses["t2"] = map[string]bool{"1.1": true, "4.1": true}
	c.ended["1.1"] = at(8 * time.Second)
	c.ended["4.1"] = failover.end.Add(recovery + 100*ms)
	peer := reuseRec{at: at(12 * time.Second), member: "3.1", first: presentation{at: at(7050 * ms), member: "1.1"}}
	// The fault began before the commit: it did not lose it.
	c.writes = append(c.writes, writeRec{at: at(29 * time.Second), fp: "t3", by: "5.1 commit"})
	c.ended["5.1"] = at(29500 * ms)
	before := reuseRec{at: at(31 * time.Second), member: "0.2", first: presentation{at: at(28900 * ms), member: "5.1"}}
	// Restored after the loss, then lost again without a fault.
	c.writes = append(c.writes, writeRec{at: at(7130 * ms), fp: "t4", by: "0.1 commit"}, writeRec{at: at(9500 * ms), fp: "t4", by: "0.1 restore"})
	c.ended["0.1"] = at(9600 * ms)
	restored := reuseRec{at: at(11 * time.Second), member: "3.1", first: presentation{at: at(7060 * ms), member: "0.1"}}
	// A fault that cannot drop an acknowledged write did not lose it: the
	// reuse is the library's, however soon the committer died.
	c.writes = append(c.writes, writeRec{at: at(39900 * ms), fp: "t5", by: "1.2 commit"})
	c.ended["1.2"] = at(41 * time.Second)
	stalled := reuseRec{at: at(43 * time.Second), member: "3.1", first: presentation{at: at(39800 * ms), member: "1.2"}}
	c.reuses = []reuseRec{seed7, peer, before, restored, stalled}
	for _, u := range c.reuses {
		c.episodes = append(c.episodes, &episode{start: u.at, end: u.at.Add(chaosReloginDelay), why: "refresh-token reuse by member " + u.member})
	}

	rep := c.analyze()
	rep.log(t)
	if len(rep.unfenceable) != 1 || !strings.Contains(rep.unfenceable[0], "member 2.1") {
		t.Errorf("unfenceable reuses %q, want member 2.1's alone", rep.unfenceable)
	}
	if len(rep.reuse) != 4 {
		t.Errorf("%d reuses counted, want 4:\n%s", len(rep.reuse), strings.Join(rep.reuse, "\n"))
	}
}

// The workers' reporting wrapper keeps what the Source sees of a store: a
// Restorer stays one, and a lease with a lifetime keeps it. (It once hid
// Expires, so the campaign's members took every lease for held and one
// presented a refresh token under a lease that ran out while it was
// stopped: the seed-7 Cluster run.)
func TestReportWritesKeepsCapabilities(t *testing.T) {
	st := reportWrites(tokensource.NewFileStore(filepath.Join(t.TempDir(), "token.json")), &chaosOut{enc: json.NewEncoder(io.Discard)})
	if _, ok := st.(tokensource.Restorer); !ok {
		t.Error("the wrapped FileStore is no Restorer")
	}
	l, err := st.(tokensource.Coordinator).TryLease(context.Background())
	if err != nil || l == nil {
		t.Fatalf("TryLease = %v, %v", l, err)
	}
	defer l.Release(context.Background())
	el, ok := l.(tokensource.ExpiringLease)
	if !ok {
		t.Fatal("the wrapped FileStore's lease is no ExpiringLease")
	}
	if el.Expires().Before(time.Now()) {
		t.Errorf("Expires = %v, before now", el.Expires())
	}
}
