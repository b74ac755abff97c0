"""The DNS server over real sockets on 127.0.0.1: it never answers a response.

A server that answers responses can be made to bounce packets with another
server (or with itself, through a spoofed source address) forever. Every path
into the resolver is checked: UDP, TCP, the reply cache and forwarding.
"""

from __future__ import annotations

import json
import socket
import struct
import threading

import pytest
from dnslib import EDNS0, OPCODE, QTYPE, RCODE, DNSRecord

from dnsupstream import FakeUpstream, udp_and_tcp
from emu.node.dns.server import Pending, Resolver, TCPServer, serve_udp, tcp_handler, udp_socket
from emu.node.dns.snapshot import dns_snapshot
from emu.control.state import plan_cluster
from emu.api.topology.load import load_text

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


@pytest.fixture()
def upstream(monkeypatch):
    # This upstream answers at once; a longer budget than the server's 2 s only
    # matters when a loaded machine stalls the upstream's thread (one unit run
    # beside a 50-node lab failed so).
    monkeypatch.setattr("emu.node.dns.server.UPSTREAM_TIMEOUT", 10.0)
    server = FakeUpstream({("www.example.com", "A"): ["www.example.com. 60 A 192.0.2.7"]})
    yield server
    server.close()


class Running:
    """A DNS server (UDP and TCP on one port of 127.0.0.1) started in this process."""

    def __init__(self, path, snapshot: dict | None, batched: bool | None = None):
        if snapshot is not None:
            path.write_text(json.dumps(snapshot))
        self.resolver = Resolver(str(path))
        self.resolver.reload_if_changed()
        self.udp, self.tcp = udp_and_tcp(
            lambda port: TCPServer(("127.0.0.1", port), tcp_handler(self.resolver)), lambda: udp_socket("127.0.0.1", 0)
        )
        self.address = ("127.0.0.1", self.udp.getsockname()[1])
        threading.Thread(target=serve_udp, args=(self.resolver, self.udp, batched), daemon=True).start()
        threading.Thread(target=self.tcp.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def ask(self, name: str, qtype: str = "A", tcp: bool = False, edns: int | None = None, do: bool = False) -> DNSRecord:
        question = DNSRecord.question(name, qtype)
        if edns or do:
            question.add_ar(EDNS0(udp_len=edns or 1232, flags="do" if do else ""))
        packet = bytes(question.pack())
        if tcp:
            with socket.create_connection(self.address, timeout=5) as sock:
                tcp_send(sock, packet)
                reply = tcp_receive(sock)
        else:
            reply = udp_exchange(self.address, packet, 5)
        assert reply is not None, f"no reply for {name} {qtype}"
        return DNSRecord.parse(reply)

    def stop(self) -> None:
        self.tcp.shutdown()
        self.tcp.server_close()
        self.udp.close()
        self.resolver.pool.shutdown(wait=False)


def lab_snapshot(text: str = LAB, upstreams: list[str] = ()) -> dict:
    state = plan_cluster(load_text(text), "emu-lab", "172.28.5.0/24")
    snapshot = dns_snapshot(state, {p.uid: True for p in state.pods.values()})
    snapshot["upstreams"] = list(upstreams)
    return snapshot


@pytest.fixture()
def start(tmp_path):
    """start(snapshot) -> a Running server, stopped after the test."""
    running = []

    def make(snapshot: dict | None, name: str = "snapshot.json", batched: bool | None = None) -> Running:
        running.append(Running(tmp_path / name, snapshot, batched))
        return running[-1]

    yield make
    for server in running:
        server.stop()


@pytest.fixture(params=["recvmmsg", "recvfrom"])
def server(request, start, upstream):
    """(host, port) of a DNS server whose upstream is `upstream`; UDP served
    both ways (many datagrams a system call, and one)."""
    return start(lab_snapshot(upstreams=[upstream.address]), batched=request.param == "recvmmsg").address


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
    assert not [p for _, p in upstream.received if p[2] & 0x80], "a response was forwarded upstream"
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
    assert not [p for _, p in upstream.received if p[2] & 0x80], "a response was forwarded upstream"


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
    """The resolver itself (the cache path and the parsed path) without sockets:
    a response never gets a reply, nor becomes work for the upstream servers."""
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps({"zone": "cluster.local", "upstreams": [upstream.address], "services": []}))
    resolver = Resolver(str(path))
    assert resolver.answer(response(), True) is None  # before any snapshot: no SERVFAIL for a response
    resolver.reload_if_changed()
    for _, packet in responses():
        assert resolver.answer(packet, True) is None
        assert resolver.answer(packet, False) is None
    assert upstream.received == []
    nothing = resolver.answer(bytes(query().pack()), True)  # a query is still answered
    assert DNSRecord.parse(nothing).header.rcode == RCODE.NXDOMAIN
    assert isinstance(resolver.answer(bytes(query("www.example.com").pack()), True), Pending)


