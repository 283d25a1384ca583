package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// TestTokenTracker feeds the tracker the events of each kind of refresh and
// checks how it tells them apart.
func TestTokenTracker(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	ok := func(at, expiry time.Duration) tokensource.Event {
		return tokensource.Event{Kind: tokensource.RefreshSucceeded, Time: t0.Add(at), Expiry: t0.Add(expiry), Waiters: 3}
	}
	early := func(at, expiry time.Duration) tokensource.Event {
		e := ok(at, expiry)
		e.Background, e.Waiters = true, 0
		return e
	}
	forced := func(at, expiry time.Duration) tokensource.Event {
		e := ok(at, expiry)
		e.Forced = true
		return e
	}
	sum := func(end time.Duration, events ...tokensource.Event) tokenSummary {
		tr := &tokenTracker{}
		for _, ev := range events {
			tr.observe(ev)
		}
		return tr.summary(t0.Add(end))
	}

	s := sum(5*time.Second, ok(0, 2*time.Second), early(1500*time.Millisecond, 3500*time.Millisecond), early(3*time.Second, 5500*time.Millisecond))
	if s.logins != 1 || s.early != 2 || s.refreshes != 2 || s.lifetimes != 2 || s.maxWaiters != 0 {
		t.Errorf("early refreshes: %+v, want 1 login, 2 early refreshes, 2 lifetimes, no waiters (the login's are not the load's)", s)
	}
	s = sum(5*time.Second, ok(0, time.Hour), forced(2*time.Second, time.Hour))
	if s.forced != 1 || s.refreshes != 1 || s.expired != 0 || s.maxWaiters != 3 {
		t.Errorf("forced refresh: %+v, want 1 forced refresh with its 3 waiters", s)
	}
	// Replaced after its expiry: the callers waited.
	s = sum(5*time.Second, ok(0, 2*time.Second), ok(2001*time.Millisecond, 4*time.Second))
	if s.expired != 1 || s.lifetimes != 2 {
		t.Errorf("expired: %+v, want 1 expired refresh and 2 lifetimes (the current token expired before the end)", s)
	}
	tr := &tokenTracker{}
	tr.observe(tokensource.Event{Kind: tokensource.RefreshFailed, Err: errors.New("boom"), Waiters: 7})
	if s := tr.summary(t0); s.failures != 1 || s.lastFailure != "boom" {
		t.Errorf("failure: %+v, want 1 failure with its error", s)
	}
}

// TestTokenTrackerAttempts feeds the tracker a refresh that tries again and
// one that fails, and checks the token requests and waits it records.
func TestTokenTrackerAttempts(t *testing.T) {
	var refreshed []time.Time
	tr := &tokenTracker{onRefreshed: func(at time.Time) { refreshed = append(refreshed, at) }}
	boom := errors.New("unavailable")
	start := time.Now()
	tr.wait(t.Context(), 1) // the login's caller: not the load's
	tr.observe(tokensource.Event{Kind: tokensource.RefreshSucceeded, Refresh: 1, Time: start, Expiry: start.Add(time.Hour), Attempts: 1, Waiters: 1})

	before := time.Now()
	tr.wait(t.Context(), 2)
	tr.wait(t.Context(), 2) // a later caller: the first one waited longest
	after := time.Now()
	tr.observe(tokensource.Event{Kind: tokensource.RefreshAttemptFailed, Refresh: 2, Time: after, Attempts: 1, Err: boom})
	tr.observe(tokensource.Event{Kind: tokensource.RefreshAttemptFailed, Refresh: 2, Time: after.Add(time.Second), Attempts: 2, Err: boom})
	end := after.Add(2 * time.Second)
	tr.observe(tokensource.Event{Kind: tokensource.RefreshSucceeded, Refresh: 2, Time: end, Expiry: start.Add(2 * time.Hour), Attempts: 3, Waiters: 2})
	tr.wait(t.Context(), 2) // joins as the refresh ends: no wait of its own

	tr.observe(tokensource.Event{Kind: tokensource.RefreshFailed, Refresh: 3, Time: end.Add(time.Second), Attempts: 1, Err: boom})

	s := tr.summary(end.Add(time.Minute))
	if len(s.flights) != 2 {
		t.Fatalf("flights %+v, want the 2 after the login", s.flights)
	}
	f := s.flights[0]
	if !f.ok || f.attempts != 3 || f.waiters != 2 || !f.firstFailure.Equal(after) || f.wait < end.Sub(after) || f.wait > end.Sub(before) {
		t.Errorf("the refresh that tried again: %+v; want ok, 3 requests, 2 waiters, first failure at %v, a wait of about 2s", f, after)
	}
	if f := s.flights[1]; f.ok || f.attempts != 1 || f.wait != 0 {
		t.Errorf("the failed refresh: %+v; want failed, 1 request, no wait", f)
	}
	if s.attemptsRetried != 2 || s.failedCalls != 3 || s.longestWait != f.wait || s.lastFailure != "unavailable" {
		t.Errorf("summary: %d requests tried again, %d failed, longest wait %v, last failure %q; want 2, 3, %v, %q",
			s.attemptsRetried, s.failedCalls, s.longestWait, s.lastFailure, f.wait, "unavailable")
	}
	if len(refreshed) != 1 || !refreshed[0].Equal(end) {
		t.Errorf("onRefreshed called with %v, want once, with %v (the login is not the load's)", refreshed, end)
	}
}

