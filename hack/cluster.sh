#!/usr/bin/env bash
# A one-node Kubernetes cluster on this machine, for meshd's end-to-end runs
# (`make cluster`, `make cluster-down`; docs/cluster.md):
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and
#   kube-proxy (iptables mode) from .tools/bin (hack/tools.sh etcd kube), on
#   Debian's containerd, runc and CNI bridge/host-local plugins (hack/deps.sh),
#   cgroupfs driver; CoreDNS (hack/tools.sh coredns) runs in kube-system.
# Root only. Addresses (nothing outside 198.18.0.0/15, no default route change):
#   node IP 198.18.0.1/32 on lo: the apiserver (:26443) and the kubelet (:20250)
#   pods 198.18.224.0/20 on the bridge meshdnode0 (gateway 198.18.224.1)
#   Services 198.19.224.0/20: kubernetes 198.19.224.1, kube-dns 198.19.224.10
#
# Usage: hack/cluster.sh up|down|status|check
#   up      start the cluster (after a `down` if a previous one left anything),
#           import the images in out/images/ (hack/image.sh builds them), and
#           print the admin kubeconfig's path on stdout (progress goes to stderr)
#   down    stop everything up started and undo every change it made to the host;
#           exits 1 if something is left (it says what)
#   status  what runs, the node, the pods, the imported images
#   check   pods that prove meshd's images, cluster DNS and the kubernetes Service
#
# State: ${MESHD_CLUSTER_DIR:-out/cluster}/ (admin.kubeconfig, pki/, run/, logs/,
# etc/, baseline/). Images: ${MESHD_IMAGES_DIR:-out/images}/. Tools:
# ${MESHD_TOOLS_DIR:-.tools}/bin.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE=${MESHD_CLUSTER_DIR:-$ROOT/out/cluster}
TOOLS=${MESHD_TOOLS_DIR:-$ROOT/.tools}
BIN=$TOOLS/bin
TOOLS_REAL=$(readlink -f "$TOOLS" 2>/dev/null || echo "$TOOLS")
IMAGES=${MESHD_IMAGES_DIR:-$ROOT/out/images}
CONF=$ROOT/hack/cluster
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
# Nothing here talks through a proxy (the apiserver would send webhook calls to it).
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY no_proxy NO_PROXY KUBECONFIG

KUBE_VERSION=v1.36.3
NODE_NAME=meshd-node
NODE_IP=198.18.0.1
POD_CIDR=198.18.224.0/20
POD_GW=198.18.224.1
SERVICE_CIDR=198.19.224.0/20
API_SERVICE_IP=198.19.224.1
DNS_IP=198.19.224.10
BRIDGE=meshdnode0
CHAIN=MESHDNODE-FWD
CNI_NETWORK=meshd-cluster
# Ports, all below the ephemeral range (32768-60999) the tests' free ports come from.
ETCD_PORT=23791
ETCD_PEER_PORT=23801
API_PORT=26443
KCM_PORT=20257
SCHEDULER_PORT=20259
KUBELET_PORT=20250
KUBELET_HEALTHZ_PORT=20248
PROXY_HEALTHZ_PORT=20256
PROXY_METRICS_PORT=20249
FEATURE_GATES=PodCertificateRequest=true,ClusterTrustBundle=true,ClusterTrustBundleProjection=true
RUNTIME_CONFIG=certificates.k8s.io/v1beta1=true
# The host settings kubelet, kube-proxy or we could change; down puts back the
# values they had before up (baseline/sysctl.txt).
SYSCTLS=(
	net.ipv4.ip_forward net.ipv4.conf.all.forwarding net.ipv4.conf.default.forwarding
	net.ipv4.conf.lo.forwarding net.ipv4.conf.all.route_localnet net.ipv6.conf.all.forwarding
	net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
	net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_timeout_established
	net.netfilter.nf_conntrack_tcp_timeout_close_wait
	vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
	kernel.keys.root_maxkeys kernel.keys.root_maxbytes
)
# kubelet writes these host-wide; it runs where they are plain files (the shield).
SHIELDED=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys kernel/keys/root_maxbytes)
# iptables chains of kube-proxy and kubelet (KUBE-), CNI plugins (CNI-) and ours.
CHAINS_RE='KUBE-|CNI-|MESHDNODE-'
# Host paths that containerd (shim sockets), the CNI plugins (result cache),
# kubelet (device plugin socket, log symlinks, volume plugin dir) and mount(8)
# use whatever the configuration says; down removes what up added there.
HOST_DIRS=(/run/containerd /var/lib/cni /var/lib/kubelet /var/log/containers /usr/libexec/kubernetes /run/mount)

# shellcheck source=hack/cluster/images.env
. "$CONF/images.env"
env_meshd=${MESHD_IMAGE:-} env_proxy=${PROXY_IMAGE:-}
# shellcheck source=deploy/images.env
. "$ROOT/deploy/images.env"
MESHD_IMAGE=${env_meshd:-$MESHD_IMAGE}
PROXY_IMAGE=${env_proxy:-$PROXY_IMAGE}

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

