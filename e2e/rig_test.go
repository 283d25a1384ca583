package e2e_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	"github.com/tokenrefresh/grpc-tokenrefresh/internal/testutil"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

const echoMethod = "/tokenrefresh.echo.v1.EchoService/Echo"

// The TLS credentials every endpoint and client of this test binary use: one
// self-signed certificate for 127.0.0.1, so that an endpoint restarted on the
// same address is still trusted by the clients of the old one.
var (
	certOnce    sync.Once
	certErr     error
	serverCreds credentials.TransportCredentials
	clientCreds credentials.TransportCredentials
)

func tlsCreds(t testing.TB) (server, client credentials.TransportCredentials) {
	t.Helper()
	certOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			certErr = err
			return
		}
		now := time.Now()
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(1),
			Subject:               pkix.Name{CommonName: "grpc-tokenrefresh e2e"},
			NotBefore:             now.Add(-time.Hour),
			NotAfter:              now.Add(24 * time.Hour),
			IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
			KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			BasicConstraintsValid: true,
			IsCA:                  true,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			certErr = err
			return
		}
		leaf, err := x509.ParseCertificate(der)
		if err != nil {
			certErr = err
			return
		}
		pool := x509.NewCertPool()
		pool.AddCert(leaf)
		cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
		serverCreds = credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
		clientCreds = credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	})
	if certErr != nil {
		t.Fatalf("making the TLS certificate: %v", certErr)
	}
	return serverCreds, clientCreds
}

// shortRefreshTimeout is the refresh timeout of the tests that make a refresh
// outlast it. It is short for a test but long against a loopback RPC under
// load: the same timeout bounds the warm-up login and the refreshes that must
// succeed (TLS handshake included, under -race on two busy cores).
const shortRefreshTimeout = 2 * time.Second

// refreshGate holds every Refresh call at the server (after the server has
// received it, before it rotates the token) until the test releases the gate,
// so that "the caller gives up while the refresh runs" is ordered by the test
// rather than by a latency that load can stretch past the caller's deadline.
// A held call also ends when its own context does.
type refreshGate struct {
	ch   chan struct{}
	once sync.Once
}

func newRefreshGate() *refreshGate { return &refreshGate{ch: make(chan struct{})} }

// option installs the gate in a test server.
func (g *refreshGate) option() testserver.Option {
	return testserver.WithRefreshFailureFunc(func(ctx context.Context, _ string) error {
		select {
		case <-g.ch:
			return nil
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	})
}

// release lets the held and all later Refresh calls through. It is
// idempotent.
func (g *refreshGate) release() { g.once.Do(func() { close(g.ch) }) }

// fastReconnect makes a client reconnect within milliseconds once a server
// is back, instead of grpc-go's default backoff of a second or more.
var fastReconnect = grpc.WithConnectParams(grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 100 * time.Millisecond},
	MinConnectTimeout: 5 * time.Second,
})

// syncBuffer is a bytes.Buffer that several goroutines may write to.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// secretSet collects every credential a test has seen, to look for them in
// logs and errors afterwards.
type secretSet struct {
	mu sync.Mutex
	m  map[string]struct{}
}

func newSecretSet() *secretSet { return &secretSet{m: make(map[string]struct{})} }

// minSecretLen keeps short strings that could occur in any text by chance out
// of the search; every credential the tests make is longer.
const minSecretLen = 8

func (s *secretSet) add(tok *tokensource.Token) {
	if tok == nil {
		return
	}
	s.addString(tok.AccessToken)
	s.addString(tok.RefreshToken)
}

func (s *secretSet) addString(v string) {
	if len(v) < minSecretLen {
		return
	}
	s.mu.Lock()
	s.m[v] = struct{}{}
	s.mu.Unlock()
}

func (s *secretSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// leaks returns the secrets that occur in text, raw or escaped as a quoted
// string (as log handlers write values with special characters).
func (s *secretSet) leaks(text string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for v := range s.m {
		q := strconv.Quote(v)
		if strings.Contains(text, v) || strings.Contains(text, q[1:len(q)-1]) {
			out = append(out, v)
		}
	}
	return out
}

// eventLog records a Source's observer events and lets a test wait for one.
type eventLog struct {
	mu      sync.Mutex
	evs     []tokensource.Event
	changed chan struct{}
}

func newEventLog() *eventLog { return &eventLog{changed: make(chan struct{})} }

func (l *eventLog) observe(ev tokensource.Event) {
	l.mu.Lock()
	l.evs = append(l.evs, ev)
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
}

func (l *eventLog) snapshot() []tokensource.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.evs)
}

