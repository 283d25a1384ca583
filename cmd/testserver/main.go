// Command testserver runs the bundled test gRPC server of grpc-tokenrefresh
// as a program, so any client (grpcurl included, thanks to server reflection)
// can exercise token expiry, rotation and refresh failures against it.
//
// Usage:
//
//	testserver [flags]
//
// Once it accepts connections it prints one line on standard output,
// "listening on ADDR (...)", the parentheses saying what a client needs to
// know (TLS and the certificate file, the user, the token lifetimes, the
// injected faults). It logs to standard error: at the default level (info)
// logins, every rejected token with the method and the reason, and failed
// refreshes; at debug level every refresh as well. On SIGINT or SIGTERM it
// stops gracefully: it lets RPCs in flight finish (for at most
// testserver.DefaultStopTimeout), releases its port and exits with status 0.
//
// Run it with -h for the flags. For example, to serve TLS with access tokens
// that live ten seconds and write the certificate clients must trust:
//
//	testserver -access-ttl 10s -tls -tls-cert-out /tmp/testserver.pem
//
// `make testserver` builds it into bin/ and runs it in place of the shell
// (no `go run` between make and the server, which would leave the server
// running when it is signalled), serving TLS on 127.0.0.1:50051 with its
// certificate in bin/testserver.pem.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.Is(err, errUsage):
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "testserver:", err)
		os.Exit(1)
	}
}

// errUsage marks errors in the command line; the flag package has already
// printed the message and the usage.
var errUsage = errors.New("usage error")

// config is the parsed command line.
type config struct {
	addr           string
	accessTTL      time.Duration
	refreshTTL     time.Duration
	refreshLatency time.Duration
	failRefreshes  int
	failCode       codes.Code
	tls            bool
	tlsCertOut     string
	user, password string
	logLevel       slog.Level
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("testserver", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.addr, "addr", "127.0.0.1:50051", "`address` to listen on (port 0 picks a free port)")
	fs.DurationVar(&c.accessTTL, "access-ttl", testserver.DefaultAccessTokenTTL, "lifetime of access tokens")
	fs.DurationVar(&c.refreshTTL, "refresh-ttl", testserver.DefaultRefreshTokenTTL, "lifetime of refresh tokens")
	fs.DurationVar(&c.refreshLatency, "refresh-latency", 0, "delay added to every Refresh call")
	fs.IntVar(&c.failRefreshes, "fail-refreshes", 0, "fail the first `N` Refresh calls with -fail-code")
	failCode := fs.String("fail-code", "UNAVAILABLE", "gRPC status `code` for -fail-refreshes (name such as UNAVAILABLE, or number)")
	fs.BoolVar(&c.tls, "tls", false, "serve TLS with a self-signed certificate made at start")
	fs.StringVar(&c.tlsCertOut, "tls-cert-out", "", "with -tls, write the certificate (the CA clients must trust) as PEM to `file`")
	fs.StringVar(&c.user, "user", testserver.DefaultUser, "the user that may log in")
	fs.StringVar(&c.password, "password", testserver.DefaultPassword, "the user's password")
	logLevel := fs.String("log-level", "info", "log `level`: debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return c, err
		}
		return c, errUsage
	}
	fail := func(format string, a ...any) (config, error) {
		fmt.Fprintf(stderr, format+"\n", a...)
		fs.Usage()
		return c, errUsage
	}
	if fs.NArg() > 0 {
		return fail("unexpected arguments: %q", fs.Args())
	}
	var err error
	if c.failCode, err = parseCode(*failCode); err != nil {
		return fail("invalid -fail-code: %v", err)
	}
	if err := c.logLevel.UnmarshalText([]byte(*logLevel)); err != nil {
		return fail("invalid -log-level %q", *logLevel)
	}
	switch {
	case c.tlsCertOut != "" && !c.tls:
		return fail("-tls-cert-out needs -tls")
	case c.user == "":
		return fail("-user must not be empty")
	case c.accessTTL <= 0 || c.refreshTTL <= 0:
		return fail("-access-ttl and -refresh-ttl must be positive")
	case c.refreshLatency < 0 || c.failRefreshes < 0:
		return fail("-refresh-latency and -fail-refreshes must not be negative")
	}
	return c, nil
}

