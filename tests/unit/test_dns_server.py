"""The DNS server over real sockets on 127.0.0.1: it never answers a response.

A server that answers responses can be made to bounce packets with another
server (or with itself, through a spoofed source address) forever. Every path
into the resolver is checked: UDP, TCP, the reply cache and forwarding.
"""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor
import struct
import threading

import pytest
from dnslib import OPCODE, RCODE, RR, DNSRecord

from emu.dns.server import Resolver, TCPServer, serve_udp, tcp_handler, udp_socket
from emu.dns.snapshot import dns_snapshot
from emu.state import plan_cluster
from emu.topology.load import load_text

LAB = """\
name: lab
nodes: [{name: cp, role: control-plane}]
services:
  - name: web
    clusterIP: 10.96.0.50
    ports: [{port: 80}]
"""
NAME = "web.default.svc.cluster.local"
SILENCE = 0.3  # how long to wait for a reply that must not come


class Upstream:
    """A UDP "upstream" that counts what it receives and answers queries."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.received: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                data, client = self.sock.recvfrom(4096)
            except OSError:
                return
            self.received.append(data)
            query = DNSRecord.parse(data)
            if not query.header.qr:
                reply = query.reply()
                reply.add_answer(*RR.fromZone(f"{query.q.qname} 60 A 192.0.2.7"))
                self.sock.sendto(bytes(reply.pack()), client)


@pytest.fixture()
def upstream():
    server = Upstream()
    yield server
    server.sock.close()


@pytest.fixture()
def server(tmp_path, upstream):
    """(host, port) of a DNS server (UDP and TCP) started in this process."""
    state = plan_cluster(load_text(LAB), "emu-lab", "172.28.5.0/24")
    snapshot = dns_snapshot(state, {p.uid: True for p in state.pods.values()})
    snapshot["upstreams"] = [upstream.address]
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps(snapshot))
    resolver = Resolver(str(path))
    assert resolver.reload_if_changed()
    udp = udp_socket("127.0.0.1", 0)
    port = udp.getsockname()[1]
    threading.Thread(target=serve_udp, args=(resolver, udp), daemon=True).start()
    TCPServer.allow_reuse_port = True  # share the port number with the UDP socket
    tcp = TCPServer(("127.0.0.1", port), tcp_handler(resolver))
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    yield "127.0.0.1", port
    tcp.shutdown()
    tcp.server_close()
    udp.close()
    resolver.upstream_pool.shutdown(wait=False)


def query(name: str = NAME, ident: int = 4321) -> DNSRecord:
    record = DNSRecord.question(name, "A")
    record.header.id = ident
    return record


def response(name: str = NAME, ident: int = 4321) -> bytes:
    """A well-formed response, as another server (or a spoofer) would send."""
    return bytes(query(name, ident).reply().pack())


def udp_exchange(address, packet: bytes, timeout: float) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, address)
        try:
            return sock.recvfrom(65535)[0]
        except socket.timeout:
            return None


def tcp_send(sock: socket.socket, packet: bytes) -> None:
    sock.sendall(struct.pack("!H", len(packet)) + packet)


def tcp_receive(sock: socket.socket) -> bytes | None:
    try:
        header = sock.recv(2)
        if len(header) < 2:
            return None
        (length,) = struct.unpack("!H", header)
        data = b""
        while len(data) < length:
            chunk = sock.recv(length - len(data))
            if not chunk:
                return None
            data += chunk
        return data
    except socket.timeout:
        return None


def assert_answered(reply: bytes | None, ident: int = 4321) -> None:
    assert reply is not None, "a normal query got no reply"
    parsed = DNSRecord.parse(reply)
    assert parsed.header.id == ident and parsed.header.qr == 1
    assert parsed.header.rcode == RCODE.NOERROR
    assert [str(r.rdata) for r in parsed.rr] == ["10.96.0.50"]


# Responses of every kind the resolver could take: for a name in the zone (the
# answering path), for one outside (the forwarding path), with another opcode, a
# header-only one, and one that differs from a cached query only in its QR bit.
def responses() -> list[tuple[str, bytes]]:
    notify = query()
    notify.header.opcode = OPCODE.NOTIFY
    notify.header.qr = 1
    flipped = bytearray(query().pack())
    flipped[2] |= 0x80
    return [
        ("in-zone", response()),
        ("forwarded-name", response("www.example.com")),
        ("notify-response", bytes(notify.pack())),
        ("header-only", struct.pack("!HHHHHH", 4321, 0x8180, 0, 0, 0, 0)),
        ("cached-query-with-qr", bytes(flipped)),
    ]


@pytest.mark.parametrize("kind, packet", responses(), ids=[kind for kind, _ in responses()])
def test_udp_response_gets_no_reply(server, upstream, kind, packet):
    assert_answered(udp_exchange(server, bytes(query().pack()), 2))  # fills the cache
    assert udp_exchange(server, packet, SILENCE) is None
    assert not [p for p in upstream.received if p[2] & 0x80], "a response was forwarded upstream"
    assert_answered(udp_exchange(server, bytes(query().pack()), 2))


@pytest.mark.parametrize("kind, packet", responses(), ids=[kind for kind, _ in responses()])
def test_tcp_response_gets_no_reply(server, upstream, kind, packet):
    with socket.create_connection(server, timeout=2) as sock:
        tcp_send(sock, bytes(query().pack()))
        assert_answered(tcp_receive(sock))
        sock.settimeout(SILENCE)
        tcp_send(sock, packet)
        assert tcp_receive(sock) is None
        sock.settimeout(2)
        tcp_send(sock, bytes(query(ident=77).pack()))  # the same connection still serves
        assert_answered(tcp_receive(sock), ident=77)
    assert not [p for p in upstream.received if p[2] & 0x80], "a response was forwarded upstream"


def test_other_opcodes_get_notimp(server):
    notify = query()
    notify.header.opcode = OPCODE.NOTIFY
    reply = DNSRecord.parse(udp_exchange(server, bytes(notify.pack()), 2))
    assert reply.header.qr == 1 and reply.header.rcode == RCODE.NOTIMP


def test_queries_outside_the_zone_are_still_forwarded(server, upstream):
    reply = DNSRecord.parse(udp_exchange(server, bytes(query("www.example.com").pack()), 3))
    assert reply.header.qr == 1 and [str(r.rdata) for r in reply.rr] == ["192.0.2.7"]
    assert len(upstream.received) == 1


def test_resolver_is_silent_to_responses(tmp_path, upstream):
    """The resolver itself (the cache path, the parsed path and forward) without sockets."""
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps({"zone": "cluster.local", "upstreams": [upstream.address], "services": []}))
    resolver = Resolver(str(path))
    assert resolver.answer(response(), True) is None  # before any snapshot: no SERVFAIL for a response
    resolver.reload_if_changed()
    for _, packet in responses():
        assert resolver.answer(packet, True) is None
        assert resolver.answer(packet, False) is None
        sent: list[bytes] = []
        resolver.forward(packet, sent.append)
        resolver.upstream_pool.shutdown(wait=True)
        resolver.upstream_pool = ThreadPoolExecutor(max_workers=1)
        assert sent == []
    assert upstream.received == []
    nothing = resolver.answer(bytes(query().pack()), True)  # a query is still answered
    assert DNSRecord.parse(nothing).header.rcode == RCODE.NXDOMAIN



@pytest.mark.parametrize("text", ["[]", "{\"services\": [1]}", "[" * 100_000 + "]" * 100_000, "\xff"])
def test_a_damaged_snapshot_keeps_the_zone_it_has(tmp_path, text):
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps({"zone": "cluster.local", "services": []}))
    resolver = Resolver(str(path))
    assert resolver.reload_if_changed()
    path.write_bytes(text.encode("latin-1"))
    assert not resolver.reload_if_changed()
    assert DNSRecord.parse(resolver.answer(bytes(query().pack()), True)).header.rcode == RCODE.NXDOMAIN
