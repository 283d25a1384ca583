package oauth2server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zitadel/oidc/v3/pkg/oidc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// The outage tests: 200 callers, 40 of each kind (unary, server-stream,
// client-stream and bidi calls through the interceptors, and Source.Token
// itself), each call with a 5 s deadline. The tokens are the short-lived
// ones of the "service" client (5 s, expires_in 4, so a Source hands one
// out for 3.6 s). The Sources have no early refresh: an expiry then makes
// every caller wait on the refresh, the case an outage hurts.
const (
	outageCallers = 200
	callDeadline  = 5 * time.Second
	// outage is how long the token endpoint answers 503 in the tests of a
	// blip: shorter than the callers' deadlines by far, longer than a
	// refresh's default attempts span (their waits add up to 150–300 ms).
	outage = 500 * time.Millisecond
	// callerPace is the pause between two calls of a caller (pacing, not
	// synchronisation), so that 200 callers leave a loaded 2-core machine
	// room to answer each call well within its deadline.
	callerPace = 50 * time.Millisecond
	// introspectionCache is how long the resource server reuses an active
	// token's introspection (a revocation takes effect within it): with an
	// introspection per call, 200 callers would spend their deadlines
	// queueing at the authorization server, outage or not.
	introspectionCache = 200 * time.Millisecond
)

// --- the fault injector ---------------------------------------------------

// tokenFaults stands in front of the authorization server and answers the
// token endpoint's requests with 503 Service Unavailable during an outage,
// as the load balancer in front of an identity provider that is down
// would, with a Retry-After header when one is set. An outage is a window
// of a set duration that the first token request after arm opens (so that
// it is sure to fall on a refresh, wherever the token's expiry lands), or
// lasts from setDown(true) to setDown(false). The other endpoints
// (introspection, revocation, discovery) keep working, and so does the
// resource server.
type tokenFaults struct {
	next http.Handler

	mu         sync.Mutex
	armed      time.Duration // > 0: the next token request opens a window this long
	until      time.Time     // the end of the open window
	down       bool          // 503 until setDown(false)
	retryAfter string        // the 503s' Retry-After; "" for none
	requests   int           // token requests that arrived
	refused    int           // of them, answered 503
}

func (f *tokenFaults) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/oauth/token" {
		f.next.ServeHTTP(w, r)
		return
	}
	f.mu.Lock()
	now := time.Now()
	f.requests++
	if f.armed > 0 {
		f.until, f.armed = now.Add(f.armed), 0
	}
	refuse, retryAfter := f.down || now.Before(f.until), f.retryAfter
	if refuse {
		f.refused++
	}
	f.mu.Unlock()
	if !refuse {
		f.next.ServeHTTP(w, r)
		return
	}
	if retryAfter != "" {
		w.Header().Set("Retry-After", retryAfter)
	}
	http.Error(w, "token endpoint unavailable (injected outage)", http.StatusServiceUnavailable)
}

// arm makes the next token request open an outage of d whose 503s carry
// retryAfter ("" for none).
func (f *tokenFaults) arm(d time.Duration, retryAfter string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.armed, f.retryAfter = d, retryAfter
}

// setDown starts (true) or ends (false) an outage of no set duration.
func (f *tokenFaults) setDown(down bool, retryAfter string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down, f.retryAfter = down, retryAfter
}

func (f *tokenFaults) counts() (requests, refused int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests, f.refused
}

// --- what the Source did ----------------------------------------------------

// flightLog records a Source's events and lets a test wait for one.
type flightLog struct {
	mu      sync.Mutex
	events  []tokensource.Event
	changed chan struct{} // closed and replaced at every event
}

func newFlightLog() *flightLog { return &flightLog{changed: make(chan struct{})} }

func (l *flightLog) observe(e tokensource.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
	close(l.changed)
	l.changed = make(chan struct{})
}

// isEnd reports whether e ends a refresh.
func isEnd(e tokensource.Event) bool {
	switch e.Kind {
	case tokensource.RefreshSucceeded, tokensource.RefreshFailed, tokensource.RefreshUnchanged, tokensource.ReauthRequired:
		return true
	}
	return false
}