case $STATE in /*) ;; *) STATE=$PWD/$STATE ;; esac
case $STATE in *[[:space:]]* | / | "") die "MESHD_CLUSTER_DIR must be an absolute path without spaces, not '$STATE'" ;; esac
RUN=$STATE/run
PKI=$STATE/pki
LOGS=$STATE/logs
ETC=$STATE/etc
BASE=$STATE/baseline
KUBECONFIG_ADMIN=$STATE/admin.kubeconfig
SOCK=$RUN/containerd/containerd.sock

# Our kubectl calls keep their discovery cache in the state dir, not ~/.kube.
K() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" --cache-dir "$RUN/kubectl-cache" "$@"; }
CTR() { ctr --address "$SOCK" --namespace k8s.io "$@"; }

need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root (network, mounts, cgroups, iptables)"; }

# lock: one cluster.sh at a time per state dir (fd 9; daemons do not inherit it).
lock() {
	mkdir -p "$STATE"
	exec 9>"$STATE/.lock"
	flock -w 120 9 || die "another hack/cluster.sh holds $STATE/.lock"
}

# ---- processes ----------------------------------------------------------------

# start NAME CMD...: run CMD in the background, in its own session, stdin from
# /dev/null, output to logs/NAME.log, PID in run/pids/NAME.pid.
start() {
	local n=$1; shift
	setsid "$@" </dev/null >"$LOGS/$n.log" 2>&1 9>&- &
	echo $! >"$RUN/pids/$n.pid"
}

# ours PID: PID runs one of our binaries with this state dir on its command line.
ours() {
	local exe
	exe=$(readlink "/proc/$1/exe" 2>/dev/null) || return 1
	case $exe in "$TOOLS"/* | "$TOOLS_REAL"/* | /usr/bin/containerd* | /usr/sbin/runc) ;; *) return 1 ;; esac
	tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$STATE/"
}

# procs: "PID EXE" for every process (one pass over /proc).
procs() {
	find /proc -mindepth 2 -maxdepth 2 -name exe -printf '%h %l\n' 2>/dev/null | sed -n 's|^/proc/\([0-9][0-9]*\) |\1 |p'
}

# our_pids: every process of ours (kubelet, shims, ...) found in /proc.
our_pids() {
	local pid exe
	while read -r pid exe; do
		case $exe in "$TOOLS"/* | "$TOOLS_REAL"/* | /usr/bin/containerd* | /usr/sbin/runc) ;; *) continue ;; esac
		[ "$pid" != $$ ] && ours "$pid" && echo "$pid"
	done < <(procs)
	return 0
}

# other_cluster: the state dir of another one-node cluster that runs (its
# containerd or kubelet), if any. The names and addresses are the same for
# every state dir, so only one runs at a time.
other_cluster() {
	local pid exe args d
	while read -r pid exe; do
		case ${exe##*/} in containerd | kubelet) ;; *) continue ;; esac
		args=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
		case $args in
		*" --config "*/etc/containerd.toml*) d=${args#* --config }; d=${d%%/etc/containerd.toml*} ;;
		*" --root-dir "*/run/kubelet*) d=${args#* --root-dir }; d=${d%%/run/kubelet*} ;;
		*) continue ;;
		esac
		[ "$d" != "$STATE" ] && [ -d "$d/run" ] || continue
		echo "$d"
		return 0
	done < <(procs)
	return 1
}

