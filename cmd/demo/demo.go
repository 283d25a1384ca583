package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// report is everything the summary shows, and what tests assert on.
type report struct {
	cfg         config
	target      string // the server's address
	elapsed     time.Duration
	interrupted bool
	results     workerResult
	rejections  int64                // Unauthenticated attempts seen inside the interceptors
	server      *testserver.Counters // nil with an external server
	tokens      tokenSummary
	stats       tokensource.Stats
	pass        bool
	verdict     string
}

func (r *report) ok() int64 {
	var n int64
	for _, c := range r.results.ok {
		n += c
	}
	return n
}

func (r *report) failed() int64 {
	n := r.results.wrong
	for _, c := range r.results.failed {
		n += c
	}
	return n
}

// runDemo sets up the server (unless cfg.addr names one), the connection and
// the Source, runs the load and prints the progress and the summary to out.
// An error means the demo could not run at all.
func runDemo(ctx context.Context, cfg config, out io.Writer) (*report, error) {
	rep := &report{cfg: cfg}
	var (
		srv   *testserver.Server
		creds credentials.TransportCredentials
		iopts []interceptor.Option
	)
	if cfg.embedded() {
		sopts := []testserver.Option{
			testserver.WithAccessTokenTTL(cfg.ttl),
			testserver.WithRefreshLatency(cfg.refreshLatency),
		}
		if cfg.failRefreshes > 0 {
			sopts = append(sopts, testserver.WithRefreshFailures(cfg.failRefreshes, codes.Unavailable))
		}
		srv = testserver.New(sopts...)
		ep, err := srv.Start(ctx, testserver.TLS())
		if err != nil {
			return nil, err
		}
		defer ep.Stop()
		rep.target, creds = ep.Target(), ep.ClientCredentials()
	} else {
		rep.target = cfg.addr
		switch {
		case cfg.insecure:
			creds = insecure.NewCredentials()
			iopts = append(iopts, interceptor.AllowInsecure())
		case cfg.tlsCA != "":
			c, err := credentials.NewClientTLSFromFile(cfg.tlsCA, "")
			if err != nil {
				return nil, fmt.Errorf("reading -tls-ca: %w", err)
			}
			creds = c
		default:
			creds = credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12})
		}
	}

	// The Refresher calls AuthService over the very connection the Source
	// serves; it is set once that connection exists, before any call.
	var refresher *testserver.Refresher
	tracker := &tokenTracker{}
	src := tokensource.New(
		tokensource.RefresherFunc(func(ctx context.Context, cur *tokensource.Token) (*tokensource.Token, error) {
			return refresher.Refresh(ctx, cur)
		}),
		// No leeway: tokens are used until the server rejects them.
		tokensource.WithExpiryLeeway(0),
		tokensource.WithEarlyRefresh(cfg.earlyRefresh),
		tokensource.WithObserver(tracker.observe),
	)
	defer src.Close()

	rejections := &rejectionCounter{}
	dopts := append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, interceptor.DialOptions(src, iopts...)...)
	// Chained after the token interceptors, so it sees each attempt.
	dopts = append(dopts,
		grpc.WithChainUnaryInterceptor(rejections.unary),
		grpc.WithChainStreamInterceptor(rejections.stream))
	conn, err := grpc.NewClient(rep.target, dopts...)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", rep.target, err)
	}
	defer conn.Close()
	refresher = testserver.NewRefresher(conn, cfg.user, cfg.password)

	fmt.Fprintln(out, header(cfg, rep.target))
	var total counters
	p := &progress{out: out, tty: cfg.tty, src: src, tracker: tracker, total: &total}
	rep.results, rep.elapsed, rep.interrupted = runLoad(ctx, cfg, echov1.NewEchoServiceClient(conn), &total, p.tick)
	p.done()

	rep.tokens = tracker.summary(time.Now())
	rep.stats = src.Stats()
	rep.rejections = rejections.n.Load()
	if srv != nil {
		c := srv.Counters()
		rep.server = &c
	}
	rep.judge()
	rep.print(out)
	return rep, nil
}

func header(cfg config, target string) string {
	where := "the embedded test server at " + target + " (TLS"
	if cfg.embedded() {
		where += fmt.Sprintf(", access tokens live %v", cfg.ttl)
		if cfg.refreshLatency > 0 {
			where += fmt.Sprintf(", refreshes take %v", cfg.refreshLatency)
		}
		if cfg.failRefreshes > 0 {
			where += fmt.Sprintf(", the first %d refreshes fail", cfg.failRefreshes)
		}
	} else {
		where = "the server at " + target + " ("
		if cfg.insecure {
			where += "no TLS"
		} else {
			where += "TLS"
		}
	}
	refresh := "tokens are used until they expire"
	if cfg.earlyRefresh > 0 {
		refresh = fmt.Sprintf("early refresh %v before expiry", cfg.earlyRefresh)
	}
	return fmt.Sprintf("demo: %d workers for %v against %s)\n      one connection, one token source; %s",
		cfg.workers, cfg.duration, where, refresh)
}
