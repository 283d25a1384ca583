package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// Identity-provider outages: the test server's token endpoint (AuthService
// Refresh) answers Unavailable for a while, through the interceptors, with
// many callers of every kind.

// outageMsg is the message of the token endpoint's answers during an outage.
const outageMsg = "e2e: identity provider outage"

// idpOutage makes the test server's token endpoint answer Unavailable: for a
// set time (blip) or while it is down (setDown). Logins are not affected.
type idpOutage struct {
	mu    sync.Mutex
	armed time.Duration // a blip of this length starts at the next Refresh
	until time.Time     // Refresh fails before it
	down  bool

	failed atomic.Int64 // Refresh calls answered Unavailable
}

func (o *idpOutage) option() testserver.Option {
	return testserver.WithRefreshFailureFunc(func(context.Context, string) error {
		if o.failing() {
			o.failed.Add(1)
			return status.Error(codes.Unavailable, outageMsg)
		}
		return nil
	})
}

func (o *idpOutage) failing() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	now := time.Now()
	if o.armed > 0 {
		o.until, o.armed = now.Add(o.armed), 0
	}
	return o.down || now.Before(o.until)
}

// blip makes the token endpoint answer Unavailable for d (real time) from
// the next token request on: the first attempt of the next refresh meets
// the blip, however late a loaded machine lets it reach the server.
func (o *idpOutage) blip(d time.Duration) {
	o.mu.Lock()
	o.armed = d
	o.mu.Unlock()
}

func (o *idpOutage) setDown(down bool) {
	o.mu.Lock()
	o.down = down
	o.mu.Unlock()
}

// liveClock runs with real time from its start, and jumps forward when a
// test advances it: the Source's backoff then ends by itself, as it would
// in production, while the test still decides when a token expires.
type liveClock struct {
	start  time.Time // the reading at real, plus the jumps
	real   time.Time // with a monotonic reading
	jumped atomic.Int64
}

func newLiveClock() *liveClock {
	now := time.Now()
	return &liveClock{start: now.Round(0), real: now}
}

func (c *liveClock) Now() time.Time {
	return c.start.Add(time.Since(c.real) + time.Duration(c.jumped.Load()))
}

func (c *liveClock) Advance(d time.Duration) { c.jumped.Add(int64(d)) }

// callKinds are the kinds of calls the outage tests make: the RPC kinds of
// soakOp, and a direct Source.Token.
var callKinds = append(soakKinds[:], "Source.Token")

const directToken = len(soakKinds) // callKinds index of Source.Token

// makeCall makes one call of kind with a deadline of d and returns its error
// and how long it took. waitForReady adds grpc.WaitForReady(true) to an RPC
// and tokensource.WaitForReady to the ctx of Source.Token; echo is the
// client to use for RPCs. Errors are recorded for the secrets check.
func (r *rig) makeCall(echo echov1.EchoServiceClient, kind int, d time.Duration, waitForReady bool, id string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(r.ctx, d)
	defer cancel()
	var opts []grpc.CallOption
	if waitForReady {
		opts = append(opts, grpc.WaitForReady(true))
	}
	start := time.Now()
	var err error
	if kind == directToken {
		if waitForReady {
			ctx = tokensource.WaitForReady(ctx)
		}
		_, err = r.src.Token(ctx)
	} else {
		err = soakOp(ctx, echo, kind, id, opts...)
	}
	took := time.Since(start)
	r.record(err)
	return took, err
}

// tally counts the outcomes of calls by kind, and lets a test wait for a
// number of successes.
type tally struct {
	mu      sync.Mutex
	ok      [len(soakKinds) + 1]int // by callKinds index
	failed  [len(soakKinds) + 1]int
	longest time.Duration
	samples []string
	changed chan struct{}
}

func newTally() *tally { return &tally{changed: make(chan struct{})} }

func (t *tally) add(kind int, took time.Duration, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err == nil {
		t.ok[kind]++
	} else {
		t.failed[kind]++
		if len(t.samples) < 5 {
			t.samples = append(t.samples, fmt.Sprintf("%s after %v: %s: %v", callKinds[kind], took.Round(time.Millisecond), outcome(err), err))
		}
	}
	t.longest = max(t.longest, took)
	close(t.changed)
	t.changed = make(chan struct{})
}

