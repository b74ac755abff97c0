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

usage: python bench/edge.py [--rounds 3] [--only sync|throughput|ingress]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emu.control.cluster import Cluster  # noqa: E402
from emu.node.plan import cni  # noqa: E402
from emu.api.topology.load import load_text  # noqa: E402

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


def sync_figures(rounds: int) -> None:
    cluster = Cluster("emubench-policy")
    cluster.down()
    cluster.up(load_text("name: emubench-policy\nnodes: [{name: n0, role: control-plane}]\n"))
    try:
        node = cluster.state().nodes[0].container
        cluster.runtime.exec(node, ["pkill", "-f", "emu.node.agent"])
        cluster.runtime.put_files(node, {"/opt/emu/bench/node_policy_sync.py": (ROOT / "bench" / "node_policy_sync.py").read_text()})
        print(f"{'policies':>8} {'pods':>5} {'sets':>5} {'rules':>6} {'emu full s':>10} {'bare s':>8} {'emu/bare':>9} {'one changed s':>14}")
        for count in (100, 1000):
            argv = ["env", f"PYTHONPATH={cni.AGENT_LIB}", "python3", "/opt/emu/bench/node_policy_sync.py", str(count), str(rounds)]
            result = cluster.runtime.exec(node, argv)
            if not result.ok:
                raise SystemExit(result.output)
            r = json.loads(result.output.strip().splitlines()[-1])
            print(f"{r['policies']:>8} {r['pods']:>5} {r['sets']:>5} {r['rules']:>6} {r['emu_full']:>10.3f} {r['bare']:>8.3f} "
                  f"{r['emu_full'] / r['bare']:>8.2f}x {r['partial']:>14.3f}")
    finally:
        cluster.down()


def median(values: list[float]) -> float:
    return statistics.median(values)


def throughput(cluster: Cluster, rounds: int) -> None:
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
    print(f"iperf3 client (w1) -> server (w2): no policy {median(without):.2f} Gbit/s, 100 policies "
          f"{median(with_policies):.2f} Gbit/s ({median(with_policies) / median(without):.2f}x); "
          f"with the client's policy removed, iperf3 {'was refused' if not denied.ok else 'still connected (wrong)'}")
    print(f"emu apply of a change of 100 policies, until every node's agent has written it: median "
          f"{median(applies):.2f} s (of it, the agents' sync: see 'network policies of generation' in their logs)")


def ingress_rate(cluster: Cluster, rounds: int) -> None:
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
    print(f"wrk from a pod, 24 connections: through nginx to 3 endpoints {median(through):,.0f} req/s, "
          f"straight to the 3 pods {median(direct):,.0f} req/s ({median(through) / median(direct):.2f}x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["sync", "throughput", "ingress"])
    options = parser.parse_args()
    if options.only in (None, "sync"):
        sync_figures(options.rounds)
    if options.only in (None, "throughput", "ingress"):
        cluster = Cluster("emubench-edge")
        cluster.down()
        cluster.up(load_text(LAB))
        try:
            if options.only in (None, "throughput"):
                throughput(cluster, options.rounds)
            if options.only in (None, "ingress"):
                ingress_rate(cluster, options.rounds)
        finally:
            cluster.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
