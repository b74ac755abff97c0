#!/usr/bin/env python3
"""kube-proxy's part of the agents fed by the API server (--proxy-from api) beside the
hub path (--proxy-from state), both in one run (cni.PROXY_FROM_API picks which one a
new cluster's agents use).

propagation  one endpoint change reaching the rules of every node of an N-node lab
             (--nodes, 20 by default): a backend's readiness probe made to fail, then
             to pass (netexec /sethealth), --runs times each. From the agent on the
             pod's node seeing the readiness change (its log line) to the last node's
             "synced" line. API path: kubelet -> PATCH pods/status -> the API server's
             EndpointSlice controller -> every agent's watch -> its rules. Hub path:
             kubelet -> the hub -> every agent -> its rules. Node clocks are the host's.
up           `emu up` of topologies/default.yaml until it returns (the API path waits
             for every node's rules to reflect the API's EndpointSlices), then down.

usage: python bench/proxy_from_api.py [--runs 5] [--nodes 20] [--only propagation,up] [--json]
"""

from __future__ import annotations

import sys

import harness
from harness import ROOT
from propagation import LAB, one_change

from emu.api.load import load_file, load_text
from emu.control.cluster import Cluster
from emu.node.plan import cni


def with_source(from_api: bool, fn):
    saved = cni.PROXY_FROM_API
    cni.PROXY_FROM_API = from_api
    try:
        return fn()
    finally:
        cni.PROXY_FROM_API = saved


def changes(context: harness.Context, from_api: bool) -> list[float]:
    nodes_yaml = "[{name: cp, role: control-plane}, " + ", ".join(
        f"{{name: w{i}}}" for i in range(1, context.options.nodes)) + "]"  # fmt: skip
    cluster = Cluster("emubench-kpapi")
    cluster.down()
    with_source(from_api, lambda: cluster.up(load_text(LAB.replace("NODES", nodes_yaml).replace(
        "emubench-prop", "emubench-kpapi"))))  # fmt: skip
    try:
        state = cluster.state()
        pod = min((p for p in state.pods.values() if p.labels.get("app") == "backend"), key=lambda p: p.name)
        nodes = [n.name for n in state.nodes]
        times = []
        for _ in range(context.runs):
            for status in ("fail", "ok"):
                times.append(one_change(cluster, pod.ip, pod.node, nodes, status))
        return times
    finally:
        cluster.down()


def propagation(context: harness.Context) -> None:
    hub = changes(context, from_api=False)
    api = changes(context, from_api=True)
    context.report.compare(f"{len(api)} endpoint changes, {context.options.nodes} nodes", api, hub, "ms",
                           note="emu: through the API server; baseline: through the hub (as before)")  # fmt: skip


def up(context: harness.Context) -> None:
    def once(from_api: bool) -> float:
        cluster = Cluster("emubench-kpapi-up")
        cluster.down()
        topology = load_file(ROOT / "topologies" / "default.yaml").model_copy(update={"name": "emubench-kpapi-up"})
        try:
            return with_source(from_api, lambda: harness.timed(lambda: cluster.up(topology)))
        finally:
            cluster.down()

    api, hub = context.alternate(lambda: once(True), lambda: once(False))  # the machine's load falls on both alike
    context.report.compare("emu up of the default lab", api, hub, "s",
                           note="emu: rules from the API (waits for them); baseline: state file and hub")


SCENARIOS = [
    harness.Scenario("propagation", "one endpoint change -> every node's rules, through the API server",
                     "the same change through the hub (--proxy-from state)", propagation),
    harness.Scenario("up", "emu up of topologies/default.yaml, rules from the API server",
                     "the same with rules from the state file and the hub", up),
]


def options(parser) -> None:
    parser.add_argument("--nodes", type=int, default=20)


if __name__ == "__main__":
    sys.exit(harness.main(SCENARIOS, __doc__, runs=5, options=options))