// TestJudge checks that each phase's verdict fails what the phase is meant
// to rule out.
func TestJudge(t *testing.T) {
	server := func(refreshes, unauth int64) *serverFigures {
		return &serverFigures{Logins: 1, Refreshes: refreshes, Unauthenticated: unauth}
	}
	for _, tc := range []struct {
		name string
		rep  phaseReport
		want string // empty: PASS
	}{
		{"early ok", phaseReport{Name: phaseEarly, Calls: 10, Refreshes: 2, Early: 2, Lifetimes: 2, Server: server(2, 0)}, ""},
		{"early waited", phaseReport{Name: phaseEarly, Calls: 10, Refreshes: 2, Early: 1, Expired: 1, Waited: 40, Server: server(2, 0)},
			"1 token was replaced after they had expired; 40 callers waited for a refresh"},
		{"early rejected", phaseReport{Name: phaseEarly, Calls: 10, Refreshes: 1, Forced: 1, Retried: 5, Server: server(1, 5)},
			"1 refresh forced by 5 rejected calls"},
		{"revocation ok", phaseReport{Name: phaseRevocation, Calls: 10, Refreshes: 1, Forced: 1, Retried: 9, Server: server(1, 9)}, ""},
		{"revocation storm", phaseReport{Name: phaseRevocation, Calls: 10, Refreshes: 4, Forced: 4, Retried: 9, Server: server(4, 9)},
			"4 refreshes (4 forced) for one revocation"},
		{"revocation unseen", phaseReport{Name: phaseRevocation, Calls: 10, Refreshes: 1, Forced: 1, Retried: 7, UnauthenticatedSeen: 2, Server: server(1, 9)},
			"2 rejections reached the application; the interceptors retried 7 calls but the server rejected 9"},
		// A fleet's server figures count the login that seeded the store.
		{"fleet ok", phaseReport{Name: "fleet-file", Processes: 4, Calls: 10, Refreshes: 3, Lifetimes: 3, Adopted: 9, Server: server(3, 0)}, ""},
		{"fleet ok, external server", phaseReport{Name: "fleet-file", Processes: 4, Calls: 10, Refreshes: 3, Lifetimes: 3, Adopted: 9}, ""},
		{"fleet uncoordinated", phaseReport{Name: "fleet-file", Processes: 4, Calls: 10, Refreshes: 12, Lifetimes: 3, Server: server(12, 0)},
			"12 refreshes fleet-wide for 3 token lifetimes, want one per lifetime"},
		{"fleet reuse", phaseReport{Name: "fleet-redis", Processes: 4, Calls: 10, Refreshes: 3, Lifetimes: 3, Server: &serverFigures{Logins: 1, Refreshes: 3, RefreshesRefused: 1}},
			"the server refused 1 refreshes"},
		{"fleet login", phaseReport{Name: "fleet-file", Processes: 4, Calls: 10, Refreshes: 3, Lifetimes: 3, Adopted: 6, Server: &serverFigures{Logins: 2, Refreshes: 3}},
			"the server saw 2 logins, want 1 (the one that seeded the store)"},
		{"fleet seed not counted", phaseReport{Name: "fleet-file", Processes: 4, Calls: 10, Refreshes: 3, Lifetimes: 3, Adopted: 9, Server: &serverFigures{Refreshes: 3}},
			"the server saw 0 logins, want 1"},
		{"revocation, injected failures tried again", phaseReport{Name: phaseRevocation, Calls: 10, Refreshes: 1, Forced: 1, Retried: 9,
			FailedRequests: 2, Server: &serverFigures{Logins: 1, Refreshes: 1, RefreshesRefused: 2, Unauthenticated: 9}}, ""},
		{"revocation, a refusal the Source did not see", phaseReport{Name: phaseRevocation, Calls: 10, Refreshes: 1, Forced: 1, Retried: 9,
			FailedRequests: 1, Server: &serverFigures{Logins: 1, Refreshes: 1, RefreshesRefused: 2, Unauthenticated: 9}},
			"the server refused 2 refreshes, 1 more than the Sources saw fail"},
		{"outage ok", passingOutagePhase(nil), ""},
		{"outage missed", passingOutagePhase(func(r *phaseReport) { r.Outages = r.Outages[:1] }),
			"no outage around the revocation: no token request came to meet it"},
		{"outage not recovered", passingOutagePhase(func(r *phaseReport) { r.Outages[1].RecoveredAfter = 0; r.OutagesIncomplete = true }),
			"the Source did not recover from the outage around the revocation; the outages did not play out in time"},
		{"outage, revocation missed", passingOutagePhase(func(r *phaseReport) { r.Retried, r.Server.Unauthenticated = 0, 0 }),
			"the revocation missed the load"},
		{"outage, calls failed", passingOutagePhase(func(r *phaseReport) {
			r.Failed, r.FailedByCode, r.RefreshFailures = 40, map[string]int64{"Unavailable": 40}, 2
		}), "40 failed calls"},
		{"failed calls", phaseReport{Name: phaseEarly, Calls: 10, Failed: 3}, "3 failed calls"},
		{"interrupted", phaseReport{Name: phaseEarly, Calls: 10, Interrupted: true, Seconds: 1.5}, "interrupted after 1.5s"},
	} {
		r := tc.rep
		r.judge()
		switch {
		case tc.want == "" && !r.Pass:
			t.Errorf("%s: verdict %q, want PASS", tc.name, r.Verdict)
		case tc.want != "" && (r.Pass || !strings.Contains(r.Verdict, tc.want)):
			t.Errorf("%s: verdict %q, want a FAIL saying %q", tc.name, r.Verdict, tc.want)
		}
	}
	// A failed idp-outage phase says why: the refreshes ran out of token
	// requests while the endpoint was down.
	r := passingOutagePhase(func(r *phaseReport) {
		r.Failed, r.FailedByCode, r.RefreshFailures, r.RefreshAttempts = 40, map[string]int64{"Unavailable": 40}, 2, 1
	})
	if r.judge(); r.Pass || !strings.Contains(strings.Join(r.Notes, "\n"), "no token request left while the endpoint is down (-refresh-attempts 1)") {
		t.Errorf("failed idp-outage phase: verdict %q, notes %q; want a FAIL with a note naming -refresh-attempts 1", r.Verdict, r.Notes)
	}

	// A phase too short to renew a token says how to lengthen it, naming
	// only flags that apply: with -addr (no server figures) -ttl is
	// refused, and the lifetime is the server's -access-ttl.
	for _, tc := range []struct {
		name    string
		rep     phaseReport
		want    string
		notWant string
	}{
		{"early, embedded", phaseReport{Name: phaseEarly, Calls: 10, Server: server(0, 0)}, "a shorter -ttl", "-access-ttl"},
		{"early, external", phaseReport{Name: phaseEarly, Calls: 10}, "cmd/testserver -access-ttl", "a shorter -ttl"},
		{"fleet, embedded", phaseReport{Name: "fleet-file", Processes: 2, Calls: 10, Server: server(0, 0)}, "a shorter -ttl", "-access-ttl"},
		{"fleet, external", phaseReport{Name: "fleet-file", Processes: 2, Calls: 10}, "cmd/testserver -access-ttl", "a shorter -ttl"},
	} {
		r := tc.rep
		r.judge()
		notes := strings.Join(r.Notes, "\n")
		if !r.Pass || !strings.Contains(notes, tc.want) || strings.Contains(notes, tc.notWant) {
			t.Errorf("%s: verdict %q, notes %q; want PASS and a note with %q, without %q", tc.name, r.Verdict, notes, tc.want, tc.notWant)
		}
	}

	s := summary{Phases: []*phaseReport{{Name: "a", Pass: true}, {Name: "b"}}}
	if s.judge(); s.Pass || s.Verdict != "FAIL: b" {
		t.Errorf("summary with a failed phase: %q, want FAIL: b", s.Verdict)
	}
	empty := summary{}
	if empty.judge(); empty.Pass {
		t.Error("a summary without phases passes")
	}
}

