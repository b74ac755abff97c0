"""Rules that span fields: names unique, CIDRs sane, pods fit their nodes.

Each check yields (yaml_path, message). Pure: no Docker, no files.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterator

from emu.topology.model import PodTemplate, Topology

NODE_CIDR_PREFIX = 24  # one /24 of podSubnet per node, as kubeadm's default --node-cidr-mask-size
# A /24 holds 256 addresses: network, gateway (the bridge) and broadcast are not pods'.
PODS_PER_NODE = 2 ** (32 - NODE_CIDR_PREFIX) - 3

Finding = tuple[tuple, str]


def check_topology(topology: Topology) -> list[Finding]:
    """Every cross-field problem of a topology that passed the schema."""
    return [
        *_check_subnets(topology),
        *_check_nodes(topology),
        *_check_workloads(topology),
        *_check_capacity(topology),
    ]


def _check_subnets(topology: Topology) -> Iterator[Finding]:
    pods = ipaddress.IPv4Network(topology.networking.pod_subnet)
    services = ipaddress.IPv4Network(topology.networking.service_subnet)
    if pods.prefixlen > NODE_CIDR_PREFIX:
        yield (
            ("networking", "podSubnet"),
            f"podSubnet {pods} is smaller than one node's /{NODE_CIDR_PREFIX}; "
            f"use a /{NODE_CIDR_PREFIX} or larger (e.g. 10.244.0.0/16)",
        )
    elif len(topology.nodes) > 2 ** (NODE_CIDR_PREFIX - pods.prefixlen):
        yield (
            ("networking", "podSubnet"),
            f"podSubnet {pods} holds {2 ** (NODE_CIDR_PREFIX - pods.prefixlen)} node CIDRs "
            f"(/{NODE_CIDR_PREFIX} each) but there are {len(topology.nodes)} nodes; use a larger podSubnet",
        )
    if services.prefixlen > 28:
        yield (
            ("networking", "serviceSubnet"),
            f"serviceSubnet {services} is too small: it must hold the kubernetes and kube-dns "
            "service IPs; use a /28 or larger (e.g. 10.96.0.0/16)",
        )
    if pods.overlaps(services):
        yield (
            ("networking", "serviceSubnet"),
            f"serviceSubnet {services} overlaps podSubnet {pods}; choose ranges that do not overlap",
        )


def _check_nodes(topology: Topology) -> Iterator[Finding]:
    seen: dict[str, int] = {}
    for index, node in enumerate(topology.nodes):
        if node.name in seen:
            yield (
                ("nodes", index, "name"),
                f"node name '{node.name}' is used twice (also nodes[{seen[node.name]}]); node names must be unique",
            )
        seen.setdefault(node.name, index)


def _check_template(template: PodTemplate, path: tuple, node_names: set[str], what: str) -> Iterator[Finding]:
    if template.node is not None and template.node not in node_names:
        yield (
            path + ("node",),
            f"{what} is pinned to node '{template.node}', which is not in nodes "
            f"(known: {', '.join(sorted(node_names))}); fix the name or add the node",
        )
    names = Counter(c.name for c in template.containers)
    ports: dict[tuple[int, str], str] = {}
    port_names: dict[str, str] = {}
    for c_index, container in enumerate(template.containers):
        c_path = path + ("containers", c_index)
        if names[container.name] > 1:
            yield (c_path + ("name",), f"container name '{container.name}' is used twice in {what}")
            names[container.name] = 1  # report once
        for p_index, port in enumerate(container.ports):
            p_path = c_path + ("ports", p_index)
            key = (port.container_port, port.protocol)
            if key in ports:
                yield (
                    p_path + ("containerPort",),
                    f"port {port.container_port}/{port.protocol} is declared twice in {what} "
                    f"(also by container '{ports[key]}'); containers of a pod share one network namespace",
                )
            ports.setdefault(key, container.name)
            if port.name is not None:
                if port.name in port_names:
                    yield (p_path + ("name",), f"port name '{port.name}' is used twice in {what}")
                port_names.setdefault(port.name, container.name)


def _check_workloads(topology: Topology) -> Iterator[Finding]:
    from emu.state import deployment_pod_names

    node_names = {n.name for n in topology.nodes}
    pod_names: dict[tuple[str, str], str] = {}

    def claim(namespace: str, name: str, owner: str, path: tuple) -> Iterator[Finding]:
        key = (namespace, name)
        if key in pod_names:
            yield (path, f"pod '{namespace}/{name}' is defined twice ({owner} and {pod_names[key]}); rename one")
        pod_names.setdefault(key, owner)

    for index, pod in enumerate(topology.pods):
        path = ("pods", index)
        yield from claim(pod.namespace, pod.name, f"pods[{index}]", path + ("name",))
        yield from _check_template(pod, path, node_names, f"pod '{pod.name}'")

    deployments: set[tuple[str, str]] = set()
    for index, deployment in enumerate(topology.deployments):
        path = ("deployments", index)
        key = (deployment.namespace, deployment.name)
        if key in deployments:
            yield (path + ("name",), f"deployment '{deployment.namespace}/{deployment.name}' is defined twice")
        deployments.add(key)
        yield from _check_template(
            deployment.template, path + ("template",), node_names, f"deployment '{deployment.name}'"
        )
        for name in deployment_pod_names(deployment):
            yield from claim(deployment.namespace, name, f"deployments[{index}]", path + ("name",))


def _check_capacity(topology: Topology) -> Iterator[Finding]:
    pinned: Counter[str] = Counter()
    floating = 0
    first_path: dict[str, tuple] = {}
    for index, pod in enumerate(topology.pods):
        if pod.node:
            pinned[pod.node] += 1
            first_path.setdefault(pod.node, ("pods", index, "node"))
        else:
            floating += 1
    for index, deployment in enumerate(topology.deployments):
        if deployment.template.node:
            pinned[deployment.template.node] += deployment.replicas
            first_path.setdefault(deployment.template.node, ("deployments", index, "template", "node"))
        else:
            floating += deployment.replicas
    for node, count in pinned.items():
        if count > PODS_PER_NODE:
            yield (
                first_path[node],
                f"{count} pods are pinned to node '{node}' but its /{NODE_CIDR_PREFIX} pod CIDR holds "
                f"{PODS_PER_NODE}; spread them over more nodes",
            )
    schedulable = [n.name for n in topology.nodes if n.role == "worker"] or [n.name for n in topology.nodes]
    room = sum(max(0, PODS_PER_NODE - pinned[name]) for name in schedulable)
    if floating > room:
        yield (
            ("nodes",),
            f"{floating} pods are not pinned to a node but the nodes that take them "
            f"({', '.join(schedulable)}) have room for {room}; add worker nodes or lower replicas",
        )