// snapshot returns the successful and the failed calls so far.
func (t *tally) snapshot() (ok, failed int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k := range callKinds {
		ok += t.ok[k]
		failed += t.failed[k]
	}
	return ok, failed
}

// waitOK waits until at least n calls have succeeded in all.
func (t *tally) waitOK(ctx context.Context, n int) error {
	for {
		t.mu.Lock()
		ok, ch := 0, t.changed
		for k := range callKinds {
			ok += t.ok[k]
		}
		t.mu.Unlock()
		if ok >= n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for %d successful calls (have %d): %w", n, ok, ctx.Err())
		}
	}
}

func (t *tally) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var parts []string
	for k, name := range callKinds {
		parts = append(parts, fmt.Sprintf("%s %d/%d", name, t.ok[k], t.ok[k]+t.failed[k]))
	}
	return strings.Join(parts, ", ") + " OK"
}

// flight is what the events say about one refresh.
type flight struct {
	id       uint64
	final    tokensource.EventKind // RefreshSucceeded, RefreshFailed, ...; 0 if none yet
	attempts int                   // the final event's Attempts
	retried  int                   // RefreshAttemptFailed events
}

func (f flight) String() string {
	return fmt.Sprintf("#%d %v after %d Refresher calls (%d RefreshAttemptFailed)", f.id, f.final, f.attempts, f.retried)
}

// flightsOf groups evs by refresh, for the refreshes that started in evs.
func flightsOf(evs []tokensource.Event) []flight {
	var out []flight
	idx := map[uint64]int{}
	for _, ev := range evs {
		i, ok := idx[ev.Refresh]
		if ev.Kind == tokensource.RefreshStarted && !ok {
			idx[ev.Refresh] = len(out)
			out = append(out, flight{id: ev.Refresh})
			continue
		}
		if !ok {
			continue
		}
		switch ev.Kind {
		case tokensource.RefreshAttemptFailed:
			out[i].retried++
		case tokensource.RefreshSucceeded, tokensource.RefreshFailed, tokensource.RefreshUnchanged, tokensource.ReauthRequired:
			out[i].final, out[i].attempts = ev.Kind, ev.Attempts
		}
	}
	return out
}

// tokenRequests is how many Refresh calls the server has answered.
func (r *rig) tokenRequests() int64 {
	c := r.srv.Counters()
	return c.RefreshesOK + c.RefreshesFailed
}

// Sizes of TestIdPBlip.
const (
	blipCallers  = 200
	blipDeadline = 5 * time.Second
	blipOutage   = 500 * time.Millisecond
	// blipCallPeriod is how often each caller starts a call (when the
	// previous one has returned): 200 callers make up to 400 calls a second,
	// a load a loaded 2-core machine under -race serves well within the
	// deadline, so that a failed call is the outage's doing.
	blipCallPeriod = 500 * time.Millisecond
	// The backoff the refreshes pause by between attempts: the two pauses
	// of three attempts, at least blipBackoff/2 and blipBackoff, outlast
	// the blip, and at most blipBackoff and 2*blipBackoff stay well within
	// the callers' deadlines. (The library's default, 1 s, outlasts it too;
	// 400 ms keeps the test short.)
	blipBackoff    = 400 * time.Millisecond
	blipBackoffMax = 2 * time.Second
)

