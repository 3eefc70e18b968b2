# reboot-manager — run `make help` for the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

GO            ?= go
BIN           := bin
VERSION       ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS       := -s -w -X main.version=$(VERSION)
TOOLS         := $(CURDIR)/.cache/tools
GOLANGCI_LINT_VERSION := v2.15.0
GOLANGCI_LINT := $(TOOLS)/golangci-lint-$(GOLANGCI_LINT_VERSION)
# go test's -timeout for the whole suite; integration tests start a real control plane.
TEST_TIMEOUT  ?= 12m

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

.PHONY: build
build: ## build bin/reboot-manager
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/reboot-manager

.PHONY: controlplane
controlplane: ## build the test control plane (etcd, kube-apiserver, ...) into .cache/ if missing
	@hack/controlplane.sh >/dev/null

.PHONY: demo
demo: build ## roll an OS update over a simulated fleet on a local control plane; writes rollout.svg
	@bin=$$(hack/controlplane.sh); \
	CONTROLPLANE_BIN=$$bin $(GO) run ./cmd/fleetsim --reboot-manager=$(BIN)/reboot-manager $(DEMO_FLAGS)

.PHONY: test
test: ## unit and integration tests (builds the control plane first if missing)
	@start=$$(date +%s); \
	bin=$$(hack/controlplane.sh); \
	echo "control plane binaries: $$bin ($$(( $$(date +%s) - start ))s)"; \
	CONTROLPLANE_BIN=$$bin $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

.PHONY: bench
bench: ## rollout makespan, no-op check-ins, cache memory, contention (docs/performance.md; BENCH_FLAGS=-help)
	@bin=$$(hack/controlplane.sh); \
	CONTROLPLANE_BIN=$$bin $(GO) run ./internal/bench $(BENCH_FLAGS)

$(GOLANGCI_LINT):
	@mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	@mv $(TOOLS)/golangci-lint $@

.PHONY: lint
lint: $(GOLANGCI_LINT) ## gofmt, go vet and golangci-lint (.golangci.yml: staticcheck, errorlint, ...)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GOLANGCI_LINT) run ./...

.PHONY: clean
clean: ## remove bin/ (the control-plane cache in .cache/ stays)
	rm -rf $(BIN)
