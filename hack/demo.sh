#!/usr/bin/env bash
# make demo: runs meshd on its embedded default, connects a real Envoy sidecar
# to it over ADS, and prints a short report. Everything it starts is stopped on
# exit, also on failure or Ctrl-C.
#
# Today meshd serves the ADS endpoint and health probes; the mesh itself
# (certificates, mTLS between pod namespaces, tcpdump verdict) arrives with the
# ca/, xds/sds, translation and e2e issues, and this script grows with them.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/meshd-demo.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
XDS_PORT=$(free_port); DEBUG_PORT=$(free_port); ADMIN_PORT=$(free_port)

echo "== starting meshd (xds 127.0.0.1:$XDS_PORT, debug 127.0.0.1:$DEBUG_PORT)"
"$ROOT/bin/meshd" serve --xds-addr "127.0.0.1:$XDS_PORT" --debug-addr "127.0.0.1:$DEBUG_PORT" 2>"$WORK/meshd.log" &
pids+=($!)
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$DEBUG_PORT/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$DEBUG_PORT/readyz" >/dev/null || { cat "$WORK/meshd.log"; echo "meshd did not become ready"; exit 1; }

cat >"$WORK/envoy.yaml" <<YAML
node: {id: demo-sidecar, cluster: demo}
admin: {address: {socket_address: {address: 127.0.0.1, port_value: $ADMIN_PORT}}}
dynamic_resources:
  ads_config:
    api_type: DELTA_GRPC
    transport_api_version: V3
    grpc_services: [{envoy_grpc: {cluster_name: xds}}]
  lds_config: {ads: {}, resource_api_version: V3}
  cds_config: {ads: {}, resource_api_version: V3}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: xds
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $XDS_PORT}}}}]}]
YAML
echo "== starting Envoy $("$ROOT/.tools/bin/envoy" --version | grep -o '/1\.[0-9.]*/' | tr -d /) (admin 127.0.0.1:$ADMIN_PORT)"
"$ROOT/.tools/bin/envoy" -c "$WORK/envoy.yaml" --base-id $((RANDOM + 20000)) --concurrency 1 --disable-hot-restart --log-level warn 2>"$WORK/envoy.log" &
pids+=($!)

connected=0
for _ in $(seq 100); do
	connected=$(curl -sf "http://127.0.0.1:$ADMIN_PORT/stats?filter=^control_plane.connected_state$" | awk '{print $2}' || true)
	[ "$connected" = "1" ] && break
	sleep 0.1
done

echo
echo "== meshd demo report"
echo "meshd version:            $("$ROOT/bin/meshd" version)"
echo "ADS endpoint:             127.0.0.1:$XDS_PORT (state-of-the-world and delta)"
echo "health / readiness:       $(curl -s "http://127.0.0.1:$DEBUG_PORT/healthz" | tr -d '\n') / $(curl -s "http://127.0.0.1:$DEBUG_PORT/readyz" | tr -d '\n')"
echo "Envoy connected over ADS: $([ "$connected" = 1 ] && echo yes || echo NO)"
echo "mesh resources served:    none yet (certificates, listeners and mTLS come with the next issues)"
[ "$connected" = 1 ] || { tail -20 "$WORK/envoy.log"; exit 1; }
