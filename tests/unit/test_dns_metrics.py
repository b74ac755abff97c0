"""CoreDNS's Prometheus metrics from emu's DNS server: real queries over real
sockets on 127.0.0.1, then a scrape of /metrics over HTTP, read line by line
as the text exposition format."""

from __future__ import annotations

import os
import re
import time
import urllib.request

import pytest

from emu.node.dns import metrics as stats
from test_dns_server import lab_snapshot, start, upstream  # noqa: F401 - fixtures

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*",?)*)\})? (\S+)$')
COMMENT = re.compile(r"^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)$")


def parse(text: str) -> dict[tuple, float]:
    """{(name, ((label, value), ...)): value}; every line must be a comment or a sample."""
    samples, typed = {}, set()
    assert text.endswith("\n")
    for line in text.splitlines():
        comment = COMMENT.match(line)
        if comment:
            if comment.group(1) == "TYPE":
                assert comment.group(3) in ("counter", "gauge", "histogram"), line
                typed.add(comment.group(2))
            continue
        sample = SAMPLE.match(line)
        assert sample, f"not a sample line: {line!r}"
        name, labels, value = sample.groups()
        assert re.sub(r"_(bucket|sum|count)$", "", name) in typed or name in typed, f"{name} has no TYPE before it"
        pairs = tuple(sorted(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"', labels or "")))
        assert (name, pairs) not in samples, f"repeated sample {line!r}"
        samples[(name, pairs)] = float(value)
    return samples


def value(samples: dict, name: str, **labels) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(v for (n, pairs), v in samples.items() if n == name and set(labels.items()) <= set(pairs))


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse(response.read().decode())


@pytest.mark.parametrize("batched", [True, False], ids=["recvmmsg", "recvfrom"])
def test_counts_after_real_queries(start, upstream, batched):  # noqa: F811
    running = start(lab_snapshot(upstreams=[upstream.address]), batched=batched)
    exporter = stats.serve(running.resolver.metrics, 0, "127.0.0.1")
    try:
        for _ in range(3):
            assert running.ask("web.default.svc.cluster.local").header.rcode == 0  # a miss, then 2 hits
        for _ in range(2):
            assert running.ask("nosuch.default.svc.cluster.local").header.rcode == 3  # a miss, a denial hit
        assert running.ask("web.default.svc.cluster.local", "AAAA").header.rcode == 0  # no records: NODATA
        assert running.ask("web.default.svc.cluster.local", tcp=True).header.rcode == 0
        assert running.ask("cluster.local", "AXFR", tcp=True).header.rcode == 5  # REFUSED
        assert running.ask("www.example.com").header.rcode == 0  # forwarded
        deadline = time.monotonic() + 5  # the UDP loop counts a batch's times once its replies are sent
        while (samples := scrape(exporter.port)) and value(samples, "coredns_dns_request_duration_seconds_count") < 9:
            assert time.monotonic() < deadline, "durations never counted"
            time.sleep(0.02)
    finally:
        exporter.close()

    base = {"server": "dns://:53", "zone": ".", "view": ""}
    requests = "coredns_dns_requests_total"
    assert value(samples, requests, **base, proto="udp", family="1", type="A") == 6
    assert value(samples, requests, proto="udp", type="AAAA") == 1
    assert value(samples, requests, proto="tcp", type="A") == 1
    assert value(samples, requests, proto="tcp", type="AXFR") == 1
    assert value(samples, requests) == 9

    responses = "coredns_dns_responses_total"
    assert value(samples, responses, **base, rcode="NOERROR") == 6
    assert value(samples, responses, rcode="NOERROR", plugin="kubernetes") == 3
    assert value(samples, responses, rcode="NOERROR", plugin="cache") == 2
    assert value(samples, responses, rcode="NOERROR", plugin="forward") == 1
    assert value(samples, responses, rcode="NXDOMAIN", plugin="kubernetes") == 1
    assert value(samples, responses, rcode="NXDOMAIN", plugin="cache") == 1
    assert value(samples, responses, rcode="REFUSED") == 1

    cache = {"server": "dns://:53", "zones": ".", "view": ""}
    assert value(samples, "coredns_cache_hits_total", **cache, type="success") == 2
    assert value(samples, "coredns_cache_hits_total", type="denial") == 1
    assert value(samples, "coredns_cache_misses_total", **cache) == 6
    assert value(samples, "coredns_cache_requests_total") == 9
    assert value(samples, "coredns_build_info", version=stats.BUILD_VERSION) == 1

    buckets = sorted(
        (float(dict(pairs)["le"]), v) for (n, pairs), v in samples.items() if n.endswith("_seconds_bucket")
    )
    assert [le for le, _ in buckets] == [*stats.BUCKETS, float("inf")]  # CoreDNS's: 0.25 ms doubling to 8.192 s
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), "cumulative buckets must not decrease"
    assert counts[-1] == value(samples, "coredns_dns_request_duration_seconds_count") == 9
    assert 0 < value(samples, "coredns_dns_request_duration_seconds_sum") < 9 * 8


def test_not_found_and_other_paths(start):  # noqa: F811
    running = start(lab_snapshot())
    exporter = stats.serve(running.resolver.metrics, 0, "127.0.0.1")
    try:
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/", timeout=5)
        assert error.value.code == 404
    finally:
        exporter.close()


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")  # other tests' server threads; the child only counts
def test_worker_processes_count_in_shared_memory():
    """Forked UDP workers write their own blocks; the scrape adds them up."""
    metrics = stats.Metrics(processes=3)
    sig = stats.signature(True, 33, 0, stats.HIT_SUCCESS)
    children = []
    for process in (1, 2):
        child = os.fork()
        if child == 0:
            metrics.use(process)
            for _ in range(process * 10):
                metrics.loop[sig] += 1
            metrics.add(sig)
            metrics.observe(300_000)  # 0.3 ms: the second bucket
            metrics.flush()  # as the worker's snapshot watcher does every 0.1 s
            os._exit(0)
        children.append(child)
    for child in children:
        assert os.waitpid(child, 0)[1] == 0
    metrics.loop[sig] += 1
    samples = parse(metrics.render().decode())
    assert value(samples, "coredns_dns_requests_total", proto="udp", type="SRV") == 10 + 20 + 2 + 1
    assert value(samples, "coredns_cache_hits_total", type="success") == 33
    assert value(samples, "coredns_dns_request_duration_seconds_bucket", le="0.00025") == 0
    assert value(samples, "coredns_dns_request_duration_seconds_bucket", le="0.0005") == 2


def test_type_labels_follow_coredns():
    assert stats.TYPE_NAMES[stats.TYPE_INDEX[1]] == "A"
    for qtype, name in ((99, "other"), (28, "AAAA"), (252, "AXFR"), (65, "HTTPS")):
        sig = stats.signature(False, qtype, 2, stats.NONE)
        metrics = stats.Metrics()
        metrics.add(sig)
        samples = parse(metrics.render().decode())
        assert value(samples, "coredns_dns_requests_total", proto="tcp", type=name) == 1
        assert value(samples, "coredns_dns_responses_total", rcode="SERVFAIL", plugin="") == 1
