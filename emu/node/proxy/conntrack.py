"""Stale UDP conntrack entries, which kube-proxy deletes in every mode.

UDP has no connection to close: a client that keeps sending from one port (a
resolver) keeps its conntrack entry, and with it the NAT to the endpoint it
first reached, for as long as it sends. When that endpoint leaves the service
the flow would go on into the void, so kube-proxy deletes the entries that
were NATed to it (pkg/proxy/conntrack: `conntrack -D ... --dst-nat EP`); when
a UDP service gets its first endpoint, entries made while it had none (and
were rejected or dropped) go too. Standard library only: it runs in the agent.
"""

from __future__ import annotations

from emu.node.records import ClusterState

View = dict[tuple, frozenset[str]]  # ("ip", address, port) | ("nodeport", port) -> endpoint IPs


def udp_view(state: ClusterState, node: str, endpoints: dict) -> View:
    """Every UDP service address of the state with the IPs of its ready endpoints."""
    view: View = {}
    for key, service in state.services.items():
        if not service.proxied:
            continue
        for port in service.ports:
            if port.protocol != "UDP":
                continue
            ips = frozenset(e.ip for e in endpoints.get(key, {}).get(port.name, []))
            view[("ip", service.cluster_ip, port.port)] = ips
            if service.load_balancer_ip:
                view[("ip", service.load_balancer_ip, port.port)] = ips
            if port.node_port and service.type in ("NodePort", "LoadBalancer"):
                view[("nodeport", port.node_port)] = ips
    return view


def _match(where: tuple) -> list[str]:
    if where[0] == "ip":
        return ["--orig-dst", where[1], "--orig-port-dst", str(where[2])]
    return ["--orig-port-dst", str(where[1])]


def stale_udp_commands(before: View, after: View) -> list[list[str]]:
    """conntrack commands that delete the UDP flows `after` no longer serves."""
    commands = []
    for where in sorted(set(before) | set(after), key=str):
        old, new = before.get(where, frozenset()), after.get(where, frozenset())
        for ip in sorted(old - new):
            commands.append(["conntrack", "-D", "-p", "udp", *_match(where), "--dst-nat", ip])
        if new and not old and where in before:
            # Flows tracked while it had no endpoint were never NATed: they would stay stuck.
            # (A service that is new has none worth a conntrack call each.)
            commands.append(["conntrack", "-D", "-p", "udp", *_match(where)])
    return commands
