package e2e_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	"github.com/tokenrefresh/grpc-tokenrefresh/internal/faultpoint"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// A chaos worker is one member of the fault campaign's fleet (chaos_test.go):
// the test binary re-executed with envChaosWorker set. It has its own
// connection and Source over the shared store, and its callers call Echo
// through the interceptors until the campaign's end. It reports on stdout,
// one JSON line each, everything the campaign's checkers need (chaosLine),
// and takes commands on stdin (chaosCmd).

// Environment of a chaos worker.
const (
	envChaosWorker   = "TOKENREFRESH_CHAOS_WORKER" // member id "<index>.<incarnation>"; set only in workers
	envChaosTarget   = "TOKENREFRESH_CHAOS_TARGET"
	envChaosStore    = "TOKENREFRESH_CHAOS_STORE" // a store spec of openFleetStore
	envChaosEnd      = "TOKENREFRESH_CHAOS_END"   // Unix ns (wall clock) at which the callers stop
	envChaosCallers  = "TOKENREFRESH_CHAOS_CALLERS"
	envChaosDeadline = "TOKENREFRESH_CHAOS_DEADLINE" // each call's deadline
	envChaosPace     = "TOKENREFRESH_CHAOS_PACE"     // each caller's pause between calls
	envChaosLeaseTTL = "TOKENREFRESH_CHAOS_LEASE_TTL"
	envChaosTrace    = "TOKENREFRESH_CHAOS_TRACE" // -chaos.trace: a folder for the members' traces, or empty
	envChaosStart    = "TOKENREFRESH_CHAOS_START" // Unix ns (wall clock) of the campaign's start, for the traces
)

// chaosMemberKey is the metadata key that names the member on every RPC a
// worker sends (application calls and the Refresher's), so that the
// server's rejection observer knows who sent a rejected token.
const chaosMemberKey = "x-chaos-member"

// chaosLine is one line a chaos worker writes. Times are Unix ns of the wall
// clock, which the processes of one host share.
type chaosLine struct {
	Kind string `json:"k"`
	At   int64  `json:"at,omitempty"`
	// fail: the call's start (At) and end, its code and message (never a
	// token: the library's errors carry none), and whether it matched
	// ErrReauthRequired.
	End    int64  `json:"end,omitempty"`
	Code   string `json:"code,omitempty"`
	Msg    string `json:"msg,omitempty"`
	Reauth bool   `json:"reauth,omitempty"`
	// commit, restore: the fingerprint of the access token written to the
	// shared store, and its expiry; use: of the access token sent.
	FP     string `json:"fp,omitempty"`
	Expiry int64  `json:"exp,omitempty"`
	// tick, summary: calls made so far.
	Calls  int64              `json:"calls,omitempty"`
	Failed int64              `json:"failed,omitempty"`
	Stats  *tokensource.Stats `json:"stats,omitempty"`
}

// Kinds of chaosLine.
const (
	lineReady    = "ready"    // the Source and connection exist; callers start
	lineTick     = "tick"     // Calls so far, every chaosTick
	lineFail     = "fail"     // one failed call
	lineCommit   = "commit"   // a Lease.Commit that succeeded
	lineUse      = "use"      // the first call this member sent with an access token
	lineRestore  = "restore"  // a Restorer.Restore that wrote
	lineLease    = "lease"    // a TryLease that granted the lease
	lineUnlease  = "unlease"  // that lease's Commit or Release returned
	lineReauth   = "reauth"   // the Source requires re-authentication
	lineStall    = "stall"    // a stall inside the FileStore's critical section, from At to End
	lineNoStall  = "nostall"  // an armed stall expired without a critical section to stall in
	lineRelogged = "relogged" // a relogin command done
	lineSummary  = "summary"  // the last line
)

const chaosTick = 200 * time.Millisecond

// chaosCmd is a command the campaign sends to a worker's stdin.
type chaosCmd struct {
	// Cmd is "stall" (stall the next critical section of the worker's
	// FileStore that finds a live lease, by Dur, within Within) or
	// "relogin" (the user logged in again: the campaign saved the new
	// login to the store; the member starts over from it).
	Cmd    string        `json:"cmd"`
	Dur    time.Duration `json:"dur,omitempty"`
	Within time.Duration `json:"within,omitempty"`
}

