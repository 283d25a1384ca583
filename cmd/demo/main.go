// Command demo shows grpc-tokenrefresh doing its job under load: many
// concurrent clients make every kind of RPC through one tokensource.Source
// while short-lived access tokens keep expiring, and none of them sees an
// expired token.
//
// Usage:
//
//	demo [flags]
//
// By default it starts the bundled test server in-process on 127.0.0.1 with
// TLS and access tokens that live 2 s, then runs 200 workers for 10 s, all
// sharing one ClientConn, one Source and the interceptors of package
// interceptor. The Source logs in through the test server's AuthService over
// that same connection and follows its rotating refresh tokens.
//
// The demo's Source has no expiry leeway and, unless -early-refresh is
// given, no early refresh: every token is used right up to its expiry, so
// the server really does reject calls at each expiry and the client must
// absorb those rejections (one shared refresh, one retry per call). With
// -early-refresh the Source renews tokens in the background before they
// expire, which is what the library does by default.
//
// While it runs, one progress line a second shows the RPCs done, the rate,
// the refreshes so far and the callers waiting on a refresh right now; on a
// terminal the line is redrawn in place. At the end a summary reports the
// RPCs that succeeded and failed (by status code), the Unauthenticated
// answers and how many of them the application saw, token expiries against
// refreshes, latency percentiles and a verdict. The exit status is 0 for a
// PASS (no failed RPC, one refresh per expiry), 1 for a FAIL and 2 for a bad
// command line.
//
// With -addr the demo drives an external server instead, such as
// cmd/testserver:
//
//	testserver -addr 127.0.0.1:50051 -access-ttl 2s -tls -tls-cert-out /tmp/ts.pem
//	demo -addr 127.0.0.1:50051 -tls-ca /tmp/ts.pem
//
// The server-side counters are then not available, and -ttl,
// -refresh-latency and -fail-refreshes must be set on the server instead.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
)

// Exit statuses of run.
const (
	exitPass  = 0
	exitFail  = 1
	exitUsage = 2
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run parses args, runs the demo and prints the progress and the summary to
// stdout. It returns the exit status: exitPass, exitFail (an RPC failed, the
// refresh count is off, or the demo could not run) or exitUsage. Cancelling
// ctx (Ctrl-C) ends the load early; the summary is still printed.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return exitPass
	case err != nil:
		return exitUsage
	}
	cfg.tty = isTerminal(stdout)
	rep, err := runDemo(ctx, cfg, stdout)
	if err != nil {
		fmt.Fprintln(stderr, "demo:", err)
		return exitFail
	}
	if !rep.pass {
		return exitFail
	}
	return exitPass
}

// config is the parsed command line.
type config struct {
	workers        int
	duration       time.Duration
	ttl            time.Duration
	refreshLatency time.Duration
	failRefreshes  int
	earlyRefresh   time.Duration
	callTimeout    time.Duration

	addr           string // external server; empty: embedded
	tlsCA          string
	insecure       bool
	user, password string

	// Not flags.
	tty      bool          // redraw the progress line in place
	interval time.Duration // between progress lines
}

func (c config) embedded() bool { return c.addr == "" }

// embeddedOnly are the flags that configure the embedded server.
var embeddedOnly = []string{"ttl", "refresh-latency", "fail-refreshes"}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	c := config{interval: time.Second}
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: demo [flags]\n\n"+
			"Runs concurrent clients through one token source against the test server while\n"+
			"access tokens expire, and reports whether any call failed.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	fs.IntVar(&c.workers, "workers", 200, "number of concurrent clients")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "how long to run the load")
	fs.DurationVar(&c.ttl, "ttl", 2*time.Second, "lifetime of access tokens (embedded server)")
	fs.DurationVar(&c.refreshLatency, "refresh-latency", 0, "delay the server adds to every token refresh (embedded server)")
	fs.IntVar(&c.failRefreshes, "fail-refreshes", 0, "fail the first `N` token refreshes with Unavailable (embedded server)")
	fs.DurationVar(&c.earlyRefresh, "early-refresh", 0, "renew tokens in the background this long before they expire (0: let them expire)")
	fs.DurationVar(&c.callTimeout, "call-timeout", 10*time.Second, "deadline of each RPC")
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
	switch {
	case fs.NArg() > 0:
		return fail("unexpected arguments: %q", fs.Args())
	case c.workers < 1:
		return fail("-workers must be at least 1, got %d", c.workers)
	case c.duration <= 0:
		return fail("-duration must be positive, got %v", c.duration)
	case c.ttl <= 0:
		return fail("-ttl must be positive, got %v", c.ttl)
	case c.refreshLatency < 0:
		return fail("-refresh-latency must not be negative, got %v", c.refreshLatency)
	case c.failRefreshes < 0:
		return fail("-fail-refreshes must not be negative, got %d", c.failRefreshes)
	case c.earlyRefresh < 0:
		return fail("-early-refresh must not be negative, got %v", c.earlyRefresh)
	case c.callTimeout <= 0:
		return fail("-call-timeout must be positive, got %v", c.callTimeout)
	case c.user == "":
		return fail("-user must not be empty")
	}
	if c.embedded() {
		if set["tls-ca"] || set["insecure"] {
			return fail("-tls-ca and -insecure apply only with -addr")
		}
	} else {
		for _, name := range embeddedOnly {
			if set[name] {
				return fail("-%s configures the embedded server; with -addr set it on the server instead", name)
			}
		}
		if c.insecure && c.tlsCA != "" {
			return fail("-insecure and -tls-ca are mutually exclusive")
		}
	}
	return c, nil
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
