# grpc-tokenrefresh. Tools are pinned in tools/go.mod and run with `go tool`,
# so nothing is installed outside the Go module proxy.
GO      ?= go
# `go tool -modfile` refuses to run in workspace mode, and the tools module
# stays out of go.work (its dependencies would raise the versions the
# library is tested with): the tools run with GOWORK=off.
TOOL    := GOWORK=off $(GO) tool -modfile=tools/go.mod
# staticcheck, though, loads the workspace's packages, which GOWORK=off
# (inherited from `go tool`) would hide: it runs as a binary built from
# tools/go.mod.
STATICCHECK := bin/tools/staticcheck
# The modules besides the core, each with a go.mod of its own so that the
# core go.mod never gains their dependencies: otel (OpenTelemetry),
# tokensource/redisstore (go-redis), cmd/demo (the Prometheus exporter), e2e
# (fleet tests on Redis) and e2e/oauth2server (zitadel/oidc's authorization
# server). go.work puts them all in one workspace, so one go command takes
# the packages of every module. `./...` stops at a nested module's boundary,
# hence the explicit patterns; if it ever crossed it, a go command would
# still list each package once.
MODULES := otel tokensource/redisstore cmd/demo e2e e2e/oauth2server
PKGS    := ./... $(addprefix ./,$(addsuffix /...,$(MODULES)))

.PHONY: all generate lint test test-go check-generated bench bench-fleet bench-smoke fuzz soak chaos demo testserver release-check tidy $(STATICCHECK)

all: test

## generate: regenerate the protobuf Go code with buf (committed to the repo)
generate:
	$(TOOL) buf generate

## lint: go vet, staticcheck, buf lint and a gofmt check, over every module
lint: $(STATICCHECK)
	$(GO) vet $(PKGS)
	$(STATICCHECK) $(PKGS)
	$(TOOL) buf lint
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi

$(STATICCHECK):
	@GOWORK=off $(GO) build -modfile=tools/go.mod -o $@ honnef.co/go/tools/cmd/staticcheck

## test: lint, the race-enabled test suite, fuzzing, benchmarks once, generated-code freshness, installability
test: lint test-go fuzz bench-smoke check-generated release-check

# Fuzz budgets are counts of executions, not durations: with a duration, Go
# 1.26's fuzz coordinator can fail a clean run with a bare "context deadline
# exceeded" when a starved worker misses the deadline (golang/go#75804, fixed
# in Go 1.27; seen here in 1 of 5 loaded runs). Each count is about 5 s of
# fuzzing on a loaded 2-core machine. FUZZTIME, when set (5000x, 1m), replaces
# them all.
FUZZTIME          ?=
FUZZ_REFRESHER    ?= 20000x
FUZZ_FILESTORE    ?= 2500x
FUZZ_STREAMREPLAY ?= 6000x
FUZZ_CHALLENGE    ?= 20000x
SOAK     ?= 20s

test-go:
	$(GO) test -race -count=1 $(PKGS)

## fuzz: each fuzz target briefly (about 5 s each; FUZZTIME=1m for longer); the seed corpora also run in test-go
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzRefresherToken$$' -fuzztime $(or $(FUZZTIME),$(FUZZ_REFRESHER)) ./tokensource/
	$(GO) test -run '^$$' -fuzz '^FuzzFileStoreLoad$$' -fuzztime $(or $(FUZZTIME),$(FUZZ_FILESTORE)) ./tokensource/
	$(GO) test -run '^$$' -fuzz '^FuzzStreamReplay$$' -fuzztime $(or $(FUZZTIME),$(FUZZ_STREAMREPLAY)) ./interceptor/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(or $(FUZZTIME),$(FUZZ_CHALLENGE)) ./internal/challenge/

## soak: the soak test alone for SOAK (default 20s; it also runs, for 20s, in test-go)
soak:
	$(GO) test -race -count=1 -run '^TestSoak$$' ./e2e/ -soak.duration=$(SOAK)

## chaos: the seeded fault campaign (e2e TestChaos): 6 worker processes per store under kills, stops,
## revocations, FileStore stalls and Redis kills, for DURATION per store (make test runs SEED=602 for 20s,
## with stops capped at 1.5 s: -chaos.max-stop).
## SEED=<n> DURATION=<d> STORE=file,redis,cluster,sentinel or all; CHAOS_GOFLAGS=-race to build with the race detector
SEED          ?= 30
DURATION      ?= 60s
STORE         ?= all
CHAOS_GOFLAGS ?=
chaos:
	$(GO) test $(CHAOS_GOFLAGS) -count=1 -timeout 0 -v -run '^TestChaos$$' ./e2e/ \
		-chaos.seed=$(SEED) -chaos.duration=$(DURATION) -chaos.store=$(STORE) -chaos.max-stop=0

