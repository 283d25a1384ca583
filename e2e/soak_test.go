package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"math/rand/v2"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// Soak parameters, sized for -race on a loaded 2-core machine.
const (
	soakWorkers = 32
	// soakTokenTTL is the access tokens' lifetime. It is sized against RPC
	// latency under load, not for speed: the Source serves a token until
	// its leeway (a tenth of the lifetime, 300 ms) before the expiry, so a
	// call whose RPC takes longer than that reaches the server with an
	// expired token; its one retry then carries a fresh token and fails only
	// if it takes longer than 2.7 s. With 100 ms tokens, 10 ms and 90 ms,
	// which -race on two busy cores exceeds: 131 calls failed that way. On
	// such a machine the soak measured calls of up to 1.3 s (the "RPC
	// latency" line). Refreshed at about two thirds of their lifetime, 3 s
	// tokens still expire about ten times in the default 20 s
	// (soakMinExpiries checks that the run crossed several).
	soakTokenTTL  = 3 * time.Second
	soakTransient = 0.15 // share of refreshes the server fails with Unavailable
	// soakPermanent is the share of refreshes the server fails with
	// PermissionDenied (re-login needed): with one refresh per expiry, about
	// a dozen refreshes, about every other run goes through a re-login.
	soakPermanent   = 0.05
	soakCancelShare = 0.05 // share of calls whose context the test cancels at random
	soakCallTimeout = 10 * time.Second
	// soakMaxRetries bounds the application's retries of Unavailable, 1 ms
	// to 5 ms apart: about 300 ms, in which the Source (backing off 5 ms to
	// 50 ms) tries about ten refreshes, which all fail with a probability of
	// 0.15^10.
	soakMaxRetries = 100
	// soakHeapSlack is the generous bound on heap growth between the start
	// and the end of the traffic (live heap after GC, about 1 MiB): a leak
	// of 100 bytes per call exceeds it in a 20 s run.
	soakHeapSlack = 8 << 20
)

// soakMinExpiries is the fewest token expiries a run of length d must cross:
// one per two token lifetimes, half of what the Source's refresh at about two
// thirds of each lifetime gives, so that it holds under any load and proves
// the run was not vacuous.
func soakMinExpiries(d time.Duration) int { return int(d / (2 * soakTokenTTL)) }

// soakStats are the figures of one soak run.
type soakStats struct {
	calls     [4]atomic.Int64 // successful calls by kind
	retries   atomic.Int64    // Unavailable answers retried by the application
	cancelled atomic.Int64    // calls the test cancelled that failed
	reauth    atomic.Int64    // calls failed with ErrReauthRequired
	bad       atomic.Int64    // calls that failed otherwise: violations

	latency latencyHistogram // of every RPC attempt (soakOp), retries by the interceptor included

	mu       sync.Mutex
	samples  []string       // the first violations
	byCode   map[string]int // failures by code and cause
	injected struct{ transient, permanent atomic.Int64 }
}

var soakKinds = [4]string{"unary", "server-stream", "client-stream", "bidi"}

func (s *soakStats) violation(format string, args ...any) {
	s.bad.Add(1)
	s.mu.Lock()
	if len(s.samples) < 10 {
		s.samples = append(s.samples, fmt.Sprintf(format, args...))
	}
	s.mu.Unlock()
}

func (s *soakStats) failed(cause string, err error) {
	s.mu.Lock()
	s.byCode[cause+"/"+status.Code(err).String()]++
	s.mu.Unlock()
}

// latencyHistogram counts durations in power-of-two buckets of microseconds,
// lock-free, so that measuring every call neither serialises the workers nor
// grows the heap the soak checks.
type latencyHistogram struct {
	buckets [32]atomic.Int64 // bucket i: [2^(i-1), 2^i) µs; bucket 0: under 1 µs
	max     atomic.Int64     // nanoseconds
}

func (h *latencyHistogram) record(d time.Duration) {
	us := uint64(max(d.Microseconds(), 0))
	h.buckets[min(bits.Len64(us), len(h.buckets)-1)].Add(1)
	for cur := h.max.Load(); int64(d) > cur && !h.max.CompareAndSwap(cur, int64(d)); cur = h.max.Load() {
	}
}

