"""The DNS server: UDP and TCP on :53, health on :8080/health, readiness on :8181/ready.

Speed comes from a cache of encoded replies keyed by the query's bytes after
its ID (so the question's case, flags and EDNS options are part of the key and
come back exactly): a hit costs one dict lookup and two bytes of ID. The cache
is dropped whenever the snapshot changes, so a change is visible as soon as it
is loaded (the snapshot is checked every 0.1 s). Several processes can share
the UDP port with SO_REUSEPORT, one per core.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from emu.dns.records import Zone

CLASSIC_UDP_SIZE = 512
OUR_UDP_SIZE = 1232  # what we advertise in EDNS0 (the DNS flag day 2020 value)
CACHE_LIMIT = 200_000
UPSTREAM_TIMEOUT = 2.0


def log(message: str) -> None:
    print(f"{time.time():.3f} [{os.getpid()}] {message}", flush=True)


class Resolver:
    """Turns query bytes into reply bytes from the current zone."""

    def __init__(self, snapshot_path: str):
        self.snapshot_path = snapshot_path
        self.signature: tuple | None = None
        self.current: tuple[Zone, dict[bytes, bytes]] | None = None  # swapped as one
        self.upstream_pool = ThreadPoolExecutor(max_workers=8)

    @property
    def ready(self) -> bool:
        return self.current is not None

    def reload_if_changed(self) -> bool:
        try:
            info = os.stat(self.snapshot_path)
        except FileNotFoundError:
            return False
        signature = (info.st_mtime_ns, info.st_size, info.st_ino)
        if signature == self.signature:
            return False
        try:
            with open(self.snapshot_path) as handle:
                zone = Zone(json.load(handle))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
            log(f"cannot load {self.snapshot_path}: {error!r}"[:300])  # keep serving the zone it has
            return False
        self.current = (zone, {})
        self.signature = signature
        log(f"loaded {self.snapshot_path}: {len(zone.records)} record sets")
        return True

    def watch(self, period: float = 0.1, parent: int | None = None) -> None:
        while True:
            self.reload_if_changed()
            if parent is not None and os.getppid() != parent:
                os._exit(0)  # the main process is gone
            time.sleep(period)

    # ---- answering --------------------------------------------------------
    def answer(self, data: bytes, udp: bool) -> bytes | None:
        """The reply to one query, or None: stay silent (not a query: see is_query)
        or, when is_query(data), forward it upstream."""
        if not is_query(data):
            return None  # a response (or no header): answering it could start a reflection loop
        current = self.current
        if current is None:
            return _error_reply(data, RCODE.SERVFAIL)
        zone, cache = current
        key = data[2:] if udp else b"T" + data[2:]
        cached = cache.get(key)
        if cached is not None:
            return data[:2] + cached
        try:
            query = DNSRecord.parse(data)
        except Exception:  # dnslib raises several kinds on malformed input
            return _error_reply(data, RCODE.FORMERR)
        if query.header.qr:  # is_query saw QR=0; dnslib agrees, but never answer a response
            return None
        if query.header.opcode != 0 or len(query.questions) != 1:
            reply = query.reply()
            reply.header.rcode = RCODE.NOTIMP if query.header.opcode != 0 else RCODE.FORMERR
            return bytes(reply.pack())
        question = query.questions[0]
        result = zone.lookup(str(question.qname), question.qtype)
        if result.forward:
            return None if zone.upstreams else self._servfail(query)
        reply = query.reply()
        reply.header.aa = 1
        reply.header.rcode = result.rcode
        for record in result.answers:
            reply.add_answer(record)
        for record in result.authority:
            reply.add_auth(record)
        for record in result.additional:
            reply.add_ar(record)
        limit = None
        edns = next((r for r in query.ar if r.rtype == QTYPE.OPT), None)
        if edns is not None:
            reply.add_ar(EDNS0(udp_len=OUR_UDP_SIZE))
        if udp:
            limit = max(CLASSIC_UDP_SIZE, min(edns.rclass, 65535)) if edns is not None else CLASSIC_UDP_SIZE
        packed = bytes(reply.pack())
        if limit is not None and len(packed) > limit:
            packed = _truncated(query, reply, edns is not None)
        if len(cache) >= CACHE_LIMIT:
            cache.clear()
        cache[key] = packed[2:]
        return packed

    def _servfail(self, query: DNSRecord) -> bytes:
        reply = query.reply()
        reply.header.rcode = RCODE.SERVFAIL
        return bytes(reply.pack())

    def forward(self, data: bytes, send) -> None:
        """Ask the upstream servers in the background; SERVFAIL if none answers.
        Only queries go upstream, and only responses come back to the client."""
        current = self.current
        if current is None or not is_query(data):
            return
        zone = current[0]

        def ask() -> None:
            for upstream in zone.upstreams:
                host, _, port = upstream.partition(":")
                try:
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                        sock.settimeout(UPSTREAM_TIMEOUT / max(1, len(zone.upstreams)))
                        sock.sendto(data, (host, int(port or 53)))
                        reply, _ = sock.recvfrom(65535)
                        if reply[:2] == data[:2] and len(reply) >= 12 and reply[2] & 0x80:
                            send(reply)
                            return
                except OSError:
                    continue
            send(_error_reply(data, RCODE.SERVFAIL))

        self.upstream_pool.submit(ask)


def is_query(data: bytes) -> bool:
    """A whole DNS header with QR=0. Anything else (a response above all) gets no
    reply and is not forwarded: answering responses lets two servers, or one and
    a spoofed source address, bounce packets between them forever."""
    return len(data) >= 12 and not data[2] & 0x80


def _error_reply(data: bytes, rcode: int) -> bytes | None:
    """A header-only reply for a query dnslib can't parse (or before any snapshot)."""
    if not is_query(data):
        return None
    (ident, flags) = struct.unpack("!HH", data[:4])
    flags = 0x8000 | (flags & 0x7900) | rcode  # QR, keep opcode and RD
    return struct.pack("!HHHHHH", ident, flags, 0, 0, 0, 0)