// tokenFingerprint identifies an access token in the campaign's records
// without carrying it: the first 8 bytes of its SHA-256, in hex.
func tokenFingerprint(access string) string {
	sum := sha256.Sum256([]byte(access))
	return hex.EncodeToString(sum[:8])
}

// runChaosWorker is the body of a chaos worker process.
func runChaosWorker(member string) int {
	target := os.Getenv(envChaosTarget)
	endNS, _ := strconv.ParseInt(os.Getenv(envChaosEnd), 10, 64)
	end := time.Unix(0, endNS)
	callers, _ := strconv.Atoi(os.Getenv(envChaosCallers))
	deadline, _ := time.ParseDuration(os.Getenv(envChaosDeadline))
	pace, _ := time.ParseDuration(os.Getenv(envChaosPace))
	leaseTTL, _ := time.ParseDuration(os.Getenv(envChaosLeaseTTL))

	out := &chaosOut{enc: json.NewEncoder(os.Stdout)}
	spec := os.Getenv(envChaosStore)
	st, closeStore, err := openChaosStore(spec, leaseTTL)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos worker: opening the store:", err)
		return 2
	}
	defer closeStore()
	st = reportWrites(st, out)
	stall := &chaosStall{out: out}
	if strings.HasPrefix(spec, "file:") {
		faultpoint.SetFileStoreLocked(stall.hook)
	}

	tagged := func(ctx context.Context) context.Context {
		return metadata.AppendToOutgoingContext(ctx, chaosMemberKey, member)
	}
	authConn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(tagged(ctx), method, req, reply, cc, opts...)
		}))
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos worker:", err)
		return 2
	}
	defer authConn.Close()
	refresher := testserver.NewRefresher(authConn, testserver.DefaultUser, testserver.DefaultPassword)
	trace, closeTrace, err := chaosTrace(member)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos worker:", err)
		return 2
	}
	defer closeTrace()
	first, err := newChaosClient(target, refresher, st, out, trace...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos worker:", err)
		return 2
	}
	var cur atomic.Pointer[chaosClient]
	cur.Store(first)
	// relogin replaces the member's Source and connection by new ones,
	// which load the login the campaign saved to the store, as a
	// restarted process would: one save of the login for the fleet, where
	// a SetToken per member would save it again after a peer had already
	// refreshed from it.
	relogin := func() error {
		nc, err := newChaosClient(target, refresher, st, out, trace...)
		if err != nil {
			return err
		}
		old := cur.Swap(nc)
		old.retired.Store(true)
		time.AfterFunc(deadline, old.close) // its calls in flight end first
		return nil
	}
	defer func() { cur.Load().close() }()

	ctx, cancel := context.WithDeadline(context.Background(), end)
	defer cancel()
	go chaosCommands(relogin, stall, out)

	var calls, failed atomic.Int64
	out.write(chaosLine{Kind: lineReady, At: time.Now().UnixNano()})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(chaosTick)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				out.write(chaosLine{Kind: lineTick, Calls: calls.Load()})
			}
		}
	})
	for range callers {
		wg.Go(func() {
			for time.Now().Before(end) {
				start := time.Now()
				cctx, ccancel := context.WithTimeout(tagged(context.Background()), deadline)
				_, err := cur.Load().echo.Echo(cctx, &echov1.EchoRequest{Message: "chaos"})
				ccancel()
				calls.Add(1)
				if err != nil {
					failed.Add(1)
					out.write(chaosLine{Kind: lineFail, At: start.UnixNano(), End: time.Now().UnixNano(),
						Code: status.Code(err).String(), Msg: err.Error(), Reauth: errors.Is(err, tokensource.ErrReauthRequired)})
				}
				time.Sleep(pace)
			}
		})
	}
	wg.Wait()
	stats := cur.Load().src.Stats()
	out.write(chaosLine{Kind: lineSummary, Calls: calls.Load(), Failed: failed.Load(), Stats: &stats})
	return 0
}

// chaosOut serialises a worker's lines.
type chaosOut struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (o *chaosOut) write(l chaosLine) {
	o.mu.Lock()
	defer o.mu.Unlock()
	_ = o.enc.Encode(l)
}

// chaosCommands reads the campaign's commands from stdin until it closes.
func chaosCommands(relogin func() error, stall *chaosStall, out *chaosOut) {
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var c chaosCmd
		if json.Unmarshal(sc.Bytes(), &c) != nil {
			continue
		}
		switch c.Cmd {
		case "stall":
			stall.arm(c.Dur, c.Within)
		case "relogin":
			l := chaosLine{Kind: lineRelogged, At: time.Now().UnixNano()}
			if err := relogin(); err != nil {
				l.Msg = err.Error()
			}
			out.write(l)
		}
	}
}

