#!/usr/bin/env python3
"""One host against three: the same lab on this machine's engine and spread
over three Docker hosts (tests/hostlab.py: real dockerd daemons in their own
network namespaces, joined in a swarm, reached over SSH), in the same run.

  up       `emu up` of one 6-node topology (12 netexec pods), until every pod answers
  latency  ping RTT between pods: same node, another node on the same host, another host
  tput     iperf3 throughput for the same three pairs
  images   shipping the node image to the hosts: cold (removed first) and cached
  check    `emu hosts check` of the three hosts, of one with an unreachable fourth,
           and a second `emu hosts prepare` that only checks (figures the hostlab
           tests used to assert as limits)

All hosts share this machine's two cores, so cross-host figures show the cost
of the overlay (VXLAN encapsulation, the extra bridge hops), not of a wire.

usage: python bench/multihost.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emu.cluster import Cluster
from emu.hosts import check_hosts, prepare_hosts
from emu.runtime.docker import DockerRuntime
from emu.runtime.images import node_image_tag
from emu.runtime.swarm import SwarmRuntime
from emu.topology.load import load_text
from tests import hostlab

NETEXEC = "{name: netexec, workload: netexec, ports: [{name: http, containerPort: 8080}]}"
# Six nodes; on three hosts, n0 and n3 share h1, n1 and n4 h2, n2 and n5 h3.
LAB = "name: bench\nnodes:\n" + "".join(f"  - {{name: n{i}}}\n" for i in range(6)) + "pods:\n" + "".join(
    f"  - {{name: p{i}{c}, node: n{i}, containers: [{NETEXEC}]}}\n" for i in range(6) for c in "ab"
)
PAIRS = {  # (client, server): what lies between them on three hosts
    "same node": ("p0a", "p0b"),
    "other node, same host": ("p0a", "p3a"),
    "other host": ("p0a", "p1a"),
}


def time_up(runtime, topology) -> float:
    cluster = Cluster(topology.name, runtime=runtime)
    started = time.perf_counter()
    try:
        cluster.up(topology)
        return time.perf_counter() - started
    finally:
        cluster.down()


def measure_paths(cluster: Cluster) -> dict[str, tuple[float, float]]:
    """{pair: (ping RTT ms, iperf3 Gbit/s)}."""
    results = {}
    for label, (client, server) in PAIRS.items():
        target = cluster.pod(server).ip
        ping = cluster.exec(client, ["ping", "-q", "-c", "20", "-i", "0.01", target]).output
        rtt = float(ping.strip().splitlines()[-1].split("=")[1].split("/")[1])
        assert cluster.exec(server, ["iperf3", "-s", "-1", "-D"]).ok
        time.sleep(0.2)
        report = json.loads(cluster.exec(client, ["iperf3", "-c", target, "-t", "3", "-J"]).output)
        results[label] = (rtt, report["end"]["sum_received"]["bits_per_second"] / 1e9)
    return results


def time_checks(hosts, image: str) -> None:
    from emu.topology.model import Host

    quiet = lambda message: None  # noqa: E731
    ghost = Host(name="ghost", address="10.213.0.250", ssh_key=hosts[0].ssh_key, known_hosts=hosts[0].known_hosts)
    figures = {}
    for label, action in (
        ("check, 3 healthy hosts", lambda: check_hosts(hosts, progress=quiet)),
        ("check, 1 host and 1 unreachable", lambda: check_hosts([hosts[0], ghost], progress=quiet)),
        ("prepare again (only checks)", lambda: prepare_hosts(hosts, [image], progress=quiet)),
    ):
        started = time.perf_counter()
        action()
        figures[label] = time.perf_counter() - started
    print("emu hosts: " + ", ".join(f"{label} {seconds:.2f}s" for label, seconds in figures.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    os.environ.setdefault("EMU_HOME", tempfile.mkdtemp(prefix="emu-bench-home-"))

    with hostlab.session(3, progress=lambda message: None) as lab:
        return run(lab, options.rounds)


def run(lab, rounds: int) -> int:
    local = DockerRuntime()
    image = local.node_image(print)
    hosts = lab.models()
    prepare_hosts(hosts, [image], progress=lambda message: None)
    swarm = SwarmRuntime(hosts)

    # Image shipping: every host without the image, then again with it cached.
    for host in lab.hosts:
        hostlab.docker(host, "image", "rm", "-f", image, check=False)
    started = time.perf_counter()
    swarm.ship_images([image], lambda message: None)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    swarm.ship_images([image], lambda message: None)
    cached = time.perf_counter() - started
    print(f"image {image} to 3 hosts: cold {cold:.2f}s, cached {cached:.3f}s ({cold / cached:.0f}x)")
    time_checks(hosts, image)

    one, three = [], []
    topology = load_text(LAB)
    for round_number in range(rounds):
        one.append(time_up(local, topology.model_copy(update={"name": f"emubench-one{round_number}"})))
        spread = topology.model_copy(update={"name": f"emubench-three{round_number}", "hosts": hosts})
        three.append(time_up(swarm, spread))
    print(f"emu up, 6 nodes / 12 pods: one host {statistics.median(one):.2f}s, three hosts "
          f"{statistics.median(three):.2f}s ({statistics.median(three) / statistics.median(one):.2f}x)"
          f"  runs: one {[round(t, 2) for t in one]} three {[round(t, 2) for t in three]}")  # fmt: skip

    single = Cluster("emubench-paths1", runtime=local)
    spread_cluster = Cluster("emubench-paths3", runtime=swarm)
    try:
        single.up(topology.model_copy(update={"name": single.name}))
        spread_cluster.up(topology.model_copy(update={"name": spread_cluster.name, "hosts": hosts}))
        on_one, on_three = measure_paths(single), measure_paths(spread_cluster)
    finally:
        single.down()
        spread_cluster.down()
    base_rtt, base_tput = on_one["same node"]
    print(f"{'path':24} {'lab':7} {'ping ms':>8} {'x same node':>12} {'Gbit/s':>8} {'x same node':>12}")
    for lab_name, results in (("1 host", on_one), ("3 hosts", on_three)):
        for label, (rtt, tput) in results.items():
            print(f"{label:24} {lab_name:7} {rtt:>8.3f} {rtt / base_rtt:>11.2f}x {tput:>8.2f} {tput / base_tput:>11.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
