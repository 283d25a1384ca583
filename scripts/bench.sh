#!/usr/bin/env bash
# bench.sh runs the comparison benchmarks (bench/) and the token source's own
# benchmarks (tokensource/), keeps the raw output, and prints benchstat tables
# plus a check of the targets of issue 5.
#
# Usage: scripts/bench.sh
#
# Environment:
#   COUNT      runs of each benchmark, for benchstat's statistics (default 6)
#   BENCHTIME  -benchtime of each run (default 1s)
#   BENCH      -bench pattern (default ".")
#   OUT        directory for the raw output (default: a new temporary directory)
#   GO         the go command (default go)
#
# With the defaults it takes about five minutes on two cores.
set -euo pipefail

cd "$(dirname "$0")/.."
COUNT=${COUNT:-6}
BENCHTIME=${BENCHTIME:-1s}
BENCH=${BENCH:-.}
GO=${GO:-go}
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/grpc-tokenrefresh-bench.XXXXXX")}
mkdir -p "$OUT"
raw="$OUT/bench.txt"
# GOWORK=off: `go tool -modfile` refuses to run in workspace mode (go.work).
benchstat() { GOWORK=off "$GO" tool -modfile=tools/go.mod benchstat "$@"; }

echo "Raw output: $raw"
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -n 1)
echo "Machine: ${cpu:-unknown CPU}, $(getconf _NPROCESSORS_ONLN) CPUs, $(uname -sm), $("$GO" version | cut -d' ' -f3-)"
echo "Benchmarks: -bench '$BENCH' -benchmem -benchtime $BENCHTIME, $COUNT rounds of ./bench/ and ./tokensource/"
echo

# Each round runs every benchmark once, and the rounds follow each other, so
# the implementations a table compares are measured interleaved in time: a
# change in the machine's load (it may be shared) then spreads over all of
# them instead of biasing whichever ran during it. The test binaries are built
# once.
pkgs=(bench tokensource)
for pkg in "${pkgs[@]}"; do
	"$GO" test -c -o "$OUT/$pkg.test" "./$pkg/"
done
: >"$raw"
for round in $(seq "$COUNT"); do
	echo "-- round $round of $COUNT"
	for pkg in "${pkgs[@]}"; do
		(cd "$pkg" && "$OUT/$pkg.test" -test.run '^$' -test.bench "$BENCH" -test.benchmem \
			-test.count 1 -test.benchtime "$BENCHTIME") | tee -a "$raw"
	done
done

section() { printf '\n==== %s\n\n' "$1"; }

section "Per-call cost with a valid token (vs base: the constant-header floor)"
benchstat -filter '.name:(UnaryRPC OR Attach OR HTTPAttach)' -col /impl "$raw"

section "Refresh storm (10,000 calls, 50 ms refresh) and memory per waiting call"
benchstat -filter '.name:(RefreshStorm OR WaiterMemory)' "$raw"

section "Token endpoint outage (200 callers, 5 s deadlines): one token request per refresh vs the default attempts"
benchstat -filter '.name:IdPOutage' -col /refresh "$raw"

if awk '/^pkg:/ { p = $2 } /^Benchmark/ && p ~ /\/tokensource$/ { found = 1 } END { exit !found }' "$raw"; then
	section "tokensource: the hot path (Token with a valid token) vs oauth2.ReuseTokenSource, and refresh sharing"
	benchstat -filter 'pkg:/tokensource$/' "$raw"
fi

section "Issue 5 targets (medians over $COUNT runs)"
awk '
# Collect every value of every unit of every benchmark, without the -N
# GOMAXPROCS suffix.
/^Benchmark/ {
	name = $1
	sub(/-[0-9]+$/, "", name)
	for (i = 3; i < NF; i += 2) {
		key = name SUBSEP $(i + 1)
		n[key]++
		v[key, n[key]] = $i + 0
	}
}
function median(name, unit,    key, m, i, j, t, a) {
	key = name SUBSEP unit
	m = n[key]
	if (m == 0) return -1
	for (i = 1; i <= m; i++) a[i] = v[key, i]
	for (i = 2; i <= m; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
	return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
}
function verdict(ok) { return ok ? "met" : "MISSED" }
function ratio(bench, impl,    f, x) {
	f = median(bench "/impl=floor", "ns/op")
	x = median(bench "/impl=" impl, "ns/op")
	return (f > 0 && x > 0) ? x / f : -1
}
function perCall(bench,    r, o) {
	r = ratio(bench, "tokenrefresh")
	o = ratio(bench, "oauth")
	if (r < 0) return
	printf "  %s: tokenrefresh %.3fx the floor (target <= 1.2x): %s; oauth %.3fx\n", bench, r, verdict(r <= 1.2), o
}
function httpAttach(    h, o) {
	h = ratio("BenchmarkHTTPAttach", "httpauth")
	o = ratio("BenchmarkHTTPAttach", "oauth2")
	if (h < 0) return
	printf "  BenchmarkHTTPAttach: httpauth %.3fx the floor; oauth2.Transport %.3fx\n", h, o
}
function storm(variant,    b, c, x) {
	b = "BenchmarkRefreshStorm/rpc=" variant
	c = median(b, "refresher-calls/op")
	x = median(b, "x-ideal")
	if (c < 0) return
	printf "  storm rpc=%-12s refresher calls %g (target 1): %s; completion %.2fx the ideal (target <= 2x): %s\n",
		variant, c, verdict(c == 1), x, verdict(x <= 2)
}
END {
	perCall("BenchmarkUnaryRPC")
	perCall("BenchmarkAttach")
	httpAttach()
	storm("none")
	storm("bufconn-tls")
}' "$raw"

# tokenrefresh against oauth, with benchstat's significance test: "~" means
# the difference is within the noise of this run.
benchstat -format csv -filter '.name:(UnaryRPC OR Attach) .unit:sec/op' -col '/impl@(tokenrefresh oauth)' "$raw" 2>/dev/null |
	awk -F, '/^(UnaryRPC|Attach)-/ && NF >= 7 { print $1, $6, $7 }' |
	while read -r name delta p; do
		case "$delta" in
		"~") v="not distinguishable from noise" ;;
		+*) v="met, oauth takes $delta more" ;;
		*) v="MISSED, oauth takes ${delta#-} less" ;;
		esac
		echo "  Benchmark${name%-*}: tokenrefresh faster than oauth (target): $v ($p)"
	done
