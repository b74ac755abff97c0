#!/usr/bin/env python3
"""How fast `emu up` brings a small lab up on User-mode Linux nodes, beside docker nodes, in one run.

The lab: a control-plane and a worker, two netexec pods (one a node) behind a
ClusterIP service, and the cluster DNS; `up` is timed until every pod answers
and the agents programmed the services (Cluster.up, as `emu up` runs it), then
`down` until nothing is left. Rounds alternate docker and uml.
  ipvs      uml nodes in proxyMode ipvs (the issue's lab) against docker nodes
            in iptables mode (docker nodes refuse ipvs: the host has no ip_vs)
  iptables  both in iptables mode: the same work on either runtime
Needs root and Docker; images and the uml root filesystem are made first, untimed.
Run it alone: `flock /tmp/emutest-integration.lock python bench/uml_up.py`.

usage: python bench/uml_up.py [--runs N] [--only ipvs,iptables] [--json]
"""

from __future__ import annotations

import itertools
import sys
import time

import harness

from emu.api.load import load_text
from emu.control.cluster import Cluster
from emu.control.runtime.docker import DockerRuntime
from emu.control.runtime.umlprovider import UmlRuntime

NETEXEC = "{name: s, workload: netexec, ports: [{name: http, containerPort: 8080}]}"
LAB = f"""
name: NAME
networking: {{proxyMode: MODE}}
nodes:
  - {{name: cp, role: control-plane}}
  - {{name: w1}}
pods:
  - {{name: a, node: cp, labels: {{app: web}}, containers: [{NETEXEC}]}}
  - {{name: b, node: w1, labels: {{app: web}}, containers: [{NETEXEC}]}}
services:
  - {{name: web, selector: {{app: web}}, ports: [{{port: 80, targetPort: http}}]}}
"""


def up_and_down(runtime, name: str, mode: str) -> tuple[float, float]:
    """(seconds of up, seconds of down) of the lab on `runtime`."""
    topology = load_text(LAB.replace("NAME", name).replace("MODE", mode))
    cluster = Cluster(name, runtime=runtime)
    started = time.perf_counter()
    try:
        cluster.up(topology, wait=True)
        up = time.perf_counter() - started
    finally:
        started = time.perf_counter()
        cluster.down()
        down = time.perf_counter() - started
    return up, down


def scenario(uml_mode: str):
    def run(context: harness.Context) -> None:
        docker, uml = DockerRuntime(), UmlRuntime()
        uml.node_image(print)  # the node image and its root filesystem, made once, untimed
        docker.node_image(print)
        up_and_down(uml, "emubench-uml-warm", uml_mode)  # the page cache holds the root filesystem
        context.report.note(f"{context.runs} rounds, alternating docker and uml; uml in {uml_mode}, docker in iptables")
        on_docker, on_uml = itertools.count(), itertools.count()
        dockers, umls = context.rounds(lambda: up_and_down(docker, f"emubench-docker{next(on_docker)}", "iptables"),
                                       lambda: up_and_down(uml, f"emubench-uml{next(on_uml)}", uml_mode))  # fmt: skip
        context.report.compare("up: 2 nodes, 3 pods answering (uml/docker)", [u for u, _ in umls],
                               [u for u, _ in dockers])  # fmt: skip
        context.report.compare("down: nothing left (uml/docker)", [d for _, d in umls], [d for _, d in dockers])

    return run


SCENARIOS = [
    harness.Scenario("ipvs", "emu up of the 2-node lab on uml nodes in ipvs mode", "the same lab on docker nodes "
                     "(iptables mode: docker nodes refuse ipvs)", scenario("ipvs")),  # fmt: skip
    harness.Scenario("iptables", "emu up of the 2-node lab on uml nodes in iptables mode",
                     "the same lab on docker nodes, iptables mode", scenario("iptables")),  # fmt: skip
]


if __name__ == "__main__":
    sys.exit(harness.main(SCENARIOS, __doc__, runs=3))
