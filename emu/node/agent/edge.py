"""LoadBalancer addresses: which node answers for each, MetalLB layer-2 style.

The owner (emu.node.services.load_balancer_owner, the same choice on every node)
holds each of the service's addresses (every status.loadBalancer.ingress IP, not
only the first) on eth0 and sends a gratuitous ARP for each. A node the hub calls
NotReady owns none: another node takes its addresses over, and gives them
back when it reports again. A cluster spread over
several hosts sits on an overlay that does not carry a gratuitous ARP for an
address Docker did not hand out, so there every other node routes each
address to its owner's node IP instead.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Collection

from emu.node.agent import run as bounded_run
from emu.node.records import ClusterState
from emu.node.services import load_balancer_owner

Runner = Callable[..., subprocess.CompletedProcess]


class LoadBalancers:
    def __init__(
        self, node: str, log: Callable[[str], None], run: Runner = bounded_run, announce: Callable | None = None
    ):
        self.node = node
        self.log = log
        self.run = run
        self.announce = announce or gratuitous_arp
        self.owned: set[str] = set()
        self.routed: dict[str, str] = {}  # address -> its owner's node IP (several hosts)

    def ip(self, *argv: str) -> None:
        self.run(["ip", *argv], capture_output=True)

    def update(self, state: ClusterState, endpoints: dict, lost: Collection[str] = ()) -> None:
        """Hold, release or route each address; `lost`: the nodes the hub calls NotReady."""
        # Every status.loadBalancer.ingress IP of a service, each held by the service's owner.
        owners = {}
        for key, s in state.services.items():
            addresses = s.load_balancer_vips
            if addresses:
                owner = load_balancer_owner(state, s, endpoints.get(key, {}), lost)
                owners.update((address, owner) for address in addresses)
        wanted = {address for address, owner in owners.items() if owner == self.node}
        for address in sorted(wanted - self.owned):
            if address in self.routed:
                self.ip("route", "del", f"{address}/32")
            self.ip("addr", "replace", f"{address}/32", "dev", "eth0")
            self.announce(address, self.log)
            self.log(f"announcing LoadBalancer address {address}")
        for address in sorted(self.owned - wanted):
            self.ip("addr", "del", f"{address}/32", "dev", "eth0")
            self.log(f"released LoadBalancer address {address}")
        self.owned = wanted
        routes: dict[str, str] = {}
        if any(node.host for node in state.nodes):
            node_ips = {node.name: node.node_ip for node in state.nodes}
            routes = {address: node_ips[owner] for address, owner in owners.items() if owner != self.node}
        for address, via in sorted(routes.items()):
            if self.routed.get(address) != via:
                self.ip("route", "replace", f"{address}/32", "via", via, "dev", "eth0")
                self.log(f"LoadBalancer address {address} routed to its owner {via}")
        for address in sorted(set(self.routed) - set(routes) - wanted):
            self.ip("route", "del", f"{address}/32")
        self.routed = routes


def gratuitous_arp(address: str, log: Callable[[str], None], interface: str = "eth0") -> None:
    """Tell the network this node now has `address` (as MetalLB does on failover)."""
    try:
        with open(f"/sys/class/net/{interface}/address") as handle:
            mac = bytes.fromhex(handle.read().strip().replace(":", ""))
        ip = socket.inet_aton(address)
        frame = b"\xff" * 6 + mac + b"\x08\x06"
        frame += b"\x00\x01\x08\x00\x06\x04\x00\x01" + mac + ip + b"\x00" * 6 + ip
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as raw:
            raw.bind((interface, 0))
            raw.send(frame)
    except OSError as error:
        log(f"gratuitous ARP for {address} failed: {error}")
