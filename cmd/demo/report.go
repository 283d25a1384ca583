package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc/codes"
)

// summary is the outcome of the whole run, and the -json output.
type summary struct {
	Target      string         `json:"target,omitempty"` // -addr; empty: the embedded server
	Embedded    bool           `json:"embedded_server"`
	Phases      []*phaseReport `json:"phases"`
	Interrupted bool           `json:"interrupted"`
	Pass        bool           `json:"pass"`
	Verdict     string         `json:"verdict"`
}

// phaseReport is what one phase measured and its verdict. Every count is of
// the phase's load, after the first token was obtained.
type phaseReport struct {
	Name      string  `json:"name"`
	Target    string  `json:"target"`
	Processes int     `json:"processes"`
	Callers   int     `json:"callers"`
	Seconds   float64 `json:"seconds"`

	Calls        int64            `json:"calls"`
	OK           int64            `json:"ok"`
	OKByKind     map[string]int64 `json:"ok_by_kind"`
	Failed       int64            `json:"failed"`
	FailedByCode map[string]int64 `json:"failed_by_code,omitempty"`
	// UnauthenticatedSeen counts the calls that failed because the server
	// rejected their token: rejections the interceptors did not absorb.
	UnauthenticatedSeen int64 `json:"unauthenticated_seen"`
	// Retried counts the calls retried with a new token after the server
	// rejected theirs (the interceptors' retry observer).
	Retried int64 `json:"retried"`
	// Waited counts the callers that blocked on a refresh; MaxWaiters the
	// most that one refresh released (in-process phases only).
	Waited     int64 `json:"waited"`
	MaxWaiters int   `json:"max_waiters,omitempty"`

	// Refreshes counts successful Refresher calls that changed the token,
	// fleet-wide in a fleet phase; Early, Forced and Expired split them in
	// an in-process phase (background refreshes before expiry, refreshes
	// forced by a rejection, refreshes after the token had expired).
	Refreshes       int64 `json:"refreshes"`
	Early           int   `json:"early"`
	Forced          int   `json:"forced"`
	Expired         int   `json:"expired"`
	RefreshFailures int64 `json:"refresh_failures"`
	// Lifetimes counts the tokens whose lifetime ended during the phase:
	// in a fleet phase, the generations the fleet's shared token went
	// through (the most any process installed, after the first).
	Lifetimes int `json:"token_lifetimes"`
	// Adopted counts, in a fleet phase, the tokens processes took from the
	// shared store instead of refreshing themselves.
	Adopted int64 `json:"adopted,omitempty"`

	// RefreshAttempts is the most token requests one refresh may make
	// (-refresh-attempts, tokensource.WithRefreshAttempts).
	RefreshAttempts int `json:"refresh_attempts"`
	// FailedRequests counts the token requests (Refresher calls) that
	// failed, fleet-wide in a fleet phase; AttemptsRetried those of them
	// that their refresh tried again (RefreshAttemptFailed events;
	// in-process phases only).
	FailedRequests  int64 `json:"failed_token_requests"`
	AttemptsRetried int   `json:"token_requests_retried,omitempty"`
	// Attempts lists the token requests each refresh of the load made
	// (Event.Attempts), in the order the refreshes ended; LongestWait is
	// the longest a caller waited for one. In-process phases only.
	Attempts    []int         `json:"attempts_per_refresh,omitempty"`
	LongestWait time.Duration `json:"longest_wait_ns,omitempty"`
	// Outages are the idp-outage phase's outages of the token endpoint;
	// OutagesIncomplete reports that they did not all play out in time.
	Outages           []outageReport `json:"outages,omitempty"`
	OutagesIncomplete bool           `json:"outages_incomplete,omitempty"`

	Server *serverFigures `json:"server,omitempty"` // nil with -addr
	// HTTP is the revocation phase's HTTP load on the same Source (embedded
	// server only).
	HTTP *httpFigures `json:"http,omitempty"`

	LatencyP50 time.Duration `json:"latency_p50_ns"`
	LatencyP99 time.Duration `json:"latency_p99_ns"`
	LatencyMax time.Duration `json:"latency_max_ns"`

	Errors      []string `json:"errors,omitempty"` // the first error of each kind
	Interrupted bool     `json:"interrupted,omitempty"`
	Problems    []string `json:"problems,omitempty"`
	Notes       []string `json:"notes,omitempty"`
	Pass        bool     `json:"pass"`
	Verdict     string   `json:"verdict"`
}

