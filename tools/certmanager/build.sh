#!/usr/bin/env bash
# build.sh OUT: builds our runner of cert-manager's controllers to
# OUT/bin/cert-manager-controller and copies cert-manager's CRDs (plain YAML
# in its Go module, deploy/crds/) to OUT/crds/. Everything comes through the
# Go module proxy.
set -euo pipefail
OUT=${1:?usage: build.sh OUT}
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE"
mkdir -p "$OUT/bin" "$OUT/crds"
echo "[cert-manager] building the controller runner (a few minutes cold)" >&2
GOFLAGS=-mod=readonly go build -trimpath -ldflags "-s -w" -o "$OUT/bin/cert-manager-controller" .
mod=$(GOFLAGS=-mod=readonly go list -m -f '{{.Dir}}' github.com/cert-manager/cert-manager)
for f in "$mod"/deploy/crds/cert-manager.io_*.yaml; do
	if grep -q '{{' "$f"; then
		echo "[cert-manager] $f is templated; cannot use it as plain YAML" >&2
		exit 1
	fi
	install -m 0644 "$f" "$OUT/crds/$(basename "$f")"
done
echo "[cert-manager] CRDs: $(ls "$OUT/crds" | tr '\n' ' ')" >&2
