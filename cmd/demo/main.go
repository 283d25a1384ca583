// Command demo proves, in one run of about 30 seconds, what grpc-tokenrefresh
// promises: callers never see an expired token, a token the server revokes
// costs one shared refresh and no failed call, a token endpoint that is down
// for a second fails no call, and a fleet of processes sharing one
// credential makes one refresh per expiry between them.
//
// Usage:
//
//	demo [flags]
//
// By default it starts the bundled test server in-process on 127.0.0.1 with
// TLS and access tokens that live 3 s, and runs four phases of 6 s or a
// little more each, every one with 200 concurrent callers making all four
// kinds of RPC (unary, server, client and bidirectional streams):
//
//  1. early-refresh: one connection, one tokensource.Source with the
//     library's defaults. Tokens are renewed in the background before they
//     expire, so the server rejects no call and no caller waits for a
//     refresh.
//  2. revocation: tokens live an hour, and halfway through the server
//     revokes every access token it has issued. The calls in flight are
//     rejected, wait for one shared forced refresh and are retried; the
//     application sees none of it. HTTP callers (a quarter as many) send
//     requests with the same Source through httpauth to the server's HTTP
//     handler meanwhile: the one forced refresh serves both transports.
//  3. idp-outage: one connection and one Source, whose refreshes make up to
//     -refresh-attempts token requests (the library's default) with the
//     library's default backoff (from 1 s) between them. The token endpoint answers
//     Unavailable for 1 s from the early refresh of the first token, so
//     that the token expires during the outage, and again for 1 s from the
//     moment the server revokes every access token, half a second after the
//     Source has recovered. A refresh tries again until the endpoint is
//     back; its callers wait, and no call fails. The table shows the token
//     requests each refresh made and the longest time a caller waited. The
//     phase runs at least -duration and until both outages are over. With
//     -refresh-attempts 1 the outages fail calls, and the phase fails.
//  4. fleet-file: 4 worker processes (this binary, started again) share one
//     credential through a tokensource.FileStore, each with its own Source
//     and connection, after one login that seeds the store. The phase
//     starts once every process is connected and holds that token. Between
//     them they make one refresh per token lifetime, and the server never
//     sees a rotated refresh token twice. With -redis ADDR a fifth phase,
//     fleet-redis, does the same through tokensource/redisstore on that
//     Redis server.
//
// While a phase runs, one progress line a second shows the calls so far, the
// rate, the failures, the refreshes and the callers that have waited for a
// refresh; on a terminal the line is redrawn in place. Each phase ends with a
// table and a verdict. The exit status is 0 when every phase passed, 1 when
// one failed (or the demo could not run) and 2 for a bad command line. With
// -json the progress goes to stderr and stdout gets one JSON object with
// every phase's figures, for scripts.
//
// With -metrics-addr the demo serves the OpenTelemetry metrics of its
// in-process Sources (package tokenrefreshotel, through OpenTelemetry's
// Prometheus exporter) as Prometheus text on http://ADDR/metrics while it
// runs.
//
// With -addr the demo drives an external server instead, such as
// cmd/testserver:
//
//	testserver -addr 127.0.0.1:50051 -access-ttl 3s -tls -tls-cert-out /tmp/ts.pem
//	demo -addr 127.0.0.1:50051 -tls-ca /tmp/ts.pem
//
// The revocation and idp-outage phases need the embedded server and are
// left out, the server-side counters are not available, and the demo's
// -ttl, -refresh-latency and -fail-refreshes are refused: set the server's
// -access-ttl, -refresh-latency and -fail-refreshes instead.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// Exit statuses of run.
const (
	exitPass  = 0
	exitFail  = 1
	exitUsage = 2
)

func main() {
	// A fleet phase starts this binary again as its worker processes.
	if spec := os.Getenv(envWorker); spec != "" {
		os.Exit(runWorker(spec, os.Stdin, os.Stdout, os.Stderr))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run parses args, runs the demo and prints the progress and the summary to
// stdout (with -json: the progress to stderr, the summary to stdout as
// JSON). It returns the exit status: exitPass, exitFail (a phase failed or
// the demo could not run) or exitUsage. Cancelling ctx (Ctrl-C) ends the
// demo early; the summary of what ran is still printed, and it fails.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return exitPass
	case err != nil:
		return exitUsage
	}
	out := stdout
	if cfg.json {
		out = stderr
	}
	cfg.tty = isTerminal(out)
	sum, err := runDemo(ctx, cfg, out)
	if err != nil {
		fmt.Fprintln(stderr, "demo:", err)
		return exitFail
	}
	if cfg.json {
		if err := sum.writeJSON(stdout); err != nil {
			fmt.Fprintln(stderr, "demo:", err)
			return exitFail
		}
	}
	if !sum.Pass {
		return exitFail
	}
	return exitPass
}