// chaosClient is a member's Source and the connection whose interceptors
// use it.
type chaosClient struct {
	src  *tokensource.Source
	conn *grpc.ClientConn
	echo echov1.EchoServiceClient
	// retired is set when a relogin replaced the client: the lost session
	// it reports on its way out is the one the relogin ended.
	retired atomic.Bool
}

func newChaosClient(target string, r tokensource.Refresher, st tokensource.Store, out *chaosOut, opts ...tokensource.Option) (*chaosClient, error) {
	c := &chaosClient{}
	c.src = tokensource.New(r, append([]tokensource.Option{
		tokensource.WithStore(st),
		tokensource.WithOnReauthRequired(func(error) {
			if !c.retired.Load() {
				out.write(chaosLine{Kind: lineReauth, At: time.Now().UnixNano()})
			}
		}),
	}, opts...)...)
	conn, err := grpc.NewClient(target, append(append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		interceptor.DialOptions(c.src, interceptor.AllowInsecure())...), grpc.WithChainUnaryInterceptor(reportUses(out)))...)
	if err != nil {
		_ = c.src.Close()
		return nil, err
	}
	c.conn, c.echo = conn, echov1.NewEchoServiceClient(conn)
	return c, nil
}

// reportUses is the innermost unary interceptor of a member's connection:
// it reports each access token the member sends, once, so that the checkers
// know every member that held a token (see campaign.lostWithHolders).
func reportUses(out *chaosOut) grpc.UnaryClientInterceptor {
	var mu sync.Mutex
	sent := map[string]bool{}
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		md, _ := metadata.FromOutgoingContext(ctx)
		if auth := md.Get("authorization"); len(auth) > 0 {
			fp := tokenFingerprint(strings.TrimPrefix(auth[len(auth)-1], "Bearer "))
			mu.Lock()
			first := !sent[fp]
			sent[fp] = true
			mu.Unlock()
			if first {
				out.write(chaosLine{Kind: lineUse, At: time.Now().UnixNano(), FP: fp})
			}
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

// chaosTrace returns the options that make a member's Sources write their
// debug log and events to <store>-member-<id>.log in the folder -chaos.trace names,
// with times as the checkers print them (seconds since the campaign's
// start); none when it names none.
func chaosTrace(member string) ([]tokensource.Option, func(), error) {
	dir := os.Getenv(envChaosTrace)
	if dir == "" {
		return nil, func() {}, nil
	}
	startNS, _ := strconv.ParseInt(os.Getenv(envChaosStart), 10, 64)
	start := time.Unix(0, startNS)
	store, _, _ := strings.Cut(os.Getenv(envChaosStore), ":")
	f, err := os.Create(filepath.Join(dir, store+"-member-"+member+".log"))
	if err != nil {
		return nil, nil, err
	}
	rel := func(t time.Time) string { return fmt.Sprintf("+%.3fs", t.Sub(start).Seconds()) }
	log := slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelDebug,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.String(slog.TimeKey, rel(a.Value.Time()))
			}
			return a
		}}))
	observe := func(e tokensource.Event) {
		log.Debug("event", "kind", e.Kind.String(), "refresh", e.Refresh, "at", rel(e.Time), "forced", e.Forced,
			"background", e.Background, "gen", e.Generation, "waiters", e.Waiters, "err", e.Err)
	}
	return []tokensource.Option{tokensource.WithLogger(log), tokensource.WithObserver(observe)}, func() { _ = f.Close() }, nil
}

func (c *chaosClient) close() {
	_ = c.conn.Close()
	_ = c.src.Close()
}

// chaosStall stalls one critical section of the worker's FileStore: the
// first, after it was armed, that finds the refresh lease held by a live
// member, which is where a member that stalls and then judges the lease by
// the clock can take over from a holder that is alive (and, when the
// member wakes, usually the holder's own TryLease has been waiting for the
// lock, or a peer's).
type chaosStall struct {
	out *chaosOut

	mu    sync.Mutex
	dur   time.Duration
	until time.Time // the arming lapses then
}

