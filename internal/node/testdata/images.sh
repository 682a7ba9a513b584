#!/usr/bin/env bash
# Builds the real-node test's workload images into OUT and prints nothing
# else on success (tools/image writes docker-archive tarballs):
#   localhost/meshd-test/web:dev     Debian's nginx (binary, its shared
#                                    libraries, ld.so) serving a page that
#                                    carries MARKER, on port 80
#   localhost/meshd-test/client:dev  testapp (static), internal/node/testapp
# Usage: images.sh OUT MARKER   (needs .tools/bin/image and nginx installed)
set -euo pipefail
OUT=$1 MARKER=$2
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
IMAGE=${MESHD_TOOLS_DIR:-$ROOT/.tools}/bin/image
mkdir -p "$OUT"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# copy_dyn ROOTFS FILE...: each file and its ldd closure, at their paths.
copy_dyn() {
	local r=$1 f lib; shift
	for f in "$@"; do
		mkdir -p "$r$(dirname "$f")" && cp -L "$f" "$r$f"
		for lib in $(ldd "$f" | grep -o '/[^ ]*'); do
			mkdir -p "$r$(dirname "$lib")" && cp -Ln "$lib" "$r$lib"
		done
	done
}

# web: nginx as root (master) and nobody (workers), everything under /tmp.
w=$work/web
mkdir -p "$w"/{etc/nginx,usr/share/nginx/html,var/log/nginx,var/lib/nginx,run} "$w/tmp"
chmod 1777 "$w/tmp"
ln -s usr/lib "$w/lib"; ln -s usr/lib64 "$w/lib64"
mkdir -p "$w/usr/lib" "$w/usr/lib64"
copy_dyn "$w" /usr/sbin/nginx
printf 'root:x:0:0:root:/root:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$w/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$w/etc/group"
cat >"$w/etc/nginx/nginx.conf" <<'CONF'
daemon off;
user nobody nogroup;
worker_processes 1;
error_log stderr warn;
pid /tmp/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path /tmp/body; proxy_temp_path /tmp/proxy; fastcgi_temp_path /tmp/fastcgi;
  uwsgi_temp_path /tmp/uwsgi; scgi_temp_path /tmp/scgi;
  default_type text/html;
  server {
    listen 80;
    root /usr/share/nginx/html;
    location = /healthz { return 200 "ok\n"; }
  }
}
CONF
printf '<html><body><h1>meshd real-node page</h1><p>%s served by nginx</p></body></html>\n' "$MARKER" >"$w/usr/share/nginx/html/index.html"
"$IMAGE" -rootfs "$w" -tag localhost/meshd-test/web:dev -out "$OUT/web.tar" -entrypoint /usr/sbin/nginx

# client: the static test client.
c=$work/client
mkdir -p "$c/usr/local/bin"
(cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -o "$c/usr/local/bin/testapp" ./internal/node/testapp)
"$IMAGE" -rootfs "$c" -tag localhost/meshd-test/client:dev -out "$OUT/client.tar" -entrypoint /usr/local/bin/testapp -user 65534:65534
