package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testConfig is a short run: several 500 ms token lifetimes in 2.5 s.
func testConfig() config {
	return config{
		workers:     40,
		duration:    2500 * time.Millisecond,
		ttl:         500 * time.Millisecond,
		callTimeout: 10 * time.Second,
		user:        testserver.DefaultUser,
		password:    testserver.DefaultPassword,
		interval:    time.Second,
	}
}

// TestDemoAbsorbsExpiries is the demo's claim: under concurrent load of
// every RPC kind, across several expiries, no call fails, each expiry costs
// exactly one refresh (±1 at the edges of the run), and every rejection the
// server sent was absorbed by the interceptors.
func TestDemoAbsorbsExpiries(t *testing.T) {
	var out bytes.Buffer
	rep, err := runDemo(t.Context(), testConfig(), &out)
	if err != nil {
		t.Fatalf("runDemo: %v", err)
	}
	t.Logf("output:\n%s", out.String())

	if n := rep.failed(); n > 0 {
		t.Errorf("%d RPCs failed, want 0", n)
	}
	for k, n := range rep.results.ok {
		if n == 0 {
			t.Errorf("no %s call succeeded", kindNames[k])
		}
	}
	tok := rep.tokens
	// Five lifetimes fit in the run; asking for one keeps a loaded CI machine
	// from failing the test while still proving the run crossed an expiry.
	if tok.expiries < 1 {
		t.Errorf("%d token expiries in %v with a %v TTL, want at least 1", tok.expiries, rep.elapsed, rep.cfg.ttl)
	}
	if diff := tok.refreshes - tok.early - tok.expiries; diff < -1 || diff > 1 {
		t.Errorf("%d refreshes for %d expiries, want equal ±1", tok.refreshes, tok.expiries)
	}
	if tok.valid != 0 || tok.early != 0 {
		t.Errorf("%d refreshes of a still-valid token and %d early ones, want 0 (no early refresh configured)", tok.valid, tok.early)
	}
	srv := rep.server
	if srv == nil {
		t.Fatal("no server counters for the embedded server")
	}
	if srv.Logins != 1 || srv.RefreshesOK != int64(tok.refreshes) || srv.RefreshesFailed != 0 {
		t.Errorf("server saw %d logins, %d refreshes (%d failed); want 1 login and the source's %d refreshes",
			srv.Logins, srv.RefreshesOK, srv.RefreshesFailed, tok.refreshes)
	}
	if srv.Unauthenticated == 0 {
		t.Error("the server rejected no call: the run did not exercise refresh after a rejection")
	}
	if rep.rejections != srv.Unauthenticated {
		t.Errorf("the interceptors saw %d rejections, the server sent %d", rep.rejections, srv.Unauthenticated)
	}
	if !rep.pass || !strings.HasPrefix(rep.verdict, "PASS: 0 failed RPCs") {
		t.Errorf("verdict %q, want a PASS", rep.verdict)
	}
	if !strings.Contains(out.String(), rep.verdict) {
		t.Error("the verdict is not in the output")
	}
}