// Phase names, in the order they run.
const (
	phaseEarly      = "early-refresh"
	phaseRevocation = "revocation"
	phaseOutage     = "idp-outage"
	phaseFleet      = "fleet" // fleet-file, and fleet-redis with -redis
)

var allPhases = []string{phaseEarly, phaseRevocation, phaseOutage, phaseFleet}

// embeddedPhases need the embedded server: they act on it (revoke its
// tokens, take its token endpoint down) while the callers run.
var embeddedPhases = []string{phaseRevocation, phaseOutage}

// config is the parsed command line.
type config struct {
	workers        int
	duration       time.Duration // of each phase
	ttl            time.Duration
	phases         []string
	processes      int
	redis          string // -redis: host:port, or a unix socket path
	metricsAddr    string
	json           bool
	refreshLatency time.Duration
	failRefreshes  int
	callTimeout    time.Duration
	// refreshAttempts is every Source's WithRefreshAttempts.
	refreshAttempts int

	addr           string // external server; empty: embedded
	tlsCA          string
	insecure       bool
	user, password string

	// Not flags.
	tty      bool          // redraw the progress line in place
	interval time.Duration // between progress lines
	// phaseDone, if set, runs at the end of each phase while its Source and
	// the metrics endpoint are still up (tests scrape the metrics there).
	phaseDone func(phase string, metricsURL string)
}

func (c config) embedded() bool { return c.addr == "" }

func (c config) runs(phase string) bool { return slices.Contains(c.phases, phase) }