// await returns the first event for which match holds, waiting for it.
func (l *flightLog) await(t *testing.T, what string, match func(tokensource.Event) bool) tokensource.Event {
	t.Helper()
	guard := time.NewTimer(hangGuard)
	defer guard.Stop()
	for {
		l.mu.Lock()
		i := slices.IndexFunc(l.events, match)
		var e tokensource.Event
		if i >= 0 {
			e = l.events[i]
		}
		changed := l.changed
		l.mu.Unlock()
		if i >= 0 {
			return e
		}
		select {
		case <-changed:
		case <-guard.C:
			t.Fatalf("%s did not happen within %v; flights so far: %v", what, hangGuard, l.flights())
		}
	}
}

// endAfter awaits the end of the first refresh after the one numbered id.
func (l *flightLog) endAfter(t *testing.T, what string, id uint64) tokensource.Event {
	t.Helper()
	return l.await(t, what, func(e tokensource.Event) bool { return isEnd(e) && e.Refresh > id })
}

// flight is one refresh as its events tell it.
type flight struct {
	id     uint64
	forced bool
	failed []tokensource.Event // RefreshAttemptFailed: Duration is the wait before the next attempt
	end    tokensource.Event   // Kind 0 while it runs
}

func (f flight) String() string {
	waits := make([]string, len(f.failed))
	for i, e := range f.failed {
		waits[i] = e.Duration.Round(time.Millisecond).String()
	}
	kind := "running"
	if f.end.Kind != 0 {
		kind = f.end.Kind.String()
	}
	return fmt.Sprintf("#%d forced=%v %s: %d attempts, waits %v, %d waiters, %v",
		f.id, f.forced, kind, f.end.Attempts, waits, f.end.Waiters, f.end.Duration.Round(time.Millisecond))
}

// flights returns the refreshes so far, in order.
func (l *flightLog) flights() []flight {
	l.mu.Lock()
	defer l.mu.Unlock()
	var fs []flight
	for _, e := range l.events {
		if e.Refresh == 0 {
			continue
		}
		if len(fs) == 0 || fs[len(fs)-1].id != e.Refresh {
			fs = append(fs, flight{id: e.Refresh})
		}
		f := &fs[len(fs)-1]
		f.forced = f.forced || e.Forced
		switch {
		case e.Kind == tokensource.RefreshAttemptFailed:
			f.failed = append(f.failed, e)
		case isEnd(e):
			f.end = e
		}
	}
	return fs
}

// attempts sums the Refresher calls of fs.
func attempts(fs []flight) (n int) {
	for _, f := range fs {
		n += f.end.Attempts
	}
	return n
}

// --- the callers ----------------------------------------------------------

// callKind is one way of using the Source: an RPC of each kind through the
// interceptors, or Source.Token itself.
type callKind int

const (
	unaryCall callKind = iota
	serverStreamCall
	clientStreamCall
	bidiStreamCall
	tokenCall
	callKinds
)

func (k callKind) String() string {
	return [...]string{"unary", "server-stream", "client-stream", "bidi", "Source.Token"}[k]
}

// outageClient makes calls of every kind.
type outageClient struct {
	ctx  context.Context // carries the token endpoint's HTTP client
	echo echov1.EchoServiceClient
	src  *tokensource.Source
}

