#!/usr/bin/env bash
# Installs the Debian packages the e2e tests and the demo use (curl, nginx,
# tcpdump, iptables, iproute2, util-linux's setpriv) and the one-node cluster's
# runtime (containerd, runc, the CNI plugins, conntrack, nftables), if missing.
# Root only.
set -euo pipefail
need=()
for p in curl nginx-light tcpdump iptables iproute2 util-linux make \
	containerd runc containernetworking-plugins conntrack nftables; do
	dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
	echo "[deps] apt-get install ${need[*]}"
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi
