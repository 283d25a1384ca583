package e2e_test

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// The chaos campaign: a fleet of worker processes (chaosworker_test.go)
// sharing one rotating credential through one store, against testserver,
// while a seeded schedule of faults hits it; checkers then judge what the
// server and the workers recorded (chaoscheck_test.go). `make test` runs a
// short fixed-seed campaign per store; `make chaos` runs long ones.

var (
	// The default, run by make test, schedules every fault kind and variant
	// of both stores in 20 s, with no force-expiry within 2 s of another or
	// of a fleet-wide fault, so that every one is judged by the
	// per-force-expiry bound. (Seed 30, the previous default, puts two
	// force-expiries 0.76 s apart: see the note on issue 19.)
	chaosSeed     = flag.Uint64("chaos.seed", 602, "seed of the chaos campaign's fault schedule")
	chaosDuration = flag.Duration("chaos.duration", 20*time.Second, "how long each store's chaos campaign sends traffic")
	chaosStores   = flag.String("chaos.store", "file,redis",
		"the chaos campaign's stores, comma-separated: file, redis, cluster (a 3-master Redis Cluster), sentinel (a master, a replica, 3 Sentinels) or all")
	chaosRecovery = flag.Duration("chaos.recovery", 1500*time.Millisecond,
		"the recovery allowance: a fault's window lasts from its start to its end plus this")
	chaosStaleAllowance = flag.Duration("chaos.stale-allowance", 500*time.Millisecond,
		"how long a member may go on sending a token the server rejected once a valid newer one is committed")
	chaosPace     = flag.Duration("chaos.pace", 10*time.Millisecond, "each chaos caller's pause between calls")
	chaosLeaseTTL = flag.Duration("chaos.lease-ttl", time.Second, "the refresh lease's TTL in the chaos campaign")
	// chaosMaxStop keeps make test's short run to the pauses the library
	// fences: a member stopped right after presenting its refresh token
	// for longer than the lease TTL plus the repair grace loses the fleet's
	// session (the documented limit), and whether a scheduled stop lands
	// there is down to timing, which a fixed-seed smoke run must not be.
	// 1.5 s leaves a loaded machine 0.75 s to resume the holder and put
	// its result back before the member that took over presents; 2 s left
	// it about 0.2 s. make chaos passes 0, the full 0.2–3 s.
	chaosMaxStop = flag.Duration("chaos.max-stop", 1500*time.Millisecond,
		"the longest worker stop (0: as scheduled, up to 3 s); the default stays well under the lease TTL and the repair grace")
	chaosTraceDir = flag.String("chaos.trace", "",
		"a folder for each worker's trace (<store>-member-<id>.log: its Sources' debug log and events, times since the campaign's start)")
)

// The campaign's fixed parameters.
const (
	chaosWorkers        = 6
	chaosCallers        = 8
	chaosCallDeadline   = 3 * time.Second
	chaosTokenTTL       = 1800 * time.Millisecond
	chaosLatencyMin     = 50 * time.Millisecond
	chaosLatencyMax     = 200 * time.Millisecond
	chaosWarmup         = time.Second // before the first fault
	chaosQuiet          = 2 * time.Second
	chaosMaxPerExpiry   = 20
	chaosReloginDelay   = 500 * time.Millisecond
	chaosFaultGapMin    = 500 * time.Millisecond
	chaosFaultGapMax    = 2 * time.Second
	chaosFaultDurMin    = 200 * time.Millisecond
	chaosFaultDurMax    = 3 * time.Second
	chaosArmWithin      = 3 * time.Second // how long an armed fault (stall, in-flight kill) waits for its moment
	chaosShutdownGrace  = 20 * time.Second
	chaosStderrKeepLast = 4 << 10
)

// TestChaos runs the seeded fault campaign on each store (see e2e's package
// documentation, "Chaos campaign"): 6 worker processes × 8 callers with 3 s
// deadlines, 1.8 s tokens, 50–200 ms refresh latency, a fault every 0.5–2 s.
// It fails naming the checker, the fault kind and the seed.
func TestChaos(t *testing.T) {
	for _, topo := range chaosTopologies() {
		if !chaosSelected(topo.name) {
			continue
		}
		t.Run(topo.name, func(t *testing.T) {
			c := newCampaign(t, topo)
			c.run()
			rep := c.analyze()
			rep.log(t)
			rep.assert(t)
		})
	}
}