// TestIdPBlip: 200 callers (unary, server-stream, client-stream, bidi and
// direct Source.Token, with 5 s deadlines) go on calling while the token
// endpoint answers Unavailable for 0.5 s from the first token request after
// the token expired, and again after it was revoked (the server rejects it
// before its expiry: ForceExpire). With the attempts inside one refresh (3, the default) no
// call fails, each need makes one refresh, and the server sees no more token
// requests than the refreshes' attempts; with one attempt per refresh (the
// behaviour before WithRefreshAttempts), the same blips fail calls.
func TestIdPBlip(t *testing.T) {
	t.Run("3 attempts", func(t *testing.T) {
		res := runBlip(t, 3)
		if res.failed != 0 {
			t.Errorf("%d of %d calls failed during blips shorter than their deadlines; first ones:\n%s",
				res.failed, res.calls, strings.Join(res.samples, "\n"))
		}
		for _, ph := range res.phases {
			if len(ph.flights) != 1 {
				t.Errorf("%s: %d refreshes, want 1: %v", ph.name, len(ph.flights), ph.flights)
			}
			calls := 0
			for _, f := range ph.flights {
				calls += f.attempts
				switch {
				case f.final != tokensource.RefreshSucceeded:
					t.Errorf("%s: refresh %v, want it to succeed", ph.name, f)
				case f.attempts < 2 || f.attempts > 3:
					t.Errorf("%s: refresh %v; want 2 or 3 calls (the first meets the blip)", ph.name, f)
				case f.retried != f.attempts-1:
					t.Errorf("%s: refresh %v; want a RefreshAttemptFailed event before each call but the first", ph.name, f)
				}
			}
			if int64(calls) != ph.tokenRequests {
				t.Errorf("%s: the refreshes made %d Refresher calls, the server answered %d token requests", ph.name, calls, ph.tokenRequests)
			}
			if limit := int64(len(ph.flights) * 3); ph.tokenRequests > limit {
				t.Errorf("%s: %d token requests > %d refreshes × 3 attempts: a storm", ph.name, ph.tokenRequests, len(ph.flights))
			}
		}
	})
	t.Run("1 attempt (before WithRefreshAttempts)", func(t *testing.T) {
		res := runBlip(t, 1)
		if res.failed == 0 {
			t.Errorf("no call failed with one attempt per refresh: the blips did not reach the callers, so the test cannot tell")
		}
		for _, ph := range res.phases {
			if int64(len(ph.flights)) != ph.tokenRequests {
				t.Errorf("%s: %d refreshes, %d token requests; want one request per refresh", ph.name, len(ph.flights), ph.tokenRequests)
			}
		}
	})
}

// blipPhase is what one blip (around an expiry or a revocation) did.
type blipPhase struct {
	name            string
	flights         []flight
	tokenRequests   int64 // answered by the server during the phase
	waited          uint64
	unauthenticated int64
}

type blipResult struct {
	calls, failed int
	samples       []string
	phases        []blipPhase
}