# stop_pids NAME...: SIGTERM the processes in run/pids/NAME.pid, SIGKILL after
# STOP_WAIT seconds (default 10).
stop_pids() {
	local n pid pids=() _
	for n in "$@"; do
		[ -s "$RUN/pids/$n.pid" ] || continue
		pid=$(cat "$RUN/pids/$n.pid")
		if ours "$pid"; then
			kill "$pid" 2>/dev/null && pids+=("$pid") && log "stopping $n (pid $pid)"
		fi
		rm -f "$RUN/pids/$n.pid"
	done
	for _ in $(seq 1 $((${STOP_WAIT:-10} * 4))); do
		local left=()
		for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left+=("$pid"); done
		[ ${#left[@]} -eq 0 ] && return 0
		pids=("${left[@]}")
		sleep 0.25
	done
	for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null && log "killed pid $pid (SIGKILL)"; done
	return 0
}

# waitfor DESC SECONDS LOG CMD...: poll CMD every half second; on timeout show
# the end of logs/LOG.log and fail.
waitfor() {
	local desc=$1 t=$2 lg=$3 end; shift 3
	end=$((SECONDS + t))
	until "$@" >/dev/null 2>&1; do
		local pid
		pid=$(cat "$RUN/pids/$lg.pid" 2>/dev/null || true)
		if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
			log "$desc: $lg exited; the end of $LOGS/$lg.log:"
			tail -n 25 "$LOGS/$lg.log" >&2 2>/dev/null || true
			die "up failed (everything is left as it is for a look; hack/cluster.sh down cleans up)"
		fi
		if [ $SECONDS -ge $end ]; then
			log "$desc: not ready after ${t}s; the end of $LOGS/$lg.log:"
			tail -n 25 "$LOGS/$lg.log" >&2 2>/dev/null || true
			die "up failed (everything is left as it is for a look; hack/cluster.sh down cleans up)"
		fi
		sleep 0.5
	done
}

# ---- host state ---------------------------------------------------------------

# baseline: the host state before the first up (kept until a down restored it).
baseline() {
	[ -s "$BASE/sysctl.txt" ] && return 0
	mkdir -p "$BASE"
	local k v d
	for k in "${SYSCTLS[@]}"; do
		v=$(sysctl -n "$k" 2>/dev/null) && printf '%s=%s\n' "$k" "$v"
	done >"$BASE/sysctl.tmp"
	nft list tables 2>/dev/null >"$BASE/nft-tables.txt" || true
	nfacct >"$BASE/nfacct.txt" 2>/dev/null || true
	for d in "${HOST_DIRS[@]}"; do [ -e "$d" ] && echo "$d"; done >"$BASE/dirs.txt" || true
	ls -d /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods 2>/dev/null >"$BASE/cgroups.txt" || true
	mv "$BASE/sysctl.tmp" "$BASE/sysctl.txt"
	log "host baseline saved in $BASE"
}

in_baseline() { grep -qxF -- "$2" "$BASE/$1" 2>/dev/null; }

# leftovers: what a previous up may have left (processes, mounts, network).
leftovers() {
	[ -n "$(our_pids)" ] && return 0
	[ -d "$RUN" ] && return 0
	ip link show "$BRIDGE" >/dev/null 2>&1 && return 0
	ip -4 addr show dev lo | grep -qw "$NODE_IP/32" && return 0
	awk -v d="$STATE/" 'index($2, d) == 1 {found=1} END {exit !found}' /proc/self/mounts && return 0
	iptables -S FORWARD 2>/dev/null | grep -q -- "-j $CHAIN" && return 0
	return 1
}

# ---- up -----------------------------------------------------------------------

render() { # render SRC DST: fill in @...@
	sed -e "s|@STATE@|$STATE|g" -e "s|@RUN@|$RUN|g" -e "s|@NODE_NAME@|$NODE_NAME|g" \
		-e "s|@NODE_IP@|$NODE_IP|g" -e "s|@POD_CIDR@|$POD_CIDR|g" -e "s|@POD_GW@|$POD_GW|g" \
		-e "s|@SERVICE_CIDR@|$SERVICE_CIDR|g" -e "s|@DNS_IP@|$DNS_IP|g" -e "s|@BRIDGE@|$BRIDGE|g" \
		-e "s|@KUBELET_PORT@|$KUBELET_PORT|g" -e "s|@KUBELET_HEALTHZ_PORT@|$KUBELET_HEALTHZ_PORT|g" \
		-e "s|@PROXY_HEALTHZ_PORT@|$PROXY_HEALTHZ_PORT|g" -e "s|@PROXY_METRICS_PORT@|$PROXY_METRICS_PORT|g" \
		-e "s|@PAUSE_IMAGE@|$PAUSE_IMAGE|g" -e "s|@COREDNS_IMAGE@|$COREDNS_IMAGE|g" \
		-e "s|@PROBE_IMAGE@|$PROBE_IMAGE|g" -e "s|@MESHD_IMAGE@|$MESHD_IMAGE|g" -e "s|@PROXY_IMAGE@|$PROXY_IMAGE|g" \
		-e "s|@FEATURE_GATES_MAP@|{$(sed 's/=/: /g; s/,/, /g' <<<"$FEATURE_GATES")}|g" \
		"$1" >"$2"
	if grep -q '@[A-Z_]*@' "$2"; then die "render $1: $(grep -o '@[A-Z_]*@' "$2" | sort -u | tr '\n' ' ')left"; fi
}

# pki: a CA, serving and client certificates (EC P-256), the service account key.
pki() {
	rm -rf "$PKI"
	mkdir -p "$PKI"
	(
		cd "$PKI"
		umask 077
		key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null; }
		key ca
		openssl req -x509 -new -key ca.key -sha256 -days 365 -subj "/CN=meshd-cluster-ca" -out ca.crt \
			-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
		cert() { # cert NAME SUBJECT EXTENDED-KEY-USAGE [SANS]
			key "$1"
			openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
			{
				echo "basicConstraints=critical,CA:FALSE"
				echo "keyUsage=critical,digitalSignature"
				echo "extendedKeyUsage=$3"
				[ -z "${4:-}" ] || echo "subjectAltName=$4"
			} >"$1.ext"
			openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 365 \
				-extfile "$1.ext" -out "$1.crt" 2>/dev/null
			rm -f "$1.csr" "$1.ext"
		}
		cert apiserver "/CN=kube-apiserver" serverAuth \
			"IP:$NODE_IP,IP:$API_SERVICE_IP,IP:127.0.0.1,DNS:localhost,DNS:$NODE_NAME,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
		cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
		cert admin "/O=system:masters/CN=meshd-cluster-admin" clientAuth
		cert kube-controller-manager "/CN=system:kube-controller-manager" clientAuth
		cert kube-scheduler "/CN=system:kube-scheduler" clientAuth
		cert kube-proxy "/CN=system:kube-proxy" clientAuth
		cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
		cert kubelet-serving "/CN=$NODE_NAME" serverAuth "IP:$NODE_IP,DNS:$NODE_NAME"
		# presented by the apiserver to admission webhooks (meshd's
		# --webhook-client-ca / --webhook-client-name check it)
		cert webhook-client "/CN=kube-apiserver-webhook-client" clientAuth
		key sa
		openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
		rm -f ca.srl
	)
	kubeconfig "$KUBECONFIG_ADMIN" admin
	# The apiserver's identity towards every admission webhook.
	cat >"$ETC/webhook.kubeconfig" <<EOF
apiVersion: v1
kind: Config
users:
- name: "*"
  user: {client-certificate: $PKI/webhook-client.crt, client-key: $PKI/webhook-client.key}
EOF
	cat >"$ETC/admission.yaml" <<EOF
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: MutatingAdmissionWebhook
  configuration: {apiVersion: apiserver.config.k8s.io/v1, kind: WebhookAdmissionConfiguration, kubeConfigFile: $ETC/webhook.kubeconfig}
- name: ValidatingAdmissionWebhook
  configuration: {apiVersion: apiserver.config.k8s.io/v1, kind: WebhookAdmissionConfiguration, kubeConfigFile: $ETC/webhook.kubeconfig}
EOF
	local n
	for n in kube-controller-manager kube-scheduler kube-proxy kubelet; do kubeconfig "$ETC/$n.kubeconfig" "$n"; done
}

kubeconfig() { # kubeconfig FILE CERT: a self-contained kubeconfig for https://NODE_IP:API_PORT
	local b64='base64 -w0'
	(
		umask 077
		cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: meshd-cluster
  cluster:
    server: https://$NODE_IP:$API_PORT
    certificate-authority-data: $($b64 <"$PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $($b64 <"$PKI/$2.crt")
    client-key-data: $($b64 <"$PKI/$2.key")
contexts:
- name: meshd-cluster
  context: {cluster: meshd-cluster, user: $2}
current-context: meshd-cluster
EOF
	)
}

# net_up: the node IP on lo, the pods' bridge (per-interface forwarding only,
# never the global net.ipv4.ip_forward), the Services' route for the host's
# own clients (the apiserver calling webhooks), and a FORWARD guard: what
# comes from the pods may only be routed back to the pods.
net_up() {
	ip -4 addr show dev lo | grep -qw "$NODE_IP/32" || ip addr add "$NODE_IP/32" dev lo
	ip link add "$BRIDGE" type bridge
	ip addr add "$POD_GW/${POD_CIDR#*/}" dev "$BRIDGE"
	sysctl -q -w "net.ipv6.conf.$BRIDGE.disable_ipv6=1" 2>/dev/null || true
	sysctl -q -w "net.ipv4.conf.$BRIDGE.forwarding=1"
	ip link set "$BRIDGE" up
	ip route add "$SERVICE_CIDR" dev "$BRIDGE" src "$POD_GW"
	iptables -w -N "$CHAIN"
	iptables -w -A "$CHAIN" -o "$BRIDGE" -j ACCEPT
	iptables -w -A "$CHAIN" -j DROP
	iptables -w -I FORWARD 1 -i "$BRIDGE" -j "$CHAIN"
	if [ "$(sysctl -n net.bridge.bridge-nf-call-iptables 2>/dev/null)" != 1 ]; then
		log "note: net.bridge.bridge-nf-call-iptables is not 1 here (br_netfilter): a pod reaching a Service whose endpoint is another pod on the bridge gets no reply (left as it is: host-wide)"
	fi
}

# import TARBALL...: into containerd's k8s.io namespace.
import_images() {
	local t
	for t in "$@"; do CTR images import "$t" >/dev/null || return 1; done
}

image_tag() { tar -xOf "$1" manifest.json | grep -o '"RepoTags":\["[^"]*"' | cut -d'"' -f4; }

up() {
	need_root up
	local t0=$SECONDS b f
	for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
		[ -x "$BIN/$b" ] || die "$BIN/$b is missing: bash hack/tools.sh etcd kube"
	done
	for b in containerd ctr runc iptables iptables-save ip6tables ip6tables-save nft conntrack openssl setsid unshare flock; do
		command -v "$b" >/dev/null || die "$b is missing: bash hack/deps.sh"
	done
	for b in bridge host-local loopback; do
		[ -x "/usr/lib/cni/$b" ] || die "/usr/lib/cni/$b is missing: bash hack/deps.sh (containernetworking-plugins)"
	done
	refuse_other
	lock
	if leftovers; then
		log "a previous cluster left things behind: down first"
		down_locked || die "down did not clean up: see above"
	fi
	set -E
	trap 'log "up failed at hack/cluster.sh line $LINENO: $BASH_COMMAND (hack/cluster.sh down cleans up)"' ERR
	mkdir -p "$LOGS"
	rm -f "$LOGS"/*.log
	# The cluster's own images: hack/image.sh builds them when missing or stale
	# (under a second when they are up to date; minutes if CoreDNS must be built).
	MESHD_IMAGES_DIR=$IMAGES bash "$ROOT/hack/image.sh" --no-load infra 2>"$LOGS/image-infra.log" ||
		{ cat "$LOGS/image-infra.log" >&2; die "hack/image.sh infra failed"; }

	baseline
	rm -rf "$RUN" "$ETC" "$STATE/cni"
	mkdir -p "$RUN/pids" "$LOGS" "$ETC" "$STATE/cni"
	render "$CONF/containerd.toml" "$ETC/containerd.toml"
	render "$CONF/kubelet.yaml" "$ETC/kubelet.yaml"
	render "$CONF/kube-proxy.yaml" "$ETC/kube-proxy.yaml"
	render "$CONF/coredns.yaml" "$ETC/coredns.yaml"
	render "$CONF/cni.conflist" "$STATE/cni/10-$CNI_NETWORK.conflist"
	# kubelet's resolvConf, what pods with dnsPolicy Default get: the cluster DNS
	# again, never the host's resolver (an empty file would not do: containerd
	# then copies the host's /etc/resolv.conf into the pod).
	printf '# hack/cluster.sh: never the host resolver\nnameserver %s\n' "$DNS_IP" >"$RUN/resolv.conf"
	pki
	log "state in $STATE; pki ready"

	net_up
	log "network: $NODE_IP on lo, bridge $BRIDGE $POD_GW/${POD_CIDR#*/}, route $SERVICE_CIDR via $BRIDGE"

	mkdir -p "$RUN/containerd"
	start containerd containerd --config "$ETC/containerd.toml"
	start etcd "$BIN/etcd" --name "$NODE_NAME" --data-dir "$RUN/etcd" \
		--listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
		--listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-cluster "$NODE_NAME=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls "" \
		--unsafe-no-fsync --quota-backend-bytes 4294967296 --log-level warn
	waitfor containerd 30 containerd CTR version
	# Images: ours, then meshd's if hack/image.sh made them (in the background).
	local tarballs=()
	for f in pause coredns probe meshd proxy; do [ -s "$IMAGES/$f.tar" ] && tarballs+=("$IMAGES/$f.tar"); done
	import_images "${tarballs[@]}" >"$LOGS/import.log" 2>&1 &
	local import_pid=$!
	waitfor etcd 30 etcd curl -sf "http://127.0.0.1:$ETCD_PORT/health"

	start kube-apiserver "$BIN/kube-apiserver" \
		--etcd-servers "http://127.0.0.1:$ETCD_PORT" \
		--bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$API_PORT" \
		--cert-dir "$RUN/apiserver" \
		--tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
		--client-ca-file "$PKI/ca.crt" \
		--kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
		--kubelet-certificate-authority "$PKI/ca.crt" --kubelet-preferred-address-types InternalIP \
		--service-account-issuer https://kubernetes.default.svc.cluster.local \
		--service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
		--service-cluster-ip-range "$SERVICE_CIDR" --service-node-port-range 30000-32767 \
		--authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
		--admission-control-config-file "$ETC/admission.yaml" \
		--allow-privileged=true --endpoint-reconciler-type lease \
		--feature-gates "$FEATURE_GATES" --runtime-config "$RUNTIME_CONFIG" \
		--profiling=false --v 1
	waitfor kube-apiserver 90 kube-apiserver K get --raw /readyz
	log "control plane: etcd and kube-apiserver https://$NODE_IP:$API_PORT ready after $((SECONDS - t0))s"

	start kube-controller-manager "$BIN/kube-controller-manager" \
		--kubeconfig "$ETC/kube-controller-manager.kubeconfig" \
		--authentication-kubeconfig "$ETC/kube-controller-manager.kubeconfig" \
		--authorization-kubeconfig "$ETC/kube-controller-manager.kubeconfig" \
		--bind-address 127.0.0.1 --secure-port "$KCM_PORT" --leader-elect=false \
		--service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
		--use-service-account-credentials \
		--cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
		--service-cluster-ip-range "$SERVICE_CIDR" --cluster-cidr "$POD_CIDR" --allocate-node-cidrs=false \
		--feature-gates "$FEATURE_GATES" --profiling=false --v 1
	start kube-scheduler "$BIN/kube-scheduler" \
		--kubeconfig "$ETC/kube-scheduler.kubeconfig" \
		--authentication-kubeconfig "$ETC/kube-scheduler.kubeconfig" \
		--authorization-kubeconfig "$ETC/kube-scheduler.kubeconfig" \
		--bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --leader-elect=false \
		--feature-gates "$FEATURE_GATES" --profiling=false --v 1

	wait "$import_pid" || { cat "$LOGS/import.log" >&2; die "ctr images import failed"; }
	log "images imported: $(for f in "${tarballs[@]}"; do image_tag "$f"; done | tr '\n' ' ')"

	# kubelet in its own mount namespace where the /proc/sys files it would set
	# host-wide are plain files (the sysctl shield). Its root dir is a shared
	# mount, so the volume mounts it makes for pods reach containerd and runc.
	mkdir -p "$RUN/kubelet" "$RUN/pod-logs" "$RUN/sysctl-shield"
	mount --bind "$RUN/kubelet" "$RUN/kubelet"
	mount --make-shared "$RUN/kubelet"
	local shield="" s sf
	for s in "${SHIELDED[@]}"; do
		[ -e "/proc/sys/$s" ] || continue
		sf=$RUN/sysctl-shield/${s//\//.}
		cat "/proc/sys/$s" >"$sf"
		shield="$shield mount --bind $sf /proc/sys/$s &&"
	done
	start kubelet unshare --mount --propagation unchanged sh -c "mount --make-rprivate /proc && $shield exec $BIN/kubelet \
		--config $ETC/kubelet.yaml --kubeconfig $ETC/kubelet.kubeconfig --root-dir $RUN/kubelet \
		--volume-plugin-dir $RUN/kubelet-volume-plugins \
		--hostname-override $NODE_NAME --node-ip $NODE_IP --v 1"
	start kube-proxy "$BIN/kube-proxy" --config "$ETC/kube-proxy.yaml" --v 1
	waitfor "node $NODE_NAME Ready" 120 kubelet sh -c "'$BIN/kubectl' --kubeconfig '$KUBECONFIG_ADMIN' --cache-dir '$RUN/kubectl-cache' get node $NODE_NAME \
		-o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
	waitfor kube-proxy 60 kube-proxy curl -sf "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz"
	waitfor kube-controller-manager 60 kube-controller-manager curl -skf "https://127.0.0.1:$KCM_PORT/healthz"
	waitfor kube-scheduler 60 kube-scheduler curl -skf "https://127.0.0.1:$SCHEDULER_PORT/healthz"
	log "node $NODE_NAME Ready, kube-proxy synced after $((SECONDS - t0))s"

	K apply -f "$ETC/coredns.yaml" >"$LOGS/coredns-apply.log" 2>&1 || { cat "$LOGS/coredns-apply.log" >&2; die "kubectl apply coredns failed"; }
	waitfor "the default service account" 60 kube-controller-manager K -n default get serviceaccount default
	waitfor "CoreDNS" 120 kubelet sh -c "'$BIN/kubectl' --kubeconfig '$KUBECONFIG_ADMIN' --cache-dir '$RUN/kubectl-cache' -n kube-system get deploy coredns \
		-o jsonpath='{.status.availableReplicas}' | grep -qx 1"
	waitfor "kube-dns endpoints" 30 kube-proxy sh -c "'$BIN/kubectl' --kubeconfig '$KUBECONFIG_ADMIN' --cache-dir '$RUN/kubectl-cache' -n kube-system get endpointslices \
		-l kubernetes.io/service-name=kube-dns -o jsonpath='{.items[*].endpoints[*].conditions.ready}' | grep -q true"

	# From the host through kube-proxy's rules, the way the apiserver reaches
	# webhooks: proves the rules are in place, not just the endpoints.
	waitfor "the kubernetes Service from the host" 30 kube-proxy curl -sk --max-time 2 "https://$API_SERVICE_IP/readyz"
	waitfor "kube-dns (TCP) from the host" 30 kube-proxy timeout 2 bash -c "exec 3<>/dev/tcp/$DNS_IP/53"

	log "up in $((SECONDS - t0))s: Kubernetes $KUBE_VERSION, one node ($NODE_NAME, $NODE_IP)"
	log "  kubeconfig  $KUBECONFIG_ADMIN   (export KUBECONFIG=$KUBECONFIG_ADMIN)"
	log "  apiserver   https://$NODE_IP:$API_PORT, in pods the kubernetes Service $API_SERVICE_IP:443"
	log "  pods        $POD_CIDR (bridge $BRIDGE); Services $SERVICE_CIDR; DNS $DNS_IP (cluster.local)"
	log "  images      $(CTR images ls -q | grep -v -e '@sha256:' -e '^sha256:' | tr '\n' ' ')"
	log "  logs        $LOGS/;  down: hack/cluster.sh down (make cluster-down)"
	echo "$KUBECONFIG_ADMIN"
}

# ---- down ---------------------------------------------------------------------

unmount_state() { # unmount everything under the state dir, deepest first
	local m _
	for _ in 1 2 3 4 5; do
		local ms
		ms=$(awk -v d="$STATE/" 'index($2, d) == 1 {print length($2), $2}' /proc/self/mounts | sort -rn | cut -d' ' -f2-)
		[ -n "$ms" ] || return 0
		while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done <<<"$ms"
	done
}

# kill_pods: SIGKILL every process in the kubelet's cgroups (pods' containers).
kill_pods() {
	local h pids
	for h in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
		[ -d "$h" ] || continue
		in_baseline cgroups.txt "$h" && continue
		pids=$(find "$h" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
		# shellcheck disable=SC2086 # a list of PIDs
		[ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
	done
}

rm_cgroups() {
	local h
	for h in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
		[ -d "$h" ] || continue
		in_baseline cgroups.txt "$h" && continue
		find "$h" -depth -type d -exec rmdir {} + 2>/dev/null || true
	done
}

# iptables_clean: every rule jumping to KUBE-*, CNI-* or MESHDNODE-* chains, and those chains.
iptables_clean() {
	local ipt t r c
	for ipt in iptables ip6tables; do
		for t in filter nat mangle raw security; do
			"$ipt-save" -t "$t" 2>/dev/null | grep -E -- "^-A [^ ]+ .*-[jg] ($CHAINS_RE)" | grep -vE -- "^-A ($CHAINS_RE)" |
				sed 's/^-A /-D /' | while read -r r; do eval "$ipt -w -t $t $r" 2>/dev/null || true; done
			for c in $("$ipt-save" -t "$t" 2>/dev/null | awk -v re="^:($CHAINS_RE)" '$0 ~ re {print substr($1, 2)}'); do
				"$ipt" -w -t "$t" -F "$c" 2>/dev/null || true
			done
			for c in $("$ipt-save" -t "$t" 2>/dev/null | awk -v re="^:($CHAINS_RE)" '$0 ~ re {print substr($1, 2)}'); do
				"$ipt" -w -t "$t" -X "$c" 2>/dev/null || true
			done
		done
	done
}

# nft_clean: kube-proxy's own tables, and the empty iptables-nft tables that
# were not there before up.
nft_clean() {
	command -v nft >/dev/null || return 0
	local fam tbl n
	nft list tables 2>/dev/null | while read -r _ fam tbl; do
		in_baseline nft-tables.txt "table $fam $tbl" && continue
		case $tbl in
		kube-proxy) nft delete table "$fam" "$tbl" && log "deleted nft table $fam $tbl" ;;
		filter | nat | mangle | raw | security)
			n=$(nft -a list table "$fam" "$tbl" 2>/dev/null | grep '# handle' | grep -cvE '^\s*(table|chain) ' || true)
			[ "$n" = 0 ] && nft delete table "$fam" "$tbl" && log "deleted empty nft table $fam $tbl"
			;;
		esac
	done
	return 0
}

# nfacct NAME...: list the netfilter accounting objects (no NAME), or delete
# those named. kube-proxy makes two for its metrics; no Debian package in
# hack/deps.sh has a command for them, so: netlink from python3.
nfacct() {
	command -v python3 >/dev/null || return 0
	python3 - "$@" <<'PY'
import errno, socket, struct, sys
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
s.bind((0, 0))
nfgen = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)
def send(mtype, flags, payload):  # NFNL_SUBSYS_ACCT = 7
    s.send(struct.pack("=IHHII", 16 + len(payload), (7 << 8) | mtype, flags, 1, 0) + payload)
def names():
    send(1, 0x301, nfgen)  # NFNL_MSG_ACCT_GET, NLM_F_REQUEST|NLM_F_DUMP
    out = []
    while True:
        data, off = s.recv(65536), 0
        while off < len(data):
            ln, mtype = struct.unpack_from("=IH", data, off)
            if mtype in (2, 3):  # NLMSG_ERROR, NLMSG_DONE
                return out
            a = off + 20
            while a + 4 <= off + ln:
                alen, atype = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if atype & 0x7FFF == 1:  # NFACCT_NAME
                    out.append(data[a + 4:a + alen].rstrip(b"\0").decode())
                a += (alen + 3) & ~3
            off += (ln + 3) & ~3
try:
    if len(sys.argv) == 1:
        for n in names():
            print(n)
    for n in sys.argv[1:]:
        v = n.encode() + b"\0"
        a = struct.pack("=HH", 4 + len(v), 1) + v
        send(3, 0x5, nfgen + a + b"\0" * (-len(a) % 4))  # NFNL_MSG_ACCT_DEL, REQUEST|ACK
        e = -struct.unpack_from("=i", s.recv(65536), 16)[0]
        if e:
            print("nfacct %s: %s" % (n, errno.errorcode.get(e, e)), file=sys.stderr)
            sys.exit(1)
except OSError as e:  # no nfnetlink_acct in this kernel: nothing to do
    if e.errno not in (errno.ENOENT, errno.EPROTONOSUPPORT, errno.EOPNOTSUPP):
        raise
PY
}

# nfacct_clean: kube-proxy's accounting objects, unless they were there before up.
nfacct_clean() {
	local n
	for n in $(nfacct); do
		case $n in ct_state_invalid_dropped_pkts | localhost_nps_accepted_pkts) ;; *) continue ;; esac
		in_baseline nfacct.txt "$n" && continue
		nfacct "$n" && log "deleted kube-proxy's nfacct object $n"
	done
	return 0
}

