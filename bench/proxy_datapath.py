#!/usr/bin/env python3
"""Data path of each proxy mode: pod-to-ClusterIP throughput beside pod-to-pod.

For each mode (iptables, nftables), a 3-node cluster with an iperf3 server pod
on w2, a client pod on w1 and --services ClusterIP services (all selecting the
server, so each has rules and an endpoint). iperf3 runs from the client to the
server's pod IP (the baseline: no service rules on the way) and to the
service's cluster IP, alternating, --rounds times for --seconds each; the
medians and their ratio are printed.

usage: python bench/proxy_datapath.py [--services 1000] [--rounds 3] [--seconds 5] [--modes iptables,nftables]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emu.control.cluster import Cluster  # noqa: E402
from emu.api.topology.load import load_text  # noqa: E402


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--modes", default="iptables,nftables")
    options = parser.parse_args()
    print(f"{'mode':>9} {'services':>8} {'pod-to-pod Gbit/s':>18} {'pod-to-ClusterIP Gbit/s':>24} {'ratio':>6}")
    for mode in options.modes.split(","):
        name = f"emubench-dp-{mode[:3]}"
        cluster = Cluster(name)
        cluster.down()
        try:
            cluster.up(load_text(topology(name, mode, options.services)))
            state = cluster.state()
            pod_ip, service_ip = state.pods["default/server"].ip, state.services["default/iperf"].cluster_ip
            direct, via = [], []
            for _ in range(options.rounds):
                direct.append(gbits(cluster, pod_ip, options.seconds))
                via.append(gbits(cluster, service_ip, options.seconds))
            d, v = statistics.median(direct), statistics.median(via)
            print(f"{mode:>9} {options.services:>8} {d:>18.2f} {v:>24.2f} {v / d:>5.2f}x")
        finally:
            cluster.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