// runBlip runs the blips of TestIdPBlip with WithRefreshAttempts(attempts).
func runBlip(t *testing.T, attempts int) blipResult {
	out := &idpOutage{}
	clk := newLiveClock()
	r := newRig(t, rigConfig{
		srvOpts: []testserver.Option{out.option()},
		srcOpts: []tokensource.Option{
			tokensource.WithClock(clk.Now),
			tokensource.WithBackoff(blipBackoff, blipBackoffMax),
			tokensource.WithRefreshAttempts(attempts),
		},
	})
	calls := newTally()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := range blipCallers {
		kind := c % len(callKinds)
		wg.Go(func() {
			// Spread the callers over the period, so that they do not
			// call in lockstep.
			first := time.NewTimer(rand.N(blipCallPeriod))
			defer first.Stop()
			select {
			case <-first.C:
			case <-stop:
				return
			}
			tick := time.NewTicker(blipCallPeriod)
			defer tick.Stop()
			for i := 0; ; i++ {
				took, err := r.makeCall(r.echo, kind, blipDeadline, false, fmt.Sprintf("c%d-%d", c, i))
				calls.add(kind, took, err)
				select {
				case <-tick.C:
				case <-stop:
					return
				}
			}
		})
	}
	stopped := false
	stopCallers := func() {
		if !stopped {
			stopped = true
			close(stop)
			wg.Wait()
		}
	}
	defer stopCallers()
	if err := calls.waitOK(r.ctx, blipCallers); err != nil {
		t.Fatalf("before the blips: %v", err)
	}

	var res blipResult
	phase := func(name string, fault func()) {
		t.Helper()
		evs := len(r.events.snapshot())
		succeeded := r.events.count(tokensource.RefreshSucceeded)
		requests, waited, unauth := r.tokenRequests(), r.src.Stats().Waited, r.srv.Counters().Unauthenticated
		out.blip(blipOutage)
		fault()
		// The blip is over once a refresh has succeeded; then every caller
		// makes about one more call.
		if err := r.events.waitCount(r.ctx, tokensource.RefreshSucceeded, succeeded+1); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		ok, _ := calls.snapshot()
		if err := calls.waitOK(r.ctx, ok+blipCallers); err != nil {
			t.Fatalf("%s, after the blip: %v", name, err)
		}
		ph := blipPhase{
			name:            name,
			flights:         flightsOf(r.events.snapshot()[evs:]),
			tokenRequests:   r.tokenRequests() - requests,
			waited:          r.src.Stats().Waited - waited,
			unauthenticated: r.srv.Counters().Unauthenticated - unauth,
		}
		res.phases = append(res.phases, ph)
		ok, failed := calls.snapshot()
		t.Logf("idp-blip | attempts %d | %s: %d refreshes: %v; %d token requests (%d answered Unavailable in all); callers blocked on a refresh %d, Unauthenticated answers %d; calls so far %d OK, %d failed",
			attempts, name, len(ph.flights), ph.flights, ph.tokenRequests, out.failed.Load(), ph.waited, ph.unauthenticated, ok, failed)
	}
	phase("expiry", func() {
		// The client's clock first, so that its callers wait for the
		// refresh rather than send the token the server no longer takes.
		clk.Advance(2 * time.Hour)
		r.srvClock.Advance(2 * time.Hour)
	})
	phase("revocation (ForceExpire)", r.srv.ForceExpire)
	stopCallers()

	res.calls, res.failed = calls.snapshot()
	res.calls += res.failed
	calls.mu.Lock()
	res.samples = slices.Clone(calls.samples)
	calls.mu.Unlock()
	t.Logf("idp-blip | attempts %d | %d callers, %v deadlines, blips of %v: %d calls, %d failed (%v); longest call %v",
		attempts, blipCallers, blipDeadline, blipOutage, res.calls, res.failed, calls, calls.longest.Round(time.Millisecond))
	// The phases were not vacuous: the callers met the expiry and the
	// revocation.
	if ph := res.phases[0]; ph.waited == 0 {
		t.Errorf("expiry: no caller waited for a refresh")
	}
	if ph := res.phases[1]; ph.unauthenticated == 0 {
		t.Errorf("revocation: the server rejected no token")
	}
	r.finish()
	return res
}

// Sizes of TestIdPPermanentOutage.
const (
	outageRefreshTimeout = 3 * time.Second
	outageBackoff        = 200 * time.Millisecond
	outageBackoffMax     = 800 * time.Millisecond
	// outageSlack is how much later than the refresh timeout a waiter may
	// return on a loaded machine.
	outageSlack   = 2 * time.Second
	outageWaiters = 200
	// outagePatient is the deadline of the callers that wait for ready:
	// long against the rest of the test.
	outagePatient = 30 * time.Second
)

