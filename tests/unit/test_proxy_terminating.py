"""Terminating endpoints in every mode, traced: kube-proxy's
TestTerminatingEndpointsTrafficPolicy{Cluster,Local} (pkg/proxy/nftables/proxier_test.go)
and the rest of its CategorizeEndpoints rules (pkg/proxy/topology.go: the Cluster and
the Local policy's endpoints, each with its own fallback to those serving while they
terminate; topology hints read from the ready endpoints only), with EndpointSlices fed
through the node's proxy feed (emu.node.kube.proxyfeed) and each mode's renderer.
iptables and nftables are traced packet by packet (tests/unit/proxy_tracer.py); IPVS,
which has no tracer, by its virtual servers' real servers."""

from __future__ import annotations

import pytest

from emu.node.kube.proxyfeed import ProxyFeed, service_state
from emu.node.proxy import iptables, ipvs, nftables
from emu.node.records import NodeState
from emu.node.services import ZONE_LABEL, Endpoint, categorize_endpoints, load_balancer_owner, local_ready_endpoints
from tests.unit.proxy_tracer import IptablesTracer, NftablesTracer, Packet, outcome
from tests.unit.test_proxy_packet_flow import CLIENT, NODE_IP, POD, cluster

READY = {"ready": True, "serving": True, "terminating": False}
TERMINATING = {"ready": False, "serving": True, "terminating": True}  # serving while it shuts down
GONE = {"ready": False, "serving": False, "terminating": True}
SERVICE = {"type": "LoadBalancer", "clusterIP": "172.30.1.1", "port": {"name": "", "nodePort": 3001},
           "externalTrafficPolicy": "Cluster"}  # fmt: skip

# (case, [(address, conditions, node)], what pod-to-cluster-IP and external-to-LB reach), kube-proxy's.
CASES = [
    ("ready endpoints exist",
     [("10.0.1.1", READY, "test-node"), ("10.0.1.2", READY, "test-node"), ("10.0.1.3", TERMINATING, "another-node"),
      ("10.0.1.4", GONE, "another-node"), ("10.0.1.5", READY, "another-node")],
     "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80"),
    ("only terminating endpoints exist",
     [("10.0.1.2", TERMINATING, "test-node"), ("10.0.1.3", TERMINATING, "test-node"),
      ("10.0.1.4", GONE, "another-node"), ("10.0.1.5", TERMINATING, "another-node")],
     "10.0.1.2:80, 10.0.1.3:80, 10.0.1.5:80"),
    ("terminating endpoints on remote node", [("10.0.1.5", TERMINATING, "node-1")], "10.0.1.5:80"),
    ("no usable endpoints on any node", [("10.0.1.5", GONE, "test-node"), ("10.0.1.5", GONE, "node-1")], "REJECT"),
]  # fmt: skip


def rendered(endpoints_in_slice, spec=SERVICE, zones=None):
    """The state (kube-proxy's test node; with `zones`, {node: zone}, those nodes so labelled)
    and the endpoints test-node's proxy feed gives its proxier for one Service, svc1, and
    one EndpointSlice of it."""
    state, _ = cluster()  # kube-proxy's test node
    spec = dict(spec)
    port = {"name": "", "port": 80, "protocol": "TCP", **spec.pop("port", {})}
    obj = {"metadata": {"namespace": "ns1", "name": "svc1", "resourceVersion": "1"},
           "spec": {"ports": [port], **spec}}  # fmt: skip
    if spec.get("type") == "LoadBalancer":
        obj["status"] = {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}
    svc = service_state(obj)
    state.services = {svc.key: svc}
    if zones:
        state.nodes = [NodeState(name, "worker", {ZONE_LABEL: zone}, f"10.0.{i + 1}.0/24",
                                 NODE_IP if name == "test-node" else f"192.168.0.{i + 10}", name)
                       for i, (name, zone) in enumerate(zones.items())]  # fmt: skip
    feed = ProxyFeed("test-node", state.networking)
    feed.on_service(obj)
    feed.on_slice({"metadata": {"namespace": "ns1", "name": "svc1-1", "labels": {"kubernetes.io/service-name": "svc1"}},
                   "addressType": "IPv4", "ports": [{"name": "", "port": 80, "protocol": "TCP"}],
                   "endpoints": [{"addresses": [ip], "conditions": c, "nodeName": node}
                                 for ip, c, node in endpoints_in_slice]})  # fmt: skip
    return state, feed.snapshot()[1]


