"""Replies on the wire, encoded a record at a time.

dnslib packs a whole message at once, compressing each name against every
name before it, so a record's bytes depend on where it lands. Here names are
compressed only against the question, which always starts at offset 12: each
record encodes to the same bytes wherever it goes, and the rotations of an
answer (CoreDNS's loadbalance) are joins of the same encoded records instead
of one dnslib pack each. SRV targets are not compressed (RFC 2782), as dnslib
does not compress them either.
"""

from __future__ import annotations

import struct

from dnslib import DNSBuffer, DNSLabel

from emu.node.dns.records import TYPE

_COMPRESSIBLE = (TYPE.CNAME, TYPE.PTR, TYPE.NS)


def question_end(data: bytes) -> int | None:
    """Where the (only) question of a query ends, or None when its name is not
    plain labels (a compression pointer, or cut short)."""
    index = 12
    while index < len(data):
        length = data[index]
        if length == 0:
            return index + 5 if index + 5 <= len(data) else None
        if length & 0xC0:
            return None
        index += length + 1
    return None


def plain_name(name) -> bytes:
    labels = name.label if isinstance(name, DNSLabel) else DNSLabel(name).label
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"


class Encoder:
    """Encodes the records of replies to one question (its name's wire bytes)."""

    def __init__(self, qname_wire: bytes):
        self.suffixes: dict[bytes, int] = {}
        index = 0
        while qname_wire[index]:
            self.suffixes[qname_wire[index:]] = 12 + index
            index += qname_wire[index] + 1

    def name(self, name) -> bytes:
        """A name, its longest suffix that spells the same (letter case too) as
        one of the question's replaced by a pointer to it."""
        wire = plain_name(name)
        index = 0
        while wire[index]:
            offset = self.suffixes.get(wire[index:])
            if offset is not None:
                return wire[:index] + struct.pack("!H", 0xC000 | offset)
            index += wire[index] + 1
        return wire

    def record(self, rr) -> bytes:
        """One resource record (a dnslib RR)."""
        rdata, rtype = rr.rdata, rr.rtype
        if rtype == TYPE.A:
            data = bytes(rdata.data)
        elif rtype in _COMPRESSIBLE:
            data = self.name(rdata.label)
        elif rtype == TYPE.SRV:
            data = struct.pack("!HHH", rdata.priority, rdata.weight, rdata.port) + plain_name(rdata.target)
        elif rtype == TYPE.SOA:
            data = self.name(rdata.mname) + self.name(rdata.rname) + struct.pack("!5I", *rdata.times)
        else:  # no names inside (AAAA, TXT, ...): dnslib's encoding does not depend on position
            buffer = DNSBuffer()
            rdata.pack(buffer)
            data = bytes(buffer.data)
        return self.name(rr.rname) + struct.pack("!HHIH", rtype, rr.rclass, rr.ttl, len(data)) + data


def opt_record(udp_size: int, flags: int = 0, ext_rcode: int = 0) -> bytes:
    """An EDNS0 OPT record: version 0, the given flags (DO) and extended RCODE."""
    return b"\x00" + struct.pack("!HHIH", TYPE.OPT, udp_size, (ext_rcode << 24) | flags, 0)


def header(ident: int, query_flags: int, rcode: int, counts: tuple[int, int, int], aa: int = 0, tc: int = 0) -> bytes:
    """A reply's header: QR, the query's opcode, RD and CD, no RA (not a recursor)."""
    flags = 0x8000 | (query_flags & 0x7910) | (aa << 10) | (tc << 9) | (rcode & 0xF)
    return struct.pack("!HHHHHH", ident, flags, 1, *counts)
