"""Malformed DNS queries for fuzz tests: random bytes, truncated and mutated
copies of a good query. Shared by the unit test (straight into the resolver)
and the integration test (sent over the wire from a pod)."""

from __future__ import annotations

import random

from dnslib import DNSRecord


def good_query(name: str = "web.default.svc.cluster.local") -> bytes:
    return bytes(DNSRecord.question(name).pack())


def bad_queries(seed: int, count: int, good: bytes | None = None) -> list[bytes]:
    generator = random.Random(seed)
    good = good or good_query()
    packets = []
    for _ in range(count):
        kind = generator.random()
        if kind < 0.3:
            data = bytes(generator.randrange(256) for _ in range(generator.randrange(0, 80)))
        elif kind < 0.6:
            data = good[: generator.randrange(len(good))]
        else:
            mutated = bytearray(good)
            for _ in range(generator.randrange(1, 6)):
                mutated[generator.randrange(len(mutated))] = generator.randrange(256)
            data = bytes(mutated)
        packets.append(data)
    return packets
