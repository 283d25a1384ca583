# grpc-tokenrefresh. Tools are pinned in tools/go.mod and run with `go tool`,
# so nothing is installed outside the Go module proxy.
GO      ?= go
TOOL    := $(GO) tool -modfile=tools/go.mod
PKGS    := ./...

.PHONY: all generate lint test test-go check-generated bench demo testserver

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
test: lint test-go check-generated

test-go:
	$(GO) test -race -count=1 $(PKGS)

## check-generated: fail if `make generate` changes anything under proto/
check-generated: generate
	@git diff --exit-code -- proto || { echo "generated code is stale: run 'make generate' and commit"; exit 1; }
	@untracked=$$(git ls-files --others --exclude-standard -- proto); \
	if [ -n "$$untracked" ]; then echo "untracked generated files: $$untracked"; exit 1; fi

## bench: benchmarks with -benchmem, summarised by benchstat
bench:
	@echo "benchmarks are not built yet (issue 5)"; exit 1

## demo: the main job (issue 5)
demo:
	@echo "cmd/demo is not built yet (issue 5)"; exit 1

## testserver: run the bundled test gRPC server
testserver:
	$(GO) run ./cmd/testserver
