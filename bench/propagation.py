#!/usr/bin/env python3
"""From an endpoint change to every node of a cluster programmed (3 nodes, or --nodes N).

A backend pod's readiness probe is made to fail (netexec /sethealth), then to
pass again, --rounds times each. The change starts when the agent on the pod's
node sees the readiness change (its log line); it ends when the last of the 3
agents has written the new rules (their "synced" lines). Node clocks are the
host's clock, so the log timestamps compare directly.

Baseline, same run: the host pushes the same kind of change itself, one
`docker exec NODE iptables-restore --noflush` per node in parallel (a central
controller without node agents).

usage: python bench/propagation.py [--runs 10] [--nodes 3] [--json]
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

import harness

from emu.api.topology.load import load_text
from emu.control.cluster import Cluster
from emu.node.plan import cni

LAB = """\
name: emubench-prop
nodes: NODES
pods:
  - name: client
    node: w1
    containers: [{name: c, command: [sleep, infinity]}]
deployments:
  - name: backend
    replicas: 2
    template:
      labels: {app: backend}
      containers:
        - name: netexec
          workload: netexec
          ports: [{name: http, containerPort: 8080}]
          readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 0.1, failureThreshold: 1}
services:
  - name: backend
    selector: {app: backend}
    ports: [{port: 80, targetPort: http}]
"""


def agent_lines(cluster: Cluster, node: str) -> list[tuple[float, str]]:
    text = cluster.node_exec(node, ["cat", cni.AGENT_LOG]).output
    lines = []
    for line in text.splitlines():
        stamp, _, message = line.partition(" ")
        try:
            lines.append((float(stamp), message))
        except ValueError:
            continue
    return lines


def one_change(cluster: Cluster, pod_ip: str, pod_node: str, nodes: list[str], status: str) -> float:
    before = time.time()
    result = cluster.exec("client", ["curl", "-sS", f"http://{pod_ip}:8080/sethealth?status={status}"])
    assert result.ok, result.output
    deadline = time.time() + 10
    while time.time() < deadline:
        time.sleep(0.3)
        seen = [t for t, m in agent_lines(cluster, pod_node) if t >= before and m.startswith("readiness")]
        if not seen:
            continue
        start = seen[0]
        ends = []
        with ThreadPoolExecutor(16) as pool:
            logs = list(pool.map(lambda node: agent_lines(cluster, node), nodes))
        for lines in logs:
            synced = [t for t, m in lines if t >= start and m.startswith("synced")]
            if synced:
                ends.append(synced[0])
        if len(ends) == len(nodes):
            return max(ends) - start
    raise RuntimeError("the change did not reach every node within 10 s")


def baseline_push(cluster: Cluster, nodes: list[str], round_number: int) -> float:
    containers = [cluster.state().node(n).container for n in nodes]
    chain = f"EMU-BENCH-{round_number % 2}"
    text = f"*nat\n:{chain} - [0:0]\n-A {chain} -d 10.244.1.{round_number % 250}/32 -j RETURN\nCOMMIT\n"

    def push(container: str) -> None:
        cluster.runtime.put_files(container, {"/tmp/bench.rules": text})
        assert cluster.runtime.exec(container, ["iptables-restore", "--noflush", "/tmp/bench.rules"]).ok

    def push_all() -> None:
        with ThreadPoolExecutor(len(containers)) as pool:
            list(pool.map(push, containers))

    return harness.timed(push_all)


def propagation(context: harness.Context) -> None:
    options = context.options
    nodes_yaml = "[{name: cp, role: control-plane}, " + ", ".join(f"{{name: w{i}}}" for i in range(1, options.nodes)) + "]"
    cluster = Cluster("emubench-prop")
    cluster.down()
    cluster.up(load_text(LAB.replace("NODES", nodes_yaml)))
    try:
        state = cluster.state()
        pod = min((p for p in state.pods.values() if p.labels.get("app") == "backend"), key=lambda p: p.name)
        nodes = [n.name for n in state.nodes]
        emu_times, base_times = [], []
        for round_number in range(context.runs):
            for status in ("fail", "ok"):
                emu_times.append(one_change(cluster, pod.ip, pod.node, nodes, status))
                base_times.append(baseline_push(cluster, nodes, round_number))
        context.report.compare(f"{len(emu_times)} endpoint changes, {len(nodes)} nodes", emu_times, base_times, "ms",
                               note="emu: readiness seen on the pod's node -> last node synced")  # fmt: skip
    finally:
        cluster.down()


SCENARIOS = [
    harness.Scenario("propagation", "a backend's readiness fails and passes: agent sees it -> every node's rules synced",
                     "the host pushes a one-chain change with docker exec iptables-restore, all nodes in parallel",
                     propagation),
]


def options(parser) -> None:
    parser.add_argument("--nodes", type=int, default=3)


if __name__ == "__main__":
    sys.exit(harness.main(SCENARIOS, __doc__, runs=10, options=options))