// outageReport is one outage of the token endpoint in the idp-outage phase.
type outageReport struct {
	Cause          string  `json:"cause"`      // causeExpiry or causeRevocation
	At             float64 `json:"at_seconds"` // when it started, since the load started
	Seconds        float64 `json:"seconds"`
	FailedRequests int     `json:"failed_token_requests"`
	// Attempts lists the token requests of each refresh that ended between
	// the outage's start and the Source's recovery (the first new token);
	// FailedRefreshes counts those that failed, with their callers.
	Attempts        []int `json:"attempts_per_refresh"`
	FailedRefreshes int   `json:"failed_refreshes"`
	// RecoveredAfter is the time from the outage's start to the first new
	// token; 0 if the Source did not recover.
	RecoveredAfter float64 `json:"recovered_after_seconds"`
	// LongestWait is the longest a caller waited for one of those refreshes.
	LongestWait time.Duration `json:"longest_wait_ns"`
}

// serverFigures are the embedded server's counters for a phase.
type serverFigures struct {
	// Logins counts every login the server saw in the phase: the
	// Source's first token, or in a fleet phase the one that seeded the
	// store.
	Logins    int64 `json:"logins"`
	Refreshes int64 `json:"refreshes"`
	// RefreshesRefused counts Refresh calls the server refused, such as a
	// rotated refresh token presented again (which revokes its family).
	RefreshesRefused int64 `json:"refreshes_refused"`
	Unauthenticated  int64 `json:"unauthenticated"`
}

func newPhaseReport(name string, processes, callers int, target string) *phaseReport {
	return &phaseReport{Name: name, Processes: processes, Callers: callers, Target: target}
}

// setLoad fills in the calls' figures from the callers' merged tally.
func (r *phaseReport) setLoad(res *workerResult, elapsed time.Duration, interrupted bool) {
	r.Seconds = elapsed.Seconds()
	r.Interrupted = interrupted
	r.OKByKind = map[string]int64{}
	for k, n := range res.OK {
		r.OK += n
		r.OKByKind[kindNames[k]] = n
	}
	r.Failed = res.Wrong
	for c, n := range res.Failed {
		if n > 0 {
			if r.FailedByCode == nil {
				r.FailedByCode = map[string]int64{}
			}
			r.FailedByCode[codes.Code(c).String()] = n
			r.Failed += n
		}
		if msg := res.SampleErr[c]; msg != "" {
			r.Errors = append(r.Errors, fmt.Sprintf("first %v error: %s", codes.Code(c), msg))
		}
	}
	if res.Wrong > 0 {
		if r.FailedByCode == nil {
			r.FailedByCode = map[string]int64{}
		}
		r.FailedByCode["wrong answer"] = res.Wrong
		r.Errors = append(r.Errors, "first wrong answer: "+res.WrongErr)
	}
	r.Calls = r.OK + r.Failed
	r.UnauthenticatedSeen = res.Rejected
	r.LatencyP50, r.LatencyP99, r.LatencyMax = res.Latency.quantile(0.50), res.Latency.quantile(0.99), res.Latency.max
}