// quantile returns the upper bound of the bucket that holds quantile q, or
// the maximum if that is lower.
func (h *latencyHistogram) quantile(q float64) time.Duration {
	var total int64
	for i := range h.buckets {
		total += h.buckets[i].Load()
	}
	want, seen := int64(math.Ceil(q*float64(total))), int64(0)
	for i := range h.buckets {
		if seen += h.buckets[i].Load(); seen >= want && seen > 0 {
			return min(time.Duration(uint64(1)<<i)*time.Microsecond, time.Duration(h.max.Load()).Round(time.Millisecond))
		}
	}
	return 0
}

// TestSoak runs mixed traffic with 3 s tokens, injected refresh failures
// and random cancellations for -soak.duration, then checks the invariants
// listed in the package documentation.
func TestSoak(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	stats := &soakStats{byCode: map[string]int{}}
	ctx, cancel := context.WithTimeout(context.Background(), *soakDuration+2*time.Minute)
	defer cancel()

	srv := testserver.New(
		testserver.WithAccessTokenTTL(soakTokenTTL),
		testserver.WithRefreshFailureFunc(func(context.Context, string) error {
			switch x := rand.Float64(); {
			case x < soakPermanent:
				stats.injected.permanent.Add(1)
				return status.Error(codes.PermissionDenied, "soak: injected permanent refresh failure")
			case x < soakPermanent+soakTransient:
				stats.injected.transient.Add(1)
				return status.Error(codes.Unavailable, "soak: injected transient refresh failure")
			}
			return nil
		}),
	)
	ep, err := srv.Start(ctx, testserver.TLS())
	if err != nil {
		t.Fatal(err)
	}
	events := newEventLog()
	var refresher atomic.Pointer[testserver.Refresher]
	var src *tokensource.Source
	var relogins atomic.Int64
	src = tokensource.New(
		tokensource.RefresherFunc(func(ctx context.Context, cur *tokensource.Token) (*tokensource.Token, error) {
			return refresher.Load().Refresh(ctx, cur)
		}),
		tokensource.WithObserver(events.observe),
		// Backoff well under the early-refresh window (750 ms), so that
		// transient failures are retried before the token goes stale.
		tokensource.WithBackoff(5*time.Millisecond, 50*time.Millisecond),
		// A short minimum interval between forced refreshes. The default
		// (1 s) is a third of a token lifetime here: a token rejected in transit
		// within a second of a forced refresh could not be replaced.
		tokensource.WithMinRefreshInterval(10*time.Millisecond),
		// The user logs in again at once: a new token family.
		tokensource.WithOnReauthRequired(func(error) {
			relogins.Add(1)
			tok, err := srv.IssueToken(testserver.DefaultUser)
			if err == nil {
				err = src.SetToken(context.Background(), tok)
			}
			if err != nil {
				t.Errorf("re-login: %v", err)
			}
		}),
	)
	conn, err := ep.NewClient(interceptor.DialOptions(src)...)
	if err != nil {
		t.Fatal(err)
	}
	refresher.Store(testserver.NewRefresher(conn, testserver.DefaultUser, testserver.DefaultPassword))
	echo := echov1.NewEchoServiceClient(conn)

	// Warm up (first login, TLS handshake), then take the baselines.
	for range 10 {
		if _, err := echo.Echo(ctx, &echov1.EchoRequest{Message: "warm-up"}); err != nil {
			t.Fatalf("warm-up: %v", err)
		}
	}
	heapStart := liveHeap()
	goroutinesStart := runtime.NumGoroutine()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	begin := time.Now()
	for w := range soakWorkers {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				soakCall(ctx, echo, stats, fmt.Sprintf("w%d-%d", w, i))
			}
		})
	}
	timer := time.NewTimer(*soakDuration)
	select {
	case <-timer.C:
	case <-ctx.Done():
	}
	close(stop)
	wg.Wait()
	trafficEnd := time.Now()
	elapsed := trafficEnd.Sub(begin)

	// Let a background refresh still running finish, so that the client's
	// and the server's counts agree.
	for deadline := time.Now().Add(10 * time.Second); src.Stats().InFlight; {
		if time.Now().After(deadline) {
			t.Fatal("a refresh is still in flight 10 s after the traffic stopped")
		}
		time.Sleep(time.Millisecond)
	}
	heapEnd := liveHeap()
	goroutinesEnd := runtime.NumGoroutine()
	counters := srv.Counters()
	sstats := src.Stats()
	evs := events.snapshot()

	_ = src.Close()
	_ = conn.Close()
	ep.Stop()
	leakErr := goleak.Find(ignore)

	// The figures.
	var calls int64
	var byKind []string
	for k, name := range soakKinds {
		n := stats.calls[k].Load()
		calls += n
		byKind = append(byKind, fmt.Sprintf("%s=%d", name, n))
	}
	var attempts, forced, background, succeeded, failedAttempts, reauthEvents, sets, retried int
	type install struct {
		at, expiry time.Time
	}
	installs := []install{{at: begin.Add(-time.Hour)}} // the empty Source before the first login: expired at once
	for _, ev := range evs {
		switch ev.Kind {
		case tokensource.RefreshStarted:
			attempts++
			if ev.Forced {
				forced++
			}
			if ev.Background {
				background++
			}
		case tokensource.RefreshSucceeded:
			succeeded++
			installs = append(installs, install{ev.Time, ev.Expiry})
		case tokensource.TokenSet:
			sets++
			installs = append(installs, install{ev.Time, ev.Expiry})
		case tokensource.RefreshAttemptFailed:
			// A failed call that its refresh follows with another.
			attempts++
			failedAttempts++
			retried++
		case tokensource.RefreshFailed:
			failedAttempts++
		case tokensource.ReauthRequired:
			failedAttempts++
			reauthEvents++
		}
	}
	// The bound on refresh attempts (Refresher calls: the first call of
	// each refresh, a RefreshStarted event, and each further call of a
	// refresh, which follows a RefreshAttemptFailed event):
	//
	//	attempts ≤ expiries + forced + failed
	//
	// expiries counts the tokens that reached the start of their
	// early-refresh window (computed as the Source does, from the expiry and
	// the instant the token was installed) while they were current, that is
	// before the next token replaced them or the traffic stopped, plus the
	// empty Source at the start. forced counts the refreshes made through
	// Source.Refresh of the current token after a server rejected it. failed
	// counts the attempts that failed (RefreshAttemptFailed, RefreshFailed,
	// and ReauthRequired for the injected permanent failures). The Source
	// starts a refresh that is not forced only when its token is in the
	// early window or stale (or there is none); while that token stays
	// current, a second such refresh can only follow a failed one, and a
	// refresh calls the Refresher again only after a failed call. So each
	// expiry allows one attempt, each failure one more, and forced refreshes
	// are counted as they are: it proves one shared refresh per expiry,
	// whatever the number of callers.
	sort.Slice(installs[1:], func(i, j int) bool { return installs[1+i].at.Before(installs[1+j].at) })
	expiries := 0
	for i, in := range installs {
		end := trafficEnd
		if i+1 < len(installs) {
			end = installs[i+1].at
		}
		if i == 0 || !refreshAt(in.expiry, in.at).After(end) {
			expiries++
		}
	}
	bound := expiries + forced + failedAttempts
	serverAttempts := counters.Logins + counters.RefreshesOK + counters.RefreshesFailed
	var rpcs int64
	for _, n := range counters.RPCs {
		rpcs += n
	}

	t.Logf("soak | %v, %d workers, token TTL %v, injected refresh failures: %.0f%% transient, %.0f%% permanent, %.0f%% of calls cancelled at random",
		elapsed.Round(time.Millisecond), soakWorkers, soakTokenTTL, soakTransient*100, soakPermanent*100, soakCancelShare*100)
	t.Logf("soak | calls OK: %d (%s), %.0f/s; Unavailable answers retried by the application: %d",
		calls, strings.Join(byKind, " "), float64(calls)/elapsed.Seconds(), stats.retries.Load())
	t.Logf("soak | failed calls: cancelled by the test %d, re-login needed (ErrReauthRequired) %d, other %d; by cause/code: %v",
		stats.cancelled.Load(), stats.reauth.Load(), stats.bad.Load(), stats.byCode)
	t.Logf("soak | refreshes: %d attempts (%d forced, %d background, %d tried again within their refresh), %d succeeded, %d failed (%d needing re-login); %d re-logins (SetToken)",
		attempts, forced, background, retried, succeeded, failedAttempts, reauthEvents, sets)
	t.Logf("soak | bound: attempts %d <= expiries %d (at least %d required) + forced %d + failed %d = %d",
		attempts, expiries, soakMinExpiries(elapsed), forced, failedAttempts, bound)
	t.Logf("soak | server: logins %d, refreshes ok %d failed %d (injected: %d transient, %d permanent), Unauthenticated answers %d, RPCs %d; source: waited %d, rate-limited %d",
		counters.Logins, counters.RefreshesOK, counters.RefreshesFailed, stats.injected.transient.Load(),
		stats.injected.permanent.Load(), counters.Unauthenticated, rpcs, sstats.Waited, sstats.RateLimited)
	t.Logf("soak | RPC latency (one attempt, the interceptor's retry included; bucket bounds): p50 <= %v, p99 <= %v, p99.9 <= %v, max %v; the token's leeway is %v",
		stats.latency.quantile(0.5), stats.latency.quantile(0.99), stats.latency.quantile(0.999),
		time.Duration(stats.latency.max.Load()).Round(time.Millisecond), soakTokenTTL/10)
	t.Logf("soak | live heap: %s at the start, %s at the end; goroutines: %d at the start, %d at the end of the traffic",
		mib(heapStart), mib(heapEnd), goroutinesStart, goroutinesEnd)

	// The invariants.
	if n := stats.bad.Load(); n > 0 {
		t.Errorf("%d calls failed for a reason other than their own context or an injected permanent failure; first ones:\n%s",
			n, strings.Join(stats.samples, "\n"))
	}
	if calls < soakWorkers {
		t.Errorf("only %d calls succeeded", calls)
	}
	if want := soakMinExpiries(elapsed); expiries < want {
		t.Errorf("the run crossed %d token expiries, want at least %d", expiries, want)
	}
	if attempts > bound {
		t.Errorf("%d refresh attempts > expiries %d + forced %d + failed %d", attempts, expiries, forced, failedAttempts)
	}
	if int64(attempts) != serverAttempts {
		t.Errorf("the Source started %d refreshes, the server saw %d logins and refreshes", attempts, serverAttempts)
	}
	if injected := stats.injected.transient.Load() + stats.injected.permanent.Load(); counters.RefreshesFailed != injected {
		t.Errorf("the server failed %d refreshes, %d of them injected: a refresh token was rejected (reuse or expiry)",
			counters.RefreshesFailed, injected)
	}
	if int64(forced) > counters.Unauthenticated {
		t.Errorf("%d forced refreshes but only %d Unauthenticated answers", forced, counters.Unauthenticated)
	}
	if got, want := int64(reauthEvents), stats.injected.permanent.Load(); got != want || relogins.Load() != want {
		t.Errorf("ReauthRequired %d times, re-logins %d, injected permanent failures %d", got, relogins.Load(), want)
	}
	if heapEnd > heapStart+soakHeapSlack {
		t.Errorf("live heap grew from %s to %s", mib(heapStart), mib(heapEnd))
	}
	if leakErr != nil {
		t.Errorf("goroutines left: %v", leakErr)
	}
}

