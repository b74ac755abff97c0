"""Cluster state and allocation (IPAM): which node runs which pod at which IP.

`plan_cluster` turns a declared Topology (plus the state of the running
cluster, if any) into the new ClusterState. It is pure and deterministic: the
same inputs give the same state, so plans render byte-identically and a second
`up` of the same file changes nothing.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from dataclasses import asdict, dataclass, field

from emu.errors import EmuError
from emu.topology.model import Deployment, PodTemplate, Topology
from emu.topology.validate import NODE_CIDR_PREFIX

STATE_VERSION = 1
# The alphabet Kubernetes uses for generated name suffixes (no vowels, no 0/1/3).
_K8S_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\x00".join(parts).encode()).digest()


def _k8s_suffix(data: bytes, length: int) -> str:
    number = int.from_bytes(data, "big")
    chars = []
    for _ in range(length):
        number, rest = divmod(number, len(_K8S_ALPHABET))
        chars.append(_K8S_ALPHABET[rest])
    return "".join(chars)


def template_hash(template: PodTemplate) -> str:
    """A stable hash of a pod template, like the pod-template-hash label."""
    text = json.dumps(template.model_dump(mode="json", by_alias=True), sort_keys=True)
    return _k8s_suffix(_digest(text), 10)


def deployment_pod_names(deployment: Deployment) -> list[str]:
    """Pod names of a deployment: <name>-<template hash>-<5 characters>.

    Replica i keeps its name when replicas change, so scaling adds or removes
    pods at the end and leaves the others alone.
    """
    pod_hash = template_hash(deployment.template)
    return [
        f"{deployment.name}-{pod_hash}-{_k8s_suffix(_digest(deployment.name, pod_hash, str(i)), 5)}"
        for i in range(deployment.replicas)
    ]


@dataclass
class NodeState:
    name: str
    role: str
    labels: dict[str, str]
    pod_cidr: str
    node_ip: str
    container: str

    @property
    def gateway(self) -> str:
        """The bridge's address: the first address of the pod CIDR."""
        return str(ipaddress.IPv4Network(self.pod_cidr).network_address + 1)


@dataclass
class PodState:
    namespace: str
    name: str
    node: str
    ip: str
    labels: dict[str, str]
    containers: list[dict]
    spec_hash: str
    owner: str | None = None  # "Deployment/<name>" for a deployment's pod

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def netns(self) -> str:
        """The network namespace's name: the pod's name, qualified outside 'default'."""
        return self.name if self.namespace == "default" else f"{self.namespace}.{self.name}"

    @property
    def host_veth(self) -> str:
        """The root-side veth: 'veth' + 8 hex characters (interface names stop at 15)."""
        return "veth" + hashlib.sha256(self.key.encode()).hexdigest()[:8]


@dataclass
class ClusterState:
    name: str
    network: str
    network_subnet: str
    networking: dict
    nodes: list[NodeState]
    pods: dict[str, PodState] = field(default_factory=dict)
    last_pod_ip: dict[str, str] = field(default_factory=dict)  # host-local IPAM's "last reserved"
    topology: dict = field(default_factory=dict)  # the declared topology, for scale and re-apply
    node_image: str = ""
    version: int = STATE_VERSION

    def node(self, name: str) -> NodeState:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def pods_on(self, node_name: str) -> list[PodState]:
        return [pod for pod in self.pods.values() if pod.node == node_name]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ClusterState:
        data = json.loads(text)
        if data.get("version") != STATE_VERSION:
            raise EmuError(
                f"the cluster's state file has version {data.get('version')}, this emu reads "
                f"{STATE_VERSION}; recreate the cluster with `emu down` and `emu up`"
            )
        data["nodes"] = [NodeState(**n) for n in data["nodes"]]
        data["pods"] = {k: PodState(**p) for k, p in data["pods"].items()}
        return cls(**data)


def container_name(cluster: str, node: str) -> str:
    return f"{cluster}-{node}"


def node_ips(network_subnet: str, count: int) -> list[str]:
    """Node addresses on the cluster network: .2, .3, ... (.1 is Docker's gateway)."""
    network = ipaddress.IPv4Network(network_subnet)
    if count + 2 > network.num_addresses - 1:
        raise EmuError(f"the cluster network {network} is too small for {count} nodes")
    return [str(network.network_address + 2 + i) for i in range(count)]