@pytest.mark.parametrize("text", ["[]", "{\"services\": [1]}", "[" * 100_000 + "]" * 100_000, "\xff"])
def test_a_damaged_snapshot_keeps_the_zone_it_has(tmp_path, text):
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps({"zone": "cluster.local", "services": []}))
    resolver = Resolver(str(path))
    assert resolver.reload_if_changed()
    path.write_bytes(text.encode("latin-1"))
    assert not resolver.reload_if_changed()
    assert DNSRecord.parse(resolver.answer(bytes(query().pack()), True)).header.rcode == RCODE.NXDOMAIN


# ---- forwarding (CoreDNS's forward and cache plugins) ------------------------------

BIG = [f"big.example.com. 300 A 192.0.2.{i}" for i in range(1, 41)]  # 40 addresses: more than 512 bytes


def test_forwarded_over_udp_and_cached_within_the_ttl(start, upstream):
    dns = start(lab_snapshot(upstreams=[upstream.address]))
    clock = [1000.0]
    dns.resolver.forwarder.clock = lambda: clock[0]
    first = dns.ask("www.example.com")
    assert [str(r.rdata) for r in first.rr] == ["192.0.2.7"] and first.rr[0].ttl == 60
    clock[0] += 25
    second = dns.ask("WWW.example.com")  # the cache ignores the case, the reply keeps it
    assert str(second.q.qname) == "WWW.example.com." and str(second.rr[0].rname) == "WWW.example.com."
    assert second.rr[0].ttl == 35  # 60 less the 25 s it was kept
    assert (upstream.count("udp"), upstream.count("tcp")) == (1, 0)
    clock[0] += 6  # 31 s: past kubeadm's `cache 30`, though the record's TTL is 60
    dns.ask("www.example.com")
    assert upstream.count("udp") == 2


def test_tcp_clients_are_forwarded_over_tcp(start, upstream):
    dns = start(lab_snapshot(upstreams=[upstream.address]))
    reply = dns.ask("www.example.com", tcp=True)
    assert [str(r.rdata) for r in reply.rr] == ["192.0.2.7"]
    assert (upstream.count("udp"), upstream.count("tcp")) == (0, 1)


def test_a_truncated_upstream_answer_is_fetched_again_over_tcp(start):
    upstream = FakeUpstream({("big.example.com", "A"): BIG}, truncate_udp=True)
    try:
        dns = start(lab_snapshot(upstreams=[upstream.address]))
        whole = dns.ask("big.example.com", edns=4096)  # fits the client's EDNS size
        assert whole.header.tc == 0 and len(whole.rr) == 40
        assert (upstream.count("udp"), upstream.count("tcp")) == (1, 1)
        short = dns.ask("big.example.com")  # no EDNS: 512 bytes, so TC and the client retries over TCP
        assert short.header.tc == 1 and short.rr == []
        again = dns.ask("big.example.com", tcp=True)
        assert again.header.tc == 0 and len(again.rr) == 40
        assert (upstream.count("udp"), upstream.count("tcp")) == (1, 1)  # both from the cache
    finally:
        upstream.close()


def test_only_the_answer_to_the_query_sent_is_taken(start):
    upstream = FakeUpstream({("www.example.com", "A"): ["www.example.com. 60 A 192.0.2.7"]}, decoy=True)
    try:
        dns = start(lab_snapshot(upstreams=[upstream.address]))
        assert [str(r.rdata) for r in dns.ask("www.example.com").rr] == ["192.0.2.7"]
    finally:
        upstream.close()


