# retryd developer tasks. Tools are pinned (go.mod tool directives, the buf
# version below) and installed into the git-ignored .tools folder.
SHELL := /bin/bash
TOOLS := $(CURDIR)/.tools
BUF_VERSION := 1.75.0
BUF := $(TOOLS)/node_modules/.bin/buf
GRPCURL := $(TOOLS)/bin/grpcurl
STATICCHECK_VERSION := v0.8.2
STATICCHECK := $(TOOLS)/bin/staticcheck-$(STATICCHECK_VERSION)

.PHONY: all tools deps generate check-generated lint test test-go test-fuzz fuzz test-python test-alerts run build clean bench bench-go bench-scale

all: build

$(BUF):
	npm install --silent --no-save --no-audit --no-fund --prefix $(TOOLS) @bufbuild/buf@$(BUF_VERSION)

$(TOOLS)/bin/protoc-gen-go $(TOOLS)/bin/protoc-gen-go-grpc: go.mod
	GOBIN=$(TOOLS)/bin go install google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc

# grpcurl's version is pinned by the tool directive in go.mod.
$(GRPCURL): go.mod
	go build -o $(GRPCURL) github.com/fullstorydev/grpcurl/cmd/grpcurl

# staticcheck is installed apart from go.mod: its golang.org/x modules must
# not move the service's own.
$(STATICCHECK):
	GOBIN=$(TOOLS)/bin go install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	mv $(TOOLS)/bin/staticcheck $(STATICCHECK)

tools: $(BUF) $(TOOLS)/bin/protoc-gen-go $(TOOLS)/bin/protoc-gen-go-grpc $(GRPCURL) $(STATICCHECK)

## generate: regenerate gen/ from proto/
generate: $(BUF) $(TOOLS)/bin/protoc-gen-go $(TOOLS)/bin/protoc-gen-go-grpc
	$(BUF) generate
	@if [ -f buf.gen.python.yaml ]; then $(BUF) generate --template buf.gen.python.yaml; fi

## check-generated: fail when the committed generated code is stale
GENERATED := gen clients/python/retryd/v1
check-generated: generate
	@git diff --exit-code --stat -- $(GENERATED) || { echo "generated code is stale: run 'make generate' and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- $(GENERATED))" || { git status --porcelain -- $(GENERATED); echo "generated code has untracked files: run 'make generate' and commit"; exit 1; }

## lint: buf lint, gofmt, go vet, staticcheck (its default checks but
## ST1005: error strings here may begin with a proper name, "Redis …")
lint: $(BUF) $(STATICCHECK)
	$(BUF) lint
	@test -z "$$(gofmt -l $$(git ls-files '*.go' | grep -v '^gen/'))" || { gofmt -l $$(git ls-files '*.go' | grep -v '^gen/'); echo "gofmt needed"; exit 1; }
	go vet ./...
	$(STATICCHECK) -checks inherit,-ST1005 ./...

## test: everything CI runs (installs the Debian packages it needs if missing)
test: deps lint check-generated test-go test-fuzz test-python test-alerts

## test-alerts: promtool checks the alerting rules and runs their unit tests
test-alerts:
	cd deploy/prometheus && promtool check rules retryd-alerts.yaml && promtool test rules retryd-alerts.test.yaml

## test-go: the Go suite with the race detector
test-go:
	go test -race -count=1 ./...

## test-fuzz: each fuzz target on a few thousand generated inputs (plain
## go test runs only their seed corpora). A count, not a duration: go1.26's
## fuzz coordinator can fail a run that hits a -fuzztime duration with a
## spurious "context deadline exceeded" (golang/go#75804). All four take
## about 20 s on a busy 2-core machine.
FUZZ_TARGETS := server:FuzzRequests:2000x scheduler:FuzzClassify:30000x store/redisstore:FuzzCodec:15000x store/boltstore:FuzzDecode:30000x
test-fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		IFS=: read -r pkg fn n <<< "$$t"; \
		echo "go test -run '^$$' -fuzz '^$$fn\$$' -fuzztime $(or $(FUZZTIME),$$n) ./$$pkg"; \
		go test -run '^$$' -fuzz "^$$fn\$$" -fuzztime "$(or $(FUZZTIME),$$n)" "./$$pkg"; \
	done

## fuzz: the fuzz targets for longer, e.g. make fuzz FUZZTIME=5m (each)
fuzz: test-fuzz

## test-python: the Python client's suite, on Debian's python3 and packages
test-python:
	/usr/bin/python3 -m pytest -q -p no:cacheprovider clients/python/tests

## deps: Debian packages the tests need
deps:
	@./.ci/debian-deps

## run: start retryd with the embedded store (or RETRYD_REDIS_URL)
run:
	go run ./cmd/retryd

build:
	go build -buildvcs=auto -o bin/retryd ./cmd/retryd

## bench: issue 5's three points (throughput, lag, memory) on both stores with
## retrybench, BENCH_RUNS runs each (the memory point BENCH_MEMORY_RUNS); the
## JSON lines go to bin/bench/results.jsonl, the summaries to bin/bench/summary.txt.
## Not part of `make test`: it takes about ten minutes and wants an idle machine.
BENCH_OUT := bin/bench
BENCH_RUNS ?= 5
BENCH_MEMORY_RUNS ?= 3
bench: build
	go build -o bin/retrybench ./cmd/retrybench
	@mkdir -p $(BENCH_OUT)
	@{ date -u; uptime; echo "nproc $$(nproc)"; grep -m1 'model name' /proc/cpuinfo; } | tee $(BENCH_OUT)/machine.txt
	@set -o pipefail; for store in redis embedded; do \
	  for point in throughput lag memory; do \
	    runs=$(BENCH_RUNS); [ $$point = memory ] && runs=$(BENCH_MEMORY_RUNS); \
	    bin/retrybench --spawn $$store --retryd bin/retryd --point $$point --runs $$runs --progress always \
	      2> >(tee -a $(BENCH_OUT)/summary.txt >&2) | tee -a $(BENCH_OUT)/results.jsonl || exit 1; \
	  done; \
	done

## bench-go: the Go benchmarks of the policy, the dispatcher and both stores,
## BENCH_COUNT times each, into bin/bench/go.txt; compare two such files with
## benchstat (go run golang.org/x/perf/cmd/benchstat@latest old.txt new.txt).
BENCH_COUNT ?= 6
bench-go:
	@mkdir -p $(BENCH_OUT)
	go test -run '^$$' -bench 'Decide|Dispatch$$' -benchmem -count $(BENCH_COUNT) ./scheduler/ | tee $(BENCH_OUT)/go.txt
	go test -run '^$$' -bench . -benchmem -count $(BENCH_COUNT) ./store/redisstore/ ./store/boltstore/ | tee -a $(BENCH_OUT)/go.txt

## bench-scale: claim and report cost with 1,000 vs 1,000,000 pending retries
## on both stores (seeds a million retries per store: a few minutes, ~1 GB).
bench-scale:
	@mkdir -p $(BENCH_OUT)
	go test -run '^$$' -bench Scale -benchtime 2000x -timeout 60m ./scheduler/ | tee $(BENCH_OUT)/scale.txt

clean:
	rm -rf bin
