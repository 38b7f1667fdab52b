# hourglass build. Every tool is pinned here and installed into .bin/ with
# `go install`, so a fresh machine needs only Go (and, for the Python worker
# SDK, the Debian packages .ci/run installs).
SHELL := /bin/bash

BUF_VERSION            := v1.75.0
PROTOC_GEN_GO_VERSION  := v1.36.12
PROTOC_GEN_GO_GRPC_VER := v1.6.0
STATICCHECK_VERSION    := v0.8.2
# validate.proto comes from this module in the Go module cache at generate
# time; it is never committed.
PROTOVALIDATE_PROTO    := github.com/bufbuild/protovalidate@v1.2.2
# The Python code is generated with Debian's protoc and grpc_python_plugin
# (packages protobuf-compiler and protobuf-compiler-grpc, which .ci/run
# installs); this is the protoc whose output is committed.
PROTOC                 := /usr/bin/protoc
PROTOC_VERSION         := libprotoc 3.21.12
GRPC_PYTHON_PLUGIN     := /usr/bin/grpc_python_plugin
PY_GEN                 := python/hourglass_worker/_gen
# The Python worker SDK's tests run with Debian's interpreter, which sees the
# python3-grpcio, python3-protobuf and python3-numpy packages.
PYTHON                 ?= /usr/bin/python3

BIN   := $(CURDIR)/.bin
TOOLS := $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc $(BIN)/staticcheck
export PATH := $(BIN):$(PATH)

GO_TEST_FLAGS ?= -race -count=1 -timeout 15m
# go-nvml's header marks many NVML calls deprecated; hourglass uses none of
# them, and the warnings would bury real build output.
export CGO_CFLAGS ?= -O2 -g -Wno-deprecated-declarations

.PHONY: all build test test-python lint generate check-generated python-protoc run clean tools demo

all: build

build:
	@mkdir -p bin
	go build -o bin/ ./cmd/hourglassd ./cmd/hourglass ./cmd/hourglass-worker

# The tests start the real binaries; they build them into a temporary
# directory themselves, so `go test ./...` alone also works.
test: test-python
	go test $(GO_TEST_FLAGS) ./...

# The Python worker SDK and PyTorch worker (python/). Skipped with a note
# where Debian's python3-grpcio is missing, unless PYTHON_TESTS_REQUIRED=1
# (as in CI), when that is an error.
test-python:
	@if $(PYTHON) -c 'import grpc, google.protobuf, numpy' 2>/dev/null; then \
	  cd python && $(PYTHON) -m unittest discover -s tests -t . -v; \
	elif [ "$${PYTHON_TESTS_REQUIRED:-}" = 1 ]; then \
	  echo "test-python: $(PYTHON) lacks grpc, protobuf or numpy (apt-get install python3-grpcio python3-protobuf python3-numpy)"; exit 1; \
	else \
	  echo "test-python: SKIPPED: $(PYTHON) lacks grpc, protobuf or numpy (apt-get install python3-grpcio python3-protobuf python3-numpy)"; \
	fi

lint: $(TOOLS) .build/protovalidate/buf/validate/validate.proto
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^gen/')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	go vet ./...
	staticcheck ./...
	buf lint proto
	buf format --diff --exit-code proto

generate: $(TOOLS) .build/protovalidate/buf/validate/validate.proto python-protoc
	buf generate
	@# protoc's Python code imports its packages absolutely ("from
	@# hourglass.v1 import generate_pb2"); hourglass_worker/proto.py puts
	@# $(PY_GEN) first on sys.path, and regular packages there win over any
	@# other "hourglass" or "buf" on the path.
	find $(PY_GEN) -mindepth 1 -name __pycache__ -prune -o -type d -exec touch {}/__init__.py \;

python-protoc:
	@if [ ! -x $(PROTOC) ] || [ ! -x $(GRPC_PYTHON_PLUGIN) ]; then \
	  echo "make generate needs Debian's protoc and grpc_python_plugin: apt-get install protobuf-compiler protobuf-compiler-grpc"; exit 1; fi
	@if [ "$$($(PROTOC) --version)" != "$(PROTOC_VERSION)" ]; then \
	  echo "make generate: $(PROTOC) is '$$($(PROTOC) --version)'; the committed Python code comes from '$(PROTOC_VERSION)'"; exit 1; fi

# Fails when gen/ or the generated Python differ from what `make generate`
# produces.
check-generated: generate
	@if [ -n "$$(git status --porcelain -- gen $(PY_GEN))" ]; then \
	  echo "generated code is stale: run 'make generate' and commit the result"; \
	  git status --porcelain -- gen $(PY_GEN); exit 1; fi

run: build
	bin/hourglassd --listen 127.0.0.1:50051 --workers 2

tools: $(TOOLS)

$(BIN)/buf:
	GOBIN=$(BIN) go install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(BIN)/protoc-gen-go:
	GOBIN=$(BIN) go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(BIN)/protoc-gen-go-grpc:
	GOBIN=$(BIN) go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VER)
$(BIN)/staticcheck:
	GOBIN=$(BIN) go install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

.build/protovalidate/buf/validate/validate.proto:
	@mkdir -p $(dir $@)
	go mod download $(PROTOVALIDATE_PROTO)
	install -m 0644 "$$(go env GOMODCACHE)/$(PROTOVALIDATE_PROTO)/proto/protovalidate/buf/validate/validate.proto" $@

clean:
	rm -rf bin .build

# Starts the service with the built-in CPU workers, runs one real
# generation through the CLI, and stops the service.
demo: build
	scripts/demo.sh

# Benchmarks (cmd/hourglass-bench): `bench` rewrites BENCHMARKS.md and
# docs/bench-*.png, a few minutes on 2 cores; `bench-smoke` runs every figure
# tiny into a temporary directory and fails only if one was not produced.
.PHONY: bench bench-smoke sim
bench: build
	go run ./cmd/hourglass-bench --bin bin
bench-smoke: build
	go run ./cmd/hourglass-bench --smoke --bin bin

# The scheduling core's deterministic simulator: every policy on the same
# million jobs per run, printed as markdown tables (under a minute on one
# core; figure 6 of BENCHMARKS.md is the same experiments).
SIM_FLAGS ?=
sim:
	go run ./cmd/hourglass-sim $(SIM_FLAGS)

# A short run of every fuzz target (issue 8); the seed corpora live in each
# package's testdata/fuzz. FUZZTIME=5m for a real session.
FUZZTIME ?= 10s
.PHONY: fuzz-smoke
fuzz-smoke:
	go test -run '^$$' -fuzz '^FuzzRequest$$' -fuzztime $(FUZZTIME) ./server
	go test -run '^$$' -fuzz '^FuzzLoad$$' -fuzztime $(FUZZTIME) ./internal/config
	go test -run '^$$' -fuzz '^FuzzWorkerEvents$$' -fuzztime $(FUZZTIME) ./executor
	go test -run '^$$' -fuzz '^FuzzWorkload$$' -fuzztime $(FUZZTIME) ./executor/sched/sim
