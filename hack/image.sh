#!/usr/bin/env bash
# Builds meshd's container images without docker or a registry (`make image`):
# each one is a single-layer image assembled from files of this machine and
# written as a docker-archive tarball to out/images/ by tools/image:
#   meshd    static meshd at /usr/local/bin/meshd, plus the host's iptables-nft
#            (xtables-nft-multi, its dlopen'ed xtables modules, their shared
#            libraries and ld.so) for the injected init container that runs
#            `meshd iptables`; user 65532:65532, entrypoint meshd
#   proxy    the project's Envoy (hack/tools.sh envoy) with its shared libraries
#            and ld.so at /usr/local/bin/envoy; user 1337:1337, entrypoint envoy
#   pause    the pods' sandbox image of `make cluster` (tools/image/pause)
#   coredns  the cluster DNS of `make cluster` (tools/coredns)
#   probe    an in-pod checker for `hack/cluster.sh check` (tools/image/probe)
# meshd's image names come from deploy/images.env (MESHD_IMAGE=... PROXY_IMAGE=...
# in the environment override them), the cluster's own from hack/cluster/images.env.
# An image whose files and settings did not change is not written again.
#
# Then each image is loaded where it can run: into the running one-node cluster
# (hack/cluster.sh) with `ctr images import`; else into docker with `docker load`;
# and into a kind cluster (KIND_CLUSTER_NAME, default kind) with
# `kind load image-archive`. The cluster's own images go only to the one-node cluster.
#
# Usage: hack/image.sh [--no-load] [meshd|proxy|pause|coredns|probe|infra|all]...
#   infra = pause coredns probe; all (the default) = every image.
# Environment: VERSION (meshd's version, default git describe), MESHD_IMAGES_DIR
# (default out/images), MESHD_CLUSTER_DIR (default out/cluster), MESHD_TOOLS_DIR.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${MESHD_IMAGES_DIR:-$ROOT/out/images}
TOOLS=${MESHD_TOOLS_DIR:-$ROOT/.tools}
BIN=$TOOLS/bin
STATE=${MESHD_CLUSTER_DIR:-$ROOT/out/cluster}
export PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin

log() { printf '[image] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# Names: the files, unless the environment says otherwise.
env_meshd=${MESHD_IMAGE:-} env_proxy=${PROXY_IMAGE:-}
# shellcheck source=deploy/images.env
. "$ROOT/deploy/images.env"
# shellcheck source=hack/cluster/images.env
. "$ROOT/hack/cluster/images.env"
MESHD_IMAGE=${env_meshd:-$MESHD_IMAGE}
PROXY_IMAGE=${env_proxy:-$PROXY_IMAGE}
VERSION=${VERSION:-$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo dev)}

load=1
want=()
for a in "$@"; do
	case $a in
	--no-load) load= ;;
	meshd | proxy | pause | coredns | probe) want+=("$a") ;;
	infra) want+=(pause coredns probe) ;;
	all) want+=(meshd proxy pause coredns probe) ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown image $a (meshd, proxy, pause, coredns, probe, infra, all)" ;;
	esac