def tracer(mode, state, endpoints):
    if mode == "iptables":
        return IptablesTracer(iptables.render(state, "test-node", endpoints), [NODE_IP])
    return NftablesTracer(nftables.render(state, "test-node", endpoints), [NODE_IP])


def ipvs_servers(state, endpoints) -> dict[str, list[str]]:
    return {vs.address: sorted(vs.real_servers) for vs in ipvs.render(state, "test-node", endpoints).servers}


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
@pytest.mark.parametrize("name,slice_,reached", CASES, ids=[c[0] for c in CASES])
def test_terminating_endpoints_traced(mode, name, slice_, reached):
    state, endpoints = rendered(slice_)
    tracer = (IptablesTracer(iptables.render(state, "test-node", endpoints), [NODE_IP]) if mode == "iptables" else
              NftablesTracer(nftables.render(state, "test-node", endpoints), [NODE_IP]))  # fmt: skip
    refused = reached == "REJECT"
    assert outcome(tracer.trace(Packet(POD, "172.30.1.1", 80))) == (reached, None if refused else False)
    assert outcome(tracer.trace(Packet(CLIENT, "1.2.3.4", 80))) == (reached, None if refused else True)


@pytest.mark.parametrize("name,slice_,reached", CASES, ids=[c[0] for c in CASES])
def test_terminating_endpoints_in_ipvs(name, slice_, reached):
    state, endpoints = rendered(slice_)
    servers = {vs.address: sorted(vs.real_servers) for vs in ipvs.render(state, "test-node", endpoints).servers}
    wanted = [] if reached == "REJECT" else reached.split(", ")
    assert servers["172.30.1.1:80"] == wanted and servers["1.2.3.4:80"] == wanted


# kube-proxy's TestTerminatingEndpointsTrafficPolicyLocal: (case, slice, pod to cluster IP, external to LB);
# external traffic unmasqueraded, to this node's endpoints only.
LOCAL = {**SERVICE, "externalTrafficPolicy": "Local"}
LOCAL_CASES = [
    ("ready endpoints exist",
     [("10.0.1.1", READY, "test-node"), ("10.0.1.2", READY, "test-node"), ("10.0.1.3", TERMINATING, "test-node"),
      ("10.0.1.4", GONE, "test-node"), ("10.0.1.5", READY, "node-1")],
     "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80", "10.0.1.1:80, 10.0.1.2:80"),
    # The node's own terminating endpoints take its Local traffic though another node has a ready one.
    ("only terminating endpoints exist",
     [("10.0.1.2", TERMINATING, "test-node"), ("10.0.1.3", TERMINATING, "test-node"),
      ("10.0.1.4", GONE, "test-node"), ("10.0.1.5", READY, "node-1")],
     "10.0.1.5:80", "10.0.1.2:80, 10.0.1.3:80"),
    ("terminating endpoints on remote node", [("10.0.1.5", TERMINATING, "node-1")], "10.0.1.5:80", "DROP"),
    ("no usable endpoints on any node", [("10.0.1.5", GONE, "test-node"), ("10.0.1.5", GONE, "node-1")],
     "REJECT", "REJECT"),
]  # fmt: skip


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
@pytest.mark.parametrize("name,slice_,internal,external", LOCAL_CASES, ids=[c[0] for c in LOCAL_CASES])
def test_terminating_endpoints_with_local_policy_traced(mode, name, slice_, internal, external):
    state, endpoints = rendered(slice_, LOCAL)
    tracer = (IptablesTracer(iptables.render(state, "test-node", endpoints), [NODE_IP]) if mode == "iptables" else
              NftablesTracer(nftables.render(state, "test-node", endpoints), [NODE_IP]))  # fmt: skip
    assert outcome(tracer.trace(Packet(POD, "172.30.1.1", 80))) == (internal, None if internal == "REJECT" else False)
    refused = external in ("REJECT", "DROP")
    assert outcome(tracer.trace(Packet(CLIENT, "1.2.3.4", 80))) == (external, None if refused else False)