restore_sysctls() {
	local line k v cur
	[ -s "$BASE/sysctl.txt" ] || { log "no baseline in $BASE: sysctls not checked"; return 0; }
	while IFS= read -r line; do
		k=${line%%=*} v=${line#*=}
		cur=$(sysctl -n "$k" 2>/dev/null) || continue
		if [ "$cur" != "$v" ]; then
			sysctl -q -w "$k=$v" && log "restored $k = $v (was $cur)"
		fi
	done <"$BASE/sysctl.txt"
}

other_running() { # other_running NAME...: a process of that name runs that is not ours
	local pid exe n
	while read -r pid exe; do
		for n in "$@"; do
			[ "${exe##*/}" = "$n" ] && ! ours "$pid" && return 0
		done
	done < <(procs)
	return 1
}

host_dirs_clean() {
	local d
	# libcni's result cache: our network's, and the loopback results of our sandboxes
	rm -f /var/lib/cni/results/"$CNI_NETWORK"-* 2>/dev/null
	for d in "$RUN"/containerd/root/io.containerd.grpc.v1.cri/sandboxes/*/; do
		d=${d%/}
		[ -d "$d" ] && rm -f /var/lib/cni/results/*-"${d##*/}"-* 2>/dev/null
	done
	# kubectl's discovery cache of our apiserver (stale once it is gone)
	rm -rf "${HOME:-/root}/.kube/cache/discovery/${NODE_IP}_$API_PORT" 2>/dev/null
	# kubelet's symlinks to our pods' logs
	find /var/log/containers -maxdepth 1 -type l -lname "$STATE/*" -delete 2>/dev/null
	for d in "${HOST_DIRS[@]}"; do
		[ -e "$d" ] || continue
		in_baseline dirs.txt "$d" && continue
		case $d in
		/run/containerd)
			# Shim sockets (/run/containerd/s/): ours, unless another containerd runs.
			if other_running containerd containerd-shim-runc-v2 containerd-shim-runc-v1 containerd-shim; then
				log "another containerd runs: $d left as it is"
			else
				rm -rf "$d"
			fi
			;;
		/var/lib/kubelet)
			if other_running kubelet; then log "another kubelet runs: $d left as it is"; else rm -rf "$d"; fi
			;;
		/run/mount)
			# mount(8)'s utab lock; the table itself only if empty
			rm -f "$d/utab.lock"
			[ -s "$d/utab" ] || rm -f "$d/utab"
			rmdir "$d" 2>/dev/null
			;;
		*) find "$d" -depth -type d -empty -delete 2>/dev/null ;;
		esac
	done
	return 0
}