// judge sets the phase's verdict from what each phase promises.
func (r *phaseReport) judge() {
	problem := func(format string, a ...any) { r.Problems = append(r.Problems, fmt.Sprintf(format, a...)) }
	note := func(format string, a ...any) { r.Notes = append(r.Notes, fmt.Sprintf(format, a...)) }
	if r.Failed > 0 {
		problem("%s failed calls", group(r.Failed))
		switch {
		case r.FailedByCode[codes.Unavailable.String()] == 0 || r.RefreshFailures == 0:
		case r.Name == phaseOutage:
			note("a refresh that has no token request left while the endpoint is down (-refresh-attempts %d) fails every call "+
				"waiting for it, and calls fail fast while the Source backs off", r.RefreshAttempts)
		default:
			note("a failed refresh reaches every call waiting for it (with -fail-refreshes, as Unavailable, once "+
				"a refresh's %s have failed)", plural(r.RefreshAttempts, "token request", "token requests"))
		}
	}
	if r.Calls == 0 && !r.Interrupted {
		problem("no call completed")
	}
	if r.UnauthenticatedSeen > 0 {
		problem("%s rejections reached the application", group(r.UnauthenticatedSeen))
	}
	// Every refresh the server refuses is a token request that failed for
	// a Source, unless the same refresh token was presented twice.
	if s := r.Server; s != nil && s.RefreshesRefused > r.FailedRequests {
		problem("the server refused %d refreshes, %d more than the Sources saw fail (a rotated refresh token presented again)",
			s.RefreshesRefused, s.RefreshesRefused-r.FailedRequests)
	}
	// With -addr the token lifetime is the server's to set: -ttl is refused.
	shorterTTL := "a shorter -ttl"
	if r.Server == nil {
		shorterTTL = "shorter-lived access tokens on the server (cmd/testserver -access-ttl)"
	}
	var what string
	switch {
	case r.Name == phaseEarly:
		if r.Expired > 0 {
			problem("%s replaced after they had expired", plural(r.Expired, "token was", "tokens were"))
		}
		if r.Forced > 0 || r.Retried > 0 {
			problem("%s forced by %s rejected calls", plural(r.Forced, "refresh", "refreshes"), group(r.Retried))
		}
		if r.Waited > 0 {
			problem("%s waited for a refresh", plural(int(r.Waited), "caller", "callers"))
		}
		if r.Early == 0 && !r.Interrupted {
			note("no token reached its early-refresh window: use a longer -duration or %s", shorterTTL)
		}
		what = fmt.Sprintf("%s renewed in the background before expiry; 0 calls rejected, 0 callers waited",
			plural(r.Early, "token", "tokens"))
	case r.Name == phaseRevocation:
		if r.Server != nil && !r.Interrupted {
			if r.Forced != 1 || r.Refreshes != 1 {
				problem("%s (%d forced) for one revocation, want exactly 1 forced", plural(int(r.Refreshes), "refresh", "refreshes"), r.Forced)
			}
			if r.Retried == 0 {
				problem("the server rejected no call: the revocation missed the load")
			}
			if r.Retried != r.Server.Unauthenticated {
				problem("the interceptors retried %s calls but the server rejected %s", group(r.Retried), group(r.Server.Unauthenticated))
			}
		}
		what = fmt.Sprintf("%s for the revocation; %s rejected calls retried unseen by the application",
			plural(r.Forced, "forced refresh", "forced refreshes"), group(r.Retried))
		if h := r.HTTP; h != nil {
			if h.Failed > 0 {
				problem("%s of %s failed (first: %s)", plural(int(h.Failed), "HTTP request", "HTTP requests"), group(h.Requests), h.FirstErr)
			}
			what += fmt.Sprintf("; with the same Source, %s HTTP requests, %s rejected and retried, %s failed",
				group(h.Requests), group(h.Rejected), group(h.Failed))
		}
	case r.Name == phaseOutage:
		if r.Server != nil && !r.Interrupted {
			for _, cause := range []string{causeExpiry, causeRevocation} {
				switch o := r.outage(cause); {
				case o == nil:
					problem("no outage around the %s: no token request came to meet it", cause)
				case o.RecoveredAfter == 0:
					problem("the Source did not recover from the outage around the %s", cause)
				}
			}
			if r.OutagesIncomplete {
				problem("the outages did not play out in time")
			}
			if r.Retried == 0 {
				problem("the server rejected no call: the revocation missed the load")
			}
			if r.Retried != r.Server.Unauthenticated {
				problem("the interceptors retried %s calls but the server rejected %s", group(r.Retried), group(r.Server.Unauthenticated))
			}
		}
		what = fmt.Sprintf("%s of the token endpoint, %s failed; token requests per refresh: %s; callers waited at most %s",
			plural(len(r.Outages), "outage", "outages"), plural(int(r.FailedRequests), "token request", "token requests"),
			joinInts(r.Attempts), round(r.LongestWait))
	default: // a fleet
		if r.Refreshes != int64(r.Lifetimes) {
			problem("%s fleet-wide for %s, want one per lifetime",
				plural(int(r.Refreshes), "refresh", "refreshes"), plural(r.Lifetimes, "token lifetime", "token lifetimes"))
		}
		if s := r.Server; s != nil && s.Refreshes != r.Refreshes {
			problem("the server granted %d refreshes but the processes made %d", s.Refreshes, r.Refreshes)
		}
		// The phase announces one login, the seed's, which the processes
		// share: another one is a process that did not use the store.
		if s := r.Server; s != nil && s.Logins != 1 {
			problem("the server saw %s, want 1 (the one that seeded the store)", plural(int(s.Logins), "login", "logins"))
		}
		if r.Lifetimes == 0 && !r.Interrupted {
			note("the shared token was never renewed: use a longer -duration or %s", shorterTTL)
		}
		ratio := "n/a"
		if r.Lifetimes > 0 {
			ratio = strconv.FormatFloat(float64(r.Refreshes)/float64(r.Lifetimes), 'f', 2, 64)
		}
		what = fmt.Sprintf("%s fleet-wide for %s (%s per expiry), %s adopted by the other processes",
			plural(int(r.Refreshes), "refresh", "refreshes"), plural(r.Lifetimes, "token lifetime", "token lifetimes"),
			ratio, plural(int(r.Adopted), "token", "tokens"))
	}
	if r.Interrupted {
		problem("interrupted after %.1fs", r.Seconds)
	}
	r.Pass = len(r.Problems) == 0
	if r.Pass {
		r.Verdict = fmt.Sprintf("PASS: %s calls, 0 failed; %s", group(r.Calls), what)
	} else {
		r.Verdict = "FAIL: " + strings.Join(r.Problems, "; ") + " (" + what + ")"
	}
}

