"""The records of a running cluster: nodes, pods, services, allocations.

Standard library only: the agent inside each node reads the same records from
the snapshot the controller writes there (/etc/emu/cluster.json).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field

from emu.errors import EmuError

try:  # CPython's own SHA-256: hashlib loads OpenSSL's libcrypto, 4 MB of every node agent
    from _sha2 import sha256  # Python 3.12 and later
except ImportError:
    try:
        from _sha256 import sha256  # Python 3.11 (the node image's)
    except ImportError:
        from hashlib import sha256

STATE_VERSION = 2
# Fixed addresses of the service subnet, as kubeadm sets them: the API
# server's service (kubernetes) at the first, the cluster DNS (kube-dns) at the tenth.
KUBERNETES_INDEX = 1
KUBE_DNS_INDEX = 10


def well_known_ip(service_subnet: str, index: int) -> str:
    """The index-th address of the service subnet (KUBERNETES_INDEX, KUBE_DNS_INDEX)."""
    return str(ipaddress.IPv4Network(service_subnet).network_address + index)

# The state file is read back from the nodes, so it is read with a limit. Measured:
# 5,000 pods and 1,000 services with enableServiceLinks: false, 6 MiB; with service
# links over 10 namespaces, 157 MiB (each pod carries its namespace's services'
# environment variables); in one namespace, 1.5 GiB, which to_json refuses.
MAX_STATE_BYTES = 256 << 20


class StateError(EmuError, ValueError):
    """The state file cannot be read (damaged, too big, another version). A
    ValueError too, so the node agent, which catches ValueError, keeps running."""


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
    # Whether its containers get their namespace's Service variables (enableServiceLinks), made
    # from the Services when a container starts, as the kubelet makes them
    # (emu.node.services.pod_service_env): never stored, a namespace of 1,000 Services gives each
    # pod 7,000 of them.
    enable_service_links: bool = True
    hostname: str | None = None
    subdomain: str | None = None
    dns_policy: str = "ClusterFirst"
    dns_config: dict | None = None  # {nameservers, searches, options: [{name, value}]}
    restart_policy: str = "Always"  # Always | OnFailure | Never
    # Files of the pod's volumes, fixed when it was created: {volume: {path in it: content}}
    # (a ConfigMap's keys; {} for an emptyDir). Containers mount them by their volumeMounts.
    volumes: dict[str, dict[str, str]] = field(default_factory=dict)
    termination_grace_seconds: int = 30  # SIGTERM, then this long before SIGKILL

    def restarts_after(self, exit_code: int | None) -> bool:
        """Whether a container of this pod that ended with `exit_code` is started
        again (restartPolicy; None: the code is not known yet)."""
        if self.restart_policy == "Always":
            return True
        return self.restart_policy == "OnFailure" and exit_code not in (None, 0)

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
        return "veth" + sha256(self.key.encode()).hexdigest()[:8]


# A node's pod CIDR is split in two ranges, as host-local's rangeStart/rangeEnd split
# one: the emu planner's (emu.control.state, and the hub's eviction) from the bridge's
# address up, and the node's kubelet's (emu.node.agent.kubelet: pods created through the
# API server, allocated in the node) in the top quarter. Neither can pick the other's.
KUBELET_RANGE_SHARE = 4  # the kubelet's range: the last 1/KUBELET_RANGE_SHARE of the CIDR


def kubelet_pod_range(pod_cidr: str) -> list[str]:
    """The addresses the node's kubelet hands to pods created through the API (a /24: .192-.254)."""
    network = ipaddress.IPv4Network(pod_cidr)
    first = network.num_addresses - network.num_addresses // KUBELET_RANGE_SHARE
    return [str(network.network_address + i) for i in range(first, network.num_addresses - 1)]


def planner_pod_range(pod_cidr: str) -> list[str]:
    """The addresses emu's planner hands out on a node (a /24: .2-.191; .1 is the bridge)."""
    network = ipaddress.IPv4Network(pod_cidr)
    last = network.num_addresses - network.num_addresses // KUBELET_RANGE_SHARE
    return [str(network.network_address + i) for i in range(2, last)]