# remains: print what is still there; fail if anything is.
remains() {
	local bad=0 x
	x=$(our_pids | tr '\n' ' ')
	[ -z "$x" ] || { log "left: processes $x"; bad=1; }
	x=$(awk -v d="$STATE/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | tr '\n' ' ')
	[ -z "$x" ] || { log "left: mounts $x"; bad=1; }
	ip link show "$BRIDGE" >/dev/null 2>&1 && { log "left: link $BRIDGE"; bad=1; }
	ip -4 addr show dev lo | grep -qw "$NODE_IP/32" && { log "left: $NODE_IP on lo"; bad=1; }
	x=$({ iptables-save; ip6tables-save; } 2>/dev/null | grep -cE -- "$CHAINS_RE" || true)
	[ "$x" = 0 ] || { log "left: $x iptables lines with $CHAINS_RE"; bad=1; }
	x=$(nft list tables 2>/dev/null | grep -vxF -f "$BASE/nft-tables.txt" 2>/dev/null | tr '\n' ' ' || true)
	[ -f "$BASE/nft-tables.txt" ] && [ -n "$x" ] && { log "left: nft tables $x"; bad=1; }
	for x in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
		[ -d "$x" ] && ! in_baseline cgroups.txt "$x" && { log "left: cgroup $x"; bad=1; }
	done
	for x in $(nfacct 2>/dev/null); do
		case $x in ct_state_invalid_dropped_pkts | localhost_nps_accepted_pkts) ;; *) continue ;; esac
		[ -f "$BASE/nfacct.txt" ] && ! in_baseline nfacct.txt "$x" && { log "left: nfacct object $x"; bad=1; }
	done
	for x in "${HOST_DIRS[@]}"; do
		if [ ! -e "$x" ] || [ ! -f "$BASE/dirs.txt" ] || in_baseline dirs.txt "$x"; then continue; fi
		case $x in
		/run/mount) log "note: $x is there (mount(8) makes it for any caller)" ;;
		/run/containerd | /var/lib/kubelet) other_running containerd kubelet || { log "left: $x"; bad=1; } ;;
		*) log "left: $x"; bad=1 ;;
		esac
	done
	if [ -s "$BASE/sysctl.txt" ]; then
		local line k v
		while IFS= read -r line; do
			k=${line%%=*} v=${line#*=}
			x=$(sysctl -n "$k" 2>/dev/null) || continue
			[ "$x" = "$v" ] || { log "left: sysctl $k = $x (was $v)"; bad=1; }
		done <"$BASE/sysctl.txt"
	fi
	return $bad
}

