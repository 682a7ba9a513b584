"""Workloads other than nginx for the e2e experiments (python3, stdlib only).

serve: an HTTP server on 0.0.0.0:8080 that answers with the address the
request came from; a client-first line server on 127.0.0.1:8081 only (an
app that trusts loopback); a server-first banner server on 0.0.0.0:2525.

dial HOST PORT [LINE]: connects, sends LINE if given, reads for up to 5 s
and prints what came back and whether the server closed.
"""
import http.server
import socket
import socketserver
import sys
import threading
import time


class Peer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("peer=%s\n" % self.client_address[0]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Loopback(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline().strip().decode(errors="replace")
        self.wfile.write(("LOOPBACK-ONLY " + line + "\n").encode())


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
        Server(("127.0.0.1", 8081), Loopback),
        Server(("0.0.0.0", 2525), Banner),
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


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    elif sys.argv[1] == "hold":
        hold(*sys.argv[2:])
    else:
        dial(*sys.argv[2:])
