"""Workloads other than nginx for the e2e experiments (python3, stdlib only).

serve [NAME]: an HTTP server on 0.0.0.0:8080 (and 8083) that answers with the address
the request came from (/whoami: with NAME; /envoy-headers: the x-envoy-*
request headers it got; /flaky: always 503, counted,
/flaky-count: the count; asked to upgrade to a WebSocket, it echoes the
client's text messages); a client-first line server on 127.0.0.1:8081 only
(an app that trusts loopback); a server-first banner server on
0.0.0.0:2525; a line server on 0.0.0.0:7070, a port no Service or
container declares, and on 0.0.0.0:7071 (the pod's annotation takes it out
of the interception); on 0.0.0.0:7072 a server that reads until the client
half-closes, then answers; on 0.0.0.0:7073 one that says NAME and closes.

halfclose HOST PORT TEXT: sends TEXT, shuts its sending side, prints the
answer.

dial HOST PORT [LINE]: connects, sends LINE if given, reads for up to 5 s
and prints what came back and whether the server closed.

ws HOST PORT TEXT...: opens a WebSocket (RFC 6455) to HOST:PORT, sends
each TEXT as a message and prints the handshake's status, whether the
accept key was right, and each answer.
"""
import base64
import hashlib
import http.server
import os
import socket
import socketserver
import sys
import threading
import time


WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_accept(key):
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


def ws_send(f, text, mask):
    """Writes one final text frame (masked: a client's)."""
    data = text.encode()
    head = bytes([0x81])
    n = len(data)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    else:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    if mask:
        key = os.urandom(4)
        data = key + bytes(b ^ key[i % 4] for i, b in enumerate(data))
    f.write(head + data)
    f.flush()


def ws_read(f):
    """Reads one frame; returns (opcode, text), opcode None at the end."""
    head = f.read(2)
    if len(head) < 2:
        return None, ""
    op, n, masked = head[0] & 0x0F, head[1] & 0x7F, head[1] & 0x80
    if n == 126:
        n = int.from_bytes(f.read(2), "big")
    elif n == 127:
        n = int.from_bytes(f.read(8), "big")
    key = f.read(4) if masked else b""
    data = f.read(n)
    if masked:
        data = bytes(b ^ key[i % 4] for i, b in enumerate(data))
    return op, data.decode(errors="replace")


FLAKY, FLAKY_LOCK = [0], threading.Lock()
NAME = ["app"]  # the server's name (serve NAME), answered on /whoami and 7073


