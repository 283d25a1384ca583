#!/usr/bin/env bash
# release-check.sh proves that the modules of this repository install the way
# a user meets them once VERSION is tagged, before anything is tagged:
#
#  1. internal/cmd/modproxy writes a file-based module proxy holding every
#     module of the repository at VERSION, zipped as the go command packs a
#     tag (nested modules, ignored and untracked-but-ignored files left out);
#  2. a consumer module in a temporary directory outside the repository, with
#     GOWORK=off, no replace directive and a private, empty module cache (so
#     no earlier copy of VERSION is ever reused), `go get`s the core,
#     tokensource/redisstore and otel at VERSION through that proxy, tidies,
#     vets and builds scripts/testdata/releasecheck/main.go, which uses all
#     three;
#  3. the program runs against an in-process testserver and a real
#     redis-server on a unix socket in the temporary directory, and fails
#     unless real RPCs succeeded on a token that two fleet members coordinated
#     through redisstore.
#
# Usage: scripts/release-check.sh [VERSION]     (or make release-check VERSION=vX.Y.Z)
#
# VERSION defaults to the version at which the nested go.mod files require the
# other modules of the repository; a different one fails, naming each go.mod
# to update (scripts/tidy.sh VERSION does it; see docs/releasing.md).
#
# Only the modules of this repository skip the checksum database (GONOSUMDB):
# they are not published yet. Third-party modules come from the local module
# cache when it has them, else from the Go module proxy, and are verified
# against the go.sum lines of the repository's modules (which the go command
# checked against the checksum database when they were added), or else
# against the checksum database itself; with a warm module cache the check
# needs no network. Without redis-server on PATH the program is built but not
# run, except with CI=true, where that fails.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
VERSION=${1:-${VERSION:-}}
start=$(date +%s%N)
elapsed() { echo "$(( ($(date +%s%N) - start) / 1000000 ))" | sed -E 's/([0-9]{3})$/.\1/; s/^\./0./'; }

core=$(awk '$1 == "module" { print $2; exit }' go.mod)
maincache=$("$GO" env GOMODCACHE)
upstream=$("$GO" env GOPROXY)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/release-check.XXXXXX")
redis_pid=
cleanup() {
	if [ -n "$redis_pid" ]; then
		kill "$redis_pid" 2>/dev/null || true
		wait "$redis_pid" 2>/dev/null || true
	fi
	# The go command makes its module cache read-only.
	if [ -d "$tmp/modcache" ]; then
		GOMODCACHE=$tmp/modcache GOWORK=off "$GO" clean -modcache 2>/dev/null || chmod -R u+w "$tmp/modcache"
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT

# 1. The proxy.
"$GO" build -o "$tmp/modproxy" ./internal/cmd/modproxy
"$tmp/modproxy" -out "$tmp/proxy" ${VERSION:+-version "$VERSION"} >"$tmp/modules"
version=$(sed -n "s|^$core@||p" "$tmp/modules")
echo "release-check: $(wc -l <"$tmp/modules") modules at $version in a file proxy ($(elapsed) s)"

# Third-party hashes the repository has already verified.
cat go.sum tokensource/redisstore/go.sum otel/go.sum | grep -v "^$core[/ ]" | sort -u >"$tmp/known.sum"

# 2. The consumer, as a user would set it up.
mkdir "$tmp/consumer"
cp scripts/testdata/releasecheck/main.go "$tmp/consumer/"
cd "$tmp/consumer"
# -trimpath keeps the module cache's (temporary) directory out of the build
# cache's keys, so that the third-party packages compiled by an earlier run
# are reused.
export GOWORK=off GOFLAGS=-trimpath GOTOOLCHAIN=local GOMODCACHE="$tmp/modcache"
export GOPROXY="file://$tmp/proxy,file://$maincache/cache/download,$upstream"
export GOPRIVATE= GONOPROXY= GONOSUMDB="$core"
"$GO" mod init example.com/releasecheck 2>/dev/null
cp "$tmp/known.sum" go.sum
mods=("$core" "$core/tokensource/redisstore" "$core/otel")
"$GO" get "${mods[@]/%/@$version}" 2>&1 | grep -v '^go: downloading' || true
"$GO" mod tidy
# Each of the three at exactly VERSION, from the proxy, not replaced.
got=$("$GO" list -m -f '{{.Path}} {{.Version}}{{with .Replace}} => {{.Path}} {{.Version}}{{end}}' "${mods[@]}")
want=$(printf '%s\n' "${mods[@]/%/ $version}")
if [ "$got" != "$want" ]; then
	printf 'release-check: the consumer resolved\n%s\nwant\n%s\n' "$got" "$want" >&2
	exit 1
fi
"$GO" vet .
"$GO" build -o releasecheck .
echo "release-check: core, redisstore and otel at $version fetched and built in a consumer module ($(elapsed) s)"

# 3. The run, against a real redis-server.
if ! command -v redis-server >/dev/null; then
	if [ "${CI:-}" = true ]; then
		echo "release-check: redis-server is not on PATH (CI=true, so this fails; .ci/run installs it)" >&2
		exit 1
	fi
	echo "release-check: redis-server is not on PATH: the program was built but not run (install redis-server)"
	exit 0
fi
redis-server --port 0 --unixsocket "$tmp/redis.sock" --unixsocketperm 700 --dir "$tmp" \
	--save '' --appendonly no --daemonize no >"$tmp/redis.log" 2>&1 &
redis_pid=$!
if ! ./releasecheck -redis "$tmp/redis.sock"; then
	echo "release-check: FAILED; redis-server's log:" >&2
	cat "$tmp/redis.log" >&2
	exit 1
fi
echo "release-check: ok: $version installs and works ($(elapsed) s)"