def test_denials_are_cached_and_errors_are_not(start, upstream):
    dns = start(lab_snapshot(upstreams=[upstream.address]))
    for _ in range(2):
        reply = dns.ask("nothing.example.com")
        assert reply.header.rcode == RCODE.NXDOMAIN and [QTYPE[r.rtype] for r in reply.auth] == ["SOA"]
    assert upstream.count("udp") == 1
    silent = start(lab_snapshot(upstreams=["127.0.0.1:9"]), name="silent.json")  # nothing listens there
    assert silent.ask("www.example.com").header.rcode == RCODE.SERVFAIL
    assert silent.resolver.forwarder.entries == {}


def test_the_forward_cache_is_bounded(start, upstream):
    dns = start(lab_snapshot(upstreams=[upstream.address]))
    dns.resolver.forwarder.limit = 2
    for name in ("a.example.com", "b.example.com", "c.example.com", "c.example.com", "a.example.com"):
        dns.ask(name)
    assert len(dns.resolver.forwarder.entries) == 2
    assert upstream.count("udp") == 4  # c came from the cache, a had been pushed out


# ---- ExternalName answers carry the target's addresses ---------------------------------

EXTERNAL = LAB + """\
  - name: ext
    type: ExternalName
    externalName: www.example.com
  - name: inside
    type: ExternalName
    externalName: web.default.svc.cluster.local
"""


@pytest.mark.parametrize("batched", [True, False], ids=["recvmmsg", "recvfrom"])
def test_external_name_outside_the_cluster_is_resolved_upstream(start, upstream, batched):
    dns = start(lab_snapshot(EXTERNAL, upstreams=[upstream.address]), batched=batched)
    for tcp in (False, True):
        reply = dns.ask("ext.default.svc.cluster.local", tcp=tcp)
        assert [(QTYPE[r.rtype], str(r.rname), str(r.rdata)) for r in reply.rr] == [
            ("CNAME", "ext.default.svc.cluster.local.", "www.example.com."),
            ("A", "www.example.com.", "192.0.2.7"),
        ]
        assert reply.header.aa == 1 and reply.header.rcode == RCODE.NOERROR
    assert (upstream.count("udp"), upstream.count("tcp")) == (1, 0)  # the TCP query found it in the cache
    # No AAAA upstream: the CNAME alone, as CoreDNS answers.
    reply = dns.ask("ext.default.svc.cluster.local", "AAAA")
    assert [QTYPE[r.rtype] for r in reply.rr] == ["CNAME"] and reply.header.rcode == RCODE.NOERROR


def test_external_name_inside_the_cluster_is_chased_in_the_zone(start, upstream):
    dns = start(lab_snapshot(EXTERNAL, upstreams=[upstream.address]))
    reply = dns.ask("inside.default.svc.cluster.local")
    assert [(QTYPE[r.rtype], str(r.rdata)) for r in reply.rr] == [
        ("CNAME", "web.default.svc.cluster.local."),
        ("A", "10.96.0.50"),
    ]
    assert upstream.received == []


def test_external_name_without_upstreams_is_the_cname_alone(start):
    dns = start(lab_snapshot(EXTERNAL))
    reply = dns.ask("ext.default.svc.cluster.local")
    assert [QTYPE[r.rtype] for r in reply.rr] == ["CNAME"] and reply.header.rcode == RCODE.NOERROR


# ---- answer order rotates ---------------------------------------------------------------

def headless_lab(pods: int) -> str:
    """LAB on three nodes, with a headless service `many` over `pods` pods."""
    nodes = "nodes: [{name: cp, role: control-plane}, {name: w1}, {name: w2}]"
    service = "  - name: many\n    clusterIP: None\n    selector: {app: many}\n    ports: [{name: http, port: 80}]\npods:\n"
    pod = "  - name: m{}\n    labels: {{app: many}}\n    containers: [{{name: c, command: [sleep, infinity]}}]\n"
    return LAB.replace("nodes: [{name: cp, role: control-plane}]", nodes) + service + "".join(pod.format(i) for i in range(pods))


HEADLESS = headless_lab(4)


