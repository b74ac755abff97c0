"""CoreDNS's Prometheus metrics (plugins prometheus and cache), counted in
shared memory and served as text on :9153/metrics.

Every reply is counted once, in one slot: its *signature*, the combination of
transport, question type, rcode and outcome (answered from the reply cache,
or computed by the zone, the upstreams, or neither), from which the scrape
derives coredns_dns_requests_total, coredns_dns_responses_total and the cache
counters. A cache hit is thus one increment of a signature stored with the
cached reply; its time is one clock read (see server.py's UDP loops).

Each process counts in two Python lists (a list item is the cheapest thing to
increment): one written only by its UDP loop (no lock), one by its other
threads (TCP connections, forwarding) under a lock. Every 0.1 s (the
snapshot watcher's period) a process copies them into its block of an
anonymous shared mapping made before the UDP workers fork; the scrape adds
the blocks up, after copying its own process's counts.
"""

from __future__ import annotations

import mmap
import threading
from array import array
from bisect import bisect_left

# CoreDNS's plugin/metrics/vars/monitor.go: types counted by name, the rest "other".
TYPES = {1: "A", 28: "AAAA", 5: "CNAME", 48: "DNSKEY", 43: "DS", 15: "MX", 50: "NSEC3", 47: "NSEC", 2: "NS",
         12: "PTR", 46: "RRSIG", 6: "SOA", 33: "SRV", 16: "TXT", 65: "HTTPS", 64: "SVCB",
         251: "IXFR", 252: "AXFR", 255: "ANY"}  # fmt: skip
TYPE_NAMES = [*TYPES.values(), "other"]
TYPE_INDEX = {qtype: index for index, qtype in enumerate(TYPES)}
OTHER = len(TYPES)
# miekg/dns RcodeToString for the 4-bit header rcode
RCODES = ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
          "NXRRSET", "NOTAUTH", "NOTZONE", "RCODE11", "RCODE12", "RCODE13", "RCODE14", "RCODE15"]  # fmt: skip
PROTOS = ("udp", "tcp")
# outcome: (plugin label of the response, cache hit type or None, counted as a cache miss)
NONE, HIT_SUCCESS, HIT_DENIAL, ZONE, FORWARD = range(5)
OUTCOMES = [("", None, False), ("cache", "success", False), ("cache", "denial", False),
            ("kubernetes", None, True), ("forward", None, True)]  # fmt: skip
SIGNATURES = len(PROTOS) * len(TYPE_NAMES) * len(RCODES) * len(OUTCOMES)
# plugin.TimeBuckets: prometheus.ExponentialBuckets(0.00025, 2, 16), 0.25 ms to 8 s
BUCKETS = [0.00025 * 2**i for i in range(16)]
BUCKETS_NS = [round(b * 1e9) for b in BUCKETS]
FIRST_BUCKET_NS = BUCKETS_NS[0]
DURATION = SIGNATURES  # slots DURATION + i: replies of bucket i (not cumulative); + 16: above 8 s
DURATION_SUM = DURATION + len(BUCKETS) + 1  # nanoseconds, all replies
SLOTS = DURATION_SUM + 1
BUILD_VERSION = "1.11.3"  # the CoreDNS whose behaviour emu follows (kubeadm's image for Kubernetes 1.31 to 1.33)


def signature(udp: bool, qtype: int, rcode: int, outcome: int) -> int:
    kind = TYPE_INDEX.get(qtype, OTHER)
    return (((0 if udp else 1) * len(TYPE_NAMES) + kind) * len(RCODES) + (rcode & 15)) * len(OUTCOMES) + outcome


def hit_outcome(reply: bytes) -> int:
    """How a cached reply counts when served again: a success, or a denial
    (NXDOMAIN, or no answer records), as CoreDNS's cache sorts them."""
    rcode, answers = reply[3] & 15, reply[6] << 8 | reply[7]
    return HIT_SUCCESS if rcode == 0 and answers else HIT_DENIAL


def bucket(nanoseconds: int) -> int:
    """The slot of a duration (bucket i holds durations above bucket i-1's bound, up to its own)."""
    return DURATION + bisect_left(BUCKETS_NS, nanoseconds)


