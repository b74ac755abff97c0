"""Topology-aware routing: trafficDistribution (PreferClose, PreferSameZone, PreferSameNode)
and the topology-mode annotation Auto, filtered per node as kube-proxy's topology filter
filters EndpointSlice hints (pkg/proxy/topology_test.go's cases), and traced through each
mode's rules."""

from __future__ import annotations

import pytest

from emu.node.kube.proxyfeed import service_state
from emu.node.proxy import iptables, ipvs, nftables
from emu.node.records import ClusterState, NodeState
from emu.node.services import ZONE_LABEL, Endpoint, topology_endpoints
from tests.unit.proxy_tracer import IptablesTracer, NftablesTracer, Packet, outcome

POD = "10.0.9.9"
A2, B1 = Endpoint("10.0.2.5", 80, "a2", None), Endpoint("10.0.3.5", 80, "b1", None)


def node(name: str, zone: str | None, index: int) -> NodeState:
    labels = {ZONE_LABEL: zone} if zone else {}
    return NodeState(name, "worker", labels, f"10.0.{index}.0/24", f"192.168.0.{index}", name)


def lab(zones=(("a1", "a"), ("a2", "a"), ("b1", "b")), **spec):
    state = ClusterState("t", "t", "192.168.0.0/24", {"podSubnet": "10.0.0.0/16"},
                         [node(name, zone, i + 1) for i, (name, zone) in enumerate(zones)])  # fmt: skip
    annotations = spec.pop("annotations", None)
    obj = {"metadata": {"namespace": "ns", "name": "web", **({"annotations": annotations} if annotations else {})},
           "spec": {"clusterIP": "172.30.0.10", "ports": [{"name": "http", "port": 80}], **spec}}  # fmt: skip
    service = service_state(obj)
    state.services = {service.key: service}
    return state, service, {service.key: {"http": [A2, B1]}}


@pytest.mark.parametrize("spec,zones,wanted", [
    ({"trafficDistribution": "PreferClose"}, None, {"a1": [A2], "a2": [A2], "b1": [B1]}),
    ({"trafficDistribution": "PreferSameZone"}, None, {"a1": [A2], "a2": [A2], "b1": [B1]}),
    # A node of a zone with no endpoint has no hint for it: every endpoint.
    ({"trafficDistribution": "PreferClose"}, (("a1", "a"), ("a2", "a"), ("b1", "b"), ("c1", "c")),
     {"c1": [A2, B1], "a1": [A2]}),
    # A node without a zone label, or an endpoint's node without one: every endpoint.
    ({"trafficDistribution": "PreferClose"}, (("a1", None), ("a2", "a"), ("b1", "b")), {"a1": [A2, B1]}),
    ({"trafficDistribution": "PreferClose"}, (("a1", "a"), ("a2", None), ("b1", "b")),
     {"a1": [A2, B1], "b1": [A2, B1]}),
    # PreferSameNode: the node's own endpoint, else its zone's.
    ({"trafficDistribution": "PreferSameNode"}, None, {"a2": [A2], "a1": [A2], "b1": [B1]}),
    # topology-mode Auto: hints only while every zone has an endpoint.
    ({"annotations": {"service.kubernetes.io/topology-mode": "Auto"}}, None, {"a1": [A2], "b1": [B1]}),
    ({"annotations": {"service.kubernetes.io/topology-mode": "Auto"}},
     (("a1", "a"), ("a2", "a"), ("b1", "b"), ("c1", "c")), {"a1": [A2, B1], "b1": [A2, B1]}),
    # Neither: no filter.
    ({}, None, {"a1": [A2, B1], "b1": [A2, B1]}),
])  # fmt: skip
def test_topology_filter(spec, zones, wanted):
    state, service, endpoints = lab(zones or (("a1", "a"), ("a2", "a"), ("b1", "b")), **spec)
    for name, chosen in wanted.items():
        assert topology_endpoints(state, service, name, endpoints[service.key]["http"]) == chosen, name


def test_proxy_feed_reads_the_field_and_the_annotation():
    _, service, _ = lab(trafficDistribution="PreferClose", annotations={"service.kubernetes.io/topology-mode": "Auto"})
    assert (service.traffic_distribution, service.topology_mode) == ("PreferClose", "Auto")


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_each_node_balances_over_its_zone_only(mode):
    state, _, endpoints = lab(trafficDistribution="PreferClose")
    for name, wanted in (("a1", "10.0.2.5:80"), ("b1", "10.0.3.5:80")):
        if mode == "iptables":
            tracer = IptablesTracer(iptables.render(state, name, endpoints), [state.node(name).node_ip])
        else:
            tracer = NftablesTracer(nftables.render(state, name, endpoints), [state.node(name).node_ip])
        assert outcome(tracer.trace(Packet(POD, "172.30.0.10", 80))) == (wanted, False), name
    servers = {s.address: s.real_servers for s in ipvs.render(state, "a1", endpoints).servers}
    assert servers["172.30.0.10:80"] == ["10.0.2.5:80"]


def test_the_zone_hint_changes_only_the_nodes_rules_that_it_filters():
    """Without the field, a1 balances over both; the field's filtered endpoints are part of
    the port's identity, so a renderer's cache does not serve a1 the unfiltered rules."""
    state, _, endpoints = lab()
    cache: dict = {}
    both = iptables.render(state, "a1", endpoints, cache=cache)
    state.services["ns/web"].traffic_distribution = "PreferClose"
    one = iptables.render(state, "a1", endpoints, cache=cache)
    svc = iptables.service_chain("ns/web:http", "tcp")
    assert len([r for r in both["nat"][svc] if "KUBE-SEP-" in r]) == 2
    assert len([r for r in one["nat"][svc] if "KUBE-SEP-" in r]) == 1


def test_a_manifest_and_the_state_carry_traffic_distribution(tmp_path):
    from tests.unit.test_manifests import read
    from tests.unit.test_services import LAB, state

    service = ("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports: [{port: 80}]\n"
               "  trafficDistribution: PreferClose\n")  # fmt: skip
    manifests = read(service, tmp_path)
    assert (manifests.objects[0].model.traffic_distribution, manifests.warnings) == ("PreferClose", [])
    planned = state(LAB.replace("  - name: sticky\n", "  - name: sticky\n    trafficDistribution: PreferSameNode\n"))
    assert planned.services["default/sticky"].traffic_distribution == "PreferSameNode"