func (r *phaseReport) print(out io.Writer) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	row := func(name, value, detail string) { fmt.Fprintf(tw, "  %s\t%s\t%s\n", name, value, detail) }

	who := fmt.Sprintf("%d callers", r.Callers)
	if r.Processes > 1 {
		who = fmt.Sprintf("%d processes, %d callers", r.Processes, r.Callers)
	}
	kinds := make([]string, 0, numKinds)
	for _, k := range kindNames {
		kinds = append(kinds, k+" "+group(r.OKByKind[k]))
	}
	row("calls", group(r.Calls), fmt.Sprintf("in %.1fs by %s; ok: %s", r.Seconds, who, strings.Join(kinds, ", ")))
	var byCode []string
	for c := range codes.Unauthenticated + 1 {
		if n := r.FailedByCode[c.String()]; n > 0 {
			byCode = append(byCode, fmt.Sprintf("%v %s", c, group(n)))
		}
	}
	if n := r.FailedByCode["wrong answer"]; n > 0 {
		byCode = append(byCode, "wrong answer "+group(n))
	}
	if len(byCode) == 0 {
		byCode = append(byCode, "by code: none")
	}
	row("failed", group(r.Failed), strings.Join(byCode, ", "))
	server := "server counters n/a"
	if r.Server != nil {
		server = "the server rejected " + group(r.Server.Unauthenticated)
	}
	row("Unauthenticated", group(r.UnauthenticatedSeen)+" seen",
		fmt.Sprintf("%s; %s retried by the interceptors with a new token", server, group(r.Retried)))
	detail := ""
	if r.Processes == 1 {
		detail = fmt.Sprintf("%d early (background), %d forced by a rejection, %d after expiry", r.Early, r.Forced, r.Expired)
	} else {
		detail = fmt.Sprintf("fleet-wide, for %s; %s adopted from the store",
			plural(r.Lifetimes, "token lifetime", "token lifetimes"), plural(int(r.Adopted), "token", "tokens"))
	}
	detail += fmt.Sprintf(", %d failed", r.RefreshFailures)
	if s := r.Server; s != nil {
		detail += fmt.Sprintf("; server: %d granted, %d refused, %s", s.Refreshes, s.RefreshesRefused, plural(int(s.Logins), "login", "logins"))
	}
	row("refreshes", group(r.Refreshes), detail)
	switch {
	case r.Processes > 1 && r.FailedRequests > 0:
		row("attempts", group(r.FailedRequests)+" failed",
			fmt.Sprintf("token requests that failed fleet-wide (at most %d per refresh)", r.RefreshAttempts))
	case r.Processes == 1 && (r.Name == phaseOutage || r.FailedRequests > 0):
		row("attempts", joinInts(r.Attempts), fmt.Sprintf("token requests per refresh, in order (at most %d); %d failed, %d of them tried again",
			r.RefreshAttempts, r.FailedRequests, r.AttemptsRetried))
	}
	for _, o := range r.Outages {
		detail := fmt.Sprintf("around the %s, from %.2fs: %s failed; ", o.Cause, o.At, plural(o.FailedRequests, "token request", "token requests"))
		if o.RecoveredAfter > 0 {
			detail += fmt.Sprintf("%s (token requests %s, %d failed) until the first new token %.2fs after its start; callers waited at most %s",
				plural(len(o.Attempts), "refresh", "refreshes"), joinInts(o.Attempts), o.FailedRefreshes, o.RecoveredAfter, round(o.LongestWait))
		} else {
			detail += "no new token since"
		}
		row("outage", fmt.Sprintf("%.1fs", o.Seconds), detail)
	}
	waited := "callers that blocked on a refresh"
	if r.MaxWaiters > 0 {
		waited += fmt.Sprintf("; %d at most on one", r.MaxWaiters)
	}
	if r.LongestWait > 0 {
		waited += "; the longest wait " + round(r.LongestWait)
	}
	row("waited", group(r.Waited), waited)
	row("latency", "p50 "+round(r.LatencyP50),
		fmt.Sprintf("p99 %s, max %s (whole call; streams send or receive %d messages)",
			round(r.LatencyP99), round(r.LatencyMax), messagesPerStream))
	tw.Flush()
	for _, e := range r.Errors {
		fmt.Fprintln(out, "  "+e)
	}
	fmt.Fprintln(out, "  "+r.Verdict)
	for _, n := range r.Notes {
		fmt.Fprintln(out, "  note: "+n)
	}
}

