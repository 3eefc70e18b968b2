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
HELM_VERSION  := v3.22.0
HELM          := $(TOOLS)/helm-$(HELM_VERSION)
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
demo: ## roll an OS update over a simulated fleet on a local control plane; writes rollout.svg
	@# The control plane (without kubectl, which only the tests use) builds beside the
	@# server and the simulator.
	@cp=$$(mktemp); trap 'rm -f $$cp' EXIT; \
	hack/controlplane.sh etcd kube-apiserver kube-controller-manager kube-scheduler >$$cp & pid=$$!; \
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/reboot-manager ./cmd/fleetsim; \
	wait $$pid; \
	CONTROLPLANE_BIN=$$(cat $$cp) $(BIN)/fleetsim --reboot-manager=$(BIN)/reboot-manager $(DEMO_FLAGS)

.PHONY: test
test: $(HELM) ## unit and integration tests, the chart, the image, the alerting rules (builds the control plane and helm first if missing)
	@start=$$(date +%s); \
	bin=$$(hack/controlplane.sh); \
	echo "control plane binaries: $$bin ($$(( $$(date +%s) - start ))s)"; \
	CONTROLPLANE_BIN=$$bin HELM=$(HELM) $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...
	HELM=$(HELM) hack/chart.sh check
	cd hack && $(GO) test -count=1 ./...

.PHONY: image
image: ## multi-arch OCI image (amd64, arm64) into bin/image (layout) and bin/image.tar, no daemon
	hack/image.sh

.PHONY: chart
chart: $(HELM) ## render kubernetes/deployment.yaml, monitoring.yaml and replacement.yaml from charts/reboot-manager
	HELM=$(HELM) hack/chart.sh render

.PHONY: bench
bench: ## rollout makespan, no-op check-ins, cache memory, contention (docs/performance.md; BENCH_FLAGS=-help)
	@bin=$$(hack/controlplane.sh); \
	CONTROLPLANE_BIN=$$bin $(GO) run ./internal/bench $(BENCH_FLAGS)

$(HELM):
	@mkdir -p $(TOOLS)
	@echo "building helm $(HELM_VERSION) from its Go module (several minutes, once)"
	GOBIN=$(TOOLS) $(GO) install -trimpath -ldflags '-s -w' helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	@mv $(TOOLS)/helm $@

$(GOLANGCI_LINT):
	@mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	@mv $(TOOLS)/golangci-lint $@

.PHONY: lint
lint: $(GOLANGCI_LINT) ## gofmt, go vet and golangci-lint (.golangci.yml: staticcheck, errorlint, ...)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GOLANGCI_LINT) run ./...
	cd hack && $(GO) vet ./... && $(GOLANGCI_LINT) run ./...

.PHONY: clean
clean: ## remove bin/ (the control-plane cache in .cache/ stays)
	rm -rf $(BIN)