// parseCode accepts a gRPC status code by its canonical name
// ("UNAVAILABLE", "DEADLINE_EXCEEDED"), its Go name ("Unavailable") or its
// number.
func parseCode(s string) (codes.Code, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		if n > uint64(codes.Unauthenticated) {
			return 0, fmt.Errorf("%d is not a gRPC status code", n)
		}
		return codes.Code(n), nil
	}
	var c codes.Code
	if err := c.UnmarshalJSON([]byte(strconv.Quote(strings.ToUpper(s)))); err == nil {
		return c, nil
	}
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		if strings.EqualFold(c.String(), s) {
			return c, nil
		}
	}
	return 0, fmt.Errorf("unknown gRPC status code %q", s)
}

// run serves until ctx is cancelled or the server fails. It returns nil after
// a graceful stop, flag.ErrHelp for -h, and errUsage (after printing why) for
// a bad command line.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: c.logLevel}))

	srv := testserver.New(
		testserver.WithAccessTokenTTL(c.accessTTL),
		testserver.WithRefreshTokenTTL(c.refreshTTL),
		testserver.WithRefreshLatency(c.refreshLatency),
		testserver.WithRefreshFailures(c.failRefreshes, c.failCode),
		testserver.WithUser(c.user, c.password),
		testserver.WithLogger(logger),
	)
	startOpts := []testserver.StartOption{testserver.Address(c.addr), testserver.Reflection()}
	if c.tls {
		startOpts = append(startOpts, testserver.TLS())
	}
	ep, err := srv.Start(ctx, startOpts...)
	if err != nil {
		return err
	}
	defer ep.Stop()

	if c.tlsCertOut != "" {
		if err := writeFileAtomic(c.tlsCertOut, ep.CertificatePEM()); err != nil {
			return fmt.Errorf("writing the certificate: %w", err)
		}
	}
	if _, err := fmt.Fprintln(stdout, startLine(c, ep.Addr())); err != nil {
		return err
	}

	select {
	case <-ctx.Done():
		logger.Info("shutting down")
		ep.Stop()
		logger.Info("stopped")
		return nil
	case <-ep.Done():
		return fmt.Errorf("server stopped: %w", ep.Err())
	}
}

// startLine is the one line the program prints once it serves: "listening
// on ADDR", which scripts read, followed by what a client needs to know, in
// parentheses.
func startLine(c config, addr string) string {
	var about []string
	switch {
	case c.tlsCertOut != "":
		about = append(about, "TLS, certificate in "+c.tlsCertOut)
	case c.tls:
		about = append(about, "TLS")
	default:
		about = append(about, "plaintext")
	}
	about = append(about, "user "+c.user,
		fmt.Sprintf("access tokens %v, refresh tokens %v", c.accessTTL, c.refreshTTL))
	if c.refreshLatency > 0 {
		about = append(about, fmt.Sprintf("refresh latency %v", c.refreshLatency))
	}
	if c.failRefreshes > 0 {
		about = append(about, fmt.Sprintf("first %d refreshes fail with %v", c.failRefreshes, c.failCode))
	}
	return "listening on " + addr + " (" + strings.Join(about, "; ") + ")"
}

// writeFileAtomic writes data to a temporary file next to name and renames
// it, so a client polling for the file never reads half a certificate.
func writeFileAtomic(name string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(name), filepath.Base(name)+".*.tmp")
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		_ = os.Remove(f.Name())
		return err
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		_ = os.Remove(f.Name())
		return err
	}
	if err := os.Rename(f.Name(), name); err != nil {
		_ = os.Remove(f.Name())
		return err
	}
	return nil
}
