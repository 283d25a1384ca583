package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	tokenrefreshotel "github.com/tokenrefresh/grpc-tokenrefresh/otel"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// revocationTTL is the token lifetime of the revocation phase: long enough
// that only the revocation can make the Source refresh.
const revocationTTL = time.Hour

// runDemo runs the phases cfg names, printing each one's progress and table
// to out, and returns the summary. An error means the demo could not run at
// all (no server, no metrics listener); a phase that ran and failed is in
// the summary instead.
func runDemo(ctx context.Context, cfg config, out io.Writer) (*summary, error) {
	sum := &summary{Embedded: cfg.embedded(), Target: cfg.addr}
	var m *metrics
	if cfg.metricsAddr != "" {
		var err error
		if m, err = startMetrics(cfg.metricsAddr); err != nil {
			return nil, err
		}
		defer m.close()
		fmt.Fprintf(out, "metrics: %s (Prometheus text, while the demo runs)\n", m.url)
	}
	type step struct {
		name string
		run  func() (*phaseReport, error)
	}
	var steps []step
	for _, p := range cfg.phases {
		switch p {
		case phaseEarly, phaseRevocation, phaseOutage:
			steps = append(steps, step{p, func() (*phaseReport, error) { return runSourcePhase(ctx, cfg, p, m, out) }})
		case phaseFleet:
			steps = append(steps, step{"fleet-file", func() (*phaseReport, error) { return runFleetPhase(ctx, cfg, storeFile, out) }})
			if cfg.redis != "" {
				steps = append(steps, step{"fleet-redis", func() (*phaseReport, error) { return runFleetPhase(ctx, cfg, storeRedis, out) }})
			}
		}
	}
	for i, s := range steps {
		fmt.Fprintf(out, "\nphase %d/%d %s\n", i+1, len(steps), s.name)
		rep, err := s.run()
		if err != nil {
			return nil, fmt.Errorf("phase %s: %w", s.name, err)
		}
		rep.judge()
		rep.print(out)
		sum.Phases = append(sum.Phases, rep)
		if rep.Interrupted {
			sum.Interrupted = true
			break
		}
	}
	sum.judge()
	sum.print(out)
	return sum, nil
}

// conn is how a phase reaches the server: the embedded one, started for the
// phase, or the one -addr names.
type conn struct {
	srv    *testserver.Server // nil with -addr
	ep     *testserver.Endpoint
	target string
	creds  credentials.TransportCredentials
	caPEM  []byte // the embedded server's certificate
	iopts  []interceptor.Option
}

// dial starts the embedded server with tokens that live ttl (and the
// options extra), or prepares to reach the -addr one. stop ends what dial
// started.
func dial(ctx context.Context, cfg config, ttl time.Duration, extra ...testserver.Option) (*conn, error) {
	if !cfg.embedded() {
		creds, iopts, err := transportCreds(cfg.insecure, cfg.tlsCA)
		if err != nil {
			return nil, fmt.Errorf("-tls-ca: %w", err)
		}
		return &conn{target: cfg.addr, creds: creds, iopts: iopts}, nil
	}
	sopts := []testserver.Option{
		testserver.WithAccessTokenTTL(ttl),
		testserver.WithRefreshLatency(cfg.refreshLatency),
		testserver.WithUser(cfg.user, cfg.password),
	}
	if cfg.failRefreshes > 0 {
		sopts = append(sopts, testserver.WithRefreshFailures(cfg.failRefreshes, codes.Unavailable))
	}
	srv := testserver.New(append(sopts, extra...)...)
	ep, err := srv.Start(ctx, testserver.TLS())
	if err != nil {
		return nil, err
	}
	return &conn{srv: srv, ep: ep, target: ep.Target(), creds: ep.ClientCredentials(), caPEM: ep.CertificatePEM()}, nil
}

func (c *conn) stop() {
	if c.ep != nil {
		c.ep.Stop()
	}
}

// serverFigures snapshots the embedded server's counters; nil with -addr.
func (c *conn) serverFigures() *serverFigures {
	if c.srv == nil {
		return nil
	}
	k := c.srv.Counters()
	return &serverFigures{
		Logins: k.Logins, Refreshes: k.RefreshesOK, RefreshesRefused: k.RefreshesFailed,
		Unauthenticated: k.Unauthenticated,
	}
}