// count returns how many events of kind k were reported.
func (l *eventLog) count(k tokensource.EventKind) int {
	n := 0
	for _, ev := range l.snapshot() {
		if ev.Kind == k {
			n++
		}
	}
	return n
}

// waitCount waits until at least n events of kind k were reported.
func (l *eventLog) waitCount(ctx context.Context, k tokensource.EventKind, n int) error {
	for {
		l.mu.Lock()
		got := 0
		for _, ev := range l.evs {
			if ev.Kind == k {
				got++
			}
		}
		ch := l.changed
		l.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for %d %v events (have %d): %w", n, k, got, ctx.Err())
		}
	}
}

// rigConfig varies the setup of a rig.
type rigConfig struct {
	srvOpts  []testserver.Option
	srcOpts  []tokensource.Option
	icptOpts []interceptor.Option
	// deadRefresher points the Refresher's connection at a closed port
	// instead of at the endpoint (rig.deadAddr).
	deadRefresher bool
	// noWarmup skips the first call, which otherwise logs in.
	noWarmup bool
	// stopAtOnce makes Endpoint.Stop close open streams at once.
	stopAtOnce bool
	// plaintext serves and dials without transport security.
	plaintext bool
	// initialToken gives the Source a token issued by the server
	// (WithInitialToken), so that it needs no refresh to start.
	initialToken bool
}

// rig is one test server and one client: a Source whose Refresher is
// testserver.NewRefresher over the intercepted connection itself (or over a
// connection to a closed port), everything logging at Debug level into one
// buffer, with fake clocks for both sides.
type rig struct {
	t        *testing.T
	cfg      rigConfig
	ctx      context.Context
	srvClock *testutil.Clock
	cliClock *testutil.Clock
	srv      *testserver.Server
	addr     string // the first endpoint's address
	deadAddr string
	src      *tokensource.Source
	conn     *grpc.ClientConn // application connection, with the interceptors
	authConn *grpc.ClientConn // the Refresher's connection
	echo     echov1.EchoServiceClient
	inner    tokensource.Refresher

	logs    *syncBuffer
	secrets *secretSet
	events  *eventLog
	reauths atomic.Int64
	// reauthed receives a value each time the OnReauthRequired hook runs
	// (after the waiting callers got their error).
	reauthed chan struct{}
	// ended receives a value (if none is pending) each time a refresh
	// goroutine ends: see waitIdle.
	ended chan struct{}
	// mutate, if set, replaces every token the Refresher obtains.
	mutate atomic.Pointer[func(*tokensource.Token) *tokensource.Token]

	mu    sync.Mutex
	texts []string // every error the tests saw, rendered every way
	eps   []*testserver.Endpoint
	conns []*grpc.ClientConn

	base    testserver.Counters // server counters after the warm-up
	ignore  goleak.Option
	done    sync.Once
	leakErr error
}

// rigStart is the fake clocks' start: a real-looking instant.
func rigStart() time.Time { return time.Now().Round(0).Truncate(time.Second) }

func newRig(t *testing.T, cfg rigConfig) *rig {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	start := rigStart()
	r := &rig{
		t:        t,
		cfg:      cfg,
		ctx:      ctx,
		srvClock: testutil.NewClock(start),
		cliClock: testutil.NewClock(start),
		logs:     &syncBuffer{},
		secrets:  newSecretSet(),
		events:   newEventLog(),
		reauthed: make(chan struct{}, 16),
		ended:    make(chan struct{}, 1),
		ignore:   goleak.IgnoreCurrent(),
	}
	t.Cleanup(r.finish)
	logger := slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))

	r.srv = testserver.New(append([]testserver.Option{
		testserver.WithClock(r.srvClock.Now),
		testserver.WithAccessTokenTTL(time.Hour),
		testserver.WithLogger(logger.With("component", "testserver")),
	}, cfg.srvOpts...)...)
	ep := r.startEndpoint("127.0.0.1:0")
	r.addr = ep.Addr()

	var initial *tokensource.Token
	if cfg.initialToken {
		tok, err := r.srv.IssueToken(testserver.DefaultUser)
		if err != nil {
			t.Fatal(err)
		}
		r.secrets.add(tok)
		initial = tok
	}
	r.src = tokensource.New(tokensource.RefresherFunc(r.refresh), append([]tokensource.Option{
		tokensource.WithInitialToken(initial),
		tokensource.WithClock(r.cliClock.Now),
		tokensource.WithBackoff(100*time.Millisecond, time.Second),
		tokensource.WithLogger(logger.With("component", "tokensource")),
		tokensource.WithObserver(r.events.observe),
		tokensource.WithRefreshHooks(tokensource.RefreshHooks{End: func(uint64) {
			select {
			case r.ended <- struct{}{}:
			default:
			}
		}}),
		tokensource.WithOnReauthRequired(func(error) {
			r.reauths.Add(1)
			select {
			case r.reauthed <- struct{}{}:
			default:
			}
		}),
	}, cfg.srcOpts...)...)
	r.conn = r.dial(ep.Target(), interceptor.DialOptions(r.src, append([]interceptor.Option{
		interceptor.WithLogger(logger.With("component", "interceptor")),
	}, cfg.icptOpts...)...)...)
	r.authConn = r.conn
	if cfg.deadRefresher {
		r.deadAddr = closedPort(t)
		r.authConn = r.dial(r.deadAddr)
	}
	// Set before the first refresh can start (New does no I/O).
	r.inner = testserver.NewRefresher(r.authConn, testserver.DefaultUser, testserver.DefaultPassword)
	r.echo = echov1.NewEchoServiceClient(r.conn)

	if !cfg.noWarmup {
		if err := r.ping(ctx); err != nil {
			t.Fatalf("warm-up call: %v", err)
		}
	}
	r.base = r.srv.Counters()
	return r
}

