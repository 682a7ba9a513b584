# meshd. `make demo` and `make test` work on a fresh machine: they build what
# they need first (see hack/tools.sh; everything comes from package registries).
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/meshd/meshd/internal/version.Version=$(VERSION)
# Tests start real apiservers and Envoys; keep packages from piling up on 2 cores.
TEST_P ?= 2
TEST_TIMEOUT ?= 30m

.PHONY: all build tools test unit vet fmt-check check-repo bench demo image clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/meshd ./cmd/meshd

## tools: Envoy (PyPI), etcd, kube-apiserver, kube-controller-manager, cert-manager (Go module proxy)
tools:
	bash hack/tools.sh all

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^tools/')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

## check-repo: no tracked file over 1 MiB or binary, go.mod tidy (hack/check-repo.sh)
check-repo:
	bash hack/check-repo.sh

## test: every test, against the real parts (installed first)
test: check-repo tools fmt-check vet
	$(GO) test -count=1 -p $(TEST_P) -timeout $(TEST_TIMEOUT) ./...

## unit: tests that need no real part (they skip the others loudly outside CI)
unit:
	$(GO) test -short ./...

## bench: benchmarks; they print figures, they assert nothing about time
bench: tools
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 2s ./...

## demo: the seed experiment: nginx and curl pods (network namespaces) with tcpdump on the
## link, without a mesh and then with meshd and real Envoy sidecars; without root, a reduced
## demo on loopback addresses (no interception, no capture) that says so
demo: build
	@if [ "$$(id -u)" = 0 ]; then bash hack/deps.sh; else echo "demo: not root: the reduced demo (no apt packages needed)"; fi
	bash hack/tools.sh envoy
	$(GO) run ./internal/e2e/demo -meshd bin/meshd -envoy .tools/bin/envoy

## image: the OCI image (deploy/Dockerfile) with whichever builder this machine has; IMAGE=name:tag
IMAGE ?= ghcr.io/meshd/meshd:$(VERSION)
image:
	@b=$$(command -v docker || command -v podman || command -v buildah || true); \
	if [ -z "$$b" ]; then echo "make image: no docker, podman or buildah here; build deploy/Dockerfile where one exists, then load it into your cluster (kind load docker-image / ctr -n k8s.io images import)"; exit 1; fi; \
	if [ "$${b##*/}" = buildah ]; then $$b bud -f deploy/Dockerfile -t $(IMAGE) .; else $$b build -f deploy/Dockerfile -t $(IMAGE) .; fi

clean:
	rm -rf bin