func (s *summary) judge() {
	var failed []string
	for _, p := range s.Phases {
		if !p.Pass {
			failed = append(failed, p.Name)
		}
	}
	s.Pass = len(failed) == 0 && len(s.Phases) > 0 && !s.Interrupted
	switch {
	case s.Pass:
		s.Verdict = fmt.Sprintf("PASS: %s passed", plural(len(s.Phases), "phase", "phases"))
	case len(failed) > 0:
		s.Verdict = "FAIL: " + strings.Join(failed, ", ")
	default:
		s.Verdict = "FAIL: interrupted"
	}
}

func (s *summary) print(out io.Writer) {
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "phase\tcalls\tfailed\tUnauth seen\tretried\twaited\tlongest wait\trefreshes\tlifetimes\tverdict\t")
	for _, p := range s.Phases {
		verdict := "PASS"
		if !p.Pass {
			verdict = "FAIL"
		}
		longest := "-" // not measured across processes
		if p.Processes == 1 {
			longest = round(p.LongestWait)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t\n", p.Name, group(p.Calls), group(p.Failed),
			group(p.UnauthenticatedSeen), group(p.Retried), group(p.Waited), longest, group(p.Refreshes), p.Lifetimes, verdict)
	}
	tw.Flush()
	fmt.Fprintln(out, s.Verdict)
}

func (s *summary) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}

// progressFigures are the running totals one progress line shows; a fleet
// worker process sends its own as JSON.
type progressFigures struct {
	OK        int64 `json:"ok"`
	Failed    int64 `json:"failed"`
	Refreshes int64 `json:"refreshes"`
	Waited    int64 `json:"waited"`
}

// progress prints one line per tick: on a terminal the line is redrawn in
// place with a carriage return, elsewhere (a file, a pipe, CI logs) each
// tick gets its own line. Every figure is a running total, read when the
// line is printed.
type progress struct {
	out  io.Writer
	tty  bool
	read func() progressFigures

	lastOK  int64
	lastAt  time.Duration
	lastLen int
}

func newProgress(out io.Writer, tty bool, read func() progressFigures) *progress {
	return &progress{out: out, tty: tty, read: read}
}

func (p *progress) tick(elapsed time.Duration) {
	f := p.read()
	rate := 0.0
	if d := elapsed - p.lastAt; d > 0 {
		rate = float64(f.OK-p.lastOK) / d.Seconds()
	}
	p.lastOK, p.lastAt = f.OK, elapsed
	line := fmt.Sprintf("  %5.1fs  %s calls  %s/s  %s failed  %s  %s waited for a refresh",
		elapsed.Seconds(), group(f.OK+f.Failed), group(int64(rate)), group(f.Failed),
		plural(int(f.Refreshes), "refresh", "refreshes"), group(f.Waited))
	if !p.tty {
		fmt.Fprintln(p.out, line)
		return
	}
	pad := max(p.lastLen-len(line), 0)
	p.lastLen = len(line)
	fmt.Fprint(p.out, "\r"+line+strings.Repeat(" ", pad))
}

// done ends the redrawn line so the table starts on a fresh one.
func (p *progress) done() {
	if p.tty && p.lastLen > 0 {
		fmt.Fprintln(p.out)
	}
}

// outage returns the outage with the given cause, or nil.
func (r *phaseReport) outage(cause string) *outageReport {
	for i := range r.Outages {
		if r.Outages[i].Cause == cause {
			return &r.Outages[i]
		}
	}
	return nil
}

// joinInts returns "3, 1, 3", or "none" for no numbers.
func joinInts(ns []int) string {
	if len(ns) == 0 {
		return "none"
	}
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ", ")
}

// plural returns "1 refresh" or "2 refreshes".
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return group(int64(n)) + " " + many
}

// group formats n with thousands separators: 1234567 → "1,234,567".
func group(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// round shortens a duration to three significant digits for display.
func round(d time.Duration) string {
	for _, unit := range []time.Duration{time.Second, time.Millisecond, time.Microsecond} {
		if d >= 100*unit {
			return d.Round(unit).String()
		}
		if d >= unit {
			return d.Round(unit / 100).String()
		}
	}
	return d.String()
}
