package e2e_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/redistest"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource/redisstore"
)

// A fault kind is applied by inject, in a goroutine of its own, which fills
// in the fault's record: when it started and ended (its window is
// [start, end + the recovery allowance]), which member it hit (-1: the whole
// fleet), or that it found no moment to strike (missed).
type faultKind struct {
	name     string
	weight   int
	variants [2]string // the names of its two variants, if it has any
	// lossy says, per variant, whether the fault can drop a write the
	// store acknowledged: a restart without persistence, a failover to a
	// replica that had not received it (replication is asynchronous).
	lossy  [2]bool
	inject func(c *campaign, f *faultRec)
}

// label names the fault kind with its variant, for the summary table.
func (f *faultRec) label() string {
	if v := f.kind.variants[f.sched.variant]; v != "" {
		return f.kind.name + "/" + v
	}
	return f.kind.name
}

// scheduled is one entry of the seeded schedule.
type scheduled struct {
	at      time.Duration // from the campaign's start
	kind    *faultKind
	member  int           // the member it targets, for member faults
	dur     time.Duration // how long the fault lasts, where it lasts
	variant int           // 0 or 1: a kind's variant (Redis restarted empty or from its append-only file)
}

func (s scheduled) String() string {
	return fmt.Sprintf("+%6.3fs %-18s member %d, %v, variant %d", s.at.Seconds(), s.kind.name, s.member,
		s.dur.Round(time.Millisecond), s.variant)
}

// faultRec is what happened when a scheduled fault was applied.
type faultRec struct {
	sched      scheduled
	kind       *faultKind
	member     int    // -1: fleet-wide
	target     string // the incarnation a member fault hit ("<index>.<incarnation>")
	start, end time.Time
	missed     string // why the fault did not strike; "" if it did
}

func (f *faultRec) done(start, end time.Time, member int) {
	f.start, f.end, f.member = start, end, member
}

// makeSchedule draws the schedule from seed: a fault every 0.5–2 s from
// chaosWarmup until chaosQuiet before the end, its kind by weight among the
// common kinds and the topology's, a target member, a duration of 0.2–3 s
// and a variant.
func makeSchedule(seed uint64, duration time.Duration, topo *chaosTopology) []scheduled {
	rng := rand.New(rand.NewPCG(seed, 0x6368616f73)) // "chaos"
	kinds := append(commonFaults(), topo.faults...)
	total := 0
	for _, k := range kinds {
		total += k.weight
	}
	var out []scheduled
	for at := chaosWarmup; ; {
		at += chaosFaultGapMin + time.Duration(rng.Int64N(int64(chaosFaultGapMax-chaosFaultGapMin)))
		if at > duration-chaosQuiet {
			return out
		}
		pick, kind := rng.IntN(total), kinds[0]
		for _, k := range kinds {
			if pick < k.weight {
				kind = k
				break
			}
			pick -= k.weight
		}
		out = append(out, scheduled{at: at, kind: kind, member: rng.IntN(chaosWorkers),
			dur: chaosFaultDurMin + time.Duration(rng.Int64N(int64(chaosFaultDurMax-chaosFaultDurMin))), variant: rng.IntN(2)})
	}
}

// Fault kinds every store gets.
var (
	faultKill = &faultKind{name: "worker-kill", weight: 2, inject: onMember(func(c *campaign, _ *faultRec, slot *memberSlot) {
		p := slot.proc
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
		c.startMember(slot.idx)
	})}
	faultStop = &faultKind{name: "worker-stop", weight: 2, inject: onMember(func(_ *campaign, f *faultRec, slot *memberSlot) {
		p := slot.proc
		_ = syscall.Kill(p.cmd.Process.Pid, syscall.SIGSTOP)
		d := f.sched.dur
		if *chaosMaxStop > 0 {
			d = min(d, *chaosMaxStop)
		}
		time.Sleep(d) // the fault's own length
		_ = syscall.Kill(p.cmd.Process.Pid, syscall.SIGCONT)
	})}
	faultExpire = &faultKind{name: "force-expiry", weight: 2, inject: func(c *campaign, f *faultRec) {
		start := time.Now()
		c.srv.ForceExpire()
		end := time.Now()
		c.mu.Lock()
		c.invalidations = append(c.invalidations, span{start, end})
		c.mu.Unlock()
		f.done(start, end, -1)
	}}
)