class Metrics:
    def __init__(self, processes: int = 1, server: str = "dns://:53"):
        self.server = server
        self.processes = max(1, processes)
        self.memory = mmap.mmap(-1, self.processes * 2 * SLOTS * 8)  # MAP_SHARED: the forked workers write here
        self.view = memoryview(self.memory).cast("Q")
        self.lock = threading.Lock()
        self.use(0)

    def use(self, process: int) -> None:
        """Count for process `process` (call in a forked worker)."""
        self.base = 2 * process * SLOTS
        self.loop = [0] * SLOTS  # the UDP loop's, written without a lock
        self.other = [0] * SLOTS

    def flush(self) -> None:
        """Copy this process's counts to its blocks of the shared memory."""
        self.view[self.base : self.base + SLOTS] = array("Q", self.loop)
        with self.lock:
            self.view[self.base + SLOTS : self.base + 2 * SLOTS] = array("Q", self.other)

    def add(self, sig: int) -> None:
        """Count a reply from a thread other than the UDP loop."""
        with self.lock:
            self.other[sig] += 1

    def observe(self, nanoseconds: int) -> None:
        """A reply's duration, from a thread other than the UDP loop."""
        with self.lock:
            self.other[bucket(nanoseconds)] += 1
            self.other[DURATION_SUM] += nanoseconds

    def totals(self) -> list[int]:
        self.flush()
        view = self.view
        return [sum(view[slot + block * SLOTS] for block in range(2 * self.processes)) for slot in range(SLOTS)]

    def render(self) -> bytes:
        """The Prometheus text exposition format (version 0.0.4)."""
        totals = self.totals()
        base = f'server="{self.server}",zone=".",view=""'
        requests: dict[tuple, int] = {}
        responses: dict[tuple, int] = {}
        hits = {"success": 0, "denial": 0}
        misses = 0
        for sig in range(SIGNATURES):
            count = totals[sig]
            if not count:
                continue
            rest, outcome = divmod(sig, len(OUTCOMES))
            rest, rcode = divmod(rest, len(RCODES))
            proto, kind = divmod(rest, len(TYPE_NAMES))
            plugin, hit, missed = OUTCOMES[outcome]
            key = (PROTOS[proto], TYPE_NAMES[kind])
            requests[key] = requests.get(key, 0) + count
            key = (RCODES[rcode], plugin)
            responses[key] = responses.get(key, 0) + count
            if hit:
                hits[hit] += count
            misses += count if missed else 0
        lines = [
            "# HELP coredns_build_info A metric with a constant '1' value labeled by version, revision, and goversion from which CoreDNS was built.",
            "# TYPE coredns_build_info gauge",
            f'coredns_build_info{{goversion="emu-python",revision="emu",version="{BUILD_VERSION}"}} 1',
            "# HELP coredns_dns_requests_total Counter of DNS requests made per zone, protocol and family.",
            "# TYPE coredns_dns_requests_total counter",
        ]
        for (proto, kind), count in sorted(requests.items()):
            lines.append(f'coredns_dns_requests_total{{{base},proto="{proto}",family="1",type="{kind}"}} {count}')
        lines += ["# HELP coredns_dns_responses_total Counter of response status codes.",
                  "# TYPE coredns_dns_responses_total counter"]  # fmt: skip
        for (rcode, plugin), count in sorted(responses.items()):
            lines.append(f'coredns_dns_responses_total{{{base},rcode="{rcode}",plugin="{plugin}"}} {count}')
        lines += ["# HELP coredns_dns_request_duration_seconds Histogram of the time (in seconds) each request took per zone.",
                  "# TYPE coredns_dns_request_duration_seconds histogram"]  # fmt: skip
        cumulative = 0
        for index, bound in enumerate([*BUCKETS, None]):
            cumulative += totals[DURATION + index]
            le = "+Inf" if bound is None else repr(bound)
            lines.append(f'coredns_dns_request_duration_seconds_bucket{{{base},le="{le}"}} {cumulative}')
        lines.append(f"coredns_dns_request_duration_seconds_sum{{{base}}} {totals[DURATION_SUM] / 1e9!r}")
        lines.append(f"coredns_dns_request_duration_seconds_count{{{base}}} {cumulative}")
        cache = f'server="{self.server}",zones=".",view=""'
        lines += ["# HELP coredns_cache_hits_total The count of cache hits.", "# TYPE coredns_cache_hits_total counter"]
        lines += [f'coredns_cache_hits_total{{{cache},type="{kind}"}} {count}' for kind, count in hits.items()]
        lines += ["# HELP coredns_cache_misses_total The count of cache misses.",
                  "# TYPE coredns_cache_misses_total counter",
                  f"coredns_cache_misses_total{{{cache}}} {misses}",
                  "# HELP coredns_cache_requests_total The count of cache requests.",
                  "# TYPE coredns_cache_requests_total counter",
                  f"coredns_cache_requests_total{{{cache}}} {misses + sum(hits.values())}"]  # fmt: skip
        return ("\n".join(lines) + "\n").encode()


def serve(metrics: Metrics, port: int, host: str = "0.0.0.0"):
    """GET /metrics on a thread of its own (emu.node.agent.web's bare-socket HTTP)."""
    from emu.node.agent import web

    def handle(request: web.Request, wfile) -> bool:
        if request.path.split("?")[0] != "/metrics":
            wfile.write(web.response(404, b"404 page not found\n", "text/plain; charset=utf-8"))
            return True
        wfile.write(web.response(200, metrics.render(), "text/plain; version=0.0.4; charset=utf-8"))
        return True

    server = web.Server((host, port), handle)

    def run() -> None:
        try:
            server.serve_forever()
        except OSError:
            pass  # closed

    threading.Thread(target=run, daemon=True).start()
    return server