down_locked() {
	local t0=$SECONDS c errexit=
	# Best effort all the way: every step runs whatever the previous ones did.
	[[ $- == *e* ]] && errexit=1
	set +e
	trap - ERR
	# 1. The node and the control plane but etcd. (The apiserver's graceful
	# shutdown can hang after it stopped serving: no point waiting long.)
	STOP_WAIT=3 stop_pids kube-proxy kubelet kube-scheduler kube-controller-manager kube-apiserver
	# 2. The pods' containers; their tasks, so that the shims exit; containerd and etcd.
	kill_pods
	if [ -S "$SOCK" ] && CTR version >/dev/null 2>&1; then
		for c in $(CTR tasks ls -q 2>/dev/null); do CTR tasks delete --force "$c" >/dev/null 2>&1 || true; done
		for c in $(CTR containers ls -q 2>/dev/null); do CTR containers delete "$c" >/dev/null 2>&1 || true; done
	fi
	STOP_WAIT=3 stop_pids containerd etcd
	local p
	for p in $(our_pids); do
		c=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-100)
		kill -9 "$p" 2>/dev/null && log "killed leftover pid $p: $c"
	done
	sleep 0.2
	kill_pods
	# 3. Mounts (pod volumes, rootfs overlays, network namespaces, the kubelet's root).
	unmount_state
	# 4. Network.
	local v
	for v in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do ip link del "$v" 2>/dev/null || true; done
	ip link del "$BRIDGE" 2>/dev/null && log "deleted bridge $BRIDGE"
	ip addr del "$NODE_IP/32" dev lo 2>/dev/null && log "deleted $NODE_IP from lo"
	iptables_clean
	nft_clean
	nfacct_clean
	if command -v conntrack >/dev/null; then
		for c in "-s $POD_CIDR" "-d $POD_CIDR" "-d $SERVICE_CIDR" "-s $NODE_IP" "-d $NODE_IP"; do
			# shellcheck disable=SC2086
			conntrack -D $c >/dev/null 2>&1 || true
		done
	fi
	# 5. Cgroups, host directories, sysctls.
	rm_cgroups
	host_dirs_clean
	restore_sysctls
	# 6. Our files (logs/ stays for a look).
	if [ -z "$(awk -v d="$STATE/" 'index($2, d) == 1' /proc/self/mounts)" ]; then
		rm -rf "$RUN" "$PKI" "$ETC" "$STATE/cni" "$KUBECONFIG_ADMIN"
	fi
	local rc=1
	if remains; then
		# The host is as the baseline says: the next up takes a fresh one.
		if [ -d "$BASE" ]; then rm -rf "$STATE/baseline.restored" && mv "$BASE" "$STATE/baseline.restored"; fi
		log "down in $((SECONDS - t0))s: nothing left"
		rc=0
	fi
	[ -z "$errexit" ] || set -e
	return $rc
}