@pytest.mark.parametrize("batched", [True, False], ids=["recvmmsg", "recvfrom"])
def test_multi_address_answers_rotate_through_the_cache(start, batched):
    dns = start(lab_snapshot(HEADLESS), batched=batched)
    for tcp in (False, True):
        answers = [[str(r.rdata) for r in dns.ask("many.default.svc.cluster.local", tcp=tcp).rr] for _ in range(8)]
        assert len({tuple(sorted(a)) for a in answers}) == 1 and len(answers[0]) == 4  # the same set
        assert len({a[0] for a in answers}) == 4, answers  # every address comes first in turn
    srv = [dns.ask("_http._tcp.many.default.svc.cluster.local", "SRV") for _ in range(4)]
    assert len({str(r.ar[0].rdata) for r in srv}) == 4  # the glue rotates; the SRV records keep their order
    assert len({tuple(str(x.rdata) for x in r.rr) for r in srv}) == 1


def test_forwarded_answers_rotate_too(start):
    upstream = FakeUpstream({("big.example.com", "A"): BIG[:4]})
    try:
        dns = start(lab_snapshot(upstreams=[upstream.address]))
        firsts = {str(dns.ask("big.example.com").rr[0].rdata) for _ in range(4)}
        assert len(firsts) == 4 and upstream.count("udp") == 1
    finally:
        upstream.close()


# ---- header flags and refusals -------------------------------------------------------------

def test_authoritative_answers_have_no_ra_and_copy_rd_and_do(start):
    dns = start(lab_snapshot())
    reply = dns.ask(NAME)
    assert (reply.header.aa, reply.header.ra, reply.header.rd) == (1, 0, 1)
    signed = dns.ask(NAME, do=True)
    opt = next(r for r in signed.ar if r.rtype == QTYPE.OPT)
    assert opt.ttl & 0x8000  # DO copied
    plain = dns.ask(NAME, edns=1232)
    assert not next(r for r in plain.ar if r.rtype == QTYPE.OPT).ttl & 0x8000


def test_edns_versions_above_zero_get_badvers(start):
    dns = start(lab_snapshot())
    question = DNSRecord.question(NAME)
    question.add_ar(EDNS0(udp_len=1232, version=1))
    reply = DNSRecord.parse(udp_exchange(dns.address, bytes(question.pack()), 5))
    opt = next(r for r in reply.ar if r.rtype == QTYPE.OPT)
    assert (opt.ttl >> 24) << 4 | reply.header.rcode == 16  # BADVERS, split between OPT and header
    assert (opt.ttl >> 16) & 0xFF == 0 and reply.rr == []


@pytest.mark.parametrize("qtype", ["AXFR", "IXFR"])
def test_zone_transfers_are_refused(start, qtype):
    dns = start(lab_snapshot())
    for tcp in (False, True):
        assert dns.ask("cluster.local", qtype, tcp=tcp).header.rcode == RCODE.REFUSED


def test_servfail_with_the_question_before_the_first_snapshot(start, tmp_path):
    dns = start(None, name="not-yet.json")
    for tcp in (False, True):
        reply = dns.ask(NAME, tcp=tcp)
        assert reply.header.rcode == RCODE.SERVFAIL and str(reply.q.qname) == NAME + "."
    (tmp_path / "not-yet.json").write_text(json.dumps(lab_snapshot()))
    assert dns.resolver.reload_if_changed()
    assert [str(r.rdata) for r in dns.ask(NAME).rr] == ["10.96.0.50"]


def test_question_case_comes_back_in_answers_and_soa(start):
    dns = start(lab_snapshot())
    reply = dns.ask("WeB.default.SVC.cluster.LOCAL")
    assert str(reply.rr[0].rname) == "WeB.default.SVC.cluster.LOCAL."
    missing = dns.ask("nope.default.svc.Cluster.Local")
    assert str(missing.auth[0].rname) == "Cluster.Local."


@pytest.mark.parametrize("batched", [True, False], ids=["recvmmsg", "recvfrom"])
def test_a_reply_bigger_than_a_receive_slot_still_goes_out(start, batched):
    """A client with room for 64 KiB gets 300 addresses in one datagram (the
    batched loop sends what does not fit its 4 KiB slots on its own)."""
    dns = start(lab_snapshot(headless_lab(300)), batched=batched)
    reply = dns.ask("many.default.svc.cluster.local", edns=65000)
    assert reply.header.tc == 0 and len(reply.rr) == 300