@pytest.mark.parametrize("name,slice_,internal,external", LOCAL_CASES, ids=[c[0] for c in LOCAL_CASES])
def test_terminating_endpoints_with_local_policy_in_ipvs(name, slice_, internal, external):
    """IPVS has no DROP for a Local policy without local endpoints: kube-proxy's syncEndpoint
    gives the virtual server the Cluster-policy endpoints then (pods here still reach it)."""
    state, endpoints = rendered(slice_, LOCAL)
    servers = ipvs_servers(state, endpoints)
    wanted = {address: [] if reached == "REJECT" else reached.split(", ")
              for address, reached in (("172.30.1.1:80", internal),
                                       ("1.2.3.4:80", internal if external == "DROP" else external))}  # fmt: skip
    assert {address: servers[address] for address in wanted} == wanted


# The rest of kube-proxy's CategorizeEndpoints (pkg/proxy/topology.go, topology_test.go), each mode:
# (case, Service spec, {node: zone} or None, slice, pod to cluster IP, external to the LoadBalancer IP
# or None, IPVS real servers {virtual server: endpoints}).
ZONES = {"test-node": "a", "node-1": "a", "another-node": "b"}
INTERNAL_LOCAL = {"clusterIP": "172.30.1.1", "internalTrafficPolicy": "Local"}
CLOSE = {**SERVICE, "trafficDistribution": "PreferSameZone"}
CLOSE_LOCAL = {**LOCAL, "trafficDistribution": "PreferSameZone"}
E1, E2, E3, E5 = "10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80", "10.0.1.5:80"
CATEGORY_CASES = [
    # internalTrafficPolicy Local: this node's ready endpoints, else its serving terminating ones,
    # whatever other nodes have; none here: DROP while the service has some anywhere.
    ("internal Local: local ready endpoints", INTERNAL_LOCAL, None,
     [("10.0.1.1", READY, "test-node"), ("10.0.1.2", TERMINATING, "test-node"), ("10.0.1.5", READY, "node-1")],
     E1, None, {"172.30.1.1:80": [E1]}),
    ("internal Local: only terminating local endpoints", INTERNAL_LOCAL, None,
     [("10.0.1.2", TERMINATING, "test-node"), ("10.0.1.4", GONE, "test-node"), ("10.0.1.5", READY, "node-1")],
     E2, None, {"172.30.1.1:80": [E2]}),
    # (IPVS: a ClusterIP service with a Local internal policy never uses Cluster-policy endpoints)
    ("internal Local: no local endpoints", INTERNAL_LOCAL, None, [("10.0.1.5", READY, "node-1")],
     "DROP", None, {"172.30.1.1:80": []}),
    ("internal Local: only terminating remote endpoints", INTERNAL_LOCAL, None, [("10.0.1.5", TERMINATING, "node-1")],
     "DROP", None, {"172.30.1.1:80": []}),
    ("internal Local: no usable endpoints", INTERNAL_LOCAL, None, [("10.0.1.2", GONE, "test-node")],
     "REJECT", None, {"172.30.1.1:80": []}),
    # Topology hints narrow the ready endpoints only: the zone's ready ones ...
    ("topology: ready endpoints in the zone", CLOSE, ZONES,
     [("10.0.1.1", READY, "node-1"), ("10.0.1.2", TERMINATING, "test-node"), ("10.0.1.5", READY, "another-node")],
     E1, E1, {"172.30.1.1:80": [E1], "1.2.3.4:80": [E1]}),
    # ... a zone with only terminating endpoints has no hint, so every ready endpoint ...
    ("topology: only terminating endpoints in the zone", CLOSE, ZONES,
     [("10.0.1.2", TERMINATING, "test-node"), ("10.0.1.3", TERMINATING, "node-1"),
      ("10.0.1.5", READY, "another-node")],
     E5, E5, {"172.30.1.1:80": [E5], "1.2.3.4:80": [E5]}),
    # ... and with no ready endpoint anywhere, every serving terminating one, whatever the zone.
    ("topology: no ready endpoint anywhere", CLOSE, ZONES,
     [("10.0.1.2", TERMINATING, "test-node"), ("10.0.1.5", TERMINATING, "another-node")],
     f"{E2}, {E5}", f"{E2}, {E5}", {"172.30.1.1:80": [E2, E5], "1.2.3.4:80": [E2, E5]}),
    # externalTrafficPolicy Local with hints: cluster traffic to the zone, external to this node's own ...
    ("topology and external Local: local ready endpoints", CLOSE_LOCAL, ZONES,
     [("10.0.1.1", READY, "test-node"), ("10.0.1.3", READY, "node-1"), ("10.0.1.5", READY, "another-node")],
     f"{E1}, {E3}", E1, {"172.30.1.1:80": [E1, E3], "1.2.3.4:80": [E1]}),
    # ... the node's terminating ones when it has no ready one (the two lists merged in the rules).
    ("topology and external Local: only terminating local endpoints", CLOSE_LOCAL, ZONES,
     [("10.0.1.2", TERMINATING, "test-node"), ("10.0.1.3", READY, "node-1"), ("10.0.1.5", READY, "another-node")],
     E3, E2, {"172.30.1.1:80": [E3], "1.2.3.4:80": [E2]}),
]  # fmt: skip


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
@pytest.mark.parametrize("name,spec,zones,slice_,internal,external,servers", CATEGORY_CASES,
                         ids=[c[0] for c in CATEGORY_CASES])  # fmt: skip
