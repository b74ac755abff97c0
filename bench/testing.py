#!/usr/bin/env python3
"""What emu.testing costs, each beside what one writes by hand, in the same run.

1. A command in a pod through testinfra's emu:// backend (`host.run("true")`:
   Docker's API, the pod's namespace, hostname and environment) beside
   `docker exec NODE ip netns exec POD sh -c true` through the docker CLI (what
   testinfra's docker:// backend runs, with a netns prefix). Medians of --runs.
2. A connectivity matrix, 2 pods x 4 TCP targets (one unanswered port among
   them), with `connectivity(...)` beside one `docker exec ... nc -z -w 2` a
   cell, one after the other. Medians of --rounds.

usage: python bench/testing.py [--runs 30] [--rounds 3]
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

from emu.control.cluster import Cluster  # noqa: E402
from emu.testing import connectivity, pod_host  # noqa: E402
from emu.api.load import load_file  # noqa: E402

NAME = "emubench-testing"


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()

    topology = load_file(ROOT / "examples" / "pytest-lab" / "lab.yaml").model_copy(update={"name": NAME})
    cluster = Cluster(NAME)
    cluster.down()
    try:
        cluster.up(topology)
        state = cluster.state()
        client = state.pods["default/client"]
        node = state.node(client.node).container
        web = state.pods["default/web"].ip

        host = pod_host(cluster, "client")
        assert host.check_output("hostname") == "client"
        backend = [timed(lambda: host.run("true")) for _ in range(options.runs)]
        cli = ["docker", "exec", node, "ip", "netns", "exec", client.netns, "/bin/sh", "-c", "true"]
        baseline = [timed(lambda: subprocess.run(cli, check=True)) for _ in range(options.runs)]
        print(f"a command in a pod, median of {options.runs}:")
        print(f"  testinfra emu:// host.run   {statistics.median(backend) * 1000:7.1f} ms")
        print(f"  docker exec ... ip netns    {statistics.median(baseline) * 1000:7.1f} ms")
        print(f"  ratio                       {statistics.median(backend) / statistics.median(baseline):7.2f}x")

        sources = ["client", "web"]
        targets = [f"{web}:8080", f"{web}:9", "echo:80", "web:80"]
        matrix_times, by_hand = [], []
        for _ in range(options.rounds):
            matrix_times.append(timed(lambda: connectivity(cluster, sources, targets)))

            def each_cell() -> None:
                for source in sources:
                    pod = state.pods[f"default/{source}"]
                    for target in targets:
                        address, port = target.rsplit(":", 1)
                        subprocess.run(["docker", "exec", state.node(pod.node).container, "ip", "netns", "exec",
                                        pod.netns, "nc", "-z", "-w", "2", address, port], capture_output=True)  # fmt: skip

            by_hand.append(timed(each_cell))
        print(f"2 pods x 4 TCP targets, median of {options.rounds}:")
        print(f"  connectivity(...)           {statistics.median(matrix_times):7.2f} s")
        print(f"  nc a cell, one by one       {statistics.median(by_hand):7.2f} s")
        print(f"  ratio                       {statistics.median(matrix_times) / statistics.median(by_hand):7.2f}x")
    finally:
        cluster.down()


if __name__ == "__main__":
    main()
