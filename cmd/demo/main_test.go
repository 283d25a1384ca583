package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/redistest"
	"github.com/tokenrefresh/grpc-tokenrefresh/internal/testutil"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// The fleet phases start this test binary again as their worker processes,
// as the demo starts itself.
func TestMain(m *testing.M) {
	testutil.Main(m, testutil.Role(envWorker, func(spec string) int {
		return runWorker(spec, os.Stdin, os.Stdout, os.Stderr)
	}))
}

// Token lifetimes of the tests: the early-refresh window is a quarter of the
// lifetime, and a background refresh must finish inside it for no caller to
// wait, so 4 s leaves a loaded machine a second. The first background
// refresh starts at 65 % of the lifetime, inside a 4 s phase.
const (
	testTTL      = 4 * time.Second
	testDuration = 4 * time.Second
)

func testConfig(phases ...string) config {
	return config{
		workers:     40,
		duration:    testDuration,
		ttl:         testTTL,
		phases:      phases,
		processes:   2,
		callTimeout: 10 * time.Second,
		user:        testserver.DefaultUser,
		password:    testserver.DefaultPassword,
		interval:    time.Second,

		refreshAttempts: tokensource.DefaultRefreshAttempts,
	}
}

func runPhases(t *testing.T, cfg config) *summary {
	t.Helper()
	sum, _ := runPhasesOutput(t, cfg)
	return sum
}

// runPhasesOutput is runPhases that also returns what the demo printed.
func runPhasesOutput(t *testing.T, cfg config) (*summary, string) {
	t.Helper()
	var out bytes.Buffer
	sum, err := runDemo(t.Context(), cfg, &out)
	t.Logf("output:\n%s", out.String())
	if err != nil {
		t.Fatalf("runDemo: %v", err)
	}
	if len(sum.Phases) == 0 {
		t.Fatal("no phase ran")
	}
	return sum, out.String()
}

// progressLine matches a progress line as printed off a terminal, taking
// its elapsed time and its calls.
var progressLine = regexp.MustCompile(`(?m)^ +([0-9.]+)s  ([0-9,]+) calls  `)

// phaseOutput returns what the demo printed for the phase named name, from
// its header to the next phase's.
func phaseOutput(t *testing.T, out, name string) string {
	t.Helper()
	for _, part := range strings.Split(out, "\nphase ")[1:] {
		if header, _, _ := strings.Cut(part, "\n"); strings.HasSuffix(header, " "+name) {
			return part
		}
	}
	t.Fatalf("no output for phase %s", name)
	return ""
}

func checkCalls(t *testing.T, p *phaseReport) {
	t.Helper()
	if p.Failed != 0 || p.UnauthenticatedSeen != 0 {
		t.Errorf("%s: %d calls failed (%v), %d rejections reached the application; want 0 and 0", p.Name, p.Failed, p.FailedByCode, p.UnauthenticatedSeen)
	}
	for _, k := range kindNames {
		if p.OKByKind[k] == 0 {
			t.Errorf("%s: no %s call succeeded", p.Name, k)
		}
	}
	if !p.Pass {
		t.Errorf("%s: verdict %q, want PASS", p.Name, p.Verdict)
	}
}

// TestEarlyRefreshPhase is the headline promise on the library's defaults:
// tokens are renewed in the background, so the server rejects nothing and
// no caller waits.
func TestEarlyRefreshPhase(t *testing.T) {
	p := runPhases(t, testConfig(phaseEarly)).Phases[0]
	checkCalls(t, p)
	if p.Early < 1 || p.Refreshes != int64(p.Early) {
		t.Errorf("%d refreshes, %d of them early, want at least 1, all early", p.Refreshes, p.Early)
	}
	if p.Waited != 0 || p.Retried != 0 || p.Forced != 0 || p.Expired != 0 {
		t.Errorf("%d callers waited, %d calls retried, %d forced and %d expired refreshes; want 0 each",
			p.Waited, p.Retried, p.Forced, p.Expired)
	}
	if s := p.Server; s == nil || s.Unauthenticated != 0 || s.Refreshes != p.Refreshes || s.Logins != 1 {
		t.Errorf("server figures %+v, want 0 rejections, 1 login and the Source's %d refreshes", s, p.Refreshes)
	}
}

// TestRevocationPhase: a revocation mid-run costs one forced refresh, shared
// by the gRPC calls and the HTTP requests on the same Source, and every
// rejected call and request is retried unseen.
func TestRevocationPhase(t *testing.T) {
	p := runPhases(t, testConfig(phaseRevocation)).Phases[0]
	checkCalls(t, p)
	if h := p.HTTP; h == nil || h.Requests == 0 || h.Failed != 0 {
		t.Errorf("HTTP figures %+v: want requests, none failed", h)
	}
	if p.Forced != 1 || p.Refreshes != 1 {
		t.Errorf("%d refreshes, %d forced; want exactly 1, forced", p.Refreshes, p.Forced)
	}
	if s := p.Server; p.Retried == 0 || s == nil || p.Retried != s.Unauthenticated {
		t.Errorf("%d calls retried, server figures %+v; want every rejection retried, at least one", p.Retried, s)
	}
	if p.Waited == 0 {
		t.Error("no caller waited for the forced refresh: the revocation missed the load")
	}
}