def test_categorized_endpoints_traced(mode, name, spec, zones, slice_, internal, external, servers):
    state, endpoints = rendered(slice_, spec, zones)
    traced = tracer(mode, state, endpoints)
    refused = internal in ("REJECT", "DROP")
    assert outcome(traced.trace(Packet(POD, "172.30.1.1", 80))) == (internal, None if refused else False)
    if external is not None:
        masquerade = spec.get("externalTrafficPolicy") != "Local"
        assert outcome(traced.trace(Packet(CLIENT, "1.2.3.4", 80))) == (external, masquerade)


@pytest.mark.parametrize("name,spec,zones,slice_,internal,external,servers", CATEGORY_CASES,
                         ids=[c[0] for c in CATEGORY_CASES])  # fmt: skip
def test_categorized_endpoints_in_ipvs(name, spec, zones, slice_, internal, external, servers):
    state, endpoints = rendered(slice_, spec, zones)
    programmed = ipvs_servers(state, endpoints)
    assert {address: programmed[address] for address in servers} == servers


def feed_of(node: str, spec: dict, slice_) -> dict:
    """The endpoints `node`'s proxy feed gives its proxier (ProxyFeed keeps a node's own
    terminating endpoints where its Local policy may use them)."""
    feed = ProxyFeed(node, {})
    port = {"name": "", "port": 80, "protocol": "TCP", **spec.get("port", {})}
    feed.on_service({"metadata": {"namespace": "ns1", "name": "svc1", "resourceVersion": "1"},
                     "spec": {**{k: v for k, v in spec.items() if k != "port"}, "ports": [port]}})  # fmt: skip
    feed.on_slice({"metadata": {"namespace": "ns1", "name": "svc1-1", "labels": {"kubernetes.io/service-name": "svc1"}},
                   "addressType": "IPv4", "ports": [{"name": "", "port": 80, "protocol": "TCP"}],
                   "endpoints": [{"addresses": [ip], "conditions": c, "nodeName": n}
                                 for ip, c, n in slice_]})  # fmt: skip
    return feed.snapshot()[1]


