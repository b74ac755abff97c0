"""A small network test server for pods, shaped like Kubernetes' agnhost netexec.

HTTP (default port 8080):
  /hostname        the pod's name
  /clientip        the source address:port this server saw
  /echo?msg=TEXT   TEXT
  /healthz         "ok", or 503 after /sethealth?status=fail (for readiness probes)
  /readyz          "ok"; 503 "shutting down" once SIGTERM came (agnhost's: out of
                   endpoints, yet healthy)
  /sethealth?status=fail|ok   flip what /healthz answers
  /                "NOW: <time>" as agnhost does
UDP (default port 8081): "hostname" -> pod name, "echo TEXT" -> TEXT,
"clientip" -> source address:port; anything else -> the pod's name.

On SIGTERM it exits 0, as agnhost netexec does; with --delay-shutdown=SECONDS
it first keeps serving that many seconds (agnhost's flag: a pod that answers
while it terminates, for kube-proxy's terminating endpoints).

Runs inside node containers with the standard library only.
"""

from __future__ import annotations

import argparse
import http.server
import os
import signal
import socket
import socketserver
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit


HEALTH = {"ok": True}
TERMINATING = threading.Event()  # SIGTERM came: /readyz answers 503


def pod_name() -> str:
    return os.environ.get("POD_NAME") or socket.gethostname()


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "emu-netexec/1"
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/hostname":
            body = pod_name()
        elif url.path == "/clientip":
            body = f"{self.client_address[0]}:{self.client_address[1]}"
        elif url.path == "/echo":
            body = parse_qs(url.query).get("msg", [""])[0]
        elif url.path == "/healthz":
            if not HEALTH["ok"]:
                self._reply(503, "unhealthy")
                return
            body = "ok"
        elif url.path == "/readyz":
            if TERMINATING.is_set():
                self._reply(503, "shutting down")
                return
            body = "ok"
        elif url.path == "/sethealth":
            HEALTH["ok"] = parse_qs(url.query).get("status", ["ok"])[0] != "fail"
            body = "ok" if HEALTH["ok"] else "fail"
        elif url.path == "/":
            body = f"NOW: {time.strftime('%Y-%m-%d %H:%M:%S')}"
        else:
            self._reply(404, f"404 page not found: {url.path}\n")
            return
        self._reply(200, body)

    def _reply(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        sys.stderr.write(f"{self.client_address[0]}:{self.client_address[1]} {format % args}\n")


class HTTPServer(socketserver.ThreadingTCPServer):
    # http.server.HTTPServer looks up its own FQDN while binding, which waits for
    # DNS; a pod's DNS may not answer yet, so bind without it.
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128


def udp_answer(payload: bytes, client: tuple[str, int]) -> bytes:
    text = payload.decode(errors="replace").strip()
    if text.startswith("echo "):
        return text[5:].encode()
    if text == "clientip":
        return f"{client[0]}:{client[1]}".encode()
    return pod_name().encode()


def serve_udp(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    while True:
        payload, client = sock.recvfrom(65535)
        sock.sendto(udp_answer(payload, client), client)


def on_sigterm(delay: int) -> None:
    """SIGTERM: exit 0, after `delay` seconds of serving on (agnhost netexec's --delay-shutdown)."""
    if TERMINATING.is_set():
        return
    TERMINATING.set()
    if delay <= 0:
        os._exit(0)
    print(f"netexec: SIGTERM: sleeping {delay} seconds before terminating...", flush=True)
    timer = threading.Timer(delay, os._exit, (0,))
    timer.daemon = True
    timer.start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="netexec")
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--udp-port", type=int, default=8081, help="0 turns UDP off")
    parser.add_argument("--delay-shutdown", type=int, default=0, metavar="SECONDS",
                        help="seconds to keep serving after SIGTERM before exiting")
    options = parser.parse_args(argv)
    if options.delay_shutdown < 0:
        parser.error(f"--delay-shutdown must be 0 or more seconds, not {options.delay_shutdown}")
    signal.signal(signal.SIGTERM, lambda number, frame: on_sigterm(options.delay_shutdown))
    if options.udp_port:
        threading.Thread(target=serve_udp, args=(options.udp_port,), daemon=True).start()
    server = HTTPServer(("0.0.0.0", options.http_port), Handler)
    print(f"netexec: pod {pod_name()} serving HTTP :{options.http_port} UDP :{options.udp_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
