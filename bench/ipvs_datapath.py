#!/usr/bin/env python3
"""IPVS data path inside a User-mode Linux node: pod-to-ClusterIP throughput beside pod-to-pod.

One UML node (emu.control.runtime.uml) in proxyMode ipvs, an iperf3 server pod and a
client pod on it (emu's own CNI lines), and --services ClusterIP services all
selecting the server (so IPVS holds that many virtual servers), programmed by
emu's IPVS proxier. iperf3 runs from the client to the server's pod IP (no
service on the way) and to the first service's cluster IP, alternating,
--rounds times for --seconds each; the medians and their ratio are printed.
Needs root, Docker (the node image, built) and User-mode Linux.

usage: python bench/ipvs_datapath.py [--services 1000] [--runs 3] [--seconds 5] [--json]
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from pathlib import Path

import harness

from emu.node.plan import cni
from emu.node.proxy import proxier
from emu.control.runtime import uml
from emu.control.runtime.images import node_image_tag
from emu.node.services import service_endpoints
from emu.control.state import plan_cluster
from emu.api.topology.load import load_text

BRIDGE = "emubench-ipvsdp"


def topology(services: int) -> str:
    fillers = "".join(
        f"  - {{name: s{i}, selector: {{app: iperf}}, ports: [{{port: 80, targetPort: 5201}}]}}\n"
        for i in range(services)
    )
    return f"""\
name: bench
networking: {{proxyMode: ipvs}}
nodes: [{{name: n1}}]
pods:
  - {{name: client, node: n1, containers: [{{name: c, command: [sleep, infinity]}}]}}
  - {{name: server, node: n1, labels: {{app: iperf}}, containers: [{{name: s, command: [iperf3, -s], ports: [{{containerPort: 5201}}]}}]}}
services:
{fillers}"""


def iperf(guest: uml.Guest, target: str, port: int, seconds: int) -> float:
    out = guest.sh(f"ip netns exec client iperf3 -J -c {target} -p {port} -t {seconds}", timeout=seconds + 60)
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6


def run(context: harness.Context) -> None:
    options = context.options
    uml.require_uml()
    rootfs = uml.make_rootfs(node_image_tag())
    state = plan_cluster(load_text(topology(options.services)), "bench", "192.168.216.0/24")
    node = state.node("n1")
    pods = {pod.name: pod for pod in state.pods.values()}
    uml.ensure_bridge(BRIDGE, "192.168.216.1/24")
    with tempfile.TemporaryDirectory() as state_dir:
        guest = uml.Guest(
            "emubench-ipvsdp", rootfs, BRIDGE, f"{node.node_ip}/24", memory="768M", state_dir=Path(state_dir)
        )
        try:
            guest.boot()
            proxy = proxier("ipvs")
            boot = proxy.bootstrap(state, node, "/etc/emu/plan")
            for path, text in boot.files.items():
                guest.run(["sh", "-c", f"mkdir -p {Path(path).parent} && cat > {path}"], input=text, check=True)
            for step in boot.steps:
                guest.sh(step)
            guest.run(["ip", "-batch", "-"], input=cni.node_setup_batch(state, node), check=True)
            for name in ("client", "server"):
                pod = pods[name]
                guest.run(["ip", "-batch", "-"], input=cni.pod_root_batch(pod), check=True)
                guest.run(["ip", "-n", pod.netns, "-batch", "-"], input=cni.pod_namespace_batch(pod, node), check=True)
                # Not cni.in_pod_argv: with 1,000 services its environment (the service variables) is too long for argv.
                argv = ["ip", "netns", "exec", pod.netns, *cni.container_command(pod.containers[0])]
                guest.sh(f"{shlex.join(argv)} >/dev/null 2>&1 </dev/null &")
            ready = {pod.uid: pod.name == "server" for pod in state.pods.values()}
            endpoints = {key: service_endpoints(state, service, ready) for key, service in state.services.items()}
            proxy.apply(guest.run, proxy.render(state, "n1", endpoints), None)
            servers = guest.sh("ipvsadm -S -n").count("-A ")
            cluster_ip = state.services["default/s0"].cluster_ip
            guest.sh(
                f"for i in $(seq 50); do ip netns exec client nc -z {pods['server'].ip} 5201 && exit 0; sleep 0.2; done; exit 1"
            )
            service, direct = context.alternate(lambda: iperf(guest, cluster_ip, 80, options.seconds),
                                                lambda: iperf(guest, pods["server"].ip, 5201, options.seconds))
        finally:
            guest.shutdown()
            uml.delete_bridge(BRIDGE)
    context.report.note(f"ipvs in UML, {options.services} services ({servers} virtual servers), "
                        f"{context.runs} rounds of {options.seconds} s, alternating")  # fmt: skip
    context.report.compare("pod -> ClusterIP, iperf3", service, direct, "Mbit/s",
                           note="baseline: pod -> the server's pod IP, no service on the way")


def options(parser) -> None:
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=5)


if __name__ == "__main__":
    sys.exit(harness.main([harness.Scenario("ipvs_datapath", "iperf3 client pod -> the first service's ClusterIP "
                                            "in a UML node, ipvs mode", "iperf3 to the server's pod IP", run)],
                          __doc__, runs=3, options=options))  # fmt: skip