// call makes one call of kind k within callDeadline and checks its answer.
// waitForReady makes it with grpc.WaitForReady(true) (for Source.Token,
// with tokensource.WaitForReady). An error of Source.Token is turned into
// the status the interceptors would report.
func (c *outageClient) call(k callKind, msg string, waitForReady bool) error {
	ctx, cancel := context.WithTimeout(c.ctx, callDeadline)
	defer cancel()
	var opts []grpc.CallOption
	if waitForReady {
		opts = append(opts, grpc.WaitForReady(true))
	}
	switch k {
	case unaryCall:
		resp, err := c.echo.Echo(ctx, &echov1.EchoRequest{Message: msg}, opts...)
		if err == nil && (resp.GetMessage() != msg || resp.GetUser() != serviceClient) {
			err = fmt.Errorf("unary: got %q for user %q", resp.GetMessage(), resp.GetUser())
		}
		return err
	case serverStreamCall:
		stream, err := c.echo.ServerStreamEcho(ctx, &echov1.ServerStreamEchoRequest{Message: msg, Count: 3}, opts...)
		if err != nil {
			return err
		}
		for i := int32(0); ; i++ {
			m, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				if i != 3 {
					return fmt.Errorf("server stream: ended after %d messages", i)
				}
				return nil
			}
			if err != nil {
				return err
			}
			if m.GetMessage() != msg || m.GetIndex() != i {
				return fmt.Errorf("server stream: message %d is %q/%d", i, m.GetMessage(), m.GetIndex())
			}
		}
	case clientStreamCall:
		stream, err := c.echo.ClientStreamEcho(ctx, opts...)
		if err != nil {
			return err
		}
		for i := range 3 {
			// io.EOF: the stream has ended; CloseAndRecv says why.
			if err := stream.Send(&echov1.ClientStreamEchoRequest{Message: fmt.Sprint(msg, "/", i)}); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
		}
		resp, err := stream.CloseAndRecv()
		if err == nil && (resp.GetCount() != 3 || resp.GetMessages()[2] != msg+"/2") {
			err = fmt.Errorf("client stream: server received %q", resp.GetMessages())
		}
		return err
	case bidiStreamCall:
		stream, err := c.echo.BidiStreamEcho(ctx, opts...)
		if err != nil {
			return err
		}
		for i := range int32(2) {
			m := fmt.Sprint(msg, "/", i)
			if err := stream.Send(&echov1.BidiStreamEchoRequest{Message: m}); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			resp, err := stream.Recv()
			if err != nil {
				return err
			}
			if resp.GetMessage() != m || resp.GetIndex() != i {
				return fmt.Errorf("bidi: message %d is %q/%d", i, resp.GetMessage(), resp.GetIndex())
			}
		}
		if err := stream.CloseSend(); err != nil {
			return err
		}
		if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
			return fmt.Errorf("bidi: after CloseSend: %v", err)
		}
		return nil
	default:
		if waitForReady {
			ctx = tokensource.WaitForReady(ctx)
		}
		tok, err := c.src.Token(ctx)
		if err != nil {
			code := codes.Unavailable
			if ctx.Err() != nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)) {
				code = status.FromContextError(ctx.Err()).Code()
			}
			return status.Error(code, err.Error())
		}
		if tok.AccessToken == "" {
			return errors.New("Source.Token: an empty token")
		}
		return nil
	}
}

// callStats sums up the calls of one kind.
type callStats struct {
	calls, failed int
	codes         map[codes.Code]int // of the failed calls
	firstErr      error
	examples      map[codes.Code]error // the first failure with each code
	longest       time.Duration        // the slowest call
	longestFailed time.Duration        // the slowest failed call
}

// loadStats sums up calls by kind.
type loadStats struct {
	mu    sync.Mutex
	kinds [callKinds]callStats
}

func (s *loadStats) record(k callKind, d time.Duration, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := &s.kinds[k]
	c.calls++
	c.longest = max(c.longest, d)
	if err == nil {
		return
	}
	c.failed++
	c.longestFailed = max(c.longestFailed, d)
	if c.codes == nil {
		c.codes = map[codes.Code]int{}
	}
	code := status.Code(err)
	if c.codes[code]++; c.codes[code] == 1 {
		if c.examples == nil {
			c.examples = map[codes.Code]error{}
		}
		c.examples[code] = err
	}
	if c.firstErr == nil {
		c.firstErr = err
	}
}

// timed makes one call and records it.
func (s *loadStats) timed(c *outageClient, k callKind, msg string, waitForReady bool) error {
	start := time.Now()
	err := c.call(k, msg, waitForReady)
	s.record(k, time.Since(start), err)
	return err
}

// totals returns the calls and failures of every kind, and the failures'
// codes.
func (s *loadStats) totals() (calls, failed int, byCode map[codes.Code]int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	byCode = map[codes.Code]int{}
	for _, c := range s.kinds {
		calls, failed = calls+c.calls, failed+c.failed
		for code, n := range c.codes {
			byCode[code] += n
		}
	}
	return calls, failed, byCode
}

func (s *loadStats) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for k, c := range s.kinds {
		fmt.Fprintf(&b, "\n  %-13s %5d calls, %d failed %v, slowest %v", callKind(k), c.calls, c.failed, c.codes, c.longest.Round(time.Millisecond))
		if c.firstErr != nil {
			fmt.Fprintf(&b, ", slowest failure %v", c.longestFailed.Round(time.Millisecond))
			for code, err := range c.examples {
				fmt.Fprintf(&b, "\n    first %v: %v", code, err)
			}
		}
	}
	return b.String()
}