## check-generated: fail if `make generate` changes anything under proto/
check-generated: generate
	@git diff --exit-code -- proto || { echo "generated code is stale: run 'make generate' and commit"; exit 1; }
	@untracked=$$(git ls-files --others --exclude-standard -- proto); \
	if [ -n "$$untracked" ]; then echo "untracked generated files: $$untracked"; exit 1; fi

## bench: benchmarks with -benchmem, summarised by benchstat (about 6 minutes on 2 cores)
bench:
	GO=$(GO) scripts/bench.sh

## bench-fleet: fleets of 8 real processes (FLEET_EPISODES episodes per store, about 6 s each), then the
## hot path with and without a coordinating store (COUNT runs, benchstat); about 5 minutes on 2 cores
FLEET_EPISODES ?= 10
COUNT          ?= 6
bench-fleet:
	$(GO) test -run '^$$' -bench '^BenchmarkFleet$$' -benchtime $(FLEET_EPISODES)x ./e2e/
	@# COUNT rounds one after the other, each running every variant once, so
	@# that a change in the machine's load spreads over all of them.
	@out=$$(mktemp "$${TMPDIR:-/tmp}/bench-fleet.XXXXXX") || exit 1; \
	for i in $$(seq $(COUNT)); do \
		$(GO) test -p 1 -run '^$$' -bench '^BenchmarkTokenWithStore$$' -benchmem -count 1 \
			./tokensource/ ./tokensource/redisstore/ >>"$$out" || { cat "$$out"; rm -f "$$out"; exit 1; }; \
	done; \
	$(TOOL) benchstat -col /store "$$out"; rc=$$?; rm -f "$$out"; exit $$rc

## bench-smoke: every benchmark once, so CI proves they still run (not a measurement). BenchmarkFleet
## runs one short episode per store (2 expiries: about 12 s).
bench-smoke:
	$(GO) test -run '^$$' -bench . -benchtime 1x ./bench/ ./tokensource/ ./tokensource/redisstore/ ./interceptor/
	$(GO) test -run '^$$' -bench '^BenchmarkFleet$$' -benchtime 1x ./e2e/ -fleetbench.expiries 2
	$(GO) test -run '^$$' -bench . -benchtime 1x ./otel/... ./e2e/oauth2server/... ./cmd/demo/...

## demo: the main job: early refresh, a revocation, an IdP outage and a fleet of processes on one FileStore (about 30 s)
# Built into bin/ and exec'd, so that signals reach it (it starts its fleet's
# worker processes from its own binary). With Redis as well:
# make demo DEMO_FLAGS='-redis 127.0.0.1:6379'; every flag: DEMO_FLAGS=-h.
DEMO_BIN   ?= bin/demo
DEMO_FLAGS ?=
demo:
	@$(GO) build -o $(DEMO_BIN) ./cmd/demo
	@exec $(DEMO_BIN) $(DEMO_FLAGS)

## testserver: build the bundled test gRPC server into bin/ and run it: TLS on 127.0.0.1:50051, CA in bin/testserver.pem
# The recipe execs the binary in place of the shell, so the server is make's
# own child: make passes SIGTERM on to it, and Ctrl-C reaches it with the rest
# of the process group. With `go run` in between, a SIGTERM killed `go` and
# left the server holding its port. Other flags: make testserver TESTSERVER_FLAGS='-h'.
TESTSERVER_BIN   ?= bin/testserver
TESTSERVER_FLAGS ?= -tls -tls-cert-out bin/testserver.pem
testserver:
	@$(GO) build -o $(TESTSERVER_BIN) ./cmd/testserver
	@exec $(TESTSERVER_BIN) $(TESTSERVER_FLAGS)

## release-check: prove the modules install as published: a file module proxy with every module at VERSION,
## a consumer module outside the repository that `go get`s core, redisstore and otel from it and runs
## against testserver and a real redis-server (scripts/release-check.sh; about 10 s with warm caches)
VERSION ?=
release-check:
	GO=$(GO) scripts/release-check.sh $(VERSION)

## tidy: `go mod tidy` in every module, with the modules of the repository at VERSION (default: the version
## the nested go.mod files require; see docs/releasing.md)
tidy:
	GO=$(GO) scripts/tidy.sh $(VERSION)