// passingOutagePhase returns the report of an idp-outage phase that passes,
// changed by change (if not nil).
func passingOutagePhase(change func(*phaseReport)) phaseReport {
	r := phaseReport{
		Name: phaseOutage, Calls: 10, Refreshes: 2, Forced: 1, Expired: 1, Retried: 9, RefreshAttempts: 3,
		FailedRequests: 4, AttemptsRetried: 4, Attempts: []int{3, 3}, LongestWait: 2 * time.Second,
		Server: &serverFigures{Logins: 1, Refreshes: 2, RefreshesRefused: 4, Unauthenticated: 9},
		Outages: []outageReport{
			{Cause: causeExpiry, At: 2, Seconds: 1, FailedRequests: 2, Attempts: []int{3}, RecoveredAfter: 1.5, LongestWait: time.Second},
			{Cause: causeRevocation, At: 4, Seconds: 1, FailedRequests: 2, Attempts: []int{3}, RecoveredAfter: 1.5, LongestWait: 2 * time.Second},
		},
	}
	if change != nil {
		change(&r)
	}
	return r
}

func TestProgressLine(t *testing.T) {
	var f progressFigures
	read := func() progressFigures { return f }

	var plain bytes.Buffer
	p := newProgress(&plain, false, read)
	f = progressFigures{OK: 1500}
	p.tick(time.Second)
	f = progressFigures{OK: 4500, Failed: 2, Refreshes: 1, Waited: 37}
	p.tick(2 * time.Second)
	p.done()
	lines := strings.Split(strings.TrimSuffix(plain.String(), "\n"), "\n")
	if len(lines) != 2 || strings.Contains(plain.String(), "\r") {
		t.Fatalf("plain output %q, want two lines without carriage returns", plain.String())
	}
	if want := "    2.0s  4,502 calls  3,000/s  2 failed  1 refresh  37 waited for a refresh"; lines[1] != want {
		t.Errorf("second line %q, want %q", lines[1], want)
	}

	var tty bytes.Buffer
	p = newProgress(&tty, true, read)
	f = progressFigures{OK: 12_000_000}
	p.tick(time.Second)
	f = progressFigures{OK: 12_000_001} // 1 call/s: a shorter line
	p.tick(2 * time.Second)
	if strings.Contains(tty.String(), "\n") || strings.Count(tty.String(), "\r") != 2 {
		t.Fatalf("terminal output %q, want two carriage-return redraws and no newline", tty.String())
	}
	redraws := strings.Split(tty.String(), "\r")
	if last, prev := redraws[2], redraws[1]; len(last) != len(prev) || !strings.Contains(last, " 1/s") {
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

	// A worker process sends its histogram as JSON.
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	var back histogram
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back != h {
		t.Errorf("the JSON round trip changed the histogram: n %d max %v, want n %d max %v", back.n, back.max, h.n, h.max)
	}
	if err := json.Unmarshal([]byte(`{"counts":{"99999":1}}`), &back); err == nil {
		t.Error("a bucket out of range was accepted")
	}
}

func TestGroup(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -98765: "-98,765"} {
		if got := group(n); got != want {
			t.Errorf("group(%d) = %q, want %q", n, got, want)
		}
	}
}