// TestFleetPhases: real worker processes sharing one credential through a
// FileStore, and through Redis (a real redis-server, started here), make
// one refresh per token lifetime between them.
func TestFleetPhases(t *testing.T) {
	rs := redistest.Start(t)
	cfg := testConfig(phaseFleet)
	cfg.redis = rs.Socket
	sum, out := runPhasesOutput(t, cfg)
	if len(sum.Phases) != 2 || sum.Phases[0].Name != "fleet-file" || sum.Phases[1].Name != "fleet-redis" {
		t.Fatalf("phases %v, want fleet-file and fleet-redis", sum.Phases)
	}
	for _, p := range sum.Phases {
		checkCalls(t, p)
		if p.Processes != 2 {
			t.Errorf("%s: %d processes, want 2", p.Name, p.Processes)
		}
		if p.Lifetimes < 1 || p.Refreshes != int64(p.Lifetimes) {
			t.Errorf("%s: %d refreshes for %d token lifetimes, want one per lifetime, at least one", p.Name, p.Refreshes, p.Lifetimes)
		}
		// Each lifetime's token is refreshed by one process and adopted
		// by the other.
		if p.Adopted < int64(p.Lifetimes) {
			t.Errorf("%s: %d tokens adopted for %d lifetimes, want at least one per lifetime", p.Name, p.Adopted, p.Lifetimes)
		}
		// The server's figures count the seed's login, the one the phase
		// announces: no process logged in itself.
		if s := p.Server; s == nil || s.Refreshes != p.Refreshes || s.RefreshesRefused != 0 || s.Logins != 1 {
			t.Errorf("%s: server figures %+v, want the fleet's %d refreshes, none refused, one login: the seed", p.Name, s, p.Refreshes)
		}
		text := phaseOutput(t, out, p.Name)
		// The header announces one login and the table reports it.
		if !strings.Contains(text, "one login, then the processes share") || !strings.Contains(text, ", 1 login\n") {
			t.Errorf("%s: the output does not announce and report the same one login:\n%s", p.Name, text)
		}
		// The phase's clock starts when the processes are ready, so its
		// first progress line already counts calls.
		if m := progressLine.FindStringSubmatch(text); m == nil {
			t.Errorf("%s: no progress line:\n%s", p.Name, text)
		} else if m[2] == "0" {
			t.Errorf("%s: the first progress line, at %ss, counts no call: %q", p.Name, m[1], m[0])
		}
		// Nor does it print lines after the load, while the processes exit.
		for _, m := range progressLine.FindAllStringSubmatch(text, -1) {
			if at, err := strconv.ParseFloat(m[1], 64); err != nil || at > (cfg.duration+cfg.interval/2).Seconds() {
				t.Errorf("%s: progress line at %ss in a phase of %v: %q", p.Name, m[1], cfg.duration, m[0])
			}
		}
	}
	// The demo removes its record.
	rc := redisClient(rs.Socket)
	defer rc.Close()
	if n, err := rc.Keys(t.Context(), "tokenrefresh-demo:*").Result(); err != nil || len(n) != 0 {
		t.Errorf("Redis keys left behind: %v (%v)", n, err)
	}
}

// TestRunJSON: -json prints one JSON object on stdout, the progress on
// stderr, and the exit status matches the verdict.
func TestRunJSON(t *testing.T) {
	var out, errOut bytes.Buffer
	code := run(t.Context(), []string{"-phases", phaseEarly, "-workers", "10", "-duration", "1s", "-json"}, &out, &errOut)
	if code != exitPass {
		t.Fatalf("exit status %d, want %d; stderr:\n%s", code, exitPass, errOut.String())
	}
	var sum summary
	dec := json.NewDecoder(&out)
	if err := dec.Decode(&sum); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, out.String())
	}
	if dec.More() {
		t.Error("stdout holds more than one JSON value")
	}
	if !sum.Pass || len(sum.Phases) != 1 || sum.Phases[0].Name != phaseEarly || sum.Phases[0].Calls == 0 {
		t.Errorf("summary %+v, want one passing early-refresh phase with calls", sum)
	}
	if !strings.Contains(errOut.String(), "phase 1/1 early-refresh") || !strings.Contains(errOut.String(), "PASS") {
		t.Errorf("stderr lacks the progress and the tables:\n%s", errOut.String())
	}
}

