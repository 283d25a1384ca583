package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// progress prints one line per tick: on a terminal the line is redrawn in
// place with a carriage return, elsewhere (a file, a pipe, CI logs) each
// tick gets its own line.
type progress struct {
	out     io.Writer
	tty     bool
	src     *tokensource.Source
	tracker *tokenTracker
	total   *counters

	lastOK  int64
	lastAt  time.Duration
	lastLen int
}

func (p *progress) tick(elapsed time.Duration) {
	ok, failed := p.total.ok.Load(), p.total.failed.Load()
	st := p.src.Stats()
	rate := 0.0
	if d := elapsed - p.lastAt; d > 0 {
		rate = float64(ok-p.lastOK) / d.Seconds()
	}
	p.lastOK, p.lastAt = ok, elapsed
	refreshes := p.tracker.summary(time.Time{}).refreshes
	line := fmt.Sprintf("%5.1fs  %s RPCs  %s RPCs/s  %s failed  %s  %s waiting on a refresh",
		elapsed.Seconds(), group(ok), group(int64(rate)), group(failed), plural(refreshes, "refresh", "refreshes"), group(st.Waiting))
	if !p.tty {
		fmt.Fprintln(p.out, line)
		return
	}
	pad := max(p.lastLen-len(line), 0)
	p.lastLen = len(line)
	fmt.Fprint(p.out, "\r"+line+strings.Repeat(" ", pad))
}

// done ends the redrawn line so the summary starts on a fresh one.
func (p *progress) done() {
	if p.tty && p.lastLen > 0 {
		fmt.Fprintln(p.out)
	}
}

// judge sets the verdict. The demo passes when no RPC failed and every
// refresh after the login is accounted for by an expiry (or is an early
// background refresh), give or take one at the edges of the run.
func (r *report) judge() {
	t := r.tokens
	var problems, notes []string
	if n := r.failed(); n > 0 {
		problems = append(problems, fmt.Sprintf("%s failed RPCs", group(n)))
		if r.cfg.failRefreshes > 0 && r.results.failed[codes.Unavailable] > 0 {
			notes = append(notes, "-fail-refreshes makes refreshes fail: a failed refresh reaches every call waiting for it as Unavailable")
		}
	}
	onDemand := t.refreshes - t.early
	counts := plural(onDemand, "refresh", "refreshes") + " for " + plural(t.expiries, "expiry", "expiries")
	diff := onDemand - t.expiries
	countOff := diff < -1 || diff > 1
	if countOff {
		problems = append(problems, counts)
	}
	if r.server != nil && r.server.RefreshesOK != int64(t.refreshes) {
		problems = append(problems, fmt.Sprintf("the server granted %d refreshes but the source installed %d", r.server.RefreshesOK, t.refreshes))
	}
	if t.logins > 0 && t.expiries == 0 && t.early == 0 && !r.interrupted {
		notes = append(notes, "no token expired during the run, so nothing was refreshed: use a longer -duration or a shorter -ttl")
	}
	if r.interrupted {
		problems = append(problems, fmt.Sprintf("interrupted after %.1fs", r.elapsed.Seconds()))
	}

	what := counts
	if t.early > 0 {
		what = plural(t.early, "early refresh", "early refreshes") + " before expiry, " + what
	}
	absorbed := r.rejections - r.results.rejected
	r.pass = len(problems) == 0
	if r.pass {
		r.verdict = fmt.Sprintf("PASS: 0 failed RPCs, %s, %s rejected calls retried unseen by the application", what, group(absorbed))
	} else {
		r.verdict = "FAIL: " + strings.Join(problems, "; ")
		if !countOff { // else the counts are already among the problems
			r.verdict += " (" + what + ")"
		}
	}
	for _, n := range notes {
		r.verdict += "\n  note: " + n
	}
}

func (r *report) print(out io.Writer) {
	res, t := &r.results, r.tokens
	fmt.Fprintf(out, "\nSummary after %.1fs with %d workers:\n", r.elapsed.Seconds(), r.cfg.workers)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	row := func(name, value, detail string) { fmt.Fprintf(tw, "  %s\t%s\t%s\n", name, value, detail) }

	kinds := make([]string, numKinds)
	for k := range numKinds {
		kinds[k] = kindNames[k] + " " + group(res.ok[k])
	}
	row("RPCs ok", group(r.ok()), strings.Join(kinds, ", "))
	var byCode []string
	for c, n := range res.failed {
		if n > 0 {
			byCode = append(byCode, fmt.Sprintf("%v %s", codes.Code(c), group(n)))
		}
	}
	if res.wrong > 0 {
		byCode = append(byCode, "wrong answer "+group(res.wrong))
	}
	if len(byCode) == 0 {
		byCode = append(byCode, "by code: none")
	}
	row("RPCs failed", group(r.failed()), strings.Join(byCode, ", "))

	returned := res.rejected
	serverSide := "server counters n/a"
	if r.server != nil {
		serverSide = fmt.Sprintf("server answered %s", group(r.server.Unauthenticated))
	}
	row("Unauthenticated", group(r.rejections-returned)+" absorbed",
		fmt.Sprintf("%s; the interceptors saw %s and retried them, %s reached the application",
			serverSide, group(r.rejections), group(returned)))

	row("token expiries", strconv.Itoa(t.expiries), "tokens that reached their expiry while in use")
	refreshDetail := fmt.Sprintf("source: %d + %d login, %d failed", t.refreshes, t.logins, t.failures)
	if t.early > 0 || t.valid > 0 {
		refreshDetail += fmt.Sprintf(", %d early, %d of a still-valid token", t.early, t.valid)
	}
	if t.reauth > 0 {
		refreshDetail += fmt.Sprintf(", %d re-authentication required", t.reauth)
	}
	if r.server != nil {
		refreshDetail += fmt.Sprintf("; server: %d granted, %d failed, %s",
			r.server.RefreshesOK, r.server.RefreshesFailed, plural(int(r.server.Logins), "login", "logins"))
	}
	row("refreshes", strconv.Itoa(t.refreshes), refreshDetail)
	row("waiting callers", group(int64(t.maxWaiters))+" at most",
		fmt.Sprintf("on one refresh; %s waits in all", group(int64(r.stats.Waited))))
	lat := &res.latency
	row("latency", "p50 "+round(lat.quantile(0.50)),
		fmt.Sprintf("p99 %s, max %s (whole call; streams send or receive %d messages)",
			round(lat.quantile(0.99)), round(lat.max), messagesPerStream))
	tw.Flush()

	for c, msg := range res.sampleErr {
		if msg != "" {
			fmt.Fprintf(out, "  first %v error: %s\n", codes.Code(c), msg)
		}
	}
	if res.wrongErr != "" {
		fmt.Fprintf(out, "  first wrong answer: %s\n", res.wrongErr)
	}
	if t.lastFailure != "" {
		fmt.Fprintf(out, "  last refresh error: %s\n", t.lastFailure)
	}
	fmt.Fprintln(out, r.verdict)
}

// plural returns "1 refresh" or "2 refreshes".
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
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
