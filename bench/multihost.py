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

usage: python bench/multihost.py [--runs N] [--only images,up,paths,check] [--json]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import harness

from emu.api.topology.load import load_text
from emu.control.cluster import Cluster
from emu.control.hosts import check_hosts, prepare_hosts
from emu.control.runtime.docker import DockerRuntime
from emu.control.runtime.swarm import SwarmRuntime
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
    try:
        return harness.timed(lambda: cluster.up(topology))
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


def hosts(context: harness.Context):
    """Three hosts (tests/hostlab.py) prepared with the node image, shared by the scenarios."""
    if "hosts" not in context.shared:
        os.environ.setdefault("EMU_HOME", tempfile.mkdtemp(prefix="emu-bench-home-"))
        lab = context.stack.enter_context(hostlab.session(3, progress=lambda message: None))
        local = DockerRuntime()
        image = local.node_image(print)
        models = lab.models()
        prepare_hosts(models, [image], progress=lambda message: None)
        context.shared["hosts"] = (lab, local, image, models, SwarmRuntime(models))
    return context.shared["hosts"]


def check(context: harness.Context) -> None:
    """`emu hosts check` and a second prepare (figures the hostlab tests used to assert as limits)."""
    from emu.api.topology.model import Host

    _, _, image, models, _ = hosts(context)
    quiet = lambda message: None  # noqa: E731
    ghost = Host(name="ghost", address="10.213.0.250", ssh_key=models[0].ssh_key, known_hosts=models[0].known_hosts)
    healthy = [harness.timed(lambda: check_hosts(models, progress=quiet)) for _ in range(context.runs)]
    for label, action in (
        ("emu hosts check, 1 host and 1 unreachable", lambda: check_hosts([models[0], ghost], progress=quiet)),
        ("emu hosts prepare again (only checks)", lambda: prepare_hosts(models, [image], progress=quiet)),
    ):
        context.report.compare(label, [harness.timed(action) for _ in range(context.runs)], healthy)


def images(context: harness.Context) -> None:
    """Image shipping: every host without the image, then again with it cached."""
    lab, _, image, _, swarm = hosts(context)
    for host in lab.hosts:
        hostlab.docker(host, "image", "rm", "-f", image, check=False)
    cold = harness.timed(lambda: swarm.ship_images([image], lambda message: None))
    cached = harness.timed(lambda: swarm.ship_images([image], lambda message: None))
    context.report.compare(f"image {image} to 3 hosts, cold", cold, cached, note="baseline: the same, cached")


def up(context: harness.Context) -> None:
    _, local, _, models, swarm = hosts(context)
    one, three = [], []
    topology = load_text(LAB)
    for round_number in range(context.runs):
        one.append(time_up(local, topology.model_copy(update={"name": f"emubench-one{round_number}"})))
        spread = topology.model_copy(update={"name": f"emubench-three{round_number}", "hosts": models})
        three.append(time_up(swarm, spread))
    context.report.compare("emu up, 6 nodes / 12 pods, three hosts", three, one)


def paths(context: harness.Context) -> None:
    _, local, _, models, swarm = hosts(context)
    topology = load_text(LAB)
    single = Cluster("emubench-paths1", runtime=local)
    spread_cluster = Cluster("emubench-paths3", runtime=swarm)
    try:
        single.up(topology.model_copy(update={"name": single.name}))
        spread_cluster.up(topology.model_copy(update={"name": spread_cluster.name, "hosts": models}))
        on_one, on_three = measure_paths(single), measure_paths(spread_cluster)
    finally:
        single.down()
        spread_cluster.down()
    base_rtt, base_tput = on_one["same node"]
    for lab_name, results in (("1 host", on_one), ("3 hosts", on_three)):
        for label, (rtt, tput) in results.items():
            context.report.compare(f"ping RTT, {label}, {lab_name}", rtt / 1000, base_rtt / 1000, "ms")
            context.report.compare(f"iperf3, {label}, {lab_name}", tput, base_tput, "Gbit/s")


SCENARIOS = [
    harness.Scenario("images", "shipping the node image to 3 hosts with none of it (docker save | load through emu)",
                     "the same shipping with the image already there (a tag check a host)", images),
    harness.Scenario("up", "emu up of 6 nodes / 12 netexec pods spread over three hosts",
                     "the same lab on this machine's one engine, same run", up),
    harness.Scenario("paths", "ping RTT and iperf3 between pods: same node, other node, other host",
                     "the same node pair on one host (ratios are 'x same node')", paths),
    harness.Scenario("check", "emu hosts check with an unreachable host; a second prepare",
                     "emu hosts check of the 3 healthy hosts, same run", check),
]


if __name__ == "__main__":
    sys.exit(harness.main(SCENARIOS, __doc__, runs=3))