def _pod_spec_hash(template: PodTemplate) -> str:
    spec = {
        "node": template.node,
        "containers": [c.model_dump(mode="json", by_alias=True) for c in template.containers],
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _declared_pods(topology: Topology) -> list[tuple[str, str, PodTemplate, dict, str | None]]:
    """(namespace, name, template, labels, owner) of every pod the topology declares."""
    pods = [(p.namespace, p.name, p, dict(p.labels), None) for p in topology.pods]
    for deployment in topology.deployments:
        pod_hash = template_hash(deployment.template)
        labels = {**deployment.template.labels, "pod-template-hash": pod_hash}
        for name in deployment_pod_names(deployment):
            pods.append(
                (deployment.namespace, name, deployment.template, labels, f"Deployment/{deployment.name}")
            )
    return pods


class _HostLocalIPAM:
    """Per-node pod IP allocation that behaves like CNI's host-local plugin:
    the next free address after the last one handed out, wrapping around, so a
    recreated pod gets a new IP rather than its predecessor's."""

    def __init__(self, node: NodeState, used: set[str], last: str | None):
        network = ipaddress.IPv4Network(node.pod_cidr)
        self.candidates = [str(ip) for ip in network.hosts()][1:]  # .1 is the bridge
        self.used = used
        self.last = last

    def allocate(self) -> str:
        start = self.candidates.index(self.last) + 1 if self.last in self.candidates else 0
        count = len(self.candidates)
        for offset in range(count):
            ip = self.candidates[(start + offset) % count]
            if ip not in self.used:
                self.used.add(ip)
                self.last = ip
                return ip
        raise EmuError("a node's pod CIDR is full")  # validation prevents this


def plan_cluster(
    topology: Topology,
    network: str,
    network_subnet: str,
    previous: ClusterState | None = None,
    node_image: str = "",
) -> ClusterState:
    """The desired cluster state for a topology, keeping what `previous` already runs."""
    networking = topology.networking.model_dump(mode="json", by_alias=True)
    if previous is not None:
        _check_compatible(topology, networking, previous)
        nodes = previous.nodes
    else:
        pod_subnet = ipaddress.IPv4Network(topology.networking.pod_subnet)
        cidrs = pod_subnet.subnets(new_prefix=NODE_CIDR_PREFIX)
        addresses = node_ips(network_subnet, len(topology.nodes))
        nodes = [
            NodeState(
                name=node.name,
                role=node.role,
                labels=dict(node.labels),
                pod_cidr=str(next(cidrs)),
                node_ip=addresses[i],
                container=container_name(topology.name, node.name),
            )
            for i, node in enumerate(topology.nodes)
        ]
    state = ClusterState(
        name=topology.name,
        network=network,
        network_subnet=network_subnet,
        networking=networking,
        nodes=nodes,
        last_pod_ip=dict(previous.last_pod_ip) if previous else {},
        topology=topology.model_dump(mode="json", by_alias=True, exclude_defaults=True),
        node_image=node_image or (previous.node_image if previous else ""),
    )
    old_pods = previous.pods if previous else {}
    declared = _declared_pods(topology)

    # Pods that still match their declaration keep their node and IP.
    fresh = []
    for namespace, name, template, labels, owner in declared:
        key = f"{namespace}/{name}"
        spec_hash = _pod_spec_hash(template)
        old = old_pods.get(key)
        if old is not None and old.spec_hash == spec_hash:
            state.pods[key] = PodState(**{**asdict(old), "labels": labels, "owner": owner})
        else:
            fresh.append((namespace, name, template, labels, owner, spec_hash))

    used = {node.name: {p.ip for p in state.pods.values() if p.node == node.name} for node in nodes}
    ipam = {n.name: _HostLocalIPAM(n, used[n.name], state.last_pod_ip.get(n.name)) for n in nodes}
    load = {node.name: len(used[node.name]) for node in nodes}
    schedulable = [n.name for n in nodes if n.role == "worker"] or [n.name for n in nodes]
    for namespace, name, template, labels, owner, spec_hash in fresh:
        # The scheduler's spreading, simplified: the least loaded worker, first by order.
        node_name = template.node or min(schedulable, key=lambda n: (load[n], schedulable.index(n)))
        load[node_name] += 1
        ip = ipam[node_name].allocate()
        state.pods[f"{namespace}/{name}"] = PodState(
            namespace=namespace,
            name=name,
            node=node_name,
            ip=ip,
            labels=labels,
            containers=[c.model_dump(mode="json", by_alias=True) for c in template.containers],
            spec_hash=spec_hash,
            owner=owner,
        )
    state.last_pod_ip = {name: allocator.last for name, allocator in ipam.items() if allocator.last}
    return state


def _check_compatible(topology: Topology, networking: dict, previous: ClusterState) -> None:
    declared = [(n.name, n.role) for n in topology.nodes]
    running = [(n.name, n.role) for n in previous.nodes]
    if declared != running:
        raise EmuError(
            f"the nodes of cluster '{previous.name}' are {running} but the topology declares {declared}; "
            "emu changes pods of a running cluster, not its nodes: run `emu down` and `emu up` to rebuild it"
        )
    if networking != previous.networking:
        raise EmuError(
            f"the networking section differs from the running cluster '{previous.name}' "
            f"({previous.networking}); run `emu down` and `emu up` to change the address plan"
        )
