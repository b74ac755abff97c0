#!/usr/bin/env python3
"""How fast `emu up` brings a lab up, beside a plain shell script doing the same work.

Two labs, each measured in the same run as its baseline (bench/baseline_up.sh):
  default  topologies/default.yaml (3 nodes, 5 pods, netexec), until every pod answers
  10x50    10 nodes x 50 pods (nc -lk 8080 in each), until every pod answers
Images must be built (`emu images build`); image building is not timed.

usage: python bench/up.py [--runs N] [--only default,10x50] [--json]
"""

from __future__ import annotations

import subprocess
import sys
import time

import harness
from harness import ROOT

from emu.api.load import load_file, load_text
from emu.control.cluster import Cluster
from emu.control.runtime.docker import DockerRuntime
from emu.control.runtime.images import ImageBuilder


def big_lab(nodes: int, pods_per_node: int) -> str:
    lines = ["name: bench", "nodes:", "  - {name: n0, role: control-plane}"]
    lines += [f"  - {{name: n{i}}}" for i in range(1, nodes)]
    lines.append("deployments:")
    for i in range(nodes):
        lines += [
            f"  - name: pods-n{i}",
            f"    replicas: {pods_per_node}",
            "    template:",
            f"      node: n{i}",
            "      containers:",
            "        - name: nc",
            "          command: [nc, -lk, '8080']",
            "          ports: [{containerPort: 8080}]",
        ]
    return "\n".join(lines) + "\n"


def time_emu(runtime: DockerRuntime, topology, name: str) -> float:
    topology = topology.model_copy(update={"name": name})
    cluster = Cluster(name, runtime=runtime)
    started = time.perf_counter()
    try:
        cluster.up(topology, wait=True)
        return time.perf_counter() - started
    finally:
        cluster.down()


def time_baseline(runtime: DockerRuntime, name: str, nodes: int, pods: int, image: str, workload: str) -> float:
    subnet = runtime.free_subnet(["10.244.0.0/16", "10.96.0.0/16"])
    started = time.perf_counter()
    try:
        subprocess.run(
            [str(ROOT / "bench" / "baseline_up.sh"), name, str(nodes), str(pods), image, subnet, workload],
            check=True,
        )
        return time.perf_counter() - started
    finally:
        for container in runtime.api.containers(all=True, filters={"label": f"io.emu.bench={name}"}):
            runtime.api.remove_container(container["Id"], force=True)
        for network in runtime.api.networks(filters={"label": f"io.emu.bench={name}"}):
            runtime.api.remove_network(network["Id"])


def lab_scenario(lab: str):
    def run(context: harness.Context) -> None:
        runtime = DockerRuntime()
        image = ImageBuilder(runtime, print).ensure_node_image()
        default_pods = 6  # pods of topologies/default.yaml (client, web, echo x3) and coredns
        labs = {
            # name: (topology, nodes, pods per node for the baseline, baseline workload, pods in total)
            "default": (lambda: load_file(ROOT / "topologies" / "default.yaml"), 3, 2, "netexec", default_pods),
            "10x50": (lambda: load_text(big_lab(10, 50)), 10, 50, "nc", 500),
        }
        make, nodes, per_node, workload, total = labs[lab]
        topology = make()
        context.report.note(f"node image {image}; {context.runs} rounds, alternating baseline and emu")
        baseline_times, emu_times = [], []
        for round_number in range(context.runs):
            baseline_times.append(time_baseline(runtime, f"emubench-base{round_number}", nodes, per_node, image, workload))
            emu_times.append(time_emu(runtime, topology, f"emubench-{round_number}"))
        context.report.compare(f"{lab}: {total} pods, every pod answering", emu_times, baseline_times)
        context.report.figure(f"{lab}: emu pods/s", [total / t for t in emu_times], "pods/s")

    return run


SCENARIOS = [
    harness.Scenario("default", "emu up of topologies/default.yaml (3 nodes, netexec pods + DNS) until every pod answers",
                     "bench/baseline_up.sh: docker run + ip commands by hand, 2 netexec pods a node", lab_scenario("default")),
    harness.Scenario("10x50", "emu up of 10 nodes x 50 pods (nc -lk 8080) until every pod answers",
                     "bench/baseline_up.sh: the same nodes and pods by hand", lab_scenario("10x50")),
]


if __name__ == "__main__":
    sys.exit(harness.main(SCENARIOS, __doc__, runs=3))