func chaosSelected(name string) bool {
	for _, sel := range strings.Split(*chaosStores, ",") {
		sel = strings.ToLower(strings.TrimSpace(sel))
		if sel == "all" || sel == chaosStoreArg(name) {
			return true
		}
	}
	return false
}

// campaign is one store's run.
type campaign struct {
	t        *testing.T
	topo     *chaosTopology
	seed     uint64
	duration time.Duration
	schedule []scheduled
	srv      *testserver.Server
	target   string
	exe      string
	start    time.Time
	end      time.Time

	// inflight, when set, runs once at the next refresh the server
	// receives, before the server rotates the token.
	inflight chan func()

	mu         sync.Mutex
	slots      [chaosWorkers]*memberSlot
	procs      []*chaosProc
	faults     []*faultRec
	rejections []rejectionRec
	reuses     []reuseRec
	writes     []writeRec
	// uses are the members that sent each access token (a fingerprint).
	uses map[string]map[string]bool
	// leases are the spans in which each member held the fleet's lease,
	// from its grant to its Commit or Release (to zero: still open).
	leases map[string][]span
	// ended is when each worker process's output ended (it exited, or was
	// killed), by member.
	ended         map[string]time.Time
	invalidations []span // every token issued before a span's end is invalid after its start
	storeDown     []span
	wipes         []time.Time
	failures      []failureRec
	episodes      []*episode
	reloginsDone  int
	// Refresh tokens presented: each member's last one (a fingerprint),
	// and the first presentation of each; the refreshes that set off an
	// in-flight fault.
	lastPresented  map[string]string
	firstPresented map[string]presentation
	inflightBy     []presentation
	background     sync.WaitGroup // relogins
}

// memberSlot is one of the fleet's members across its incarnations.
type memberSlot struct {
	idx  int
	inc  int
	proc *chaosProc
	busy bool // a member fault is being applied to it
}

// chaosProc is one incarnation of a member: a worker process.
type chaosProc struct {
	member string // "<index>.<incarnation>"
	idx    int
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr *tailBuffer
	stall  chan chaosLine // stall and nostall lines
	ready  chan struct{}
	exited chan struct{}

	mu      sync.Mutex
	calls   int64
	summary *chaosLine
	inMu    sync.Mutex
}

type span struct{ from, to time.Time }

type rejectionRec struct {
	at     time.Time
	member string
	fp     string
	reason string
}

type reuseRec struct {
	at     time.Time
	member string
	first  presentation // the refresh token's first presentation
}

// writeRec is a token written to the shared store: a member's commit or
// restore, or the campaign's own login.
type writeRec struct {
	at     time.Time
	fp     string
	expiry time.Time
	by     string
}

type failureRec struct {
	member     string
	idx        int
	start, end time.Time
	code, msg  string
	reauth     bool
}

// episode is a lost session: from the first sign (a reuse detected at the
// server, a member requiring re-authentication) to the campaign's relogin.
type episode struct {
	start, end time.Time
	why        string
}