// each runs f for every caller, caller i making calls of kind i mod
// callKinds, and returns when all have returned.
func each(f func(i int, k callKind)) {
	var wg sync.WaitGroup
	for i := range outageCallers {
		wg.Go(func() { f(i, callKind(i%int(callKinds))) })
	}
	wg.Wait()
}

// runCallers has every caller call back to back until stop is closed.
func runCallers(c *outageClient, stop <-chan struct{}) *loadStats {
	res := &loadStats{}
	each(func(i int, k callKind) {
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			_ = res.timed(c, k, fmt.Sprintf("c%d-%d", i, n), false)
			time.Sleep(callerPace) // pacing, not synchronisation
		}
	})
	return res
}

// outageRig is an authorization server, a resource server and a Source of
// the short-lived client-credentials tokens with the callers' client.
type outageRig struct {
	a      *authServer
	r      *resourceServer
	src    *tokensource.Source
	log    *flightLog
	client *outageClient
}

func startOutageRig(t *testing.T, opts ...tokensource.Option) *outageRig {
	t.Helper()
	g := &outageRig{a: startAuthServer(t), log: newFlightLog()}
	g.r = startCachingResourceServer(t, g.a, introspectionCache)
	g.src = tokensource.New(tokensource.ClientCredentials(g.a.serviceConfig(serviceClient)),
		append([]tokensource.Option{tokensource.WithEarlyRefresh(0), tokensource.WithObserver(g.log.observe)}, opts...)...)
	t.Cleanup(func() { _ = g.src.Close() })
	g.client = &outageClient{ctx: g.a.httpContext(context.Background()), echo: dial(t, g.r.addr, g.a.clientTLS(), g.src), src: g.src}
	return g
}

// firstToken obtains the Source's first token, before any outage, and
// returns its refresh's number.
func (g *outageRig) firstToken(t *testing.T) uint64 {
	t.Helper()
	if _, err := g.src.Token(g.client.ctx); err != nil {
		t.Fatal(err)
	}
	return g.log.endAfter(t, "the first refresh", 0).Refresh
}

// checkNoStorm checks that every token request was an attempt of a refresh
// the Source reported (each a single grant when it succeeded), that no
// refresh made more than maxAttempts, and that there were at most
// maxFlights refreshes: 200 callers cost no more token requests than
// maxFlights × maxAttempts.
func (g *outageRig) checkNoStorm(t *testing.T, fs []flight, maxFlights, maxAttempts int) {
	t.Helper()
	requests, refused := g.a.faults.counts()
	grants := len(g.a.store.issuances(oidc.GrantTypeClientCredentials, serviceClient))
	succeeded, failedAttempts := 0, 0
	for _, f := range fs {
		if f.end.Kind == tokensource.RefreshSucceeded {
			succeeded++
		}
		failedAttempts += len(f.failed)
		if f.end.Attempts > maxAttempts {
			t.Errorf("refresh %v made more than %d attempts", f, maxAttempts)
		}
	}
	t.Logf("token endpoint: %d requests (%d answered 503), %d grants; %d refreshes, %d attempts in all", requests, refused, grants, len(fs), attempts(fs))
	if requests != attempts(fs) || grants != succeeded {
		t.Errorf("%d token requests and %d grants for %d attempts and %d successful refreshes: want equal", requests, grants, attempts(fs), succeeded)
	}
	if len(fs) > maxFlights || requests > maxFlights*maxAttempts {
		t.Errorf("%d refreshes and %d token requests: want at most %d refreshes of at most %d attempts", len(fs), requests, maxFlights, maxAttempts)
	}
	if refused < failedAttempts {
		t.Errorf("%d requests answered 503, fewer than the %d failed attempts", refused, failedAttempts)
	}
}