// embeddedOnly are the flags that configure the embedded server, and the
// flag of cmd/testserver that does the same for an external one.
var embeddedOnly = []struct{ name, server string }{
	{"ttl", "-access-ttl"},
	{"refresh-latency", "-refresh-latency"},
	{"fail-refreshes", "-fail-refreshes"},
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	c := config{interval: time.Second}
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: demo [flags]\n\n"+
			"Runs concurrent callers against the test server in four phases (early refresh,\n"+
			"a server-side revocation, an outage of the token endpoint, a fleet of processes\n"+
			"sharing one credential) and reports whether any call failed or any refresh was\n"+
			"one too many.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	phases := strings.Join(allPhases, ",")
	fs.IntVar(&c.workers, "workers", 200, "concurrent callers in each phase (in a fleet phase, shared among the processes)")
	fs.DurationVar(&c.duration, "duration", 6*time.Second, "how long each phase runs")
	fs.DurationVar(&c.ttl, "ttl", 3*time.Second, "lifetime of access tokens (embedded server; the revocation phase uses 1h; with -addr, the server's -access-ttl decides)")
	fs.StringVar(&phases, "phases", phases, "comma-separated `list` of the phases to run: "+strings.Join(allPhases, ", "))
	fs.IntVar(&c.processes, "processes", 4, "worker processes in a fleet phase")
	fs.StringVar(&c.redis, "redis", "", "`address` (host:port, or a unix socket path) of a Redis server: also run the fleet on tokensource/redisstore")
	fs.StringVar(&c.metricsAddr, "metrics-addr", "", "serve the in-process Sources' OpenTelemetry metrics as Prometheus text on http://`host:port`/metrics")
	fs.BoolVar(&c.json, "json", false, "print the summary to stdout as one JSON object (the progress goes to stderr)")
	fs.DurationVar(&c.refreshLatency, "refresh-latency", 0, "delay the server adds to every token refresh (embedded server; with -addr, the server's -refresh-latency decides)")
	fs.IntVar(&c.failRefreshes, "fail-refreshes", 0, "fail the first `N` token refreshes of each phase with Unavailable (embedded server; with -addr, the server's -fail-refreshes decides)")
	fs.DurationVar(&c.callTimeout, "call-timeout", 10*time.Second, "deadline of each RPC")
	fs.IntVar(&c.refreshAttempts, "refresh-attempts", tokensource.DefaultRefreshAttempts, "every Source makes at most `N` token requests per refresh when they fail transiently (tokensource.WithRefreshAttempts); with 1 a failed request fails the refresh and the calls waiting for it")
	fs.StringVar(&c.addr, "addr", "", "`host:port` of an external test server (default: start one in-process)")
	fs.StringVar(&c.tlsCA, "tls-ca", "", "with -addr, PEM `file` of the CA that signed the server's certificate (default: system roots)")
	fs.BoolVar(&c.insecure, "insecure", false, "with -addr, connect without TLS (tokens are then sent in clear text)")
	fs.StringVar(&c.user, "user", testserver.DefaultUser, "user to log in as")
	fs.StringVar(&c.password, "password", testserver.DefaultPassword, "the user's password")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	fail := func(format string, a ...any) (config, error) {
		err := fmt.Errorf(format, a...)
		fmt.Fprintf(stderr, "demo: %v\n", err)
		fs.Usage()
		return c, err
	}
	for p := range strings.SplitSeq(phases, ",") {
		p = strings.TrimSpace(p)
		switch {
		case p == "":
		case !slices.Contains(allPhases, p):
			return fail("-phases: unknown phase %q (the phases are %s)", p, strings.Join(allPhases, ", "))
		case !slices.Contains(c.phases, p):
			c.phases = append(c.phases, p)
		}
	}
	// Phases always run in their documented order.
	slices.SortFunc(c.phases, func(a, b string) int { return slices.Index(allPhases, a) - slices.Index(allPhases, b) })
	switch {
	case fs.NArg() > 0:
		return fail("unexpected arguments: %q", fs.Args())
	case len(c.phases) == 0:
		return fail("-phases names no phase")
	case c.workers < 1:
		return fail("-workers must be at least 1, got %d", c.workers)
	case c.duration <= 0:
		return fail("-duration must be positive, got %v", c.duration)
	case c.ttl <= 0:
		return fail("-ttl must be positive, got %v", c.ttl)
	case c.processes < 1:
		return fail("-processes must be at least 1, got %d", c.processes)
	case c.runs(phaseFleet) && c.workers < c.processes:
		return fail("-workers (%d) must be at least -processes (%d): every process needs a caller", c.workers, c.processes)
	case c.refreshLatency < 0:
		return fail("-refresh-latency must not be negative, got %v", c.refreshLatency)
	case c.failRefreshes < 0:
		return fail("-fail-refreshes must not be negative, got %d", c.failRefreshes)
	case c.callTimeout <= 0:
		return fail("-call-timeout must be positive, got %v", c.callTimeout)
	case c.refreshAttempts < 1:
		return fail("-refresh-attempts must be at least 1, got %d", c.refreshAttempts)
	case c.user == "":
		return fail("-user must not be empty")
	case set["redis"] && c.redis == "":
		return fail("-redis must not be empty")
	case c.redis != "" && !c.runs(phaseFleet):
		return fail("-redis applies to the fleet phase, which -phases leaves out")
	}
	if c.embedded() {
		if set["tls-ca"] || set["insecure"] {
			return fail("-tls-ca and -insecure apply only with -addr")
		}
		return c, nil
	}
	for _, f := range embeddedOnly {
		if set[f.name] {
			return fail("-%s configures the embedded server; with -addr set it on the server instead (cmd/testserver %s)", f.name, f.server)
		}
	}
	if c.insecure && c.tlsCA != "" {
		return fail("-insecure and -tls-ca are mutually exclusive")
	}
	for _, p := range embeddedPhases {
		if c.runs(p) && set["phases"] {
			return fail("the %s phase needs the embedded server (%s); leave it out of -phases with -addr", p, embeddedWhy[p])
		}
	}
	c.phases = slices.DeleteFunc(c.phases, func(p string) bool { return slices.Contains(embeddedPhases, p) })
	return c, nil
}

// embeddedWhy says what an embedded-only phase does to the server.
var embeddedWhy = map[string]string{
	phaseRevocation: "it revokes tokens on the server",
	phaseOutage:     "it takes the server's token endpoint down",
}

// isTerminal reports whether w is a character device, such as a terminal,
// where the progress line can be redrawn with a carriage return.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
