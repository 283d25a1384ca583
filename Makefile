# grpc-tokenrefresh. Tools are pinned in tools/go.mod and run with `go tool`,
# so nothing is installed outside the Go module proxy.
GO      ?= go
TOOL    := $(GO) tool -modfile=tools/go.mod
PKGS    := ./...

.PHONY: all generate lint test test-go check-generated bench bench-smoke fuzz soak demo testserver

all: test

## generate: regenerate the protobuf Go code with buf (committed to the repo)
generate:
	$(TOOL) buf generate

## lint: go vet, staticcheck, buf lint and a gofmt check
lint:
	$(GO) vet $(PKGS)
	$(TOOL) staticcheck $(PKGS)
	$(TOOL) buf lint
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi

## test: lint, the race-enabled test suite, and generated-code freshness
test: lint test-go fuzz bench-smoke check-generated

FUZZTIME ?= 5s
SOAK     ?= 20s

test-go:
	$(GO) test -race -count=1 $(PKGS)

## fuzz: each fuzz target briefly (FUZZTIME, default 5s); the seed corpora also run in test-go
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzRefresherToken$$' -fuzztime $(FUZZTIME) ./tokensource/
	$(GO) test -run '^$$' -fuzz '^FuzzFileStoreLoad$$' -fuzztime $(FUZZTIME) ./tokensource/
	$(GO) test -run '^$$' -fuzz '^FuzzStreamReplay$$' -fuzztime $(FUZZTIME) ./interceptor/

## soak: the soak test alone for SOAK (default 20s; it also runs, for 20s, in test-go)
soak:
	$(GO) test -race -count=1 -run '^TestSoak$$' ./e2e/ -soak.duration=$(SOAK)

## check-generated: fail if `make generate` changes anything under proto/
check-generated: generate
	@git diff --exit-code -- proto || { echo "generated code is stale: run 'make generate' and commit"; exit 1; }
	@untracked=$$(git ls-files --others --exclude-standard -- proto); \
	if [ -n "$$untracked" ]; then echo "untracked generated files: $$untracked"; exit 1; fi

## bench: benchmarks with -benchmem, summarised by benchstat (about 4 minutes on 2 cores)
bench:
	GO=$(GO) scripts/bench.sh

## bench-smoke: every benchmark once, so CI proves they still run (not a measurement)
bench-smoke:
	$(GO) test -run '^$$' -bench . -benchtime 1x ./bench/ ./tokensource/ ./interceptor/

## demo: the main job: concurrent clients across several token expiries (about 11 s)
demo:
	$(GO) run ./cmd/demo

## testserver: run the bundled test gRPC server
testserver:
	$(GO) run ./cmd/testserver