class Peer(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        status, body = 200, ("peer=%s\n" % self.client_address[0]).encode()
        if self.path == "/flaky":
            # Always 503; counts the requests that reached the app.
            with FLAKY_LOCK:
                FLAKY[0] += 1
            status = 503
        elif self.path == "/whoami":
            body = ("server=%s\n" % NAME[0]).encode()
        elif self.path == "/envoy-headers":
            # The x-envoy-* request headers that reached the app.
            names = sorted(k.lower() for k in self.headers.keys() if k.lower().startswith("x-envoy-"))
            body = ("request=%s\n" % ",".join(names)).encode()
        elif self.path == "/flaky-count":
            # How many reached /flaky since the last ask.
            with FLAKY_LOCK:
                body, FLAKY[0] = ("flaky=%d\n" % FLAKY[0]).encode(), 0
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        got = 0
        while got < n:
            b = self.rfile.read(min(65536, n - got))
            if not b:
                break
            got += len(b)
        body = ("posted=%d\n" % got).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def websocket(self):
        """Echoes text messages until the client closes."""
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", ws_accept(self.headers.get("Sec-WebSocket-Key", "")))
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while True:
            op, text = ws_read(self.rfile)
            if op is None or op == 0x8:
                return
            ws_send(self.wfile, "echo %s from %s" % (text, self.client_address[0]), False)

    def log_message(self, *args):
        pass


class Loopback(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline().strip().decode(errors="replace")
        self.wfile.write(("LOOPBACK-ONLY " + line + "\n").encode())


class UntilEOF(socketserver.StreamRequestHandler):
    """Reads until the client half-closes, then answers with what it read."""

    def handle(self):
        data = self.rfile.read()
        self.wfile.write(b"GOT %d bytes: %s\n" % (len(data), data[:40]))


class Undeclared(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline().strip().decode(errors="replace")
        self.wfile.write(("UNDECLARED %s from %s\n" % (line, self.client_address[0])).encode())


class Who(socketserver.StreamRequestHandler):
    """Says which server answered, then closes."""

    def handle(self):
        self.wfile.write(("server=%s\n" % NAME[0]).encode())


class Banner(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"220 meshd-banner ready\r\n")
        self.wfile.flush()
        for line in self.rfile:
            self.wfile.write(b"250 " + line)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def serve():
    servers = [
        http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Peer),
        http.server.ThreadingHTTPServer(("0.0.0.0", 8083), Peer),
        Server(("127.0.0.1", 8081), Loopback),
        Server(("0.0.0.0", 2525), Banner),
        Server(("0.0.0.0", 7070), Undeclared),
        Server(("0.0.0.0", 7071), Undeclared),
        Server(("0.0.0.0", 7072), UntilEOF),
        Server(("0.0.0.0", 7073), Who),
    ]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("serving", flush=True)
    while True:
        time.sleep(3600)


def dial(host, port, line=None):
    start = time.monotonic()
    got, closed = b"", False
    try:
        s = socket.create_connection((host, int(port)), timeout=5)
        s.settimeout(5)
        if line is not None:
            s.sendall(line.encode() + b"\n")
        while len(got) < 200:
            b = s.recv(200)
            if not b:
                closed = True
                break
            got += b
            if b"\n" in got:
                break
    except OSError as e:
        got += ("error:%s" % type(e).__name__).encode()
        closed = not isinstance(e, socket.timeout)
    print("got=%r closed=%s after=%.1fs" % (got.decode(errors="replace"), closed, time.monotonic() - start), flush=True)


def halfclose(host, port, text):
    """Sends text, closes its sending side, and prints the answer."""
    try:
        s = socket.create_connection((host, int(port)), timeout=5)
        s.settimeout(5)
        s.sendall(text.encode())
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            b = s.recv(200)
            if not b:
                break
            got += b
        print(got.decode(errors="replace").strip(), flush=True)
    except OSError as e:
        print("error:%s" % type(e).__name__, flush=True)


def hold(host, port, seconds):
    """Keeps one connection to the banner server busy (a line a second)
    and prints how long it lived and how it ended."""
    start = time.monotonic()
    s = socket.create_connection((host, int(port)), timeout=5)
    f = s.makefile("rwb")
    f.readline()  # the banner
    end, answered = "alive", 0
    while time.monotonic() - start < float(seconds):
        try:
            f.write(b"ping\n")
            f.flush()
            if not f.readline():
                end = "closed"
                break
            answered += 1
        except OSError:
            end = "closed"
            break
        time.sleep(1)
    print("end=%s lived=%.0fs answered=%d" % (end, time.monotonic() - start, answered), flush=True)


def ws(host, port, *texts):
    key = base64.b64encode(os.urandom(16)).decode()
    out = []
    try:
        s = socket.create_connection((host, int(port)), timeout=5)
        s.settimeout(5)
        f = s.makefile("rwb")
        f.write(("GET /chat HTTP/1.1\r\nHost: %s:%s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (host, port, key)).encode())
        f.flush()
        status = f.readline().decode(errors="replace").split()
        out.append("status=%s" % (status[1] if len(status) > 1 else "none"))
        headers = {}
        while True:
            line = f.readline().decode(errors="replace").strip()
            if not line:
                break
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        out.append("accept=%s" % ("ok" if headers.get("sec-websocket-accept") == ws_accept(key) else "wrong"))
        if len(status) > 1 and status[1] == "101":
            for text in texts:
                ws_send(f, text, True)
                op, answer = ws_read(f)
                out.append("answer=%r" % (answer if op is not None else "<closed>"))
            f.write(bytes([0x88, 0x80]) + os.urandom(4))  # close, masked, empty
            f.flush()
    except OSError as e:
        out.append("error=%s" % type(e).__name__)
    print(" ".join(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        if len(sys.argv) > 2:
            NAME[0] = sys.argv[2]
        serve()
    elif sys.argv[1] == "hold":
        hold(*sys.argv[2:])
    elif sys.argv[1] == "ws":
        ws(*sys.argv[2:])
    elif sys.argv[1] == "halfclose":
        halfclose(*sys.argv[2:])
    else:
        dial(*sys.argv[2:])