// TestRunFailsWhenRefreshesFail checks that the demo is not a rubber stamp:
// failed refreshes fail calls, and the exit status and verdict say so.
func TestRunFailsWhenRefreshesFail(t *testing.T) {
	var out, errOut bytes.Buffer
	code := run(t.Context(), []string{"-workers", "10", "-duration", "1500ms", "-ttl", "300ms", "-fail-refreshes", "1"}, &out, &errOut)
	if code != exitFail {
		t.Errorf("exit status %d, want %d; output:\n%s%s", code, exitFail, out.String(), errOut.String())
	}
	for _, want := range []string{"FAIL: ", "Unavailable", "-fail-refreshes makes refreshes fail"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

// TestRunExternalServer drives a separately started server through -addr
// and -tls-ca, as with cmd/testserver.
func TestRunExternalServer(t *testing.T) {
	srv := testserver.New(testserver.WithAccessTokenTTL(200 * time.Millisecond))
	ep, err := srv.Start(t.Context(), testserver.TLS())
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Stop()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, ep.CertificatePEM(), 0o600); err != nil {
		t.Fatal(err)
	}

	var out, errOut bytes.Buffer
	code := run(t.Context(), []string{"-addr", ep.Addr(), "-tls-ca", ca, "-workers", "10", "-duration", "2s"}, &out, &errOut)
	if code != exitPass {
		t.Fatalf("exit status %d, want %d; output:\n%s%s", code, exitPass, out.String(), errOut.String())
	}
	if !strings.Contains(out.String(), "server counters n/a") {
		t.Errorf("output does not say the server counters are unavailable:\n%s", out.String())
	}
	// Ten lifetimes fit in the run; one refresh is enough to prove the
	// external path refreshes, without failing on a loaded machine.
	if c := srv.Counters(); c.Logins != 1 || c.RefreshesOK < 1 {
		t.Errorf("server saw %d logins and %d refreshes, want 1 and at least 1", c.Logins, c.RefreshesOK)
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-workers", "0"}, "-workers must be at least 1"},
		{[]string{"-duration", "-1s"}, "-duration must be positive"},
		{[]string{"-ttl", "0"}, "-ttl must be positive"},
		{[]string{"-addr", "127.0.0.1:1", "-ttl", "1s"}, "-ttl configures the embedded server"},
		{[]string{"-addr", "127.0.0.1:1", "-fail-refreshes", "2"}, "-fail-refreshes configures the embedded server"},
		{[]string{"-tls-ca", "ca.pem"}, "apply only with -addr"},
		{[]string{"-addr", "127.0.0.1:1", "-insecure", "-tls-ca", "ca.pem"}, "mutually exclusive"},
		{[]string{"extra"}, "unexpected arguments"},
		{[]string{"-no-such-flag"}, "flag provided but not defined"},
	} {
		var out, errOut bytes.Buffer
		if code := run(t.Context(), tc.args, &out, &errOut); code != exitUsage {
			t.Errorf("run(%q) = %d, want %d", tc.args, code, exitUsage)
		}
		if !strings.Contains(errOut.String(), tc.want) {
			t.Errorf("run(%q) stderr lacks %q:\n%s", tc.args, tc.want, errOut.String())
		}
		if out.Len() > 0 {
			t.Errorf("run(%q) wrote to stdout: %q", tc.args, out.String())
		}
	}
	var out, errOut bytes.Buffer
	if code := run(t.Context(), []string{"-h"}, &out, &errOut); code != exitPass || !strings.Contains(errOut.String(), "-workers") {
		t.Errorf("run(-h) = %d with usage %q, want %d and the flags", code, errOut.String(), exitPass)
	}
}

// TestTokenTrackerCatchesExtraRefreshes feeds the tracker the events of a
// refresh storm and checks that the verdict fails it, while one refresh per
// expiry passes.
func TestTokenTrackerCatchesExtraRefreshes(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	ok := func(at, expiry time.Duration, background bool) tokensource.Event {
		return tokensource.Event{Kind: tokensource.RefreshSucceeded, Time: t0.Add(at), Expiry: t0.Add(expiry), Background: background}
	}
	judge := func(events ...tokensource.Event) (tokenSummary, *report) {
		tr := &tokenTracker{}
		for _, ev := range events {
			tr.observe(ev)
		}
		rep := &report{tokens: tr.summary(t0.Add(5 * time.Second))}
		rep.judge()
		return rep.tokens, rep
	}

	// Login, then one refresh per expiry; the last token expires at 6 s,
	// after the end.
	sum, rep := judge(ok(0, 2*time.Second, false), ok(2001*time.Millisecond, 4*time.Second, false), ok(4002*time.Millisecond, 6*time.Second, false))
	if sum.logins != 1 || sum.refreshes != 2 || sum.expiries != 2 || !rep.pass {
		t.Errorf("one refresh per expiry: %+v, verdict %q; want 1 login, 2 refreshes, 2 expiries, PASS", sum, rep.verdict)
	}

	// Early background refreshes of valid tokens are not extra.
	sum, rep = judge(ok(0, 2*time.Second, false), ok(1500*time.Millisecond, 3500*time.Millisecond, true), ok(3*time.Second, 5500*time.Millisecond, true))
	if sum.early != 2 || sum.expiries != 0 || !rep.pass {
		t.Errorf("early refreshes: %+v, verdict %q; want 2 early, 0 expiries, PASS", sum, rep.verdict)
	}

	// A storm: after one expiry, four refreshes in a row, each replacing a
	// token that is still valid (their expiry is after the end).
	sum, rep = judge(ok(0, 2*time.Second, false), ok(2001*time.Millisecond, 7*time.Second, false),
		ok(2002*time.Millisecond, 7*time.Second, false), ok(2003*time.Millisecond, 7*time.Second, false),
		ok(2004*time.Millisecond, 7*time.Second, false))
	if sum.valid != 3 || rep.pass || !strings.Contains(rep.verdict, "FAIL: 4 refreshes for 1 expiry") {
		t.Errorf("storm: %+v, verdict %q; want 3 refreshes of valid tokens and a FAIL for 4 refreshes for 1 expiry", sum, rep.verdict)
	}
	if n := strings.Count(rep.verdict, "refreshes for 1 expiry"); n != 1 {
		t.Errorf("storm verdict %q states the counts %d times, want once", rep.verdict, n)
	}

	// The current token expired before the end without being replaced: an
	// expiry still waiting for its refresh.
	sum, _ = judge(ok(0, 2*time.Second, false), ok(2001*time.Millisecond, 4*time.Second, false))
	if sum.expiries != 2 || sum.refreshes != 1 {
		t.Errorf("pending expiry: %+v, want 2 expiries and 1 refresh", sum)
	}

	// Failures are counted with their error.
	tr := &tokenTracker{}
	tr.observe(tokensource.Event{Kind: tokensource.RefreshFailed, Err: errors.New("boom"), Waiters: 7})
	if s := tr.summary(t0); s.failures != 1 || s.lastFailure != "boom" || s.maxWaiters != 7 {
		t.Errorf("failure: %+v, want 1 failure with its error and 7 waiters", s)
	}
}

func TestProgressLine(t *testing.T) {
	src := tokensource.New(tokensource.RefresherFunc(func(_ context.Context, _ *tokensource.Token) (*tokensource.Token, error) {
		return nil, errors.New("unused")
	}))
	defer src.Close()
	total := &counters{}
	total.ok.Store(1500)

	var plain bytes.Buffer
	p := &progress{out: &plain, src: src, tracker: &tokenTracker{}, total: total}
	p.tick(time.Second)
	total.ok.Store(4500)
	p.tick(2 * time.Second)
	p.done()
	lines := strings.Split(strings.TrimSuffix(plain.String(), "\n"), "\n")
	if len(lines) != 2 || strings.Contains(plain.String(), "\r") {
		t.Fatalf("plain output %q, want two lines without carriage returns", plain.String())
	}
	if want := "  2.0s  4,500 RPCs  3,000 RPCs/s  0 failed  0 refreshes  0 waiting on a refresh"; lines[1] != want {
		t.Errorf("second line %q, want %q", lines[1], want)
	}

	var tty bytes.Buffer
	total.ok.Store(12_000_000)
	p = &progress{out: &tty, tty: true, src: src, tracker: &tokenTracker{}, total: total}
	p.tick(time.Second)
	total.ok.Store(12_000_001) // 1 RPC/s: a shorter line
	p.tick(2 * time.Second)
	if strings.Contains(tty.String(), "\n") || strings.Count(tty.String(), "\r") != 2 {
		t.Fatalf("terminal output %q, want two carriage-return redraws and no newline", tty.String())
	}
	redraws := strings.Split(tty.String(), "\r")
	if last, prev := redraws[2], redraws[1]; len(last) != len(prev) || !strings.Contains(last, " 1 RPCs/s") {
		t.Errorf("the shorter line is not padded over the longer one: %q after %q", last, prev)
	}
	p.done()
	if !strings.HasSuffix(tty.String(), "\n") {
		t.Error("done did not end the redrawn line")
	}
}

func TestHistogram(t *testing.T) {
	for _, v := range []uint64{0, 1, 31, 32, 33, 47, 48, 63, 64, 1000, 123_456_789, 1 << 40, 1<<63 - 1, 1<<64 - 1} {
		i := bucketOf(v)
		lo, width := bucketRange(i)
		if i < 0 || i >= numBuckets || v < lo || v-lo >= width {
			t.Errorf("value %d: bucket %d covers [%d, %d+%d)", v, i, lo, lo, width)
		}
	}
	var h histogram
	for v := 1; v <= 1000; v++ {
		h.record(time.Duration(v) * time.Microsecond)
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Microsecond}, {0.99, 990 * time.Microsecond}, {1, 1000 * time.Microsecond}} {
		got := h.quantile(tc.q)
		if diff := got - tc.want; diff < -tc.want/16 || diff > tc.want/16 {
			t.Errorf("quantile(%v) = %v, want %v ± 6.25%%", tc.q, got, tc.want)
		}
	}
	var merged histogram
	merged.merge(&h)
	merged.merge(&h)
	if merged.n != 2000 || merged.max != time.Millisecond || merged.quantile(0.5) != h.quantile(0.5) {
		t.Errorf("merge: n %d, max %v, p50 %v; want 2000, 1ms, %v", merged.n, merged.max, merged.quantile(0.5), h.quantile(0.5))
	}
	if (&histogram{}).quantile(0.5) != 0 {
		t.Error("an empty histogram has a non-zero quantile")
	}
}

func TestGroup(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -98765: "-98,765"} {
		if got := group(n); got != want {
			t.Errorf("group(%d) = %q, want %q", n, got, want)
		}
	}
}
