"""networking.nodePortAddresses in IPVS mode, with real packets in a User-mode Linux node.

The guest, its pods and the cluster are test_ipvs_uml.py's (its fixtures). By
default a NodePort answers on every local address of the node but loopback, as
kube-proxy's IPVS proxier serves it: the node's IP and the pod bridge's. With
nodePortAddresses: [primary] (rendered for the same node and pods, and written
as the next sync) it answers on the node's IP only: the virtual server on the
bridge's address goes, and a connection there finds nothing.
"""

from __future__ import annotations

from emu.api.topology.load import load_text
from emu.control.state import plan_cluster
from emu.node.proxy import proxier
from tests.integration.test_ipvs_uml import (  # noqa: F401 - fixtures, used by name
    SUBNET,
    TOPOLOGY,
    WEB,
    Recorder,
    _ask,
    _endpoints,
    guest,
    rootfs,
    state,
)


def _answers(machine, url: str) -> list[str]:
    """One GET from the client pod (a refusal or a timeout is no answer)."""
    return machine.sh(f"ip netns exec client sh -c 'curl -s -m 3 {url} || true'", timeout=60).split()


def test_node_ports_answer_only_where_node_port_addresses_say(guest, state):  # noqa: F811
    proxy = proxier("ipvs")
    node = state.node("n1")
    bridge = node.gateway  # cni0's address, a local address of the node
    url = "http://{}:30080/hostname"
    rules = proxy.render(state, "n1", _endpoints(state))
    proxy.apply(Recorder(guest), rules, None)
    listing = guest.sh("ipvsadm -Ln")
    assert f"TCP  {node.node_ip}:30080 rr" in listing and f"TCP  {bridge}:30080 rr" in listing
    assert set(_ask(guest, url.format(node.node_ip), 3)) == WEB and set(_ask(guest, url.format(bridge), 3)) == WEB

    primary = plan_cluster(load_text(TOPOLOGY.replace("{proxyMode: ipvs}", "{proxyMode: ipvs, nodePortAddresses: "
                                                      "[primary]}")), "emutest-ipvs", SUBNET)  # fmt: skip
    assert primary.node("n1").gateway == bridge and primary.net.node_port_addresses == ("primary",)
    narrowed = proxy.render(primary, "n1", _endpoints(primary))
    run = Recorder(guest)
    proxy.apply(run, narrowed, rules)
    node_ports = [p.node_port for svc in primary.services.values() if svc.type in ("NodePort", "LoadBalancer")
                  for p in svc.ports if p.node_port]  # fmt: skip
    deleted = [line for line in run.writes()["ipvsadm"].splitlines() if line.startswith("-D")]
    assert sorted(deleted) == sorted(f"-D -t {bridge}:{port}" for port in node_ports)  # those on the bridge, only
    listing = guest.sh("ipvsadm -Ln")
    assert f"TCP  {node.node_ip}:30080 rr" in listing and f"{bridge}:" not in listing
    assert set(_ask(guest, url.format(node.node_ip), 3)) == WEB
    assert _answers(guest, url.format(bridge)) == []  # nothing listens there: refused
    assert proxy.lost(run, narrowed) == []