// runSourcePhase runs an in-process phase: cfg.workers callers on one
// connection and one Source. In the revocation phase the server revokes
// every access token halfway through; in the idp-outage phase its token
// endpoint goes down twice (see idpOutage.play).
func runSourcePhase(ctx context.Context, cfg config, phase string, m *metrics, out io.Writer) (*phaseReport, error) {
	ttl := cfg.ttl
	if phase == phaseRevocation {
		ttl = revocationTTL
	}
	var outage *idpOutage
	var extra []testserver.Option
	if phase == phaseOutage {
		outage = &idpOutage{}
		extra = append(extra, testserver.WithRefreshFailureFunc(outage.fail))
	}
	c, err := dial(ctx, cfg, ttl, extra...)
	if err != nil {
		return nil, err
	}
	defer c.stop()
	rep := newPhaseReport(phase, 1, cfg.workers, c.target)
	rep.RefreshAttempts = cfg.refreshAttempts
	fmt.Fprintln(out, phaseHeader(cfg, phase, c))

	tracker := &tokenTracker{}
	// The Source's recoveries from the outages, by cause, for the script.
	recovered := make(chan string, 2)
	if outage != nil {
		tracker.onRefreshed = func(t time.Time) {
			if cause := outage.refreshed(t); cause != "" {
				select {
				case recovered <- cause:
				default:
				}
			}
		}
	}
	iopts := c.iopts
	observe := tracker.observe
	hooks := tokensource.RefreshHooks{Wait: tracker.wait}
	sopts := []tokensource.Option{tokensource.WithRefreshAttempts(cfg.refreshAttempts)}
	var obs *tokenrefreshotel.Observer
	if m != nil {
		if obs, err = m.observer(phase); err != nil {
			return nil, err
		}
		observe = func(ev tokensource.Event) {
			tracker.observe(ev)
			obs.Observe(ev)
		}
		// One WithRefreshHooks replaces another: the tracker's wait hook
		// goes next to the Observer's.
		oh := obs.Hooks()
		hooks.Context, hooks.End = oh.Context, oh.End
		if oh.Wait != nil {
			hooks.Wait = func(ctx context.Context, refresh uint64) {
				oh.Wait(ctx, refresh)
				tracker.wait(ctx, refresh)
			}
		}
		iopts = append(slices.Clip(iopts), obs.InterceptorOption())
	}
	sopts = append(sopts, tokensource.WithRefreshHooks(hooks), tokensource.WithObserver(observe))
	cl, err := newClient(ctx, c.target, c.creds, cfg.user, cfg.password, cfg.callTimeout, iopts, sopts...)
	if err != nil {
		return nil, err
	}
	defer cl.close()
	if obs != nil {
		reg, err := obs.ObserveStats(cl.src)
		if err != nil {
			return nil, err
		}
		defer func() { _ = reg.Unregister() }()
	}

	if phase == phaseRevocation && c.srv != nil {
		revoke := time.AfterFunc(cfg.duration/2, c.srv.ForceExpire)
		defer revoke.Stop()
	}
	var (
		scriptDone   chan struct{} // closed when the outages have played out
		stopScript   context.CancelFunc
		scriptPlayed bool
	)
	if outage != nil && c.srv != nil {
		var sctx context.Context
		sctx, stopScript = context.WithTimeout(ctx, outageTimeLimit(cfg))
		defer stopScript()
		scriptDone = make(chan struct{})
		go func() {
			defer close(scriptDone)
			scriptPlayed = outage.play(sctx, c.srv, recovered)
		}()
	}
	// The revocation phase also sends HTTP requests with the same Source:
	// one refresh between the two transports.
	var web *httpLoad
	stopWeb := make(chan struct{})
	if phase == phaseRevocation && c.srv != nil {
		web = startHTTPLoad(ctx, c.srv, cl.src, httpCallers(cfg.workers), cfg.callTimeout, stopWeb)
	}
	var total counters
	p := newProgress(out, cfg.tty, func() progressFigures { return cl.figures(&total) })
	loadStart := time.Now()
	res, elapsed, interrupted := runLoad(ctx, cfg.workers, cfg.duration, cfg.callTimeout, cfg.interval, scriptDone,
		echov1.NewEchoServiceClient(cl.cc), &total, p.tick)
	p.done()
	close(stopWeb)
	if web != nil {
		rep.HTTP = web.wait()
	}
	if scriptDone != nil {
		stopScript()
		<-scriptDone
	}

	f := cl.figures(&total)
	st := cl.src.Stats()
	t := tracker.summary(time.Now())
	rep.setLoad(&res, elapsed, interrupted)
	rep.Retried = cl.retried.Load()
	rep.Waited = f.Waited
	rep.MaxWaiters = t.maxWaiters
	rep.LongestWait = t.longestWait
	rep.Refreshes = int64(t.refreshes)
	rep.Early, rep.Forced, rep.Expired = t.early, t.forced, t.expired
	rep.RefreshFailures = int64(st.Failures - cl.base.Failures)
	rep.FailedRequests = int64(t.failedCalls)
	rep.AttemptsRetried = t.attemptsRetried
	for _, fl := range t.flights {
		rep.Attempts = append(rep.Attempts, fl.attempts)
	}
	rep.Lifetimes = t.lifetimes
	rep.Server = c.serverFigures()
	if outage != nil {
		rep.Outages = outageReports(outage.snapshot(), t.flights, loadStart)
		rep.OutagesIncomplete = !scriptPlayed && !interrupted
	}
	if t.lastFailure != "" {
		rep.Errors = append(rep.Errors, "last refresh error: "+t.lastFailure)
	}
	if cfg.phaseDone != nil {
		cfg.phaseDone(phase, m.metricsURL())
	}
	return rep, nil
}