def _truncated(query: DNSRecord, reply: DNSRecord, edns: bool) -> bytes:
    """The question with TC set and no records: the client retries over TCP."""
    short = query.reply()
    short.header.aa = 1
    short.header.tc = 1
    short.header.rcode = reply.header.rcode
    if edns:
        short.add_ar(EDNS0(udp_len=OUR_UDP_SIZE))
    return bytes(short.pack())


# ---- UDP ----------------------------------------------------------------------
def udp_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((host, port))
    return sock


def serve_udp(resolver: Resolver, sock: socket.socket) -> None:
    recv, send = sock.recvfrom, sock.sendto
    answer = resolver.answer
    while True:
        try:
            data, client = recv(4096)
        except OSError:
            if sock.fileno() < 0:
                return  # closed: stop serving
            continue
        if not is_query(data):
            continue  # never answer (or forward) a response
        try:
            reply = answer(data, True)
        except Exception as error:  # a bug must not take the server down
            log(f"error answering {data[:64]!r}: {error!r}")
            reply = _error_reply(data, RCODE.SERVFAIL)
        if reply is None:
            if resolver.current:
                resolver.forward(data, lambda r, c=client: send(r, c))
            continue
        try:
            send(reply, client)
        except OSError:
            pass


# ---- TCP ----------------------------------------------------------------------
class TCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def tcp_handler(resolver: Resolver):
    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.settimeout(10)
            while True:
                try:
                    header = _read_exact(self.request, 2)
                    if header is None:
                        return
                    data = _read_exact(self.request, struct.unpack("!H", header)[0])
                    if data is None:
                        return
                except OSError:
                    return
                if not is_query(data):
                    continue  # never answer (or forward) a response; read the next message
                try:
                    reply = resolver.answer(data, False)
                except Exception as error:  # a bug must not take the server down
                    log(f"error answering {data[:64]!r}: {error!r}")
                    reply = _error_reply(data, RCODE.SERVFAIL)
                if reply is None:
                    if not resolver.current:
                        return
                    done = threading.Event()
                    box: list[bytes] = []
                    resolver.forward(data, lambda r: (box.append(r), done.set()))
                    done.wait(UPSTREAM_TIMEOUT + 1)
                    if not box:
                        return
                    reply = box[0]
                try:
                    self.request.sendall(struct.pack("!H", len(reply)) + reply)
                except OSError:
                    return

    return Handler


def _read_exact(sock: socket.socket, count: int) -> bytes | None:
    chunks = b""
    while len(chunks) < count:
        chunk = sock.recv(count - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return chunks


# ---- health -------------------------------------------------------------------
def http_server(port: int, path: str, check) -> socketserver.TCPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            ok = self.path == path and check()
            body = b"OK" if ok else b"not ready"
            self.send_response(200 if ok else 503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # noqa: A002
            pass

    server = TCPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run(snapshot: str, host: str, port: int, workers: int, health_port: int, ready_port: int) -> None:
    resolver = Resolver(snapshot)
    resolver.reload_if_changed()
    parent = os.getpid()
    children = []
    for _ in range(max(0, workers - 1)):
        child = os.fork()
        if child == 0:
            worker = Resolver(snapshot)
            worker.reload_if_changed()
            threading.Thread(target=worker.watch, kwargs={"parent": parent}, daemon=True).start()
            serve_udp(worker, udp_socket(host, port))
            os._exit(0)
        children.append(child)

    def stop(signum, frame) -> None:
        for child in children:
            try:
                os.kill(child, signal.SIGTERM)
            except OSError:
                pass
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=resolver.watch, daemon=True).start()
    tcp = TCPServer((host, port), tcp_handler(resolver))
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    if health_port:
        http_server(health_port, "/health", lambda: True)
    if ready_port:
        http_server(ready_port, "/ready", lambda: resolver.ready)
    log(f"serving DNS on {host}:{port} (UDP x{max(1, workers)}, TCP) from {snapshot}")
    serve_udp(resolver, udp_socket(host, port))