class HostLocalIPAM:
    """Per-node pod IP allocation that behaves like CNI's host-local plugin:
    the next free address after the last one handed out, wrapping around, so a
    recreated pod gets a new IP rather than its predecessor's. Only within the
    planner's range of the node's CIDR (planner_pod_range)."""

    def __init__(self, node: NodeState, used: set[str], last: str | None):
        self.candidates = planner_pod_range(node.pod_cidr)
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
    # What kube-proxy also reads of a Service: spec.externalIPs, spec.loadBalancerSourceRanges
    # (CIDRs) and, when there are several, every status.loadBalancer.ingress IP
    # (load_balancer_ip is the first; with one, it alone).
    external_ips: list[str] = field(default_factory=list)
    load_balancer_source_ranges: list[str] = field(default_factory=list)
    load_balancer_ips: list[str] = field(default_factory=list)
    # spec.healthCheckNodePort: LoadBalancer services with externalTrafficPolicy Local only.
    health_check_node_port: int | None = None
    # Topology-aware routing: spec.trafficDistribution (PreferClose, PreferSameZone,
    # PreferSameNode) and the service.kubernetes.io/topology-mode annotation (Auto).
    traffic_distribution: str | None = None
    topology_mode: str | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def load_balancer_vips(self) -> list[str]:
        """The LoadBalancer addresses kube-proxy programs (its LoadBalancerVIPs):
        every ingress IP, or the one address where only that is known."""
        if self.type != "LoadBalancer":
            return []
        return self.load_balancer_ips or ([self.load_balancer_ip] if self.load_balancer_ip else [])

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


# The cluster's address plan and proxy mode, defaults set once (as kind's
# internal/apis/config/default.go): the topology schema (emu.api.topology.model)
# takes its defaults from here.
DEFAULT_POD_SUBNET = "10.244.0.0/16"
DEFAULT_SERVICE_SUBNET = "10.96.0.0/16"
DEFAULT_DNS_DOMAIN = "cluster.local"
PROXY_MODES = ("iptables", "nftables", "ipvs")  # kube-proxy's --proxy-mode values emu writes
DEFAULT_PROXY_MODE = "iptables"


@dataclass(frozen=True)
class Networking:
    """The typed view of a state's `networking` (the topology's, camelCase in JSON)."""

    pod_subnet: str = DEFAULT_POD_SUBNET
    service_subnet: str = DEFAULT_SERVICE_SUBNET
    proxy_mode: str = DEFAULT_PROXY_MODE
    dns_domain: str = DEFAULT_DNS_DOMAIN
    cluster_network: str | None = None
    load_balancer_pool: str | None = None
    # kube-proxy's options that change its rules (KubeProxyConfiguration's names):
    # masqueradeAll; clusterCIDR, the local-traffic detector ("" for none); nodePortAddresses
    # (CIDRs, or ["primary"]: the node's IP; None: the mode's default, see node_port_addresses).
    masquerade_all: bool = False
    cluster_cidr: str = DEFAULT_POD_SUBNET
    node_port_addresses: tuple[str, ...] | None = None
    masquerade_bit: int = 14  # the SNAT mark's bit (kube-proxy's masqueradeBit: 0x4000)

    @classmethod
    def from_dict(cls, data: dict) -> Networking:
        pod_subnet = data.get("podSubnet") or DEFAULT_POD_SUBNET
        cluster_cidr = data.get("clusterCIDR")
        addresses = data.get("nodePortAddresses")
        return cls(
            pod_subnet=pod_subnet,
            service_subnet=data.get("serviceSubnet") or DEFAULT_SERVICE_SUBNET,
            proxy_mode=data.get("proxyMode") or DEFAULT_PROXY_MODE,
            dns_domain=data.get("dnsDomain") or DEFAULT_DNS_DOMAIN,
            cluster_network=data.get("clusterNetwork"),
            load_balancer_pool=data.get("loadBalancerPool"),
            masquerade_all=bool(data.get("masqueradeAll")),
            cluster_cidr=pod_subnet if cluster_cidr is None else cluster_cidr,
            node_port_addresses=None if addresses is None else tuple(addresses),
            masquerade_bit=14 if data.get("masqueradeBit") is None else int(data["masqueradeBit"]),
        )