// onMember is the inject of a member fault: it claims a member for f,
// applies act to it, and records the fault from just before act until act
// returns.
func onMember(act func(c *campaign, f *faultRec, slot *memberSlot)) func(*campaign, *faultRec) {
	return func(c *campaign, f *faultRec) {
		slot := c.claim(f)
		if slot == nil {
			return
		}
		defer c.release(slot)
		f.target = slot.proc.member
		start := time.Now()
		act(c, f, slot)
		f.done(start, time.Now(), slot.idx)
	}
}

func commonFaults() []*faultKind { return []*faultKind{faultKill, faultStop, faultExpire} }

// claim takes the scheduled member for a member fault, or the next one that
// no other member fault holds (a member stopped and killed at once, or
// killed while it restarts, would measure the harness); nil, with the fault
// marked missed, when every member is taken.
func (c *campaign) claim(f *faultRec) *memberSlot {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range chaosWorkers {
		s := c.slots[(f.sched.member+i)%chaosWorkers]
		if !s.busy && s.proc != nil {
			s.busy = true
			return s
		}
	}
	f.missed = "every member was under another fault"
	return nil
}

func (c *campaign) release(s *memberSlot) {
	c.mu.Lock()
	s.busy = false
	c.mu.Unlock()
}

// chaosTopology is a store the campaign runs on: the spec its workers open
// (openFleetStore), the campaign's own handle on it (for the initial login
// and relogins) and the fault kinds it adds to the common ones. A new
// topology (a Redis Cluster, Sentinel) is one more constructor in
// chaosTopologies with its own setup and faults.
type chaosTopology struct {
	name   string
	faults []*faultKind
	setup  func(t *testing.T) // starts the store, sets spec and store
	spec   string
	store  tokensource.Store
}

// chaosTopologies are the stores the campaign knows, by the name
// -chaos.store selects them with.
func chaosTopologies() []*chaosTopology {
	return []*chaosTopology{fileTopology(), redisTopology(), clusterTopology(), sentinelTopology()}
}

func fileTopology() *chaosTopology {
	topo := &chaosTopology{name: "FileStore"}
	topo.faults = []*faultKind{{name: "filestore-stall", weight: 2, inject: injectFileStall}}
	topo.setup = func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "token.json")
		topo.spec = "file:" + path
		topo.store = tokensource.NewFileStore(path)
	}
	return topo
}

// injectFileStall arms a stall of the scheduled duration in one member: its
// next critical section that finds the lease held by a live member sleeps
// with the flock held (see chaosStall). The window is the stall itself.
func injectFileStall(c *campaign, f *faultRec) {
	slot := c.claim(f)
	if slot == nil {
		return
	}
	defer c.release(slot)
	p := slot.proc
	for len(p.stall) > 0 { // a report of an earlier arming
		<-p.stall
	}
	p.send(chaosCmd{Cmd: "stall", Dur: f.sched.dur, Within: chaosArmWithin})
	select {
	case l := <-p.stall:
		if l.Kind == lineStall {
			f.done(time.Unix(0, l.At), time.Unix(0, l.End), -1)
			return
		}
		f.missed = "no critical section under a live lease within " + chaosArmWithin.String()
	case <-p.exited:
		f.missed = "the member exited"
	case <-time.After(chaosArmWithin + f.sched.dur + 5*time.Second):
		f.missed = "no report from the member"
	}
}

