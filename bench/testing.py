#!/usr/bin/env python3
"""What emu.testing costs, each beside what one writes by hand, in the same run.

1. A command in a pod through testinfra's emu:// backend (`host.run("true")`:
   Docker's API, the pod's namespace, hostname and environment) beside
   `docker exec NODE ip netns exec POD sh -c true` through the docker CLI (what
   testinfra's docker:// backend runs, with a netns prefix). Medians of --runs.
2. A connectivity matrix, 2 pods x 4 TCP targets (one unanswered port among
   them), with `connectivity(...)` beside one `docker exec ... nc -z -w 2` a
   cell, one after the other. Medians of --rounds.

usage: python bench/testing.py [--runs 30] [--rounds 3] [--only command,matrix] [--json]
"""

from __future__ import annotations

import subprocess
import sys

import harness
from harness import ROOT

from emu.api.load import load_file
from emu.control.cluster import Cluster
from emu.testing import connectivity, pod_host

NAME = "emubench-testing"


def lab(context: harness.Context) -> Cluster:
    """examples/pytest-lab, shared by both scenarios, made on first use."""
    if "lab" not in context.shared:
        topology = load_file(ROOT / "examples" / "pytest-lab" / "lab.yaml").model_copy(update={"name": NAME})
        cluster = Cluster(NAME)
        cluster.down()
        context.stack.callback(cluster.down)
        cluster.up(topology)
        context.shared["lab"] = cluster
    return context.shared["lab"]


def command(context: harness.Context) -> None:
    cluster = lab(context)
    state = cluster.state()
    client = state.pods["default/client"]
    node = state.node(client.node).container
    host = pod_host(cluster, "client")
    assert host.check_output("hostname") == "client"
    backend = context.measure(lambda: host.run("true"))
    cli = ["docker", "exec", node, "ip", "netns", "exec", client.netns, "/bin/sh", "-c", "true"]
    baseline = context.measure(lambda: subprocess.run(cli, check=True))
    context.report.compare("a command in a pod: testinfra emu:// host.run", backend, baseline, "ms")


def matrix(context: harness.Context) -> None:
    cluster = lab(context)
    state = cluster.state()
    web = state.pods["default/web"].ip
    sources = ["client", "web"]
    targets = [f"{web}:8080", f"{web}:9", "echo:80", "web:80"]
    matrix_times, by_hand = [], []
    for _ in range(context.options.rounds):
        matrix_times.append(harness.timed(lambda: connectivity(cluster, sources, targets)))

        def each_cell() -> None:
            for source in sources:
                pod = state.pods[f"default/{source}"]
                for target in targets:
                    address, port = target.rsplit(":", 1)
                    subprocess.run(["docker", "exec", state.node(pod.node).container, "ip", "netns", "exec",
                                    pod.netns, "nc", "-z", "-w", "2", address, port], capture_output=True)  # fmt: skip

        by_hand.append(harness.timed(each_cell))
    context.report.compare("2 pods x 4 TCP targets: connectivity(...)", matrix_times, by_hand)


SCENARIOS = [
    harness.Scenario("command", "a command in a pod through testinfra's emu:// backend (median of --runs)",
                     "docker exec NODE ip netns exec POD sh -c true (the docker CLI)", command),
    harness.Scenario("matrix", "connectivity(...) over 2 pods x 4 TCP targets (median of --rounds)",
                     "one docker exec ... nc -z -w 2 a cell, one after the other", matrix),
]


def options(parser) -> None:
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the connectivity matrix")


if __name__ == "__main__":
    sys.exit(harness.main(SCENARIOS, __doc__, runs=30, options=options, rounds_alias=False))