# Go's time.ParseDuration units, as a metav1.Duration in a component's configuration is written.
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in a Go duration ("40s", "1m30s", "500ms"); ValueError otherwise."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"{text!r} is not a duration (Go's form: 40s, 1m30s, 500ms)")
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


DEFAULT_NODE_MONITOR_GRACE_PERIOD = 40.0  # kube-controller-manager's --node-monitor-grace-period


@dataclass(frozen=True)
class NodeTiming:
    """How soon a silent node counts as lost, from one setting: kube-controller-manager's
    nodeMonitorGracePeriod (40 s). The rest follow it in Kubernetes' own ratios: the
    kubelet's node Lease lasts as long (nodeLeaseDurationSeconds, 40) and is renewed every
    quarter of it (10 s), as is its report to emu's hub (nodeStatusUpdateFrequency, 10 s);
    the hub's own readiness grace (25 s) and its eviction of a lost node's pods (15 s
    later) keep their ratios to it. A lab sets it lower to see a lost node sooner."""

    grace: float = DEFAULT_NODE_MONITOR_GRACE_PERIOD

    @property
    def lease_duration(self) -> int:
        return max(1, round(self.grace))

    @property
    def renew_interval(self) -> float:
        return self.grace / 4

    @property
    def heartbeat(self) -> float:
        return min(10.0, self.grace / 4)

    @property
    def hub_grace(self) -> float:
        return self.grace * 25 / 40

    @property
    def evict_after(self) -> float:
        return self.grace * 15 / 40


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
    # When each object was first made (ISO 8601 UTC), for `emu get`'s AGE and creationTimestamp:
    # "Kind/namespace/name" (a pod by its uid: recreated under its name, it is a new pod).
    created: dict[str, str] = field(default_factory=dict)
    version: int = STATE_VERSION
    # Namespace labels (kubernetes.io/metadata.name included), NetworkPolicies and
    # Ingresses as the topology declares them (camelCase, defaults filled in):
    # what the agents' policy and ingress jobs read (emu.node.policy, emu.node.ingress).
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    network_policies: list[dict] = field(default_factory=list)
    ingresses: list[dict] = field(default_factory=list)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)  # "ns/name" -> {tls.crt, tls.key}
    # The API server as this machine reaches it (https://127.0.0.1:PORT), "" for a cluster without one.
    api_endpoint: str = ""

    @property
    def net(self) -> Networking:
        """`networking`, typed and with its defaults."""
        return Networking.from_dict(self.networking)

    @property
    def node_timing(self) -> NodeTiming:
        """The topology's controllerManager.nodeMonitorGracePeriod and what follows it."""
        grace = (self.topology.get("controllerManager") or {}).get("nodeMonitorGracePeriod")
        return NodeTiming(parse_duration(grace)) if grace else NodeTiming()

    def node(self, name: str) -> NodeState:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def pods_uids(self) -> list[str]:
        return [pod.uid for pod in self.pods.values()]

    def pods_on(self, node_name: str) -> list[PodState]:
        return [pod for pod in self.pods.values() if pod.node == node_name]

    def to_json(self) -> str:
        text = json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"
        if len(text) > MAX_STATE_BYTES:
            raise StateError(
                f"the cluster's state would be {len(text) / 2**20:,.0f} MiB, over emu's limit of "
                f"{MAX_STATE_BYTES >> 20} MiB (every node keeps it and emu reads it back): "
                "make the cluster smaller"
            )
        return text

    @classmethod
    def from_json(cls, text: str | bytes, node: str | None = None) -> ClusterState:
        """The state from its JSON. Raises StateError, never another error, for a
        file that is too big, not UTF-8, not JSON or not the shape of a state.

        With `node`, the state as that node's agent keeps it (NodeReader): read
        pod by pod, other nodes' pods without what only their own node needs,
        no creation times, and of the declared topology only AGENT_TOPOLOGY's sections."""
        damaged = "the cluster's state file is damaged ({}); recreate the cluster with `emu down` and `emu up`"
        if len(text) > MAX_STATE_BYTES:
            raise _too_big(len(text))
        try:
            if node is None:
                data = json.loads(text)
            else:
                data = NodeReader(text.decode() if isinstance(text, bytes) else text, node).read()
        except UnicodeDecodeError:
            raise StateError(damaged.format("not UTF-8")) from None
        except RecursionError:
            raise StateError(damaged.format("nested too deep")) from None
        except (ValueError, IndexError) as error:  # json.JSONDecodeError; an int of over 4,300 digits; cut short
            raise StateError(damaged.format(f"not JSON: {str(error)[:100]}")) from None
        if not isinstance(data, dict):
            raise StateError(damaged.format("not a JSON object"))
        if data.get("version") != STATE_VERSION:
            raise StateError(
                f"the cluster's state file has version {str(data.get('version'))[:20]}, this emu reads "
                f"{STATE_VERSION}; recreate the cluster with `emu down` and `emu up`"
            )
        try:
            data["nodes"] = [NodeState(**n) for n in data["nodes"]]
            data["pods"] = {k: p if isinstance(p, PodState) else PodState(**_current_pod(p))
                            for k, p in data["pods"].items()}
            data["services"] = {
                k: ServiceState(**{**v, "ports": [ServicePortState(**p) for p in v["ports"]]})
                for k, v in data.get("services", {}).items()
            }
            return cls(**data)
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            raise StateError(damaged.format(f"{type(error).__name__}: {str(error)[:100]}")) from None


def _current_pod(pod: dict) -> dict:
    """A pod as this emu stores it: a cluster made by an emu that stored each pod's
    Service variables (before they were made when a container starts) still reads."""
    if "service_env" in pod:
        pod = {key: value for key, value in pod.items() if key != "service_env"}
    return pod


