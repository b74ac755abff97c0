#!/usr/bin/env python3
"""The edge's figures in one run, each beside its baseline:

1. NetworkPolicy sync on one node (agent stopped), 1,000 pods, 100 and 1,000
   policies: emu's first sync (render + ipset restore + iptables-restore + hook)
   beside a bare `ipset restore` + `iptables-restore` of the same text, and the
   sync after one policy changed. Medians of --rounds.
2. Pod-to-pod TCP throughput (iperf3, across nodes) with 100 policies selecting
   the server in force, beside none; rounds alternate (ABBA), medians.
3. HTTP requests per second (wrk, keep-alive) from a pod through the ingress
   controller (nginx) to a service of 3 netexec endpoints, beside the same pod
   sending straight to the 3 pods (three wrk at once, a third of the
   connections each); rounds alternate, medians.

usage: python bench/edge.py [--runs 3] [--only sync,throughput,ingress] [--json]
"""

from __future__ import annotations

import json
import re
import sys
import time

import harness
from harness import ROOT

from emu.api.topology.load import load_text
from emu.control.cluster import Cluster
from emu.node.plan import cni

LAB = """\
name: emubench-edge
nodes: [{name: cp, role: control-plane}, {name: w1}, {name: w2}]
pods:
  - {name: client, node: w1, labels: {role: client}, enableServiceLinks: false, containers: [{name: c, command: [sleep, infinity]}]}
  - {name: server, node: w2, labels: {app: server}, enableServiceLinks: false,
     containers: [{name: c, command: [iperf3, -s], ports: [{containerPort: 5201}]}]}
deployments:
  - name: echo
    replicas: 3
    template:
      labels: {app: echo}
      enableServiceLinks: false
      containers: [{name: c, workload: netexec, ports: [{name: http, containerPort: 8080}]}]
services:
  - {name: echo, selector: {app: echo}, ports: [{port: 80, targetPort: http}]}
ingresses:
  - name: echo
    rules: [{host: bench.example.com, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: echo, port: {number: 80}}}}]}}]
"""


def policies(count: int) -> str:
    """`count` policies on the server, each admitting one role; the last admits the client."""
    lines = ["networkPolicies:"]
    for k in range(count):
        role = "client" if k == count - 1 else f"r{k}"
        lines.append(f"  - {{name: np{k}, podSelector: {{matchLabels: {{app: server}}}}, "
                     f"ingress: [{{from: [{{podSelector: {{matchLabels: {{role: {role}}}}}}}], ports: [{{port: 5201}}]}}]}}")
    return "\n".join(lines) + "\n"


def sync_figures(context: harness.Context) -> None:
    rounds, report = context.runs, context.report
    cluster = Cluster("emubench-policy")
    cluster.down()
    cluster.up(load_text("name: emubench-policy\nnodes: [{name: n0, role: control-plane}]\n"))
    try:
        node = cluster.state().nodes[0].container
        cluster.runtime.exec(node, ["pkill", "-f", "emu.node.agent"])
        cluster.runtime.put_files(node, {
            "/opt/emu/bench/node_policy_sync.py": (ROOT / "bench" / "node_policy_sync.py").read_text(),
            "/opt/emu/bench/harness.py": (ROOT / "bench" / "harness.py").read_text(),
        })  # fmt: skip
        for count in (100, 1000):
            argv = ["env", f"PYTHONPATH={cni.AGENT_LIB}", "python3", "/opt/emu/bench/node_policy_sync.py", str(count), str(rounds)]
            result = cluster.runtime.exec(node, argv)
            if not result.ok:
                raise SystemExit(result.output)
            r = json.loads(result.output.strip().splitlines()[-1])
            label = f"{r['policies']} policies, {r['pods']} pods, {r['sets']} sets, {r['rules']} rules"
            report.compare(f"{label}: emu full sync", r["emu_full"], r["bare"])
            report.figure(f"{label}: one changed", r["partial"])
    finally:
        cluster.down()