func newCampaign(t *testing.T, topo *chaosTopology) *campaign {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := &campaign{t: t, topo: topo, seed: *chaosSeed, duration: *chaosDuration, exe: exe, inflight: make(chan func(), 1),
		lastPresented: map[string]string{}, firstPresented: map[string]presentation{}, ended: map[string]time.Time{}, uses: map[string]map[string]bool{},
		leases: map[string][]span{}}
	c.schedule = makeSchedule(c.seed, c.duration, topo)
	t.Logf("chaos | seed=%d store=%s duration=%v: %d faults scheduled (rerun: make chaos SEED=%d DURATION=%v STORE=%s)",
		c.seed, topo.name, c.duration, len(c.schedule), c.seed, c.duration, chaosStoreArg(topo.name))
	for _, s := range c.schedule {
		t.Logf("chaos | schedule %s", s)
	}
	c.srv = testserver.New(
		testserver.WithAccessTokenTTL(chaosTokenTTL),
		testserver.WithRejectionObserver(c.onReject),
		testserver.WithRefreshFailureFunc(c.refreshHook),
	)
	ep, err := c.srv.Start(context.Background(), testserver.StopTimeout(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ep.Stop)
	c.target = ep.Addr()
	topo.setup(t)
	for i := range c.slots {
		c.slots[i] = &memberSlot{idx: i}
	}
	t.Cleanup(c.killAll)
	return c
}

// chaosStoreArg is the -chaos.store (and STORE=) name of a topology.
func chaosStoreArg(name string) string {
	switch name {
	case "FileStore":
		return "file"
	case "RedisCluster":
		return "cluster"
	case "RedisSentinel":
		return "sentinel"
	}
	return strings.ToLower(name)
}

// refreshHook is the server's refresh predicate: 50–200 ms of latency (not
// part of the seeded schedule: it is the server's, not a fault), then the
// armed in-flight fault, if any, before the token is rotated.
func (c *campaign) refreshHook(ctx context.Context, refreshToken string) error {
	member := memberOf(ctx)
	fp := tokenFingerprint(refreshToken)
	now := time.Now()
	c.mu.Lock()
	c.lastPresented[member] = fp
	if _, ok := c.firstPresented[fp]; !ok {
		c.firstPresented[fp] = presentation{at: now, member: member}
	}
	c.mu.Unlock()
	d := chaosLatencyMin + rand.N(chaosLatencyMax-chaosLatencyMin)
	tm := time.NewTimer(d)
	select {
	case <-tm.C:
	case <-ctx.Done():
		// As testserver's own latency does: a caller that went away (a
		// member killed with its refresh in flight) gets no rotation.
		tm.Stop()
		return status.FromContextError(ctx.Err()).Err()
	}
	select {
	case f := <-c.inflight:
		c.mu.Lock()
		c.inflightBy = append(c.inflightBy, presentation{at: time.Now(), member: member})
		c.mu.Unlock()
		f()
	default:
	}
	return nil
}

// memberOf returns the member an RPC came from.
func memberOf(ctx context.Context) string {
	if v := metadata.ValueFromIncomingContext(ctx, chaosMemberKey); len(v) > 0 {
		return v[0]
	}
	return ""
}

// presentation is a refresh token presented to the server.
type presentation struct {
	at     time.Time
	member string
}

// onReject is the server's rejection observer.
func (c *campaign) onReject(ctx context.Context, r testserver.Rejection) {
	now := time.Now()
	member := memberOf(ctx)
	if r.Reuse {
		c.mu.Lock()
		first := c.firstPresented[c.lastPresented[member]]
		c.reuses = append(c.reuses, reuseRec{at: now, member: member, first: first})
		c.mu.Unlock()
		c.lose(now, "refresh-token reuse by member "+member, true)
		return
	}
	if r.Kind != "access token" {
		return
	}
	fp := ""
	if v := metadata.ValueFromIncomingContext(ctx, "authorization"); len(v) == 1 {
		if _, tok, ok := strings.Cut(v[0], " "); ok {
			fp = tokenFingerprint(tok)
		}
	}
	c.mu.Lock()
	c.rejections = append(c.rejections, rejectionRec{at: now, member: member, fp: fp, reason: r.Reason})
	c.mu.Unlock()
}

// lose opens a lost-session episode unless one is open, and logs the fleet
// in again after chaosReloginDelay, so that the campaign goes on measuring.
func (c *campaign) lose(at time.Time, why string, reuse bool) {
	c.mu.Lock()
	if n := len(c.episodes); n > 0 {
		// A member that finds out about a loss only after the relogin (its
		// refresh was in flight) is still that loss; a reuse, though,
		// after the relogin is a new one.
		last := c.episodes[n-1]
		if last.end.IsZero() || (!reuse && at.Before(last.end.Add(*chaosRecovery))) {
			c.mu.Unlock()
			return
		}
	}
	ep := &episode{start: at, why: why}
	c.episodes = append(c.episodes, ep)
	c.invalidations = append(c.invalidations, span{at, at})
	c.mu.Unlock()
	c.background.Go(func() {
		time.Sleep(chaosReloginDelay)
		c.relogin(ep)
	})
}

// relogin stands for the user logging in again: a new family, saved to the
// store once, from which every live member starts over.
func (c *campaign) relogin(ep *episode) {
	// A fresh login per attempt: a store that is down or locked (a Redis
	// kill, a FileStore stall) can hold the save longer than a token lives.
	deadline := time.Now().Add(10 * time.Second)
	for {
		tok, err := c.srv.IssueToken(testserver.DefaultUser)
		if err != nil {
			c.t.Errorf("chaos: relogin: %v", err)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		err = c.topo.store.Save(ctx, tok)
		cancel()
		if err == nil {
			c.recordWrite(time.Now(), tok, "relogin")
			break
		}
		if time.Now().After(deadline) {
			c.t.Errorf("chaos: relogin: saving the new login for 10 s: %v", err)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.mu.Lock()
	procs := make([]*chaosProc, 0, len(c.slots))
	for _, s := range c.slots {
		if s.proc != nil {
			procs = append(procs, s.proc)
		}
	}
	c.mu.Unlock()
	for _, p := range procs {
		p.send(chaosCmd{Cmd: "relogin"})
	}
	c.mu.Lock()
	ep.end = time.Now()
	c.reloginsDone++
	c.mu.Unlock()
}

func (c *campaign) recordWrite(at time.Time, tok *tokensource.Token, by string) {
	c.mu.Lock()
	c.writes = append(c.writes, writeRec{at: at, fp: tokenFingerprint(tok.AccessToken), expiry: tok.Expiry, by: by})
	c.mu.Unlock()
}

// run seeds the store, starts the fleet, plays the schedule and waits for
// the workers to finish.
func (c *campaign) run() {
	t := c.t
	login, err := c.srv.IssueToken(testserver.DefaultUser)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err = c.topo.store.Save(ctx, login)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	c.recordWrite(time.Now(), login, "seed")
	c.start = time.Now()
	c.end = c.start.Add(c.duration)
	for i := range c.slots {
		c.startMember(i)
	}
	var wg sync.WaitGroup
	for _, s := range c.schedule {
		if d := time.Until(c.start.Add(s.at)); d > 0 {
			time.Sleep(d)
		}
		f := &faultRec{sched: s, kind: s.kind, member: -1}
		c.mu.Lock()
		c.faults = append(c.faults, f)
		c.mu.Unlock()
		wg.Go(func() { s.kind.inject(c, f) })
	}
	wg.Wait()
	if d := time.Until(c.end); d > 0 {
		time.Sleep(d)
	}
	defer c.background.Wait()
	// The workers stop calling at c.end; give their last calls their
	// deadline and a grace for a loaded machine.
	deadline := time.After(chaosCallDeadline + chaosShutdownGrace)
	for _, p := range c.allProcs() {
		select {
		case <-p.exited:
		case <-deadline:
			t.Errorf("chaos: worker %s did not exit after the campaign's end\n%s", p.member, p.stderr)
			return
		}
	}
}

// startMember starts the next incarnation of member i.
func (c *campaign) startMember(i int) *chaosProc {
	c.mu.Lock()
	slot := c.slots[i]
	slot.inc++
	member := fmt.Sprintf("%d.%d", i, slot.inc)
	c.mu.Unlock()
	p := &chaosProc{member: member, idx: i, stderr: &tailBuffer{max: chaosStderrKeepLast},
		stall: make(chan chaosLine, 4), ready: make(chan struct{}), exited: make(chan struct{})}
	cmd := exec.Command(c.exe, "-test.run=^$")
	cmd.Env = append(os.Environ(),
		envChaosWorker+"="+member,
		envChaosTarget+"="+c.target,
		envChaosStore+"="+c.topo.spec,
		envChaosEnd+"="+strconv.FormatInt(c.end.UnixNano(), 10),
		envChaosCallers+"="+strconv.Itoa(chaosCallers),
		envChaosDeadline+"="+chaosCallDeadline.String(),
		envChaosPace+"="+chaosPace.String(),
		envChaosLeaseTTL+"="+chaosLeaseTTL.String(),
		envChaosTrace+"="+*chaosTraceDir,
		envChaosStart+"="+strconv.FormatInt(c.start.UnixNano(), 10),
	)
	// Its own process group, so that the cleanup can kill whatever it
	// might have started along with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stderr = p.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		c.t.Fatal(err)
	}
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		c.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	p.cmd = cmd
	c.mu.Lock()
	slot.proc = p
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	go c.read(p, stdout)
	return p
}

// read takes in a worker's lines until it exits, then reaps it.
func (c *campaign) read(p *chaosProc, r io.Reader) {
	defer close(p.exited)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	readyOnce := sync.OnceFunc(func() { close(p.ready) })
	defer readyOnce()
	for sc.Scan() {
		var l chaosLine
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		at := time.Unix(0, l.At)
		switch l.Kind {
		case lineReady:
			readyOnce()
		case lineTick:
			p.mu.Lock()
			p.calls = l.Calls
			p.mu.Unlock()
		case lineSummary:
			p.mu.Lock()
			p.calls, p.summary = l.Calls, &l
			p.mu.Unlock()
		case lineFail:
			c.mu.Lock()
			c.failures = append(c.failures, failureRec{member: p.member, idx: p.idx, start: at, end: time.Unix(0, l.End),
				code: l.Code, msg: l.Msg, reauth: l.Reauth})
			c.mu.Unlock()
		case lineCommit, lineRestore:
			c.mu.Lock()
			c.writes = append(c.writes, writeRec{at: at, fp: l.FP, expiry: time.Unix(0, l.Expiry), by: p.member + " " + l.Kind})
			c.mu.Unlock()
		case lineLease:
			c.mu.Lock()
			c.leases[p.member] = append(c.leases[p.member], span{from: at})
			c.mu.Unlock()
		case lineUnlease:
			c.mu.Lock()
			if ls := c.leases[p.member]; len(ls) > 0 && ls[len(ls)-1].to.IsZero() {
				ls[len(ls)-1].to = at
			}
			c.mu.Unlock()
		case lineUse:
			c.mu.Lock()
			if c.uses[l.FP] == nil {
				c.uses[l.FP] = map[string]bool{}
			}
			c.uses[l.FP][p.member] = true
			c.mu.Unlock()
		case lineReauth:
			c.lose(at, "member "+p.member+" requires re-authentication", false)
		case lineStall, lineNoStall:
			select {
			case p.stall <- l:
			default:
			}
		case lineRelogged:
			if l.Msg != "" {
				c.t.Logf("chaos | member %s: relogin: %s", p.member, l.Msg)
			}
		}
	}
	c.mu.Lock()
	c.ended[p.member] = time.Now()
	c.mu.Unlock()
	_ = p.cmd.Wait()
}

// send writes a command to the worker's stdin; a worker that has exited
// does not need it.
func (p *chaosProc) send(cmd chaosCmd) {
	data, err := json.Marshal(cmd)
	if err != nil {
		return
	}
	p.inMu.Lock()
	defer p.inMu.Unlock()
	_, _ = p.stdin.Write(append(data, '\n'))
}

func (p *chaosProc) callCount() (int64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls, p.summary != nil
}

// allProcs returns every worker process started so far.
func (c *campaign) allProcs() []*chaosProc {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.procs)
}

// killAll kills every worker's process group that is still there: no
// worker outlives the test, stopped or not.
func (c *campaign) killAll() {
	procs := c.allProcs()
	for _, p := range procs {
		select {
		case <-p.exited:
			continue
		default:
		}
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGCONT)
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	}
	for _, p := range procs {
		<-p.exited
		_ = p.stdin.Close()
	}
}

// tailBuffer keeps the last max bytes written to it (a worker's stderr, for
// failure messages).
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.b = append(b.b, p...)
	if len(b.b) > b.max {
		b.b = b.b[len(b.b)-b.max:]
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.b)
}