// redisChaos is the redis-server of the Redis topology. It runs with the
// append-only file synced on every write; a restart "empty" deletes the
// data files first, as a server without persistence loses them.
type redisChaos struct {
	rs  *redistest.Server
	dir string
	mu  chan struct{} // one Redis fault at a time: a 1-slot semaphore
}

func redisTopology() *chaosTopology {
	topo := &chaosTopology{name: "Redis"}
	r := &redisChaos{mu: make(chan struct{}, 1)}
	topo.faults = []*faultKind{
		{name: "redis-kill", weight: 2, variants: [2]string{"empty", "aof"}, lossy: [2]bool{true, false}, inject: r.injectKill},
		{name: "redis-kill-inflight", weight: 1, variants: [2]string{"empty", "aof"}, lossy: [2]bool{true, false}, inject: r.injectKillInFlight},
	}
	topo.setup = func(t *testing.T) {
		r.rs = redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always")
		client := redisClient(t, r.rs)
		r.dir = r.rs.Dir()
		topo.spec = "redis:" + r.rs.Socket
		topo.store = redisstore.New(client, fleetKey)
	}
	return topo
}

// kill kills redis-server (SIGKILL) and records the outage; with empty it
// deletes the data files as well, so that the restart finds nothing.
func (r *redisChaos) kill(c *campaign, empty bool) time.Time {
	start := time.Now()
	r.rs.Stop()
	if empty {
		_ = os.RemoveAll(filepath.Join(r.dir, "appendonlydir"))
		_ = os.Remove(filepath.Join(r.dir, "dump.rdb"))
		c.mu.Lock()
		c.wipes = append(c.wipes, start)
		c.mu.Unlock()
	}
	return start
}

// restart starts redis-server again after down and records the outage's
// span.
func (r *redisChaos) restart(c *campaign, start time.Time, down time.Duration) time.Time {
	time.Sleep(down)
	r.rs.Restart()
	end := time.Now()
	c.mu.Lock()
	c.storeDown = append(c.storeDown, span{start, end})
	c.mu.Unlock()
	return end
}

// downtime is how long redis-server stays down: a quarter of the scheduled
// duration (50–750 ms), the time a supervisor takes to restart it.
func downtime(f *faultRec) time.Duration { return f.sched.dur / 4 }

// acquire waits, up to chaosArmWithin, for the Redis fault before to end
// (one outage at a time), or marks f missed.
func (r *redisChaos) acquire(f *faultRec) bool {
	select {
	case r.mu <- struct{}{}:
		return true
	case <-time.After(chaosArmWithin):
		f.missed = "redis-server was down for another fault for " + chaosArmWithin.String()
		return false
	}
}

// injectKill kills redis-server at a random moment.
func (r *redisChaos) injectKill(c *campaign, f *faultRec) {
	if !r.acquire(f) {
		return
	}
	defer func() { <-r.mu }()
	start := r.kill(c, f.sched.variant == 0)
	end := r.restart(c, start, downtime(f))
	f.done(start, end, -1)
}

// injectKillInFlight kills redis-server while a refresh is in flight: at
// the next refresh the server receives, before it rotates the token, so
// that the holder has a new token and no coordinator to commit it to.
func (r *redisChaos) injectKillInFlight(c *campaign, f *faultRec) {
	if !r.acquire(f) {
		return
	}
	defer func() { <-r.mu }()
	killed := make(chan time.Time, 1)
	trigger := func() { killed <- r.kill(c, f.sched.variant == 0) }
	select {
	case c.inflight <- trigger:
	default:
		f.missed = "another in-flight fault is armed"
		return
	}
	select {
	case start := <-killed:
		end := r.restart(c, start, downtime(f))
		f.done(start, end, -1)
	case <-time.After(chaosArmWithin):
		select {
		case <-c.inflight: // disarmed before a refresh took it
			f.missed = "no refresh within " + chaosArmWithin.String()
		case start := <-killed:
			end := r.restart(c, start, downtime(f))
			f.done(start, end, -1)
		}
	}
}