// httpCallers is how many HTTP callers go beside workers gRPC callers.
func httpCallers(workers int) int { return max(1, workers/4) }

// outageTimeLimit bounds the idp-outage phase's script: the first outage
// starts with the first token's early refresh (at about two thirds of its
// lifetime), and each takes a few seconds to play out.
func outageTimeLimit(cfg config) time.Duration {
	return cfg.duration + cfg.ttl + 15*time.Second
}

// outageReports describes each outage and the refreshes that ended during
// it or at the recovery from it. Times are from loadStart.
func outageReports(windows []outageWindow, flights []flightRecord, loadStart time.Time) []outageReport {
	var reps []outageReport
	for _, w := range windows {
		r := outageReport{
			Cause: w.cause, At: w.start.Sub(loadStart).Seconds(), Seconds: w.end.Sub(w.start).Seconds(),
			FailedRequests: w.failed,
		}
		last := w.recovered
		if !last.IsZero() {
			r.RecoveredAfter = w.recovered.Sub(w.start).Seconds()
		} else {
			last = time.Now()
		}
		for _, f := range flights {
			if f.end.Before(w.start) || f.end.After(last) {
				continue
			}
			r.Attempts = append(r.Attempts, f.attempts)
			r.LongestWait = max(r.LongestWait, f.wait)
			if !f.ok {
				r.FailedRefreshes++
			}
		}
		reps = append(reps, r)
	}
	return reps
}

func phaseHeader(cfg config, phase string, c *conn) string {
	where := "the embedded test server at " + c.target + " (TLS"
	if c.srv != nil {
		ttl := cfg.ttl
		if phase == phaseRevocation {
			ttl = revocationTTL
		}
		where += ", access tokens live " + ttl.String()
		if cfg.refreshLatency > 0 {
			where += fmt.Sprintf(", refreshes take %v", cfg.refreshLatency)
		}
		if cfg.failRefreshes > 0 {
			where += fmt.Sprintf(", the first %d refreshes fail", cfg.failRefreshes)
		}
	} else {
		where = "the server at " + c.target + " ("
		if cfg.insecure {
			where += "no TLS"
		} else {
			where += "TLS"
		}
	}
	where += ")"
	switch phase {
	case phaseOutage:
		attempts := fmt.Sprintf("each refresh makes up to %d token requests, %v apart at first (WithBackoff, jittered, doubling)",
			cfg.refreshAttempts, outageBackoff)
		if cfg.refreshAttempts == 1 {
			attempts = fmt.Sprintf("each refresh makes 1 token request; after a failed one the Source backs off from %v", outageBackoff)
		}
		return fmt.Sprintf("  %d callers for at least %v on one connection and one Source against %s:\n"+
			"  %s;\n"+
			"  the token endpoint answers Unavailable for %v from the early refresh of the first token, shortly before it expires,\n"+
			"  and for %v from the moment, %v after the Source recovered, when the server revokes every access token",
			cfg.workers, cfg.duration, where, attempts, outageLength, outageLength, revokeAfter)
	case phaseEarly:
		return fmt.Sprintf("  %d callers for %v on one connection and one Source (library defaults) against %s:\n"+
			"  tokens are renewed in the background before they expire, so no call is rejected and none waits",
			cfg.workers, cfg.duration, where)
	case phaseRevocation:
		if c.srv != nil {
			return fmt.Sprintf("  %d callers for %v on one connection and one Source against %s,\n"+
				"  and %d HTTP callers with the same Source (httpauth) against the server's HTTP handler:\n"+
				"  after %v the server revokes every access token it issued; one refresh shared by gRPC and HTTP,\n"+
				"  every rejected call and request retried",
				cfg.workers, cfg.duration, where, httpCallers(cfg.workers), cfg.duration/2)
		}
		return fmt.Sprintf("  %d callers for %v on one connection and one Source against %s:\n"+
			"  after %v the server revokes every access token it issued; one shared refresh, every rejected call retried",
			cfg.workers, cfg.duration, where, cfg.duration/2)
	}
	return ""
}