def test_the_health_check_counts_ready_local_endpoints_only():
    """kube-proxy's LocalReadyEndpoints: a node whose endpoints all terminate answers 503, so
    the load balancer drains it, though its Local policy still sends what comes to them."""
    spec = {**LOCAL, "healthCheckNodePort": 31000}
    state, _ = rendered([], spec)
    slice_ = [("10.0.1.2", TERMINATING, "test-node"), ("10.0.1.5", READY, "node-1")]
    here = feed_of("test-node", spec, slice_)
    assert [e.address for e in here["ns1/svc1"][""]] == [E2, E5]  # the terminating one is used here ...
    assert local_ready_endpoints(state, "test-node", here) == {}  # ... but not counted
    assert local_ready_endpoints(state, "node-1", feed_of("node-1", spec, slice_)) == {"ns1/svc1": 1}


def test_every_node_agrees_on_the_load_balancer_owner():
    """The owner of a Local-policy LoadBalancer address is chosen among the nodes with a ready
    endpoint (with none ready, a serving terminating one) on every node alike, though each
    node's feed also holds its own terminating endpoints."""
    state, _ = rendered([], LOCAL)
    state.nodes = [NodeState(name, "worker", {}, "", f"192.168.0.{i + 2}", name)
                   for i, name in enumerate(("test-node", "node-1", "another-node"))]  # fmt: skip
    svc = state.services["ns1/svc1"]
    for slice_, owner in [([("10.0.1.2", TERMINATING, "test-node"), ("10.0.1.5", READY, "node-1")], "node-1"),
                          ([("10.0.1.2", TERMINATING, "test-node"), ("10.0.1.5", GONE, "node-1")],
                           "test-node")]:  # fmt: skip
        chosen = {node: load_balancer_owner(state, svc, feed_of(node, LOCAL, slice_)["ns1/svc1"])
                  for node in ("test-node", "node-1", "another-node")}  # fmt: skip
        assert set(chosen.values()) == {owner}, chosen


def test_an_endpoint_that_starts_terminating_changes_the_cached_rules():
    """The renderers' caches key a port on its endpoints with their conditions: a node's only
    ready endpoint turning terminating (another node's still ready) moves its Local traffic's
    rules from one list to the other, and a cached render must not hide it."""
    ready = [("10.0.1.2", READY, "test-node"), ("10.0.1.5", READY, "node-1")]
    gone = [("10.0.1.2", TERMINATING, "test-node"), ("10.0.1.5", READY, "node-1")]
    for mode, render in (("iptables", iptables.render), ("nftables", nftables.render)):
        cache: dict = {}
        for slice_, internal in ((ready, f"{E2}, {E5}"), (gone, E5)):
            state, endpoints = rendered(slice_, LOCAL)
            rules = render(state, "test-node", endpoints, cache=cache)
            traced = IptablesTracer(rules, [NODE_IP]) if mode == "iptables" else NftablesTracer(rules, [NODE_IP])
            assert outcome(traced.trace(Packet(POD, "172.30.1.1", 80))) == (internal, False), mode
            assert outcome(traced.trace(Packet(CLIENT, "1.2.3.4", 80))) == (E2, False), mode


