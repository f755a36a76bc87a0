# The two commands a newcomer needs are in README.md: `make demo` and `make test`.
GO        ?= go
PYTHON    ?= python3
BIN       := bin/runagent
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)

.PHONY: build demo deps test test-go test-go-postgres test-python test-py-sdk test-js test-rust vet bench bench-cluster bench-runs clean microvm-image

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/runagent

# Create an agent from the default template and serve it on http://127.0.0.1:8450.
demo: build
	@test -d demo-agent || ./$(BIN) init demo-agent --template default
	./$(BIN) serve demo-agent

# The whole test suite: Go (unit + end-to-end through the built binary),
# the Python runner's own tests and the SDKs', after deps.
test: deps vet test-python test-go test-go-postgres test-py-sdk test-js test-rust

# What the tests need on this machine, installed when missing (Debian
# packages with apt-get as root, pytest with pip): scripts/test-deps.sh says
# what and why, and what to run when it cannot install it itself.
deps:
	@PYTHON='$(PYTHON)' scripts/test-deps.sh

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { gofmt -l .; echo "gofmt: files above need formatting"; exit 1; }
	CGO_ENABLED=0 $(GO) vet ./...
	@# It builds for macOS, where runagent serve runs agents on the process
	@# sandbox (the others say they need Linux), and for arm64 Linux.
	GOOS=darwin GOARCH=arm64 CGO_ENABLED=0 $(GO) vet ./...
	GOOS=linux GOARCH=arm64 CGO_ENABLED=0 $(GO) build ./...

# The e2e tests also run the official SDKs' wire checker, ../shared/tools/
# check_wire.py beside the repository, when it is there.
WIRE_CHECKER := $(abspath ../shared/tools/check_wire.py)

test-go: microvm-image
	@test -f '$(WIRE_CHECKER)' || echo "test-go: the shared wire checker is not at $(WIRE_CHECKER): its checks (e2e TestWireContractCheck, TestPlatformAuthMatrix/wire_check) are skipped"
	CGO_ENABLED=0 $(GO) test -count=1 -timeout 20m ./...

# The platform server's end-to-end suites again, with its state in
# PostgreSQL (--db; a private server the tests start, see
# internal/store/pgstore/pgtest, or $$RUNAGENT_TEST_POSTGRES).
test-go-postgres:
	RUNAGENT_TEST_PLATFORM_DB=postgres CGO_ENABLED=0 $(GO) test -count=1 -timeout 10m -run 'TestPlatform|TestAttack' ./e2e

# The microvm sandbox's guest image, which its tests boot: built from Debian
# packages into ~/.runagent/microvm/image (about a minute the first time,
# seconds from the cache after). Needs root, debootstrap and QEMU;
# RUNAGENT_TEST_NO_MICROVM=1 skips it and the microvm tests.
microvm-image: build
	@if [ "$$RUNAGENT_TEST_NO_MICROVM" = 1 ]; then echo "RUNAGENT_TEST_NO_MICROVM=1: not building the microVM image"; \
	else ./$(BIN) microvm image build; fi

test-python:
	$(PYTHON) -m pytest -q internal/pyrunner

# The Python SDK, installed into its own virtualenv the standard way; its
# tests include the shared conformance suite against the real server.
test-py-sdk: build
	$(PYTHON) -m venv sdk/python/.venv
	sdk/python/.venv/bin/pip install --quiet --disable-pip-version-check ./sdk/python pytest
	cd sdk/python && .venv/bin/python -m pytest -q

# The TypeScript SDK: unit tests and the shared conformance suite against
# the real server (it uses bin/runagent, built by test-go's e2e or here).
test-js: build
	cd sdk/js && npm ci --no-audit --no-fund && npm run build && npm test

# The Rust SDK: unit tests and the shared conformance suite.
test-rust: build
	cd sdk/rust && cargo test --locked

bench: build
	$(GO) run ./bench/cmd/bench $(BENCHFLAGS)

# The cluster's benchmarks (real gateways and nodes on NATS and PostgreSQL;
# docs/benchmarks.md records them by hand): one vs two nodes, memory, the
# NATS hop, a node kill to the last redelivered async run.
bench-cluster:
	$(GO) test -run '^$$' -bench 'ClusterThroughput' -benchtime 400x ./e2e
	$(GO) test -run '^$$' -bench 'ClusterRedelivery' -benchtime 1x ./e2e
	$(GO) test -run '^$$' -bench 'CallHop' ./internal/dispatch/natsdispatch

# Background runs and the event log of streams that outlive their client
# (docs/benchmarks.md records them by hand).
bench-runs: build
	$(GO) test -run '^$$' -bench 'RunsCreate|Rejoin' -benchtime 3000x ./e2e
	$(GO) test -run '^$$' -bench 'Stream10k' -benchtime 3x ./e2e

clean:
	rm -rf bin demo-agent
