"""The DNS server: UDP and TCP on :53, health on :8080/health, readiness on
:8181/ready, CoreDNS's Prometheus metrics on :9153/metrics (emu.node.dns.metrics).

Speed comes from a cache of encoded replies keyed by the query's bytes after
its ID (so the question's case, flags and EDNS options are part of the key and
come back exactly): a hit costs one dict lookup and two bytes of ID. An answer
with several addresses is cached as one encoding per rotation of its
addresses, handed out in turn, so clients that take the first address spread
over all of them (CoreDNS's loadbalance plugin) at the cost of one more index.
The cache is dropped whenever the snapshot changes, so a change is visible as
soon as it is loaded (the snapshot is checked every 0.1 s). Several processes
can share the UDP port with SO_REUSEPORT, one per core.

Names outside the cluster domain go to the upstream servers (`dns.upstreams`)
over the client's transport, again over TCP when a UDP answer comes back
truncated (CoreDNS's forward plugin), and their answers are cached within
their TTL, at most 30 s (kubeadm's `cache 30`), in a bounded LRU.
"""

from __future__ import annotations

import http.server
import itertools
import json
import os
import random
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

try:
    import ctypes
except ImportError:  # a Python built without it: one datagram a system call
    ctypes = None

from dnslib import EDNS0, QTYPE, DNSHeader, DNSQuestion, DNSRecord

from emu.node.dns import metrics as stats
from emu.node.dns import wire
from emu.node.dns.records import RC, TYPE, Answer, Zone

CLASSIC_UDP_SIZE = 512
OUR_UDP_SIZE = 1232  # what we advertise in EDNS0 (the DNS flag day 2020 value)
CACHE_LIMIT = 200_000
UPSTREAM_TIMEOUT = 2.0
FORWARD_CACHE_LIMIT = 10_000  # answers from upstream (CoreDNS's cache holds 9,984)
FORWARD_CACHE_MAX_TTL = 30  # seconds: kubeadm's Corefile has `cache 30`
MAX_ROTATIONS = 64  # encodings kept of one answer with many addresses
EDNS_DO = 0x8000  # the DNSSEC OK bit of the OPT record's flags
BADVERS = 16  # extended RCODE: unsupported EDNS version
ZONE_TRANSFERS = (TYPE.AXFR, TYPE.IXFR)


def log(message: str) -> None:
    print(f"{time.time():.3f} [{os.getpid()}] {message}", flush=True)


class Encoded(NamedTuple):
    rtype: int
    data: bytes


class Pending:
    """A reply that needs the upstream servers first: a name outside the zone,
    or an ExternalName whose target is. Finished off the receiving thread."""

    __slots__ = ("query", "data", "udp", "answer", "start")

    def __init__(self, query: DNSRecord, data: bytes, udp: bool, answer: Answer | None = None):
        self.query, self.data, self.udp, self.answer = query, data, udp, answer
        self.start = time.perf_counter_ns()