# kube-proxy's TestCategorizeEndpoints (pkg/proxy/topology_test.go), the cases without hints (emu works
# hints out from the nodes' zones: the traced cases above): (case, Service spec, [(address, ready or
# terminating, on this node)], cluster, local, reachable, any). Endpoints neither ready nor serving never
# reach the proxiers (the feed leaves them out), so those of kube-proxy's cases are left out here too.
R, T = "ready", "terminating"
NODE_PORT = {"type": "NodePort", "port": {"nodePort": 30080}}
BOTH_LOCAL = {**NODE_PORT, "internalTrafficPolicy": "Local", "externalTrafficPolicy": "Local"}
A0, A1, A2, A3 = "10.0.0.0:80", "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"
CATEGORIZE_CASES = [
    ("iTP Local, no endpoints", {"internalTrafficPolicy": "Local"}, [], [], [], [], False),
    ("iTP Local, all endpoints remote", {"internalTrafficPolicy": "Local"}, [(A0, R, False), (A1, R, False)],
     [], [], [], True),
    ("iTP Local, all endpoints local", {"internalTrafficPolicy": "Local"}, [(A0, R, True), (A1, R, True)],
     [], [A0, A1], [A0, A1], True),
    ("iTP Local, some endpoints local", {"internalTrafficPolicy": "Local"}, [(A0, R, True), (A1, R, False)],
     [], [A0], [A0], True),
    ("Cluster, all endpoints terminating", {}, [(A0, T, True), (A1, T, False)], [A0, A1], [], [A0, A1], True),
    ("iTP Local, eTP Cluster, some local", {**NODE_PORT, "internalTrafficPolicy": "Local"},
     [(A0, R, True), (A1, R, False)], [A0, A1], [A0], [A0, A1], True),
    ("iTP Cluster, eTP Local, some local", {**NODE_PORT, "externalTrafficPolicy": "Local"},
     [(A0, R, True), (A1, R, False)], [A0, A1], [A0], [A0, A1], True),
    ("iTP Local, eTP Local, some local", BOTH_LOCAL, [(A0, R, True), (A1, R, False)], [A0, A1], [A0], [A0, A1], True),
    ("iTP Local, eTP Local, all remote", BOTH_LOCAL, [(A0, R, False), (A1, R, False)], [A0, A1], [], [A0, A1], True),
    ("iTP Local, eTP Local, all remote and terminating", BOTH_LOCAL, [(A0, T, False), (A1, T, False)],
     [A0, A1], [], [A0, A1], True),
    ("iTP Cluster, eTP Local, with terminating endpoints", {**NODE_PORT, "externalTrafficPolicy": "Local"},
     [(A0, R, False), (A2, T, True), (A3, T, False)], [A0], [A2], [A0, A2], True),
    ("eTP ignored where not externally accessible", {"externalTrafficPolicy": "Local"},
     [(A0, R, False), (A1, R, True)], [A0, A1], [], [A0, A1], True),
    ("no cluster endpoints for an iTP Local internal-only service", {"internalTrafficPolicy": "Local"},
     [(A0, R, False), (A1, R, True)], [], [A1], [A1], True),
]  # fmt: skip


@pytest.mark.parametrize("name,spec,given,cluster_,local,reachable,any_", CATEGORIZE_CASES,
                         ids=[c[0] for c in CATEGORIZE_CASES])  # fmt: skip
def test_categorize_endpoints_as_kube_proxy(name, spec, given, cluster_, local, reachable, any_):
    spec = dict(spec)
    port = {"name": "", "port": 80, "protocol": "TCP", **spec.pop("port", {})}
    svc = service_state({"metadata": {"namespace": "ns1", "name": "svc1"},
                         "spec": {"clusterIP": "172.30.1.1", "ports": [port], **spec}})  # fmt: skip
    state, _ = cluster()
    endpoints = [Endpoint(address.split(":")[0], 80, "test-node" if here else "node-1", None, kind == T)
                 for address, kind, here in given]  # fmt: skip
    got = categorize_endpoints(state, svc, svc.ports[0], "test-node", endpoints)
    assert ([e.address for e in got.cluster], [e.address for e in got.local], [e.address for e in got.reachable],
            got.any) == (cluster_, local, reachable, any_)  # fmt: skip