done
[ ${#want[@]} -gt 0 ] || want=(meshd proxy pause coredns probe)
has() { local w; for w in "${want[@]}"; do [ "$w" = "$1" ] && return 0; done; return 1; }

# The tools this needs, built (or found up to date) by hack/tools.sh.
need=(image)
has coredns && need+=(coredns)
has proxy && need+=(envoy)
bash "$ROOT/hack/tools.sh" "${need[@]}"

mkdir -p "$OUT"
STAGE=$OUT/.rootfs
trap 'rm -rf "$STAGE"' EXIT

# libs FILE: the absolute paths of the shared libraries ld.so loads for FILE
# (ld.so itself included); nothing for a static file.
libs() {
	local out
	if ! out=$(ldd "$1" 2>&1); then
		[[ $out == *"not a dynamic executable"* ]] && return 0
		die "ldd $1: $out"
	fi
	if grep -q 'not found' <<<"$out"; then
		die "$1: missing shared libraries: $(grep 'not found' <<<"$out" | tr -s ' \t' ' ')"
	fi
	grep -o '/[^ ]*' <<<"$out" || true
}

# copy_libs ROOT FILE...: FILE's shared libraries into ROOT, at their paths.
copy_libs() {
	local root=$1 f lib; shift
	for f in "$@"; do
		while read -r lib; do
			[ -n "$lib" ] || continue
			[ -e "$root$lib" ] && continue
			mkdir -p "$root$(dirname "$lib")"
			cp -L "$lib" "$root$lib"
		done < <(libs "$f")
	done
}

# layout ROOT: a usrmerged tree like the host's (so the paths ldd printed,
# /lib/... and /lib64/ld-linux..., resolve), /tmp, /etc/passwd and /etc/group.
layout() {
	local r=$1
	rm -rf "$r"
	mkdir -p "$r"/usr/{bin,sbin,lib,lib64,local/bin} "$r"/{etc,tmp,run}
	ln -s usr/bin "$r/bin"
	ln -s usr/sbin "$r/sbin"
	ln -s usr/lib "$r/lib"
	ln -s usr/lib64 "$r/lib64"
	chmod 1777 "$r/tmp"
	printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/tmp:/sbin/nologin\nenvoy:x:1337:1337:envoy:/tmp:/sbin/nologin\n' >"$r/etc/passwd"
	printf 'root:x:0:\nnonroot:x:65532:\nenvoy:x:1337:\n' >"$r/etc/group"
}

# mk NAME TAG IMAGE-FLAGS...: write $OUT/NAME.tar from $STAGE/NAME, unless
# the same files and flags made it last time ($OUT/NAME.key).
mk() {
	local name=$1 tag=$2 r=$STAGE/$1 key; shift 2
	key=$({
		printf '%s\n' "$tag" "$@"
		readlink -f "$BIN/image" | xargs sha256sum | cut -d' ' -f1
		cd "$r"
		find . -printf '%P %y %m %l\n' | LC_ALL=C sort
		find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum
	} | sha256sum | cut -c1-16)
	if [ -s "$OUT/$name.tar" ] && [ "$(cat "$OUT/$name.key" 2>/dev/null)" = "$key" ]; then
		log "$name: $OUT/$name.tar ($tag) is up to date"
		return
	fi
	local start=$SECONDS
	rm -f "$OUT/$name.key"
	"$BIN/image" -rootfs "$r" -tag "$tag" -out "$OUT/$name.tar" "$@"
	echo "$key" >"$OUT/$name.key"
	log "$name: $OUT/$name.tar ($tag) built in $((SECONDS - start))s"
}

build_meshd() {
	local r=$STAGE/meshd xt f t d out
	layout "$r"
	log "meshd: go build ./cmd/meshd (version $VERSION)"
	(cd "$ROOT" && CGO_ENABLED=0 go build -trimpath \
		-ldflags "-s -w -X github.com/meshd/meshd/internal/version.Version=$VERSION" \
		-o "$r/usr/local/bin/meshd" ./cmd/meshd)
	# iptables-nft: `meshd iptables` runs iptables-restore and iptables from PATH.
	f=$(command -v xtables-nft-multi) || die "no xtables-nft-multi here: install Debian's iptables (hack/deps.sh)"
	f=$(readlink -f "$f")
	mkdir -p "$r$(dirname "$f")"
	cp -L "$f" "$r$f"
	copy_libs "$r" "$f"
	for t in iptables iptables-restore iptables-save ip6tables ip6tables-restore ip6tables-save; do
		ln -sfn xtables-nft-multi "$r$(dirname "$f")/$t"
	done
	# The match and target modules iptables dlopens from its compiled-in directory.
	xt=
	for d in /usr/lib/*/xtables /usr/lib64/xtables /usr/lib/xtables; do
		[ -e "$d/libxt_standard.so" ] && { xt=$(readlink -f "$d"); break; }
	done
	[ -n "$xt" ] || die "cannot find iptables' xtables modules (libxt_standard.so)"
	mkdir -p "$r$xt"
	cp -a "$xt/." "$r$xt/"
	copy_libs "$r" "$xt"/*.so
	for f in /etc/protocols /etc/services /etc/ethertypes; do [ -e "$f" ] && cp -L "$f" "$r/etc/"; done
	if [ -e /etc/ssl/certs/ca-certificates.crt ]; then
		mkdir -p "$r/etc/ssl/certs"
		cp -L /etc/ssl/certs/ca-certificates.crt "$r/etc/ssl/certs/"
	fi
	if [ "$(id -u)" = 0 ]; then
		chroot "$r" /usr/sbin/iptables-restore --version >/dev/null ||
			die "meshd: iptables-restore does not run in the image's tree"
		# --help exits 2 after printing the flags.
		out=$(chroot "$r" /usr/local/bin/meshd iptables --help 2>&1 || true)
		[[ $out == *-outbound-port* ]] || die "meshd: 'meshd iptables --help' does not run in the image's tree: $out"
		log "meshd: $(chroot "$r" /usr/sbin/iptables-restore --version) and 'meshd iptables --help' run in the image's tree"
	fi
	mk meshd "$MESHD_IMAGE" -entrypoint /usr/local/bin/meshd -user 65532:65532 -workdir /
}

build_proxy() {
	local r=$STAGE/proxy src
	src=$(readlink -f "$BIN/envoy")
	layout "$r"
	cp -L "$src" "$r/usr/local/bin/envoy"
	copy_libs "$r" "$src"
	mkdir -p "$r/etc/envoy"
	if [ "$(id -u)" = 0 ]; then
		chroot "$r" /usr/local/bin/envoy --version >/dev/null ||
			die "proxy: envoy does not run in the image's tree"
	fi
	mk proxy "$PROXY_IMAGE" -entrypoint /usr/local/bin/envoy -user 1337:1337 -workdir /
}

# static NAME BINARY TAG FILE USER: a one-binary image, BINARY at /FILE (plus /tmp, /etc/passwd).
static() {
	local r=$STAGE/$1
	layout "$r"
	cp -L "$2" "$r/$4"
	if libs "$2" | grep -q .; then die "$2 is not static"; fi
	mk "$1" "$3" -entrypoint "/$4" -user "$5" -workdir /
}

for w in "${want[@]}"; do
	case $w in
	meshd) build_meshd ;;
	proxy) build_proxy ;;
	pause) static pause "$BIN/pause" "$PAUSE_IMAGE" pause 65535:65535 ;;
	coredns) static coredns "$BIN/coredns" "$COREDNS_IMAGE" coredns 65532:65532 ;;
	probe) static probe "$BIN/probe" "$PROBE_IMAGE" probe 65532:65532 ;;
	esac
done

[ -n "$load" ] || exit 0

# Loading: the one-node cluster first, else docker; kind as well.
tarballs=() mesh=()
for w in "${want[@]}"; do
	tarballs+=("$OUT/$w.tar")
	case $w in meshd | proxy) mesh+=("$OUT/$w.tar") ;; esac
done
tags() { local t; for t in "$@"; do tar -xOf "$t" manifest.json | grep -o '"RepoTags":\["[^"]*"' | cut -d'"' -f4; done | tr '\n' ' '; }
loaded=
sock=$STATE/run/containerd/containerd.sock
if [ -S "$sock" ]; then
	if ctr --address "$sock" version >/dev/null 2>&1; then
		for t in "${tarballs[@]}"; do
			ctr --address "$sock" -n k8s.io images import "$t" >/dev/null
		done
		log "imported into the one-node cluster's containerd ($sock, namespace k8s.io): $(tags "${tarballs[@]}")"
		loaded=1
	else
		log "$sock exists but containerd does not answer there (not root, or the cluster is down): not imported"
	fi
elif [ ${#mesh[@]} -gt 0 ] && command -v docker >/dev/null && docker info >/dev/null 2>&1; then
	for t in "${mesh[@]}"; do docker load -i "$t" >&2; done
	log "loaded into docker: $(tags "${mesh[@]}")"
	loaded=1
fi
if [ ${#mesh[@]} -gt 0 ] && command -v kind >/dev/null; then
	kc=${KIND_CLUSTER_NAME:-kind}
	if kind get clusters 2>/dev/null | grep -qx "$kc"; then
		for t in "${mesh[@]}"; do kind load image-archive --name "$kc" "$t" >&2; done
		log "loaded into kind cluster $kc: $(tags "${mesh[@]}")"
		loaded=1
	fi
fi
[ -n "$loaded" ] || log "not loaded anywhere (no running one-node cluster, docker or kind cluster): the tarballs are in $OUT"