class Resolver:
    """Turns query bytes into reply bytes from the current zone."""

    def __init__(self, snapshot_path: str, metrics: stats.Metrics | None = None):
        self.snapshot_path = snapshot_path
        self.signature: tuple | None = None
        # the zone and its reply cache: query bytes -> (metrics signature of a hit, reply or its rotations)
        self.current: tuple[Zone, dict[bytes, tuple[int, bytes | tuple[bytes, ...]]]] | None = None  # swapped as one
        self.metrics = metrics or stats.Metrics()
        self.pool = ThreadPoolExecutor(max_workers=8)
        self.forwarder = Forwarder()
        self.turns = itertools.count()  # which rotation of a multi-address answer goes next

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
                zone = Zone(json.load(handle), serial=info.st_mtime_ns // 1_000_000_000)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
            log(f"cannot load {self.snapshot_path}: {error!r}"[:300])  # keep serving the zone it has
            return False
        if self.current is not None and self.current[0].upstreams != zone.upstreams:
            self.forwarder.clear()
        self.current = (zone, {})
        self.signature = signature
        log(f"loaded {self.snapshot_path}: {len(zone.services)} services")
        return True

    def watch(self, period: float = 0.1, parent: int | None = None) -> None:
        while True:
            self.reload_if_changed()
            self.metrics.flush()  # for the scrape, in the main process
            if parent is not None and os.getppid() != parent:
                os._exit(0)  # the main process is gone
            time.sleep(period)

    # ---- answering --------------------------------------------------------
    def answer(self, data: bytes, udp: bool) -> bytes | Pending | None:
        """The reply to one query; None: stay silent (not a query: see is_query);
        a Pending: the reply needs the upstream servers (finish it with complete())."""
        if not is_query(data):
            return None  # a response (or no header): answering it could start a reflection loop
        current = self.current
        if current is None:
            return self._counted(_not_ready(data), data, udp, stats.NONE)
        zone, cache = current
        key = data[2:] if udp else b"T" + data[2:]
        hit = cache.get(key)
        if hit is not None:
            self._count(hit[0], udp)
            cached = hit[1]
            if cached.__class__ is bytes:
                return data[:2] + cached
            return data[:2] + cached[next(self.turns) % len(cached)]
        try:
            query = DNSRecord.parse(data)
        except Exception:  # dnslib raises several kinds on malformed input
            return self._counted(_error_reply(data, RC.FORMERR), data, udp, stats.NONE)
        if query.header.qr:  # is_query saw QR=0; dnslib agrees, but never answer a response
            return None
        if query.header.opcode != 0 or len(query.questions) != 1:
            reply = _pack(_reply(query, RC.NOTIMP if query.header.opcode != 0 else RC.FORMERR), None)
            return self._counted(reply, data, udp, stats.NONE)
        opt = _edns(query)
        if opt is not None and (opt.ttl >> 16) & 0xFF:
            reply = _reply(query, BADVERS & 0xF)  # RFC 6891: the extended code goes in the OPT record
            reply.add_ar(EDNS0(udp_len=OUR_UDP_SIZE, ext_rcode=BADVERS >> 4, flags=_do_flag(opt)))
            encoded = bytes(reply.pack())
        elif query.q.qtype in ZONE_TRANSFERS:
            encoded = _pack(_reply(query, RC.REFUSED), opt)
        else:
            result = zone.lookup(str(query.q.qname), query.q.qtype)
            if result.forward:
                if not zone.upstreams:  # at once: nobody to ask
                    return self._counted(_pack(_reply(query, RC.SERVFAIL), opt), data, udp, stats.FORWARD)
                return Pending(query, data, udp)
            if result.chase is not None:
                return Pending(query, data, udp, result)
            encoded = self._authoritative(query, result, opt, _limit(opt) if udp else None)
        if len(cache) >= CACHE_LIMIT:
            cache.clear()
        first = encoded if encoded.__class__ is bytes else encoded[0]
        qtype, rcode = query.q.qtype, first[3] & 15
        self._count(stats.signature(udp, qtype, rcode, stats.ZONE), udp)
        hit = stats.signature(udp, qtype, rcode, stats.hit_outcome(first))
        if encoded.__class__ is bytes:
            cache[key] = (hit, encoded[2:])
            return encoded
        cache[key] = (hit, tuple(e[2:] for e in encoded))
        return encoded[next(self.turns) % len(encoded)]

    def _count(self, sig: int, udp: bool) -> None:
        """Count a reply: without a lock from the UDP loop (its own block), else with one."""
        if udp:
            self.metrics.loop[sig] += 1
        else:
            self.metrics.add(sig)

    def _counted(self, reply: bytes | None, data: bytes, udp: bool, outcome: int) -> bytes | None:
        """Count a reply made outside the reply cache (its type read from the query's bytes)."""
        if reply is not None:
            self._count(stats.signature(udp, _qtype(data), reply[3] & 15, outcome), udp)
        return reply

    def _authoritative(self, query: DNSRecord, result: Answer, opt, limit: int | None) -> bytes | tuple[bytes, ...]:
        """The reply to a question in the zone: one encoding, or one per rotation
        of its addresses when it has several. Each record is encoded once
        (emu.node.dns.wire) and the rotations are joins of them."""
        qname = wire.plain_name(query.q.qname)
        question = qname + struct.pack("!HH", query.q.qtype, query.q.qclass)
        encoder = wire.Encoder(qname)
        answers = [Encoded(rr.rtype, encoder.record(rr)) for rr in result.answers]
        authority = b"".join(encoder.record(rr) for rr in result.authority)
        additional = [Encoded(rr.rtype, encoder.record(rr)) for rr in result.additional]
        tail = wire.opt_record(OUR_UDP_SIZE, opt.ttl & EDNS_DO) if opt is not None else b""
        counts = (len(answers), len(result.authority), len(additional) + (1 if tail else 0))
        head = wire.header(query.header.id, query.header.bitmap, result.rcode, counts, aa=1)
        addresses = max(_count_addresses(answers), _count_addresses(additional))
        rotations = min(MAX_ROTATIONS, addresses) if result.rcode == RC.NOERROR and addresses > 1 else 1
        encoded = []
        for turn in range(rotations):
            body = b"".join(e.data for e in _rotated(answers, turn, rotations)) + authority
            body += b"".join(e.data for e in _rotated(additional, turn, rotations))
            packed = head + question + body + tail
            if limit is not None and len(packed) > limit:
                return _truncated(query, result.rcode, opt, aa=1)
            encoded.append(packed)
        return encoded[0] if rotations == 1 else tuple(encoded)

    def complete(self, pending: Pending) -> bytes:
        """Finish a Pending: ask the upstream servers (or the forward cache);
        counted (off the UDP loop, so under the metrics lock) with its time."""
        reply, outcome = self._complete(pending)
        self.metrics.add(stats.signature(pending.udp, pending.query.q.qtype, reply[3] & 15, outcome))
        self.metrics.observe(time.perf_counter_ns() - pending.start)
        return reply

    def _complete(self, pending: Pending) -> tuple[bytes, int]:
        current = self.current
        upstreams = current[0].upstreams if current else []
        query, opt = pending.query, _edns(pending.query)
        limit = _limit(opt) if pending.udp else None
        if pending.answer is None:  # a name outside the zone: relay the upstream's answer
            found = self.forwarder.resolve(query.q, pending.data[2:], query, not pending.udp, upstreams)
            if found is None:
                return _pack(_reply(query, RC.SERVFAIL), opt), stats.FORWARD
            message, age, hit = found
            outcome = stats.hit_outcome(message.pack()) if hit else stats.FORWARD
            reply = _reply(query, message.header.rcode, aa=message.header.aa, ra=message.header.ra)
            for rr in message.rr:
                if rr.rname == query.q.qname:  # dnslib compares names without case
                    rr.rname = query.q.qname  # the asker's letter case, not the first asker's
            reply.rr = _rotated(_aged(message.rr, age), next(self.turns), None)
            reply.auth = _aged(message.auth, age)
            reply.ar = [rr for rr in _aged(message.ar, age) if rr.rtype != TYPE.OPT]
            packed = _pack(reply, opt)
            if limit is not None and len(packed) > limit:
                packed = _truncated(query, reply.header.rcode, opt, aa=reply.header.aa, ra=reply.header.ra)
            return packed, outcome
        # An ExternalName outside the zone: the CNAME chain, then the target's records.
        result = pending.answer
        target = DNSRecord.question(result.chase, QTYPE[query.q.qtype])
        if opt is not None:
            target.add_ar(EDNS0(udp_len=OUR_UDP_SIZE, flags=_do_flag(opt)))
        found = self.forwarder.resolve(target.q, bytes(target.pack())[2:], target, not pending.udp, upstreams)
        reply = _reply(query, RC.NOERROR, aa=1)
        records = list(result.answers)
        if found is not None:
            records += _aged(found[0].rr, found[1])
            reply.header.tc = found[0].header.tc
        reply.rr = _rotated(records, next(self.turns), None)
        packed = _pack(reply, opt)
        if limit is not None and len(packed) > limit:
            packed = _truncated(query, RC.NOERROR, opt, aa=1)
        return packed, stats.ZONE


class Forwarder:
    """Asks the upstream servers and keeps their answers within their TTL
    (at most FORWARD_CACHE_MAX_TTL), least recently used out first."""

    def __init__(self, limit: int = FORWARD_CACHE_LIMIT, max_ttl: int = FORWARD_CACHE_MAX_TTL):
        self.limit = limit
        self.max_ttl = max_ttl
        self.entries: OrderedDict[tuple, tuple[float, float, bytes]] = OrderedDict()  # key -> (expires, stored, answer)
        self.lock = threading.Lock()
        self.clock = time.monotonic

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()

    def resolve(self, question: DNSQuestion, body: bytes, query: DNSRecord, tcp: bool, upstreams: list[str]):
        """(answer, seconds it has been cached, whether it came from the cache)
        for the query whose bytes after the ID are `body`; None when no
        upstream answered."""
        opt = _edns(query)
        key = (
            str(question.qname).lower(),
            question.qtype,
            question.qclass,
            bool(opt is not None and opt.ttl & EDNS_DO),
            query.header.cd,
        )
        now = self.clock()
        with self.lock:
            entry = self.entries.get(key)
            if entry is not None:
                if entry[0] > now:
                    self.entries.move_to_end(key)
                else:
                    del self.entries[key]
                    entry = None
        if entry is not None:
            return DNSRecord.parse(entry[2]), int(now - entry[1]), True
        message = _ask_upstreams(body, question, tcp, upstreams)
        if message is None:
            return None
        ttl = min(self.max_ttl, _cacheable_ttl(message))
        if ttl > 0:
            with self.lock:
                self.entries[key] = (now + ttl, now, bytes(message.pack()))
                self.entries.move_to_end(key)
                while len(self.entries) > self.limit:
                    self.entries.popitem(last=False)
        return message, 0, False


def _cacheable_ttl(message: DNSRecord) -> int:
    """How long an upstream answer may be kept: its smallest TTL; for a denial,
    the SOA's negative TTL (RFC 2308); 0 for errors and truncated answers."""
    if message.header.tc or message.header.rcode not in (RC.NOERROR, RC.NXDOMAIN):
        return 0
    if message.header.rcode == RC.NOERROR and message.rr:
        return min(rr.ttl for rr in message.rr + message.auth + message.ar if rr.rtype != TYPE.OPT)
    soa = next((rr for rr in message.auth if rr.rtype == TYPE.SOA), None)
    return min(soa.ttl, soa.rdata.times[-1]) if soa is not None else 0


def _ask_upstreams(body: bytes, question: DNSQuestion, tcp: bool, upstreams: list[str]) -> DNSRecord | None:
    """Send the query to each upstream in turn: over TCP when the client came
    over TCP, else UDP and TCP again when the UDP answer is truncated."""
    budget = UPSTREAM_TIMEOUT / max(1, len(upstreams))
    for upstream in upstreams:
        host, _, port = upstream.rpartition(":") if upstream.count(":") == 1 else (upstream, "", "")
        address = (host, int(port or 53))
        ident = random.randrange(65536)
        wire = struct.pack("!H", ident) + body
        try:
            reply = None if tcp else _udp_exchange(wire, address, budget, ident, question)
            if tcp or (reply is not None and reply.header.tc):
                reply = _tcp_exchange(wire, address, budget, ident, question) or reply
        except (OSError, ValueError):
            continue
        if reply is not None:
            return reply
    return None


def _matches(reply: DNSRecord, ident: int, question: DNSQuestion) -> bool:
    """The reply answers our query: our ID, QR set, the same question."""
    return (
        reply.header.id == ident
        and reply.header.qr == 1
        and len(reply.questions) == 1
        and reply.q.qname == question.qname  # dnslib compares names without case
        and reply.q.qtype == question.qtype
        and reply.q.qclass == question.qclass
    )


def _udp_exchange(wire: bytes, address: tuple, timeout: float, ident: int, question: DNSQuestion) -> DNSRecord | None:
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(address)  # only the upstream's own packets come back
        sock.send(wire)
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(65535)
            except socket.timeout:
                return None
            try:
                reply = DNSRecord.parse(data)
            except Exception:
                continue
            if _matches(reply, ident, question):
                return reply
    return None


def _tcp_exchange(wire: bytes, address: tuple, timeout: float, ident: int, question: DNSQuestion) -> DNSRecord | None:
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(struct.pack("!H", len(wire)) + wire)
        header = _read_exact(sock, 2)
        data = _read_exact(sock, struct.unpack("!H", header)[0]) if header else None
    if not data:
        return None
    try:
        reply = DNSRecord.parse(data)
    except Exception:
        return None
    return reply if _matches(reply, ident, question) else None


def is_query(data: bytes) -> bool:
    """A whole DNS header with QR=0. Anything else (a response above all) gets no
    reply and is not forwarded: answering responses lets two servers, or one and
    a spoofed source address, bounce packets between them forever."""
    return len(data) >= 12 and not data[2] & 0x80


def _qtype(data: bytes) -> int:
    """The question's type read from a query's bytes (0 when there is none)."""
    end = data.find(0, 12)
    return data[end + 1] << 8 | data[end + 2] if 0 < end < len(data) - 2 else 0


def _error_reply(data: bytes, rcode: int) -> bytes | None:
    """A header-only reply for a query dnslib can't parse."""
    if not is_query(data):
        return None
    (ident, flags) = struct.unpack("!HH", data[:4])
    flags = 0x8000 | (flags & 0x7900) | rcode  # QR, keep opcode and RD
    return struct.pack("!HHHHHH", ident, flags, 0, 0, 0, 0)


def _not_ready(data: bytes) -> bytes | None:
    """SERVFAIL, with the question, before the first snapshot (CoreDNS answers
    SERVFAIL until it has synced with the API server)."""
    try:
        query = DNSRecord.parse(data)
    except Exception:
        return _error_reply(data, RC.SERVFAIL)
    if query.header.qr:
        return None
    return _pack(_reply(query, RC.SERVFAIL), _edns(query))


def _reply(query: DNSRecord, rcode: int, aa: int = 0, ra: int = 0) -> DNSRecord:
    """A reply skeleton: the question, RD and CD copied (miekg/dns SetReply).
    No RA on authoritative answers: the server is not a recursor for its zone."""
    header = DNSHeader(
        id=query.header.id, qr=1, opcode=query.header.opcode, aa=aa, ra=ra,
        rd=query.header.rd, cd=query.header.cd, rcode=rcode,
    )  # fmt: skip
    return DNSRecord(header, questions=list(query.questions))


def _edns(query: DNSRecord):
    return next((r for r in query.ar if r.rtype == TYPE.OPT), None)


def _do_flag(opt) -> str:
    return "do" if opt.ttl & EDNS_DO else ""


def _limit(opt) -> int:
    """How big a UDP reply may be: 512, or the client's EDNS size."""
    return max(CLASSIC_UDP_SIZE, min(opt.rclass, 65535)) if opt is not None else CLASSIC_UDP_SIZE


def _pack(reply: DNSRecord, opt) -> bytes:
    """Encode a reply, with our OPT record (DO copied) when the query had one."""
    if opt is not None:
        reply.add_ar(EDNS0(udp_len=OUR_UDP_SIZE, flags=_do_flag(opt)))
    return bytes(reply.pack())


def _truncated(query: DNSRecord, rcode: int, opt, aa: int = 0, ra: int = 0) -> bytes:
    """The question with TC set and no records: the client retries over TCP."""
    short = _reply(query, rcode, aa=aa, ra=ra)
    short.header.tc = 1
    return _pack(short, opt)


def _count_addresses(records) -> int:
    return sum(1 for rr in records if rr.rtype in (TYPE.A, TYPE.AAAA))


def _rotated(records, turn: int, rotations: int | None) -> list:
    """CNAMEs first, then other types, then the addresses rotated by `turn` (of
    `rotations` evenly spaced; None: by turn itself), as CoreDNS's loadbalance orders them."""
    addresses = [rr for rr in records if rr.rtype in (TYPE.A, TYPE.AAAA)]
    if not addresses:
        return list(records)
    cnames = [rr for rr in records if rr.rtype == TYPE.CNAME]
    rest = [rr for rr in records if rr.rtype not in (TYPE.A, TYPE.AAAA, TYPE.CNAME)]
    shift = (turn * len(addresses) // rotations if rotations else turn) % len(addresses)
    return cnames + rest + addresses[shift:] + addresses[:shift]


def _aged(records, age: int) -> list:
    """Records served from the cache, their TTLs less the time they were kept."""
    if age > 0:
        for rr in records:
            if rr.rtype != TYPE.OPT:
                rr.ttl = max(0, rr.ttl - age)
    return list(records)


# ---- UDP ----------------------------------------------------------------------
def udp_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((host, port))
    return sock


def serve_udp(resolver: Resolver, sock: socket.socket, batched: bool | None = None) -> None:
    """Answer queries on one UDP socket: many datagrams a system call where
    Linux's recvmmsg/sendmmsg can be had (batched None: when they can), else
    one at a time."""
    batch = _Batch.make() if batched is not False else None
    if batch is None:
        if batched:
            raise OSError("recvmmsg and sendmmsg are not available here")
        _serve_udp_singly(resolver, sock)
    else:
        batch.serve(resolver, sock)


def _serve_udp_singly(resolver: Resolver, sock: socket.socket) -> None:
    """One datagram a system call."""
    recv, send = sock.recvfrom, sock.sendto
    answer, turns, counts, now = resolver.answer, resolver.turns, resolver.metrics.loop, time.perf_counter_ns
    while True:
        try:
            data, client = recv(4096)
        except OSError:
            if sock.fileno() < 0:
                return  # closed: stop serving
            continue
        start = now()
        current = resolver.current
        reply = _udp_reply(data, current[1] if current is not None else {}, turns, answer, counts)
        if reply is None:
            continue
        if reply.__class__ is Pending:
            resolver.pool.submit(_finish_udp, resolver, reply, send, client)
            continue
        try:
            send(reply, client)
        except OSError:
            pass
        spent = now() - start
        counts[stats.bucket(spent)] += 1
        counts[stats.DURATION_SUM] += spent


class _Batch:
    """recvmmsg/sendmmsg through ctypes: up to BATCH datagrams a system call
    each way. A datagram costs a third less CPU than with recvfrom/sendto
    (measured with dnsperf, about 30%), which keeps Python near dnsmasq. The
    buffers, iovecs and mmsghdrs are fixed; a datagram's length and its
    sender's address (sockaddr_in, passed back untouched to sendmmsg) are read
    and written through memoryviews of them. Linux on 64 bits only."""

    BATCH = 64
    SLOT = 4096  # bytes a datagram, as recvfrom(4096) reads
    WAIT_FOR_ONE = 0x10000  # MSG_WAITFORONE: return once at least one is there
    HEADER = 64  # sizeof(struct mmsghdr) on 64 bits: msghdr (56) + msg_len (4) + padding

    @classmethod
    def make(cls) -> _Batch | None:
        if not sys.platform.startswith("linux") or ctypes is None or ctypes.sizeof(ctypes.c_void_p) != 8:
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            recvmmsg, sendmmsg = libc.recvmmsg, libc.sendmmsg
        except (OSError, AttributeError):
            return None
        recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
        sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
        recvmmsg.restype = sendmmsg.restype = ctypes.c_int
        return cls(recvmmsg, sendmmsg)

    def __init__(self, recvmmsg, sendmmsg):
        self.recvmmsg, self.sendmmsg = recvmmsg, sendmmsg
        count, slot = self.BATCH, self.SLOT
        self.data = ctypes.create_string_buffer(count * slot)
        self.names = ctypes.create_string_buffer(count * 16)
        self.out = ctypes.create_string_buffer(count * slot)
        # iovec {base, len} and mmsghdr {name, namelen, iov, iovlen, control, controllen, flags, len} as uint64s
        self.in_iov = (ctypes.c_uint64 * (2 * count))()
        self.in_msgs = (ctypes.c_uint64 * (8 * count))()
        self.out_iov = (ctypes.c_uint64 * (2 * count))()
        self.out_msgs = (ctypes.c_uint64 * (8 * count))()
        data, names, out = ctypes.addressof(self.data), ctypes.addressof(self.names), ctypes.addressof(self.out)
        for i in range(count):
            self.in_iov[2 * i : 2 * i + 2] = [data + i * slot, slot]
            self.in_msgs[8 * i : 8 * i + 4] = [names + 16 * i, 16, ctypes.addressof(self.in_iov) + 16 * i, 1]
            self.out_iov[2 * i] = out + i * slot
            self.out_msgs[8 * i + 1 : 8 * i + 4] = [16, ctypes.addressof(self.out_iov) + 16 * i, 1]
        self.names_base = names

    def serve(self, resolver: Resolver, sock: socket.socket) -> None:
        # A receive timeout lets the loop see that the socket was closed.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 500_000))
        slot, names_base = self.SLOT, self.names_base
        received = memoryview(self.data).cast("B")
        outgoing = memoryview(self.out).cast("B")
        lengths = memoryview(self.in_msgs).cast("B").cast("I")  # msg_len of message i: [16 i + 14]
        out_len, out_msgs = self.out_iov, self.out_msgs
        in_ref = ctypes.byref(self.in_msgs)
        recvmmsg, batch, wait = self.recvmmsg, self.BATCH, self.WAIT_FOR_ONE
        answer, turns, counts, now = resolver.answer, resolver.turns, resolver.metrics.loop, time.perf_counter_ns
        first, bucket, total = stats.FIRST_BUCKET_NS, stats.bucket, stats.DURATION_SUM
        while True:
            fd = sock.fileno()
            if fd < 0:
                return  # closed: stop serving
            count = recvmmsg(fd, in_ref, batch, wait, None)
            if count <= 0:
                continue  # the timeout, or an interrupted call
            current = resolver.current
            cache = current[1] if current is not None else {}
            ready = fast = 0
            began = start = now()  # a reply's time: from the end of the one before (one clock read each)
            for i in range(count):
                reply = _udp_reply(bytes(received[i * slot : i * slot + lengths[16 * i + 14]]), cache, turns, answer, counts)
                if reply is None:
                    continue
                if reply.__class__ is Pending or len(reply) > slot:
                    self._aside(resolver, sock, reply, names_base + 16 * i, i)
                    began += now() - start  # not this loop's reply: its time is not the loop's
                    start = now()
                    continue
                outgoing[ready * slot : ready * slot + len(reply)] = reply
                out_len[2 * ready + 1] = len(reply)
                out_msgs[8 * ready] = names_base + 16 * i
                ready += 1
                end = now()
                if end - start < first:
                    fast += 1
                else:
                    counts[bucket(end - start)] += 1
                start = end
            self._send(fd, ready)
            counts[stats.DURATION] += fast
            counts[total] += start - began

    def _send(self, fd: int, ready: int) -> None:
        """sendmmsg the first `ready` replies; one that fails is skipped."""
        done = 0
        while done < ready:
            sent = self.sendmmsg(fd, ctypes.addressof(self.out_msgs) + self.HEADER * done, ready - done, 0)
            done += sent if sent > 0 else 1

    def _aside(self, resolver: Resolver, sock: socket.socket, reply, name: int, index: int) -> None:
        """A reply that does not fit a slot, or needs the upstreams: sendto."""
        raw = self.names.raw[16 * index : 16 * index + 8]
        client = (socket.inet_ntoa(raw[4:8]), int.from_bytes(raw[2:4], "big"))
        if reply.__class__ is Pending:
            resolver.pool.submit(_finish_udp, resolver, reply, sock.sendto, client)
            return
        try:
            sock.sendto(reply, client)
        except OSError:
            pass


def _udp_reply(data: bytes, cache: dict, turns, answer, counts):
    """The reply to one datagram: from the reply cache (read here, before
    Resolver.answer, because this is the hot path; counted in `counts`, the
    UDP loop's metrics), else answer's (bytes, a Pending, or None: no reply),
    SERVFAIL if that raises."""
    if len(data) < 12 or data[2] & 0x80:
        return None  # never answer (or forward) a response: see is_query
    hit = cache.get(data[2:])
    if hit is not None:
        counts[hit[0]] += 1
        cached = hit[1]
        return data[:2] + (cached if cached.__class__ is bytes else cached[next(turns) % len(cached)])
    try:
        return answer(data, True)
    except Exception as error:  # noqa: BLE001 - a bug must not take the server down
        log(f"error answering {data[:64]!r}: {error!r}")
        reply = _error_reply(data, RC.SERVFAIL)
        counts[stats.signature(True, _qtype(data), RC.SERVFAIL, stats.NONE)] += 1
        return reply


def _finish_udp(resolver: Resolver, pending: Pending, send, client) -> None:
    try:
        reply = resolver.complete(pending)
    except Exception as error:  # noqa: BLE001 - a bug must not lose the worker thread
        log(f"error forwarding {pending.data[:64]!r}: {error!r}")
        reply = _error_reply(pending.data, RC.SERVFAIL)
        resolver.metrics.add(stats.signature(True, _qtype(pending.data), RC.SERVFAIL, stats.NONE))
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
                start = time.perf_counter_ns()
                try:
                    reply = resolver.answer(data, False)
                    if reply.__class__ is Pending:
                        reply = resolver.complete(reply)  # this connection's own thread waits (and times it)
                    elif reply is not None:
                        resolver.metrics.observe(time.perf_counter_ns() - start)
                except Exception as error:  # a bug must not take the server down
                    log(f"error answering {data[:64]!r}: {error!r}")
                    reply = _error_reply(data, RC.SERVFAIL)
                    resolver.metrics.add(stats.signature(False, _qtype(data), RC.SERVFAIL, stats.NONE))
                if reply is None:
                    continue
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


def run(snapshot: str, host: str, port: int, workers: int, health_port: int, ready_port: int,
        metrics_port: int = 0, api: dict | None = None) -> None:  # fmt: skip
    """Serve DNS from `snapshot` (the file the node agent writes), or with `api`
    ({"settings": the zone's settings, "service_account_dir": ...}) from the
    Kubernetes API: the main process watches it (emu.node.dns.kube) and writes
    each new zone into a private file that every process loads as a snapshot."""
    private = None
    if api is not None:
        import tempfile

        private = tempfile.mkdtemp(prefix="emu-dns-")
        snapshot = os.path.join(private, "zone.json")
    counters = stats.Metrics(max(1, workers), server=f"dns://:{port}")
    resolver = Resolver(snapshot, counters)
    resolver.reload_if_changed()
    # SIGUSR1: load the zone now (the API source's new zone; set before the fork, so no process
    # can get the signal before it has the handler).
    this = [resolver]
    signal.signal(signal.SIGUSR1, lambda signum, frame: this[0].reload_if_changed())
    parent = os.getpid()
    children = []
    for process in range(1, max(1, workers)):
        child = os.fork()
        if child == 0:
            counters.use(process)
            worker = Resolver(snapshot, counters)
            this[0] = worker
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
        if private is not None:
            import shutil

            shutil.rmtree(private, ignore_errors=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if api is not None:  # (threads only after the fork)
        from emu.node.dns import kube
        from emu.node.kube.client import in_cluster

        directory = api["service_account_dir"]
        def publish(data: dict) -> None:
            kube.write_zone(snapshot, data)
            resolver.reload_if_changed()
            for child in children:  # at once rather than at their next look (0.1 s)
                try:
                    os.kill(child, signal.SIGUSR1)
                except OSError:
                    pass

        source = kube.ApiSource(lambda: in_cluster(directory, user_agent="emu-coredns/v1"), api["settings"],
                                publish, log)  # fmt: skip
        source.start()
    threading.Thread(target=resolver.watch, daemon=True).start()
    tcp = TCPServer((host, port), tcp_handler(resolver))
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    if health_port:
        http_server(health_port, "/health", lambda: True)
    if ready_port:
        http_server(ready_port, "/ready", lambda: resolver.ready)
    if metrics_port:
        stats.serve(counters, metrics_port)
    origin = "the Kubernetes API" if api is not None else snapshot
    log(f"serving DNS on {host}:{port} (UDP x{max(1, workers)}, TCP) from {origin}")
    serve_udp(resolver, udp_socket(host, port))