// An outage of the token endpoint shorter than the callers' deadlines fails
// no call: 200 callers of every kind, with 5 s deadlines, go through two
// outages of 0.5 s, one that falls on the refresh of an expired token and
// one on the forced refresh after the server revoked the current token. The
// refresh tries again inside the outage while its callers wait, and one
// refresh serves all of them: the token requests are the attempts of one
// refresh per expiry or revocation.
func TestTokenEndpointOutageFailsNoCall(t *testing.T) {
	t.Run("503", func(t *testing.T) {
		// Enough attempts for their waits (at least 50+100+200+400+800 ms
		// with the default backoff, however the jitter falls) to outlast
		// the outage, with room for a slow first request; the default 3
		// span only 150–300 ms.
		const maxAttempts = 6
		g, fs, _ := runOutages(t, "", tokensource.WithRefreshAttempts(maxAttempts))
		for _, f := range fs {
			for _, e := range f.failed {
				// WithBackoff's default: 100 ms doubling per attempt, jittered
				// to between half and all of it.
				nominal := tokensource.DefaultBackoffInitial << (e.Attempts - 1)
				if e.Duration < nominal/2 || e.Duration > nominal {
					t.Errorf("refresh %v: the wait after attempt %d is %v, want the jittered backoff %v–%v", f, e.Attempts, e.Duration, nominal/2, nominal)
				}
			}
		}
		g.checkNoStorm(t, fs, 4, maxAttempts)
	})
	t.Run("503 with Retry-After", func(t *testing.T) {
		// The default attempts suffice: the second comes a second after
		// the first 503, when the outage is over.
		g, fs, outages := runOutages(t, "1")
		for _, f := range outages {
			if f.end.Attempts != 2 || len(f.failed) != 1 || f.failed[0].Duration != time.Second {
				t.Errorf("refresh %v: want 2 attempts, the second after exactly the 1 s the Retry-After asked for", f)
			}
		}
		g.checkNoStorm(t, fs, 4, tokensource.DefaultRefreshAttempts)
	})
}