// refresh is the Source's Refresher: testserver's, recording every token it
// hands out as a secret and applying r.mutate.
func (r *rig) refresh(ctx context.Context, cur *tokensource.Token) (*tokensource.Token, error) {
	tok, err := r.inner.Refresh(ctx, cur)
	r.secrets.add(tok)
	if m := r.mutate.Load(); m != nil && err == nil {
		tok = (*m)(tok)
		r.secrets.add(tok)
	}
	return tok, err
}

func (r *rig) setMutation(f func(*tokensource.Token) *tokensource.Token) {
	if f == nil {
		r.mutate.Store(nil)
		return
	}
	r.mutate.Store(&f)
}

// closedPort returns a loopback address on which nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	if err := lis.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func (r *rig) dial(target string, opts ...grpc.DialOption) *grpc.ClientConn {
	r.t.Helper()
	_, creds := tlsCreds(r.t)
	if r.cfg.plaintext {
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(target, append([]grpc.DialOption{grpc.WithTransportCredentials(creds), fastReconnect}, opts...)...)
	if err != nil {
		r.t.Fatalf("NewClient(%s): %v", target, err)
	}
	r.mu.Lock()
	r.conns = append(r.conns, conn)
	r.mu.Unlock()
	return conn
}

// startEndpoint serves r.srv over TLS on addr.
func (r *rig) startEndpoint(addr string) *testserver.Endpoint {
	r.t.Helper()
	opts := []testserver.StartOption{testserver.Address(addr)}
	if !r.cfg.plaintext {
		creds, _ := tlsCreds(r.t)
		opts = append(opts, testserver.ExtraServerOptions(grpc.Creds(creds)))
	}
	if r.cfg.stopAtOnce {
		opts = append(opts, testserver.StopTimeout(0))
	}
	ep, err := r.srv.Start(r.ctx, opts...)
	if err != nil {
		r.t.Fatalf("starting an endpoint on %s: %v", addr, err)
	}
	r.mu.Lock()
	r.eps = append(r.eps, ep)
	r.mu.Unlock()
	return ep
}

// waitReady connects conn and waits until it is ready.
func (r *rig) waitReady(conn *grpc.ClientConn) {
	r.t.Helper()
	conn.Connect()
	for s := conn.GetState(); s != connectivity.Ready; s = conn.GetState() {
		if !conn.WaitForStateChange(r.ctx, s) {
			r.t.Fatalf("connection never became ready (last state %v)", s)
		}
	}
}

// ping makes one unary call and records its error.
func (r *rig) ping(ctx context.Context, opts ...grpc.CallOption) error {
	_, err := r.echo.Echo(ctx, &echov1.EchoRequest{Message: "ping"}, opts...)
	r.record(err)
	return err
}

// record keeps err, rendered every way fmt can, for the secrets check.
func (r *rig) record(err error) {
	if err == nil {
		return
	}
	r.mu.Lock()
	r.texts = append(r.texts, err.Error(), fmt.Sprintf("%v", err), fmt.Sprintf("%+v", err),
		fmt.Sprintf("%#v", err), fmt.Sprintf("%q", err), status.Convert(err).Message())
	r.mu.Unlock()
}

