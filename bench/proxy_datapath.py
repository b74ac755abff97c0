#!/usr/bin/env python3
"""Data path of each proxy mode: pod-to-ClusterIP throughput beside pod-to-pod.

For each mode (iptables, nftables), a 3-node cluster with an iperf3 server pod
on w2, a client pod on w1 and --services ClusterIP services (all selecting the
server, so each has rules and an endpoint). iperf3 runs from the client to the
server's pod IP (the baseline: no service rules on the way) and to the
service's cluster IP, alternating, --rounds times for --seconds each; the
medians and their ratio are printed.

usage: python bench/proxy_datapath.py [--services 1000] [--runs 3] [--seconds 5] [--only iptables,nftables] [--json]
(--modes is the old name of --only)
"""

from __future__ import annotations

import json
import sys

import harness

from emu.api.topology.load import load_text
from emu.control.cluster import Cluster


def topology(name: str, mode: str, services: int) -> str:
    fillers = "".join(
        f"  - {{name: s{i}, selector: {{app: iperf}}, ports: [{{port: 80, targetPort: 5201}}]}}\n" for i in range(services)
    )
    return f"""\
name: {name}
networking: {{proxyMode: {mode}}}
nodes: [{{name: cp, role: control-plane}}, {{name: w1}}, {{name: w2}}]
pods:
  - name: client
    node: w1
    containers: [{{name: c, command: [sleep, infinity]}}]
  - name: server
    node: w2
    labels: {{app: iperf}}
    containers: [{{name: c, command: [iperf3, -s], ports: [{{containerPort: 5201}}]}}]
services:
  - {{name: iperf, selector: {{app: iperf}}, ports: [{{port: 5201, targetPort: 5201}}]}}
{fillers}"""


def gbits(cluster: Cluster, address: str, seconds: int) -> float:
    result = cluster.exec("client", ["iperf3", "-c", address, "-t", str(seconds), "-J"])
    if not result.ok:
        raise RuntimeError(result.output[-500:])
    return json.loads(result.output)["end"]["sum_received"]["bits_per_second"] / 1e9


def datapath(mode: str):
    def run(context: harness.Context) -> None:
        options = context.options
        name = f"emubench-dp-{mode[:3]}"
        cluster = Cluster(name)
        cluster.down()
        try:
            cluster.up(load_text(topology(name, mode, options.services)))
            state = cluster.state()
            pod_ip, service_ip = state.pods["default/server"].ip, state.services["default/iperf"].cluster_ip
            direct, via = [], []
            for _ in range(context.runs):
                direct.append(gbits(cluster, pod_ip, options.seconds))
                via.append(gbits(cluster, service_ip, options.seconds))
            context.report.compare(f"{mode}, {options.services} services: pod-to-ClusterIP", via, direct, "Gbit/s")
        finally:
            cluster.down()

    return run


SCENARIOS = [
    harness.Scenario(mode, f"iperf3 pod (w1) to a ClusterIP service (server on w2), {mode} mode",
                     "iperf3 to the server's pod IP, alternating, same cluster", datapath(mode))
    for mode in ("iptables", "nftables")
]


def options(parser) -> None:
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=5)


if __name__ == "__main__":
    # --modes A,B was this script's name for choosing scenarios: the same as --only.
    sys.exit(harness.main(SCENARIOS, __doc__, runs=3, options=options,
                          argv=["--only" if a == "--modes" else a for a in sys.argv[1:]]))
