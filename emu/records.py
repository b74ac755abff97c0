"""The records of a running cluster: nodes, pods, services, allocations.

Standard library only: the agent inside each node reads the same records from
the snapshot the controller writes there (/etc/emu/cluster.json).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from dataclasses import asdict, dataclass, field

from emu.errors import EmuError

STATE_VERSION = 2

@dataclass
class NodeState:
    name: str
    role: str
    labels: dict[str, str]
    pod_cidr: str
    node_ip: str
    container: str
    host: str = ""  # the Docker host it runs on ("" on one engine)

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
    # Service variables fixed when the pod was created, as the kubelet does.
    service_env: dict[str, str] = field(default_factory=dict)
    hostname: str | None = None
    subdomain: str | None = None
    dns_policy: str = "ClusterFirst"
    dns_config: dict | None = None  # {nameservers, searches, options: [{name, value}]}

    @property
    def host_name(self) -> str:
        """The pod's hostname: spec.hostname, else its name."""
        return self.hostname or self.name

    def container_ports(self) -> list[dict]:
        """Every port the pod's containers declare: {name, containerPort, protocol}."""
        return [port for container in self.containers for port in container.get("ports", [])]

    def resolve_port(self, target: int | str) -> int | None:
        """A service's targetPort on this pod: a number as is, a name through the pod's ports."""
        if isinstance(target, int):
            return target
        for port in self.container_ports():
            if port.get("name") == target:
                return port["containerPort"]
        return None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def uid(self) -> str:
        """This incarnation of the pod: a pod recreated under the same name gets a
        new IP, so readiness and probe state never carry over to it (Kubernetes
        uses the pod's UID for the same reason)."""
        return f"{self.key}@{self.ip}"

    @property
    def netns(self) -> str:
        """The network namespace's name: the pod's name, qualified outside 'default'."""
        return self.name if self.namespace == "default" else f"{self.namespace}.{self.name}"

    @property
    def host_veth(self) -> str:
        """The root-side veth: 'veth' + 8 hex characters (interface names stop at 15)."""
        return "veth" + hashlib.sha256(self.key.encode()).hexdigest()[:8]


@dataclass
class ServicePortState:
    name: str  # "" for an unnamed port
    port: int
    protocol: str
    target_port: int | str
    node_port: int | None = None


@dataclass
class ServiceState:
    namespace: str
    name: str
    type: str  # ClusterIP | NodePort | LoadBalancer | ExternalName
    cluster_ip: str  # an address, "None" for headless, "" for ExternalName
    ports: list[ServicePortState] = field(default_factory=list)
    selector: dict[str, str] | None = None
    external_name: str | None = None
    affinity_timeout: int | None = None  # seconds, when sessionAffinity is ClientIP
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    load_balancer_ip: str | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def headless(self) -> bool:
        return self.cluster_ip == "None"

    @property
    def proxied(self) -> bool:
        """Whether kube-proxy writes rules for it: it has a virtual IP."""
        return self.type != "ExternalName" and not self.headless

    def selects(self, pod: PodState) -> bool:
        if not self.selector or pod.namespace != self.namespace:
            return False
        return all(pod.labels.get(k) == v for k, v in self.selector.items())


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
    services: dict[str, ServiceState] = field(default_factory=dict)
    load_balancer_pool: list[str] = field(default_factory=list)  # first, last
    generation: int = 0  # bumped on every save; agents report the one they programmed
    mtu: int = 1500  # the cluster network's MTU, which pods' interfaces take (1450 on a VXLAN overlay)
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
        data["services"] = {
            k: ServiceState(**{**v, "ports": [ServicePortState(**p) for p in v["ports"]]})
            for k, v in data.get("services", {}).items()
        }
        return cls(**data)


