"""The proxier seam: what every kube-proxy mode offers the agent, `emu plan` and node setup.

A proxier is pure where it can be: `bootstrap` (what a new node runs once) and
`render` (the node's rules for a view of services and endpoints) take records
and return text or data; `apply` and `lost` touch the kernel only through the
command runner they are given (subprocess.run in the agent, a fake in unit
tests), so every mode is testable without a node. One module per mode
(emu.node.proxy.iptables, emu.node.proxy.nftables, emu.node.proxy.ipvs); `emu.node.proxy.proxier`
picks one by networking.proxyMode. Standard library only: it runs in the agent.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from emu.errors import EmuError
from emu.node.records import ClusterState, NodeState
from emu.node.services import categorize_endpoints

Runner = Callable[..., subprocess.CompletedProcess]

MASQ_MARK = "0x4000"  # kube-proxy's default --masquerade-bit 14


def masquerade_mark(bit: int) -> str:
    """The packet mark kube-proxy sets for SNAT: bit `bit` (its masqueradeBit, 14: 0x4000)."""
    return f"{1 << bit:#x}"

# Two base32 characters for every 10-bit value: base64.b32encode is pure Python
# in 3.11 and this is 2.4x faster, which matters at 10,000 services.
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
B32_PAIRS = [_B32[i >> 5] + _B32[i & 31] for i in range(1024)]


def base32_8(digest: bytes) -> str:
    """The first 8 characters of base32(digest), as Go's base32.StdEncoding writes them."""
    n = int.from_bytes(digest[:5], "big")
    p = B32_PAIRS
    return p[n >> 30] + p[(n >> 20) & 1023] + p[(n >> 10) & 1023] + p[n & 1023]


@contextlib.contextmanager
def no_gc():
    """Rendering allocates many small objects and no cycles: the cyclic garbage
    collector would only slow it down."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def service_ports(state: ClusterState, endpoints: dict, node: str):
    """(service, port, its endpoints, identity) for every proxied service port in key
    order; identity holds everything a port's rules depend on but the node, for the
    renderers' caches. A renderer sorts a port's endpoints with categorize_endpoints
    (below) when it renders the port, not for a port its cache holds."""
    services = state.services
    none: dict = {}
    for key in sorted(services):
        service = services[key]
        if not service.proxied:
            continue
        common = (key, service.type, service.cluster_ip, tuple(service.load_balancer_vips), service.affinity_timeout,
                  service.external_traffic_policy, service.internal_traffic_policy, tuple(service.external_ips),
                  tuple(service.load_balancer_source_ranges), service.health_check_node_port)  # fmt: skip
        by_port = endpoints.get(key, none)
        topology = service.traffic_distribution or service.topology_mode
        for port in service.ports:
            port_endpoints = by_port.get(port.name, ())
            # The endpoints themselves (frozen, hashable, their conditions with them), not a
            # tuple made for each: 40,000 of those were 3 MB of an agent. With the node and the
            # service they decide the categories, but for the topology filter, which the nodes'
            # zones decide too: its choice is part of the identity.
            chosen = None
            if topology:
                chosen = tuple(categorize_endpoints(state, service, port, node, port_endpoints).cluster)
            identity = (common, port.name, port.port, port.protocol, port.node_port, tuple(port_endpoints), chosen)
            yield service, port, port_endpoints, identity


# kube-proxy's --nodeport-addresses default per mode: every local address in iptables
# and IPVS mode, the node's primary IP in nftables mode (its config defaulting).
PRIMARY = "primary"
DEFAULT_NODE_PORT_ADDRESSES = {"iptables": None, "ipvs": None, "nftables": (PRIMARY,)}


def node_addresses(node: NodeState) -> list[str]:
    """The IPv4 addresses a node holds, in interface order: lo, eth0, the pod bridge."""
    return ["127.0.0.1", node.node_ip, node.gateway]


def node_port_addresses(state: ClusterState, node: str, mode: str) -> list[str] | None:
    """The node's addresses that take NodePort traffic, as kube-proxy's
    NodePortAddresses.GetNodeIPs finds them for networking.nodePortAddresses, or the
    default of `mode` (None: every local address, kube-proxy's MatchAll)."""
    wanted = state.net.node_port_addresses
    if wanted is None:
        wanted = DEFAULT_NODE_PORT_ADDRESSES[mode]
    if wanted is None or len(wanted) == 0:
        return None
    held = next((n for n in state.nodes if n.name == node), None)
    if held is None:
        return []
    if tuple(wanted) == (PRIMARY,):
        return [held.node_ip]
    networks = [ipaddress.IPv4Network(cidr, strict=False) for cidr in wanted]
    return [ip for ip in node_addresses(held) if any(ipaddress.IPv4Address(ip) in n for n in networks)]


def localhost_node_ports(addresses: list[str] | None) -> bool:
    """Whether 127.0.0.1 takes NodePorts (kube-proxy's iptables localhostNodePorts, kept
    only where nodePortAddresses hold a loopback address)."""
    return addresses is None or any(ip.startswith("127.") for ip in addresses)


@dataclass
class Bootstrap:
    """What a new node runs once for its proxy mode: files to write and shell steps."""

    files: dict[str, str] = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)


class KernelMissing(EmuError):
    """The kernel lacks what a mode needs (IPVS without ip_vs)."""


class Proxier(ABC):
    """One kube-proxy mode."""

    mode: str

    @abstractmethod
    def bootstrap(self, state: ClusterState, node: NodeState, plan_dir: str) -> Bootstrap:
        """Files and steps run once when a node is made (hooks, empty tables)."""

    @abstractmethod
    def render(self, state: ClusterState, node: str, endpoints: dict, cache: dict | None = None):
        """The node's whole ruleset for every proxied service (the mode's own
        shape), from the ready endpoints per service key and port name (and those
        serving while they terminate that the node may fall back to: Endpoint.terminating).
        With a `cache` the caller keeps between syncs, unchanged service ports are not
        rendered again."""

    @abstractmethod
    def text(self, rules, previous=None) -> str:
        """What `apply` writes: everything when previous is None, else only what changed."""

    @abstractmethod
    def apply(self, run: Runner, rules, previous=None) -> int:
        """Write the change from `previous` (None: unknown, write everything) to
        `rules`; returns how many objects (chains, elements) were written.
        Raises RuntimeError when the kernel refuses it."""

    @abstractmethod
    def adopt(self, run: Runner):
        """What an earlier agent left in the kernel, as a `previous` for the first sync."""

    def forget(self):
        """A `previous` that makes the next apply write everything (after the kernel lost some of it)."""
        return None  # noqa: RET501 - a mode may return an empty ruleset instead

    @abstractmethod
    def lost(self, run: Runner, rules) -> list[str]:
        """What the kernel lacks of `rules` (nothing: []); puts back lost hooks at once."""


def run_text(run: Runner, argv: list[str], text: str, what: str) -> None:
    result = run(argv, input=text, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed: {result.stderr.strip()[:2000]}")