func (s *chaosStall) arm(d, within time.Duration) {
	s.mu.Lock()
	s.dur, s.until = d, time.Now().Add(within)
	s.mu.Unlock()
	time.AfterFunc(within, func() {
		s.mu.Lock()
		lapsed := s.dur > 0 && !time.Now().Before(s.until)
		if lapsed {
			s.dur = 0
		}
		s.mu.Unlock()
		if lapsed {
			s.out.write(chaosLine{Kind: lineNoStall, At: time.Now().UnixNano()})
		}
	})
}

// hook is the FileStore's faultpoint: it runs with the flock held.
func (s *chaosStall) hook(lockPath string) {
	s.mu.Lock()
	d := s.dur
	if d <= 0 || time.Now().After(s.until) || !leaseLive(lockPath) {
		s.mu.Unlock()
		return
	}
	s.dur = 0
	s.mu.Unlock()
	start := time.Now()
	time.Sleep(d)
	s.out.write(chaosLine{Kind: lineStall, At: start.UnixNano(), End: time.Now().UnixNano()})
}

// leaseLive reports whether the lock file names a live lease. The file is a
// FileStore's own format, read here rather than through the FileStore,
// because the hook runs inside its critical section.
func leaseLive(lockPath string) bool {
	data, err := os.ReadFile(lockPath)
	if err != nil {
		return false
	}
	var lr struct {
		Owner   string `json:"owner"`
		Expires int64  `json:"expires"`
	}
	if json.Unmarshal([]byte(strings.TrimSpace(string(data))), &lr) != nil {
		return false
	}
	return lr.Owner != "" && time.Now().UnixNano() < lr.Expires
}

// reportWrites wraps a coordinating store so that every successful
// Lease.Commit and every Restore that wrote is reported with the token's
// fingerprint. It keeps the store's optional Restorer, so that the Source
// sees the same capabilities as without the wrapper.
func reportWrites(st tokensource.Store, out *chaosOut) tokensource.Store {
	c, ok := st.(tokensource.Coordinator)
	if !ok {
		return st
	}
	rc := reportingCoordinator{Coordinator: c, out: out}
	if r, ok := st.(tokensource.Restorer); ok {
		return reportingRestorer{reportingCoordinator: rc, r: r}
	}
	return rc
}

type reportingCoordinator struct {
	tokensource.Coordinator
	out *chaosOut
}

func (c reportingCoordinator) wrote(kind string, t *tokensource.Token) {
	if t == nil {
		return
	}
	c.out.write(chaosLine{Kind: kind, At: time.Now().UnixNano(), FP: tokenFingerprint(t.AccessToken), Expiry: t.Expiry.UnixNano()})
}

func (c reportingCoordinator) TryLease(ctx context.Context) (tokensource.Lease, error) {
	l, err := c.Coordinator.TryLease(ctx)
	if l == nil || err != nil {
		return l, err
	}
	c.out.write(chaosLine{Kind: lineLease, At: time.Now().UnixNano()})
	rl := reportingLease{Lease: l, c: c}
	if el, ok := l.(tokensource.ExpiringLease); ok {
		// Keep the lease's lifetime visible: without it the Source would
		// take the lease for held until it ends, and present a refresh
		// token under a lease that ran out while the member was paused.
		return reportingExpiringLease{reportingLease: rl, el: el}, nil
	}
	return rl, nil
}

type reportingLease struct {
	tokensource.Lease
	c reportingCoordinator
}

type reportingExpiringLease struct {
	reportingLease
	el tokensource.ExpiringLease
}

func (l reportingExpiringLease) Expires() time.Time { return l.el.Expires() }

func (l reportingLease) Commit(ctx context.Context, t *tokensource.Token) error {
	err := l.Lease.Commit(ctx, t)
	if err == nil {
		l.c.wrote(lineCommit, t)
	}
	l.c.out.write(chaosLine{Kind: lineUnlease, At: time.Now().UnixNano()})
	return err
}

func (l reportingLease) Release(ctx context.Context) error {
	err := l.Lease.Release(ctx)
	l.c.out.write(chaosLine{Kind: lineUnlease, At: time.Now().UnixNano()})
	return err
}

type reportingRestorer struct {
	reportingCoordinator
	r tokensource.Restorer
}

func (c reportingRestorer) Restore(ctx context.Context, rec tokensource.Record) (bool, error) {
	ok, err := c.r.Restore(ctx, rec)
	if ok && err == nil {
		c.wrote(lineRestore, rec.Token)
	}
	return ok, err
}