// refreshAt is where a Source with the default leeway and early window
// starts to refresh a token with expiry exp received at now (see the
// tokensource package documentation: both are capped by fractions of the
// token's lifetime).
func refreshAt(exp, now time.Time) time.Time {
	exp = exp.Round(0)
	life := exp.Sub(now)
	stale := exp.Add(-min(tokensource.DefaultExpiryLeeway, life/10))
	return stale.Add(-min(tokensource.DefaultEarlyRefresh, life/4))
}

func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func mib(n uint64) string { return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + " MiB" }

// soakCall makes one call of a random kind, retrying Unavailable as an
// application (or a retry interceptor) would, and classifies the outcome.
func soakCall(parent context.Context, echo echov1.EchoServiceClient, stats *soakStats, id string) {
	ctx, cancel := context.WithTimeout(parent, soakCallTimeout)
	defer cancel()
	cancelled := rand.Float64() < soakCancelShare
	if cancelled {
		t := time.AfterFunc(time.Duration(rand.Int64N(int64(3*time.Millisecond))), cancel)
		defer t.Stop()
	}
	kind := rand.IntN(len(soakKinds))
	var err error
	for attempt := 0; ; attempt++ {
		began := time.Now()
		err = soakOp(ctx, echo, kind, id)
		stats.latency.record(time.Since(began))
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil || attempt == soakMaxRetries {
			break
		}
		stats.retries.Add(1)
		time.Sleep(time.Millisecond + rand.N(4*time.Millisecond))
	}
	switch {
	case err == nil:
		stats.calls[kind].Add(1)
	case cancelled && ctx.Err() != nil:
		stats.cancelled.Add(1)
		stats.failed("cancelled", err)
	case errors.Is(err, tokensource.ErrReauthRequired):
		stats.reauth.Add(1)
		stats.failed("reauth", err)
	default:
		stats.failed("other", err)
		stats.violation("%s %s: %v", soakKinds[kind], id, err)
	}
}

