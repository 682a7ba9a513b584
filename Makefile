# meshd. `make demo` and `make test` work on a fresh machine: they build what
# they need first (see hack/tools.sh; everything comes from package registries).
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/meshd/meshd/internal/version.Version=$(VERSION)
# Tests start real apiservers and Envoys; keep packages from piling up on 2 cores.
TEST_P ?= 2
TEST_TIMEOUT ?= 30m

.PHONY: all build tools test test-node unit vet staticcheck fmt-check check-repo bench demo image cluster cluster-down sample-images clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/meshd ./cmd/meshd

## tools: Envoy (PyPI), etcd, kube-apiserver, kube-controller-manager, cert-manager, coredns, image, staticcheck, helmrender (Go module proxy)
tools:
	bash hack/tools.sh all

vet:
	$(GO) vet ./...

## staticcheck: honnef.co/go/tools' checks (built into .tools by make tools)
staticcheck:
	.tools/bin/staticcheck ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^tools/')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

## check-repo: no tracked file over 1 MiB or binary, go.mod tidy (hack/check-repo.sh)
check-repo:
	bash hack/check-repo.sh

## test: every test, against the real parts (installed first); the real-node test
## (internal/node: a one-node cluster, meshd deployed from deploy/) runs alone after the
## others, since its kubelet and kube-proxy add host-wide iptables rules while it runs
test: check-repo tools fmt-check vet staticcheck
	$(GO) test -count=1 -p $(TEST_P) -timeout $(TEST_TIMEOUT) $$($(GO) list ./... | grep -v '/internal/node$$')
	$(MAKE) test-node

## test-node: the real-node end-to-end test alone (root; about 8 minutes)
test-node:
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v -run . ./internal/node 2>&1 | grep --line-buffered -Ev '^=== (RUN|PAUSE|CONT)'; exit $${PIPESTATUS[0]}

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

## image: meshd's images without docker or a registry (hack/image.sh): docker-archive
## tarballs in out/images/ (names in deploy/images.env; MESHD_IMAGE=... PROXY_IMAGE=...
## override them), loaded into the running `make cluster`, else docker, and kind if it runs.
## deploy/Dockerfile still builds the meshd image with docker.
image:
	VERSION=$(VERSION) bash hack/image.sh

## cluster: a one-node Kubernetes cluster on this machine (root; docs/cluster.md):
## prints the kubeconfig (out/cluster/admin.kubeconfig); `make cluster-down` undoes it all
cluster:
	@if [ "$$(id -u)" = 0 ]; then bash hack/deps.sh; else echo "make cluster: needs root"; exit 1; fi
	bash hack/tools.sh etcd kube coredns envoy image
	VERSION=$(VERSION) bash hack/image.sh --no-load
	bash hack/cluster.sh up

cluster-down:
	bash hack/cluster.sh down

## sample-images: the sample app's images (deploy/examples/sample-app.yaml: Debian's nginx and a
## static client), loaded into the running `make cluster` node
sample-images:
	bash internal/node/testdata/images.sh out/images/sample "hello from a meshed nginx"
	for i in out/images/sample/*.tar; do ctr --address $${MESHD_CLUSTER_DIR:-out/cluster}/run/containerd/containerd.sock -n k8s.io images import $$i; done

clean:
	rm -rf bin