def edge_lab(context: harness.Context) -> Cluster:
    """The 3-node lab throughput and ingress share, made on first use."""
    if "edge" not in context.shared:
        cluster = Cluster("emubench-edge")
        cluster.down()
        context.stack.callback(cluster.down)
        cluster.up(load_text(LAB))
        context.shared["edge"] = cluster
    return context.shared["edge"]


def throughput(context: harness.Context) -> None:
    cluster, rounds, report = edge_lab(context), context.runs, context.report
    server = cluster.state().pods["default/server"].ip
    base = LAB.replace("name: emubench-edge", f"name: {cluster.name}")

    def iperf() -> float:
        result = cluster.exec("client", ["iperf3", "-c", server, "-t", "4", "-J"])
        return json.loads(result.output)["end"]["sum_received"]["bits_per_second"] / 1e9

    without, with_policies, applies = [], [], []
    for index in range(rounds):
        # ABBA order, and a second to settle after each apply: this 2-core machine's
        # throughput wanders by a third from run to run.
        order = [(base, without), (base + policies(100), with_policies)]
        for text, results in order if index % 2 == 0 else order[::-1]:
            started = time.monotonic()
            cluster.apply(load_text(text))  # returns once every node's agent has written the new state
            applies.append(time.monotonic() - started)
            time.sleep(1)
            results.append(iperf())
    cluster.apply(load_text(base + policies(100).replace("role: client", "role: nobody")))
    denied = cluster.exec("client", ["iperf3", "-c", server, "-t", "1", "--connect-timeout", "1000"])
    cluster.apply(load_text(base))
    report.compare("iperf3 client (w1) -> server (w2), 100 policies", with_policies, without, "Gbit/s",
                   note=f"with the client's policy removed, iperf3 {'was refused' if not denied.ok else 'still connected (wrong)'}")
    report.figure("emu apply of a change of 100 policies", applies,
                  note="until every node's agent has written it (the agents' sync: 'network policies of generation' in their logs)")


def ingress_rate(context: harness.Context) -> None:
    cluster, rounds, report = edge_lab(context), context.runs, context.report
    state = cluster.state()
    controller = next(p for p in state.pods.values() if p.namespace == "ingress-nginx")
    echo = sorted(p.ip for p in state.pods.values() if p.labels.get("app") == "echo")

    def wrk(urls: list[str], connections: int, header: str = "") -> float:
        runs = " & ".join(
            f"wrk -t1 -c{connections} -d6s {header} {url} > /tmp/wrk{i}.out" for i, url in enumerate(urls)
        ) + " & wait; cat /tmp/wrk*.out; rm -f /tmp/wrk*.out"
        output = cluster.exec("client", ["sh", "-c", runs]).output
        return sum(float(x) for x in re.findall(r"Requests/sec:\s+([\d.]+)", output))

    through, direct = [], []
    for _ in range(rounds):
        through.append(wrk([f"http://{controller.ip}/hostname"] * 3, 8, "-H 'Host: bench.example.com'"))
        direct.append(wrk([f"http://{ip}:8080/hostname" for ip in echo], 8))
    report.compare("wrk from a pod, 24 connections, via nginx", through, direct, "req/s")


SCENARIOS = [
    harness.Scenario("sync", "NetworkPolicy sync on one node (agent stopped), 1,000 pods, 100 and 1,000 policies",
                     "ipset restore + iptables-restore of the same text, nothing else", sync_figures),
    harness.Scenario("throughput", "iperf3 pod to pod across nodes with 100 policies selecting the server (ABBA)",
                     "the same with no policy", throughput),
    harness.Scenario("ingress", "wrk req/s from a pod through the ingress controller (nginx) to 3 endpoints",
                     "the same pod straight to the 3 pods (three wrk at once)", ingress_rate),
]


if __name__ == "__main__":
    sys.exit(harness.main(SCENARIOS, __doc__, runs=3))