// TestMetricsEndpoint scrapes -metrics-addr while a phase's Source is up.
func TestMetricsEndpoint(t *testing.T) {
	cfg := testConfig(phaseRevocation)
	cfg.workers, cfg.duration = 10, time.Second
	cfg.metricsAddr = "127.0.0.1:0"
	var scraped string
	cfg.phaseDone = func(_, url string) {
		resp, err := http.Get(url)
		if err != nil {
			t.Errorf("GET %s: %v", url, err)
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		scraped = string(b)
	}
	runPhases(t, cfg)
	for _, want := range []string{
		`tokenrefresh_refreshes_total{demo_phase="revocation"`,
		`tokenrefresh_rpc_retries_total{demo_phase="revocation"`,
		`tokenrefresh_refresh_duration_seconds_bucket{demo_phase="revocation"`,
	} {
		if !strings.Contains(scraped, want) {
			t.Errorf("the metrics lack %s:\n%s", want, scraped)
		}
	}
}

// TestRunFailsWhenRefreshesFail checks that the demo is not a rubber stamp:
// a failed forced refresh (every one of its token requests failed) fails
// the calls waiting for it, and the exit status and verdict say so.
func TestRunFailsWhenRefreshesFail(t *testing.T) {
	var out, errOut bytes.Buffer
	code := run(t.Context(), []string{"-phases", phaseRevocation, "-workers", "10", "-duration", "2s",
		"-fail-refreshes", strconv.Itoa(tokensource.DefaultRefreshAttempts)}, &out, &errOut)
	if code != exitFail {
		t.Errorf("exit status %d, want %d; output:\n%s%s", code, exitFail, out.String(), errOut.String())
	}
	for _, want := range []string{"FAIL: ", "Unavailable", "a failed refresh reaches every call waiting for it"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

// outageTestConfig is the idp-outage phase with 3 s tokens, whose early
// refresh comes about 2 s into the load; the phase then runs until both
// outages have played out.
func outageTestConfig() config {
	cfg := testConfig(phaseOutage)
	cfg.ttl, cfg.duration = 3*time.Second, 2*time.Second
	return cfg
}

// TestIdPOutagePhase: the token endpoint is down for a second around an
// expiry and around a revocation; each refresh that meets an outage tries
// again until the endpoint is back, so no call fails.
func TestIdPOutagePhase(t *testing.T) {
	sum, out := runPhasesOutput(t, outageTestConfig())
	p := sum.Phases[0]
	checkCalls(t, p)
	if p.RefreshAttempts != tokensource.DefaultRefreshAttempts {
		t.Errorf("%d attempts per refresh, want the library's default %d", p.RefreshAttempts, tokensource.DefaultRefreshAttempts)
	}
	if len(p.Outages) != 2 || p.Outages[0].Cause != causeExpiry || p.Outages[1].Cause != causeRevocation {
		t.Fatalf("outages %+v, want one around the expiry, then one around the revocation", p.Outages)
	}
	for _, o := range p.Outages {
		// A refresh that met the outage failed at least once, tried
		// again, and installed a token once the endpoint was back.
		retried := slices.ContainsFunc(o.Attempts, func(n int) bool { return n > 1 })
		if o.FailedRequests == 0 || o.FailedRefreshes != 0 || !retried || slices.Max(o.Attempts) > p.RefreshAttempts {
			t.Errorf("outage around the %s: %d token requests failed, refreshes with %v token requests, %d failed; "+
				"want failed requests, a refresh that tried again (at most %d requests) and none failed",
				o.Cause, o.FailedRequests, o.Attempts, o.FailedRefreshes, p.RefreshAttempts)
		}
		if o.RecoveredAfter < outageLength.Seconds() {
			t.Errorf("outage around the %s: recovered %.2fs after its start, before it ended (%v)", o.Cause, o.RecoveredAfter, outageLength)
		}
		if o.LongestWait <= 0 || o.LongestWait > p.LongestWait {
			t.Errorf("outage around the %s: callers waited at most %v (the phase's longest %v); want a wait, within the phase's",
				o.Cause, o.LongestWait, p.LongestWait)
		}
	}
	if p.AttemptsRetried == 0 || int64(p.AttemptsRetried) != p.FailedRequests {
		t.Errorf("%d token requests failed, %d tried again; want every failed one tried again", p.FailedRequests, p.AttemptsRetried)
	}
	if s := p.Server; p.Retried == 0 || s == nil || p.Retried != s.Unauthenticated {
		t.Errorf("%d calls retried, server figures %+v; want every rejection retried, at least one", p.Retried, s)
	}
	text := phaseOutput(t, out, phaseOutage)
	for _, want := range []string{"token requests per refresh", "around the expiry, from ", "around the revocation, from ", "the longest wait "} {
		if !strings.Contains(text, want) {
			t.Errorf("the phase's table lacks %q:\n%s", want, text)
		}
	}
}

// TestRunFailsWithOneRefreshAttempt: with one token request per refresh, as
// before refreshes tried again, the same outages fail calls; the verdict,
// the exit status and the JSON summary say so.
func TestRunFailsWithOneRefreshAttempt(t *testing.T) {
	var out, errOut bytes.Buffer
	code := run(t.Context(), []string{"-phases", phaseOutage, "-workers", "10", "-ttl", "3s", "-duration", "2s",
		"-refresh-attempts", "1", "-json"}, &out, &errOut)
	if code != exitFail {
		t.Errorf("exit status %d, want %d; stderr:\n%s", code, exitFail, errOut.String())
	}
	var sum summary
	if err := json.Unmarshal(out.Bytes(), &sum); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, out.String())
	}
	if sum.Pass || len(sum.Phases) != 1 {
		t.Fatalf("summary %+v, want one failed phase", sum)
	}
	p := sum.Phases[0]
	if p.Name != phaseOutage || p.Pass || p.Failed == 0 || p.FailedByCode[codes.Unavailable.String()] == 0 || p.RefreshAttempts != 1 {
		t.Errorf("phase %s: pass %v, %d failed calls (%v), %d attempts per refresh; want a FAIL with Unavailable calls at 1 attempt",
			p.Name, p.Pass, p.Failed, p.FailedByCode, p.RefreshAttempts)
	}
	if len(p.Outages) == 0 || len(p.Attempts) == 0 || slices.Max(p.Attempts) != 1 {
		t.Errorf("outages %+v, token requests per refresh %v; want outages and one request per refresh", p.Outages, p.Attempts)
	}
	for _, want := range []string{"FAIL: ", "failed calls", "-refresh-attempts 1", "phase 1/1 idp-outage"} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut.String())
		}
	}
}