// TestIdPPermanentOutage: the token endpoint answers Unavailable until the
// test brings it back.
//
//   - 200 callers that need a token are released together by about the
//     refresh timeout, with Unavailable, after one refresh of several
//     attempts.
//   - Later callers fail fast during the backoff (Unavailable, no Refresher
//     call).
//   - Calls with grpc.WaitForReady(true), per call and through
//     grpc.WithDefaultCallOptions, and direct Source.Token calls with
//     tokensource.WaitForReady wait instead, and succeed once the server is
//     back, within their deadlines: those that came during the backoff after
//     a failed refresh (they may reach the Source after it: nothing marks a
//     caller's arrival), and those that waited through a further refresh that
//     failed while the server was still down.
//   - Such a caller whose deadline ends first gets DeadlineExceeded, and
//     its message carries the last refresh error.
//
// The client's clock is the rig's fake one: the backoff ends when the test
// moves it, so that "during the backoff" does not depend on how fast a
// loaded machine runs the test. Attempts and the refresh timeout run on real
// time.
func TestIdPPermanentOutage(t *testing.T) {
	out := &idpOutage{}
	r := newRig(t, rigConfig{
		srvOpts: []testserver.Option{out.option()},
		srcOpts: []tokensource.Option{
			tokensource.WithRefreshTimeout(outageRefreshTimeout),
			tokensource.WithBackoff(outageBackoff, outageBackoffMax),
			// More attempts than fit into the refresh timeout: the refresh
			// ends when the next pause would outlast it.
			tokensource.WithRefreshAttempts(20),
		},
	})
	readyConn := r.dial(r.eps[0].Target(), append(interceptor.DialOptions(r.src),
		grpc.WithDefaultCallOptions(grpc.WaitForReady(true)))...)
	readyEcho := echov1.NewEchoServiceClient(readyConn)

	// The token expires while the identity provider is down.
	out.setDown(true)
	r.cliClock.Advance(2 * time.Hour)
	r.srvClock.Advance(2 * time.Hour)
	requests := r.tokenRequests()
	evs := len(r.events.snapshot())
	took := make([]time.Duration, outageWaiters)
	errs := make([]error, outageWaiters)
	var wg sync.WaitGroup
	for c := range outageWaiters {
		wg.Go(func() {
			took[c], errs[c] = r.makeCall(r.echo, c%len(callKinds), 10*time.Second, false, fmt.Sprintf("w%d", c))
		})
	}
	wg.Wait()
	longest := slices.Max(took)
	for c, err := range errs {
		kind := callKinds[c%len(callKinds)]
		switch {
		case c%len(callKinds) == directToken && err == nil:
			t.Errorf("waiter %d (%s) got a token during the outage", c, kind)
		case c%len(callKinds) != directToken && (status.Code(err) != codes.Unavailable || errors.Is(err, context.DeadlineExceeded)):
			t.Errorf("waiter %d (%s) after %v: %s, want Unavailable", c, kind, took[c], outcome(err))
		}
	}
	// The refresh ends when its next pause would outlast the refresh
	// timeout, or at the timeout: never sooner than a longest pause before it.
	if lo, hi := outageRefreshTimeout-outageBackoffMax, outageRefreshTimeout+outageSlack; longest < lo || longest > hi {
		t.Errorf("the waiters were released after %v at most, want between %v and %v (about the refresh timeout, %v)",
			longest, lo, hi, outageRefreshTimeout)
	}
	fl := flightsOf(r.events.snapshot()[evs:])
	reqs := r.tokenRequests() - requests
	// One request per attempt: each but the last is followed by a
	// RefreshAttemptFailed event. (The last may be cut off by the refresh
	// timeout before it reaches the server.)
	if len(fl) != 1 || fl[0].final != tokensource.RefreshFailed || reqs > int64(fl[0].retried+1) || reqs < 2 {
		t.Errorf("refreshes %v, %d token requests; want one failed refresh of several attempts, one request each", fl, reqs)
	}
	t.Logf("idp-outage | %d waiters released after %v at most (refresh timeout %v): %d Unavailable; %d refresh: %v, %d token requests",
		outageWaiters, longest.Round(time.Millisecond), outageRefreshTimeout, countCode(errs, codes.Unavailable), len(fl), fl, reqs)

	// During the backoff a call fails at once, without a Refresher call.
	started, waited, requests := r.events.count(tokensource.RefreshStarted), r.src.Stats().Waited, r.tokenRequests()
	var lastErr error
	for kind := range callKinds {
		took, err := r.makeCall(r.echo, kind, 10*time.Second, false, "fast")
		if kind == directToken {
			lastErr = err
			if err == nil {
				t.Errorf("Source.Token during the backoff got a token")
			}
		} else if status.Code(err) != codes.Unavailable {
			t.Errorf("%s during the backoff: %s, want Unavailable", callKinds[kind], outcome(err))
		}
		t.Logf("idp-outage | %s during the backoff: %s after %v", callKinds[kind], outcome(err), took.Round(time.Millisecond))
	}
	if n, w, q := r.events.count(tokensource.RefreshStarted)-started, r.src.Stats().Waited-waited, r.tokenRequests()-requests; n != 0 || w != 0 || q != 0 {
		t.Errorf("during the backoff: %d refreshes started, %d callers waited, %d token requests; want none", n, w, q)
	}
	if lastErr == nil {
		t.FailNow()
	}

	// A caller that waits for ready but whose deadline ends first (the
	// backoff does not end while the client's clock stands still).
	var short sync.WaitGroup
	for _, c := range []struct {
		name string
		echo echov1.EchoServiceClient
		kind int
	}{
		{"unary with grpc.WaitForReady(true)", r.echo, 0},
		{"bidi with grpc.WaitForReady(true)", r.echo, 3},
		{"unary with WaitForReady by default", readyEcho, 0},
		{"Source.Token with tokensource.WaitForReady", r.echo, directToken},
	} {
		short.Go(func() {
			took, err := r.makeCall(c.echo, c.kind, time.Second, c.echo == r.echo, "short")
			t.Logf("idp-outage | %s, 1 s deadline: %s after %v: %v", c.name, outcome(err), took.Round(time.Millisecond), err)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("%s whose deadline ended during the outage: %v, want context.DeadlineExceeded", c.name, err)
			}
			if c.kind == directToken {
				if !errors.Is(err, lastErr) {
					t.Errorf("%s: %v does not match the last refresh error %v", c.name, err, lastErr)
				}
				return
			}
			if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(status.Convert(err).Message(), lastErr.Error()) {
				t.Errorf("%s: %s %q, want DeadlineExceeded whose message carries the last refresh error %q",
					c.name, outcome(err), status.Convert(err).Message(), lastErr)
			}
		})
	}
	short.Wait()

	// Patient callers that wait for ready: the first group waits through a
	// backoff and a refresh that fails (the server is still down when the
	// backoff ends), the second is called during the backoff after it.
	type group struct {
		name string
		took []time.Duration
		errs []error
		wg   sync.WaitGroup
	}
	type spec struct {
		echo echov1.EchoServiceClient
		kind int
		wfr  bool // grpc.WaitForReady(true) or tokensource.WaitForReady on the call
	}
	var specs []spec
	for kind := range callKinds {
		for range 5 {
			specs = append(specs, spec{r.echo, kind, true})
			if kind != directToken {
				specs = append(specs, spec{readyEcho, kind, false}) // by default
			}
		}
	}
	launch := func(name string) *group {
		g := &group{name: name, took: make([]time.Duration, len(specs)), errs: make([]error, len(specs))}
		for i, sp := range specs {
			g.wg.Go(func() {
				g.took[i], g.errs[i] = r.makeCall(sp.echo, sp.kind, outagePatient, sp.wfr, name)
			})
		}
		return g
	}
	throughFailure := launch("through a failed refresh")
	failedBefore := r.events.count(tokensource.RefreshFailed)
	r.cliClock.Advance(2 * time.Second) // the backoff ends: the next refresh fails too
	if err := r.events.waitCount(r.ctx, tokensource.RefreshFailed, failedBefore+1); err != nil {
		t.Fatal(err)
	}
	throughBackoff := launch("after a failed refresh")
	out.setDown(false) // the identity provider is back
	r.cliClock.Advance(2 * time.Second)
	recoveredAt := time.Now()
	for _, g := range []*group{throughFailure, throughBackoff} {
		g.wg.Wait()
		failed := 0
		var sample error
		for _, err := range g.errs {
			if err != nil {
				failed++
				sample = err
			}
		}
		if failed > 0 {
			t.Errorf("%d of %d callers waiting for ready %s failed; one: %s: %v", failed, len(g.errs), g.name, outcome(sample), sample)
		}
		t.Logf("idp-outage | %d callers waiting for ready %s: %d failed, longest wait %v; all had returned %v after the server was back",
			len(g.errs), g.name, failed, slices.Max(g.took).Round(time.Millisecond), time.Since(recoveredAt).Round(time.Millisecond))
	}
	if err := r.ping(r.ctx); err != nil {
		t.Errorf("call after the outage: %s", outcome(err))
	}
	t.Logf("idp-outage | refreshes: %v; %d token requests answered Unavailable", flightsOf(r.events.snapshot()[evs:]), out.failed.Load())
	r.finish()
}

func countCode(errs []error, code codes.Code) int {
	n := 0
	for _, err := range errs {
		if err != nil && status.Code(err) == code {
			n++
		}
	}
	return n
}