def _too_big(size: int) -> StateError:
    return StateError(
        f"the cluster's state file is {size / 2**20:,.0f} MiB, over emu's limit of "
        f"{MAX_STATE_BYTES >> 20} MiB; it is damaged or the cluster is too big: "
        "recreate it smaller with `emu down` and `emu up`"
    )


def read_state_text(path: str) -> str:
    """A state file's text, refused (StateError) before it is read when over
    MAX_STATE_BYTES. (A file's read(limit) allocates `limit` up front: 256 MiB
    for each read of a 3 MiB state.)"""
    with open(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > MAX_STATE_BYTES:
            raise _too_big(size)
        return handle.read()


# What an agent keeps of another node's pod's containers: their ports (services'
# and network policies' named ports); the rest, and these fields, only the pod's own node uses.
# The declared topology's sections an agent reads (the DNS settings, the node timing).
AGENT_TOPOLOGY = ("dns", "controllerManager")
LOCAL_ONLY = {"volumes": {}, "dns_config": None, "spec_hash": ""}


class NodeReader:
    """Reads a state file as one node's agent needs it, member by member, so that
    the whole file never exists as one tree of objects: the pods come one at a
    time and other nodes' pods are slimmed at once (LOCAL_ONLY; of their
    containers only the ports); `created` and all of `topology` but AGENT_TOPOLOGY's
    sections are dropped. Parsed whole, 2,000 pods and 1,000 services cost an
    agent 11 MB, kept after the parse by the heap's fragmentation. Repeated
    strings are interned, and equal label sets and port lists are one object."""

    def __init__(self, text: str, node: str):
        self.text = text
        self.node = node
        self.decode = json.JSONDecoder().raw_decode
        self.pos = 0
        self.seen: dict[str, object] = {}  # repr -> the one shared value (NodeReader.shared)

    def skip(self) -> str:
        """Skips whitespace; returns the next character."""
        text, pos = self.text, self.pos
        while text[pos] in " \t\n\r":
            pos += 1
        self.pos = pos
        return text[pos]

    def expect(self, char: str) -> None:
        if self.skip() != char:
            raise ValueError(f"expected {char!r} at character {self.pos}")
        self.pos += 1

    def members(self):
        """(key, position of its value) of the object at the position; the caller
        reads the value and moves self.pos past it."""
        self.expect("{")
        if self.skip() == "}":
            self.pos += 1
            return
        while True:
            self.expect('"')
            key, self.pos = json.decoder.scanstring(self.text, self.pos)
            self.expect(":")
            self.skip()
            yield key
            if self.skip() == "}":
                self.pos += 1
                return
            self.expect(",")

    def value(self):
        value, self.pos = self.decode(self.text, self.pos)
        return value

    def read(self) -> dict:
        if self.skip() != "{":
            return self.value()  # not an object: from_json says so
        data: dict = {}
        for key in self.members():
            if key == "pods":
                data["pods"] = {pod_key: self.pod(self.value()) for pod_key in self.members()}
            elif key == "created":
                self.value()
            elif key == "topology":
                topology = self.value()
                data["topology"] = ({k: topology[k] for k in AGENT_TOPOLOGY if k in topology}
                                    if isinstance(topology, dict) else topology)
            else:
                data[key] = self.value()
        if self.pos < len(self.text) and self.text[self.pos:].strip():
            raise ValueError(f"extra data at character {self.pos}")
        return data

    def pod(self, pod):
        if not isinstance(pod, dict):
            return pod  # from_json reports it
        intern = sys.intern
        for name in ("namespace", "node", "restart_policy", "dns_policy", "owner"):
            if isinstance(pod.get(name), str):
                pod[name] = intern(pod[name])
        if isinstance(pod.get("labels"), dict):
            pod["labels"] = self.shared(pod["labels"])  # a deployment's pods have the same
        containers = pod.get("containers")
        if pod.get("node") != self.node:
            pod.update(LOCAL_ONLY)
            if isinstance(containers, list):
                pod["containers"] = self.shared([{"ports": c.get("ports") or []} if isinstance(c, dict) else c
                                                 for c in containers])  # fmt: skip
        elif isinstance(containers, list):
            for container in containers:
                if isinstance(container, dict) and isinstance(container.get("ports"), list):
                    container["ports"] = [self.shared(port) for port in container["ports"]]
        return PodState(**_current_pod(pod))

    def shared(self, value):
        """One object for equal values (label sets, port lists): the agent only reads them."""
        key = repr(value)
        found = self.seen.get(key)
        if found is None:
            found = self.seen[key] = _interned(value)
        return found


def _interned(value):
    """The value with its strings interned (dicts and lists, all the way down)."""
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, dict):
        return {sys.intern(k) if isinstance(k, str) else k: _interned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_interned(v) for v in value]
    return value