// runOutages runs the callers through the two outages of
// TestTokenEndpointOutageFailsNoCall, each answered with retryAfter, checks
// that no call failed and that each outage fell on a refresh that tried
// again (and succeeded), and returns all refreshes and the two that met an
// outage.
func runOutages(t *testing.T, retryAfter string, opts ...tokensource.Option) (g *outageRig, fs, outages []flight) {
	g = startOutageRig(t, opts...)
	first := g.firstToken(t)
	stop := make(chan struct{})
	done := make(chan *loadStats, 1)
	go func() { done <- runCallers(g.client, stop) }()
	stopped := false
	defer func() {
		if !stopped { // a t.Fatal: let the callers end before the servers stop
			close(stop)
			<-done
		}
	}()

	// The token expires under the callers while the endpoint is down.
	g.a.faults.arm(outage, retryAfter)
	expiry := g.log.endAfter(t, "the refresh of the expired token", first)

	// The server revokes the new token; the forced refresh meets the
	// second outage.
	g.a.faults.arm(outage, retryAfter)
	tok, err := g.src.Token(g.client.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.a.revokeAccessToken(g.client.ctx, serviceClient, serviceSecret, tok.AccessToken); err != nil {
		t.Fatal(err)
	}
	revocation := g.log.endAfter(t, "the forced refresh after the revocation", expiry.Refresh)

	close(stop)
	stopped = true
	res := <-done
	fs = g.log.flights()
	calls, failed, _ := res.totals()
	t.Logf("%d callers, outages of %v (Retry-After %q): %d calls, %d failed; resource server rejected %d tokens%v",
		outageCallers, outage, retryAfter, calls, failed, g.r.rejected.Load(), res)
	for _, f := range fs {
		t.Logf("refresh %v", f)
	}
	if failed != 0 {
		t.Errorf("%d of %d calls failed", failed, calls)
	}
	for _, e := range []tokensource.Event{expiry, revocation} {
		f := fs[slices.IndexFunc(fs, func(f flight) bool { return f.id == e.Refresh })]
		if e.Kind != tokensource.RefreshSucceeded || len(f.failed) == 0 || e.Waiters == 0 {
			t.Errorf("refresh %v: want one that met the outage (a failed attempt), had callers waiting and succeeded", f)
		}
		outages = append(outages, f)
	}
	if !outages[1].forced {
		t.Errorf("refresh %v after the revocation is not a forced one", outages[1])
	}
	return g, fs, outages
}

// A token endpoint down for good: every caller waiting on the refresh of the
// expired token is released by the refresh timeout, well inside its own
// deadline, with Unavailable (carrying the 503); callers during the backoff
// that follows fail fast with Unavailable and cause no token request; callers
// made with grpc.WaitForReady(true) (tokensource.WaitForReady for
// Source.Token) wait through the backoff and a failed attempt, and succeed
// once the endpoint is back, inside their deadlines.
func TestTokenEndpointDownForGood(t *testing.T) {
	// A refresh timeout well inside the callers' 5 s deadlines; a backoff
	// of 0.5–1 s after the failed refresh, for the calls that fail fast
	// (and for the waits between attempts).
	const refreshTimeout = 2 * time.Second
	g := startOutageRig(t, tokensource.WithRefreshTimeout(refreshTimeout), tokensource.WithBackoff(time.Second, time.Second))
	first := g.firstToken(t)
	g.a.faults.setDown(true, "")

	// Every caller calls until its first failure, once the token expired.
	released := &loadStats{}
	each(func(i int, k callKind) {
		for n := 0; released.timed(g.client, k, fmt.Sprintf("c%d-%d", i, n), false) == nil; n++ {
			time.Sleep(callerPace) // pacing, not synchronisation
		}
	})
	fs := g.log.flights()
	last := fs[len(fs)-1]
	requests, _ := g.a.faults.counts()
	calls, failed, byCode := released.totals()
	t.Logf("token endpoint down: %d calls until each caller's first failure, %d failed %v%v", calls, failed, byCode, released)
	for _, f := range fs {
		t.Logf("refresh %v", f)
	}
	if failed != outageCallers || byCode[codes.Unavailable] != outageCallers {
		t.Errorf("%d callers failed, %v; want all %d with Unavailable, none at its deadline", failed, byCode, outageCallers)
	}
	if last.id == first || last.end.Kind != tokensource.RefreshFailed || last.end.Waiters == 0 ||
		last.end.Duration > refreshTimeout+time.Second {
		t.Errorf("refresh %v: want one that failed about the refresh timeout (%v) with callers waiting", last, refreshTimeout)
	}
	for k, c := range released.kinds {
		if c.firstErr == nil || !strings.Contains(c.firstErr.Error(), "503") {
			t.Errorf("%v: the error does not carry the token endpoint's 503: %v", callKind(k), c.firstErr)
		}
	}

	// During the backoff: every caller fails at once, and no token request
	// goes out.
	fast := &loadStats{}
	each(func(i int, k callKind) { _ = fast.timed(g.client, k, fmt.Sprintf("fast%d", i), false) })
	calls, failed, byCode = fast.totals()
	after, _ := g.a.faults.counts()
	t.Logf("during the backoff: %d calls, %d failed %v; %d token requests before, %d after%v", calls, failed, byCode, requests, after, fast)
	if byCode[codes.Unavailable] != outageCallers {
		t.Errorf("%v; want every call to fail with Unavailable", byCode)
	}
	if err := fast.kinds[unaryCall].firstErr; err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("the error of a call during the backoff does not carry the last refresh's 503: %v", err)
	}
	if fs := g.log.flights(); after != requests || fs[len(fs)-1].id != last.id {
		t.Errorf("%d token requests during the backoff, refreshes %v; want none", after-requests, fs[len(fs)-1])
	}

	// Callers that wait for ready: the endpoint comes back once the next
	// refresh has failed an attempt.
	waited := &loadStats{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		each(func(i int, k callKind) { _ = waited.timed(g.client, k, fmt.Sprintf("wfr%d", i), true) })
	}()
	defer func() { <-done }() // also after a t.Fatal: the callers end by their deadlines
	recovered := g.log.await(t, "a failed attempt after the backoff", func(e tokensource.Event) bool {
		return e.Kind == tokensource.RefreshAttemptFailed && e.Refresh > last.id
	})
	g.a.faults.setDown(false, "")
	<-done
	calls, failed, byCode = waited.totals()
	fs = g.log.flights()
	t.Logf("waiting for ready: %d calls, %d failed %v%v", calls, failed, byCode, waited)
	for _, f := range fs {
		if f.id > last.id {
			t.Logf("refresh %v", f)
		}
	}
	if failed != 0 {
		t.Errorf("%d of %d calls waiting for ready failed", failed, calls)
	}
	if f := fs[len(fs)-1]; f.id < recovered.Refresh || f.end.Kind != tokensource.RefreshSucceeded {
		t.Errorf("refresh %v: want one that succeeded, after the one that met the outage (#%d)", f, recovered.Refresh)
	}
	// The first refresh, the failed one, the one that met the outage again,
	// and room for one more failed refresh should a caller's last call
	// before the expiry have ended after the backoff.
	g.checkNoStorm(t, fs, 5, tokensource.DefaultRefreshAttempts)
}
