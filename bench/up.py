#!/usr/bin/env python3
"""How fast `emu up` brings a lab up, beside a plain shell script doing the same work.

Two labs, each measured in the same run as its baseline (bench/baseline_up.sh):
  default  topologies/default.yaml (3 nodes, 5 pods, netexec), until every pod answers
  10x50    10 nodes x 50 pods (nc -lk 8080 in each), until every pod answers
Images must be built (`emu images build`); image building is not timed.

usage: python bench/up.py [--rounds N] [--only default|10x50]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emu.control.cluster import Cluster
from emu.control.runtime.docker import DockerRuntime
from emu.control.runtime.images import ImageBuilder
from emu.api.load import load_file, load_text


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["default", "10x50"])
    options = parser.parse_args()

    runtime = DockerRuntime()
    image = ImageBuilder(runtime, print).ensure_node_image()
    default = load_file(ROOT / "topologies" / "default.yaml")
    default_pods = 6  # pods of topologies/default.yaml (client, web, echo x3) and coredns
    labs = {
        # name: (topology, nodes, pods per node for the baseline, baseline workload, pods in total)
        "default": (default, 3, 2, "netexec", default_pods),  # the baseline starts 2 netexec pods a node
        "10x50": (load_text(big_lab(10, 50)), 10, 50, "nc", 500),
    }
    print(f"node image {image}; {options.rounds} rounds each, alternating baseline and emu; median shown")
    print(f"{'lab':8} {'pods':>5} {'baseline s':>11} {'emu s':>8} {'emu pods/s':>11} {'emu/baseline':>13}")
    for lab, (topology, nodes, per_node, workload, total) in labs.items():
        if options.only and lab != options.only:
            continue
        baseline_times, emu_times = [], []
        for round_number in range(options.rounds):
            baseline_times.append(time_baseline(runtime, f"emubench-base{round_number}", nodes, per_node, image, workload))
            emu_times.append(time_emu(runtime, topology, f"emubench-{round_number}"))
        baseline, emu = statistics.median(baseline_times), statistics.median(emu_times)
        print(f"{lab:8} {total:>5} {baseline:>11.2f} {emu:>8.2f} {total / emu:>11.0f} {emu / baseline:>12.2f}x")
        print(f"{'':8} runs: baseline {[round(t, 2) for t in baseline_times]} emu {[round(t, 2) for t in emu_times]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
