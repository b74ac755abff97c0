"""Every status.loadBalancer.ingress IP of a LoadBalancer service is announced
(emu.node.agent.edge), not only the first: the owner holds each on eth0 and sends
a gratuitous ARP for each, other nodes on other hosts route each to it, and an
address that leaves the list is released. The proxiers already capture every
one of them (ServiceState.load_balancer_vips)."""

from __future__ import annotations

import dataclasses

from emu.node.agent.edge import LoadBalancers
from emu.node.proxy import iptables, nftables
from emu.node.services import load_balancer_owner
from tests.unit.test_agent import lab

SECOND = "172.28.5.209"


def _with_ingress(state, addresses):
    lb = state.services["default/lb"]
    state.services["default/lb"] = dataclasses.replace(lb, load_balancer_ips=list(addresses))
    return state


def _run(node, state, endpoints, balancers=None):
    calls, announced = [], []
    balancers = balancers or LoadBalancers(node, lambda message: None)
    balancers.run = lambda argv, **kw: calls.append(argv)
    balancers.announce = lambda address, log: announced.append(address)
    balancers.update(state, endpoints)
    return balancers, calls, announced


def test_the_owner_holds_and_announces_every_ingress_ip():
    state, endpoints = lab()
    first = state.services["default/lb"].load_balancer_ip
    _with_ingress(state, [first, SECOND])
    owner = load_balancer_owner(state, state.services["default/lb"], endpoints["default/lb"])
    other = "w1" if owner == "cp" else "cp"
    balancers, calls, announced = _run(owner, state, endpoints)
    assert announced == sorted([first, SECOND])
    for address in (first, SECOND):
        assert ["ip", "addr", "replace", f"{address}/32", "dev", "eth0"] in calls
    _, calls, announced = _run(other, state, endpoints)
    assert calls == [] and announced == []  # one host: the owner's ARP does it

    # The second address leaves the list: released, the first stays.
    _with_ingress(state, [])
    _, calls, announced = _run(owner, state, endpoints, balancers)
    assert calls == [["ip", "addr", "del", f"{SECOND}/32", "dev", "eth0"]] and announced == []


def test_other_hosts_route_every_ingress_ip_to_the_owner():
    state, endpoints = lab("hosts: [{name: h1, address: 10.0.0.1}, {name: h2, address: 10.0.0.2}]\n")
    first = state.services["default/lb"].load_balancer_ip
    _with_ingress(state, [first, SECOND])
    owner = load_balancer_owner(state, state.services["default/lb"], endpoints["default/lb"])
    other = "w1" if owner == "cp" else "cp"
    _, calls, _ = _run(other, state, endpoints)
    via = state.node(owner).node_ip
    assert sorted(calls) == sorted(["ip", "route", "replace", f"{address}/32", "via", via, "dev", "eth0"]
                                   for address in (first, SECOND))  # fmt: skip


def test_the_proxiers_capture_the_second_ingress_ip():
    state, endpoints = lab()
    first = state.services["default/lb"].load_balancer_ip
    _with_ingress(state, [first, SECOND])
    nat = iptables.render(state, "w1", endpoints)["nat"]["KUBE-SERVICES"]
    assert any(f"-d {SECOND}/32" in rule and "loadbalancer IP" in rule for rule in nat)
    elements = nftables.render(state, "w1", endpoints).elements()
    assert any(name == "service-ips" and key.startswith(f"{SECOND} . tcp . ") for name, key in elements)