// passBackoff moves both clocks past the Source's backoff (at most 1 s here)
// and its minimum interval between forced refreshes (1 s by default).
// waitIdle waits until no refresh goroutine runs: a Refresher the refresh
// timeout gave up on has returned, so the next call may start a refresh.
func (r *rig) waitIdle() {
	r.t.Helper()
	for r.src.Stats().InFlight {
		select {
		case <-r.ended:
		case <-r.ctx.Done():
			r.t.Fatal("a refresh is still running: ", r.ctx.Err())
		}
	}
}

func (r *rig) passBackoff() {
	r.srvClock.Advance(2 * time.Second)
	r.cliClock.Advance(2 * time.Second)
}

// relogin stands for the user logging in again: a new token family, handed
// to the Source with SetToken.
func (r *rig) relogin() {
	r.t.Helper()
	tok, err := r.srv.IssueToken(testserver.DefaultUser)
	if err != nil {
		r.t.Fatal(err)
	}
	r.secrets.add(tok)
	if err := r.src.SetToken(r.ctx, tok); err != nil {
		r.t.Fatalf("SetToken: %v", err)
	}
}

// counts is what the server counted since the warm-up.
type counts struct {
	Logins, RefreshOK, RefreshFailed, Unauthenticated, Echo int64
}

func (c counts) String() string {
	return fmt.Sprintf("logins=%d refreshes ok=%d failed=%d unauthenticated=%d echo=%d",
		c.Logins, c.RefreshOK, c.RefreshFailed, c.Unauthenticated, c.Echo)
}

func (r *rig) delta() counts {
	c := r.srv.Counters()
	return counts{
		Logins:          c.Logins - r.base.Logins,
		RefreshOK:       c.RefreshesOK - r.base.RefreshesOK,
		RefreshFailed:   c.RefreshesFailed - r.base.RefreshesFailed,
		Unauthenticated: c.Unauthenticated - r.base.Unauthenticated,
		Echo:            c.RPCs[echoMethod] - r.base.RPCs[echoMethod],
	}
}

// waitDelta waits until the server's counts are one of want: the server
// counts a call when its handler returns, which can be after the client gave
// up on it.
func (r *rig) waitDelta(want ...counts) {
	r.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := r.delta()
		if slices.Contains(want, got) {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("server counted %v, want %v", got, want)
		}
		time.Sleep(time.Millisecond)
	}
}

// finish closes everything, then checks that no secret leaked and no
// goroutine is left. It runs once, from the test or its cleanup.
func (r *rig) finish() {
	r.done.Do(func() {
		_ = r.src.Close()
		r.mu.Lock()
		conns, eps := slices.Clone(r.conns), slices.Clone(r.eps)
		r.mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
		for _, ep := range eps {
			ep.Stop()
		}
		r.assertNoSecrets()
		r.leakErr = goleak.Find(r.ignore)
		if r.leakErr != nil {
			r.t.Errorf("goroutines left: %v", r.leakErr)
		}
	})
}

// assertNoSecrets fails the test if any credential seen so far appears in
// the logs or in a recorded error.
func (r *rig) assertNoSecrets(extra ...string) {
	r.t.Helper()
	r.mu.Lock()
	texts := append(slices.Clone(r.texts), extra...)
	r.mu.Unlock()
	texts = append(texts, r.logs.String())
	for _, text := range texts {
		if leaked := r.secrets.leaks(text); len(leaked) > 0 {
			r.t.Errorf("%d credential(s) leaked into: %s", len(leaked), text)
		}
	}
}

// sentinels are the errors outcome reports errors.Is matches for.
var sentinels = []struct {
	name string
	err  error
}{
	{"ErrReauthRequired", tokensource.ErrReauthRequired},
	{"ErrInvalidToken", tokensource.ErrInvalidToken},
	{"ErrRefreshTimeout", tokensource.ErrRefreshTimeout},
	{"ErrCorruptStore", tokensource.ErrCorruptStore},
	{"ErrClosed", tokensource.ErrClosed},
	{"ErrInsecureTransport", interceptor.ErrInsecureTransport},
	{"context.Canceled", context.Canceled},
	{"context.DeadlineExceeded", context.DeadlineExceeded},
}

// outcome describes err for the matrix: "OK", or its code and the sentinels
// it matches.
func outcome(err error) string {
	if err == nil {
		return "OK"
	}
	var is []string
	for _, s := range sentinels {
		if errors.Is(err, s.err) {
			is = append(is, s.name)
		}
	}
	if len(is) == 0 {
		return status.Code(err).String()
	}
	return status.Code(err).String() + " (errors.Is " + strings.Join(is, ", ") + ")"
}