refuse_other() {
	local o
	if o=$(other_cluster); then
		die "another one-node cluster runs from $o (the same bridge, addresses and ports): stop it first with MESHD_CLUSTER_DIR=$o hack/cluster.sh down"
	fi
}

down() {
	need_root down
	refuse_other
	lock
	down_locked
}

# ---- status, check ------------------------------------------------------------

status() {
	local n pid
	for n in containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
		pid=$(cat "$RUN/pids/$n.pid" 2>/dev/null || true)
		if [ -n "$pid" ] && ours "$pid"; then echo "$n: running (pid $pid)"; else echo "$n: not running"; fi
	done
	[ -s "$KUBECONFIG_ADMIN" ] || { echo "no cluster (no $KUBECONFIG_ADMIN)"; return 0; }
	echo "kubeconfig: $KUBECONFIG_ADMIN"
	K --request-timeout=5s get nodes -o wide || true
	K --request-timeout=5s get pods -A -o wide || true
	if [ -S "$SOCK" ] && CTR version >/dev/null 2>&1; then
		echo "images:"
		CTR images ls -q | grep -v -e '@sha256:' -e '^sha256:' | sed 's/^/  /'
	fi
}

check() {
	[ -s "$KUBECONFIG_ADMIN" ] || die "no cluster: hack/cluster.sh up first"
	local f bad=0 t0=$SECONDS p
	f=$(mktemp)
	render "$CONF/check.yaml" "$f"
	K delete namespace meshd-cluster-check --ignore-not-found --wait=true >/dev/null
	K apply -f "$f" >/dev/null
	rm -f "$f"
	for p in meshd-image proxy-image dns-and-api; do
		if K -n meshd-cluster-check wait --for=jsonpath='{.status.phase}'=Succeeded "pod/$p" --timeout=120s >/dev/null; then
			echo "PASS $p"
		else
			echo "FAIL $p: $(K -n meshd-cluster-check get pod "$p" -o jsonpath='{.status.phase} {.status.initContainerStatuses[*].state} {.status.containerStatuses[*].state}')"
			bad=1
		fi
		K -n meshd-cluster-check logs "pod/$p" --all-containers --prefix 2>&1 | sed 's/^/    /'
	done
	K delete namespace meshd-cluster-check --wait=false >/dev/null
	echo "check: $([ $bad = 0 ] && echo PASS || echo FAIL) in $((SECONDS - t0))s"
	return $bad
}

case ${1:-} in
up) up ;;
down) down ;;
status) status ;;
check) check ;;
-h | --help | help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
*) echo "usage: hack/cluster.sh up|down|status|check" >&2; exit 2 ;;
esac