// soakOp makes one call of kind (an index of soakKinds) with opts and checks
// what came back: every message once, in order.
func soakOp(ctx context.Context, echo echov1.EchoServiceClient, kind int, id string, opts ...grpc.CallOption) error {
	const n = 3
	msgs := make([]string, n)
	for i := range msgs {
		msgs[i] = id + "/" + strconv.Itoa(i)
	}
	switch kind {
	case 0:
		resp, err := echo.Echo(ctx, &echov1.EchoRequest{Message: id}, opts...)
		if err != nil {
			return err
		}
		if resp.GetMessage() != id {
			return fmt.Errorf("echo returned %q", resp.GetMessage())
		}
	case 1:
		stream, err := echo.ServerStreamEcho(ctx, &echov1.ServerStreamEchoRequest{Message: id, Count: n}, opts...)
		if err != nil {
			return err
		}
		for i := int32(0); ; i++ {
			resp, err := stream.Recv()
			if err == io.EOF {
				if i != n {
					return fmt.Errorf("server stream ended after %d messages", i)
				}
				break
			}
			if err != nil {
				return err
			}
			if resp.GetIndex() != i || resp.GetMessage() != id {
				return fmt.Errorf("server stream message %d is %d %q", i, resp.GetIndex(), resp.GetMessage())
			}
		}
	case 2:
		stream, err := echo.ClientStreamEcho(ctx, opts...)
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if err := stream.Send(&echov1.ClientStreamEchoRequest{Message: m}); err != nil {
				break // io.EOF: CloseAndRecv reports why
			}
		}
		resp, err := stream.CloseAndRecv()
		if err != nil {
			return err
		}
		if !slices.Equal(resp.GetMessages(), msgs) {
			return fmt.Errorf("client stream: the server received %q, want %q", resp.GetMessages(), msgs)
		}
	case 3:
		stream, err := echo.BidiStreamEcho(ctx, opts...)
		if err != nil {
			return err
		}
		for i, m := range msgs {
			if err := stream.Send(&echov1.BidiStreamEchoRequest{Message: m}); err != nil && err != io.EOF {
				return err
			}
			resp, err := stream.Recv()
			if err != nil {
				return err
			}
			if resp.GetMessage() != m || resp.GetIndex() != int32(i) {
				return fmt.Errorf("bidi: message %d came back as %d %q", i, resp.GetIndex(), resp.GetMessage())
			}
		}
		if err := stream.CloseSend(); err != nil {
			return err
		}
		switch _, err := stream.Recv(); {
		case err == nil:
			return errors.New("bidi: a message more than was sent came back")
		case err != io.EOF:
			return err
		}
	}
	return nil
}
