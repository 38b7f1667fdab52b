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

BIN   := $(CURDIR)/.bin
TOOLS := $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc $(BIN)/staticcheck
export PATH := $(BIN):$(PATH)

GO_TEST_FLAGS ?= -race -count=1 -timeout 15m

.PHONY: all build test lint generate check-generated run clean tools demo

all: build

build:
	@mkdir -p bin
	go build -o bin/ ./cmd/hourglassd ./cmd/hourglass ./cmd/hourglass-worker

# The tests start the real binaries; they build them into a temporary
# directory themselves, so `go test ./...` alone also works.
test:
	go test $(GO_TEST_FLAGS) ./...

lint: $(TOOLS) .build/protovalidate/buf/validate/validate.proto
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^gen/')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	go vet ./...
	staticcheck ./...
	buf lint proto
	buf format --diff --exit-code proto

generate: $(TOOLS) .build/protovalidate/buf/validate/validate.proto
	buf generate

# Fails when gen/ differs from what `make generate` produces.
check-generated: generate
	@if [ -n "$$(git status --porcelain -- gen)" ]; then \
	  echo "gen/ is stale: run 'make generate' and commit the result"; \
	  git status --porcelain -- gen; exit 1; fi

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