// TestRunExternalServer drives a separately started server through -addr
// and -tls-ca, as with cmd/testserver: the revocation phase is left out.
func TestRunExternalServer(t *testing.T) {
	srv := testserver.New(testserver.WithAccessTokenTTL(testTTL))
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
	code := run(t.Context(), []string{"-addr", ep.Addr(), "-tls-ca", ca, "-workers", "10", "-processes", "2", "-duration", "1s"}, &out, &errOut)
	if code != exitPass {
		t.Fatalf("exit status %d, want %d; output:\n%s%s", code, exitPass, out.String(), errOut.String())
	}
	for _, want := range []string{"phase 1/2 early-refresh", "phase 2/2 fleet-file", "server counters n/a"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	// One login for the early-refresh phase, one seeding the fleet's store.
	if c := srv.Counters(); c.Logins != 2 || c.Unauthenticated != 0 {
		t.Errorf("server saw %d logins and %d rejections, want 2 and 0", c.Logins, c.Unauthenticated)
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-workers", "0"}, "-workers must be at least 1"},
		{[]string{"-workers", "3", "-processes", "4"}, "every process needs a caller"},
		{[]string{"-duration", "-1s"}, "-duration must be positive"},
		{[]string{"-ttl", "0"}, "-ttl must be positive"},
		{[]string{"-phases", "early-refresh,nope"}, `unknown phase "nope"`},
		{[]string{"-phases", ""}, "-phases names no phase"},
		{[]string{"-phases", phaseEarly, "-redis", "127.0.0.1:6379"}, "-redis applies to the fleet phase"},
		{[]string{"-addr", "127.0.0.1:1", "-ttl", "1s"}, "-ttl configures the embedded server"},
		{[]string{"-addr", "127.0.0.1:1", "-ttl", "1s"}, "set it on the server instead (cmd/testserver -access-ttl)"},
		{[]string{"-addr", "127.0.0.1:1", "-fail-refreshes", "2"}, "-fail-refreshes configures the embedded server"},
		{[]string{"-addr", "127.0.0.1:1", "-refresh-latency", "1s"}, "(cmd/testserver -refresh-latency)"},
		{[]string{"-addr", "127.0.0.1:1", "-phases", phaseRevocation}, "needs the embedded server"},
		{[]string{"-addr", "127.0.0.1:1", "-phases", phaseOutage}, "the idp-outage phase needs the embedded server"},
		{[]string{"-refresh-attempts", "0"}, "-refresh-attempts must be at least 1"},
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
	// Phases run in their documented order, whatever order -phases gives.
	cfg, err := parseFlags([]string{"-phases", "fleet,early-refresh,fleet"}, io.Discard)
	if err != nil || strings.Join(cfg.phases, ",") != "early-refresh,fleet" {
		t.Errorf("-phases fleet,early-refresh,fleet: %v (%v), want early-refresh,fleet", cfg.phases, err)
	}
}
