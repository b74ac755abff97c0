"""Terminating endpoints in every mode, traced: kube-proxy's
TestTerminatingEndpointsTrafficPolicyCluster (pkg/proxy/nftables/proxier_test.go)
with its EndpointSlices fed through the node's proxy feed (emu.node.kube.proxyfeed,
which falls back to serving-and-terminating endpoints where a port has no ready
one: ProxyTerminatingEndpoints) and each mode's renderer. iptables and nftables
are traced packet by packet (tests/unit/proxy_tracer.py); IPVS, which has no
tracer, by its virtual servers' real servers."""

from __future__ import annotations

import pytest

from emu.node.kube.proxyfeed import ProxyFeed
from emu.node.proxy import iptables, ipvs, nftables
from tests.unit.proxy_tracer import IptablesTracer, NftablesTracer, Packet, outcome
from tests.unit.test_proxy_packet_flow import CLIENT, NODE_IP, POD, cluster, service

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


def rendered(endpoints_in_slice, spec=SERVICE):
    state, _ = cluster()  # kube-proxy's test node
    svc = service("ns1", "svc1", dict(spec), ["1.2.3.4"])
    state.services = {svc.key: svc}
    feed = ProxyFeed("test-node", state.networking)
    feed.on_service({"metadata": {"namespace": "ns1", "name": "svc1", "resourceVersion": "1"},
                     "spec": {"clusterIP": "172.30.1.1", "ports": [{"port": 80}]}})  # fmt: skip
    feed.on_slice({"metadata": {"namespace": "ns1", "name": "svc1-1", "labels": {"kubernetes.io/service-name": "svc1"}},
                   "addressType": "IPv4", "ports": [{"name": "", "port": 80, "protocol": "TCP"}],
                   "endpoints": [{"addresses": [ip], "conditions": c, "nodeName": node}
                                 for ip, c, node in endpoints_in_slice]})  # fmt: skip
    return state, feed.snapshot()[1]


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
    pytest.param(
        "only terminating endpoints exist",
        [("10.0.1.2", TERMINATING, "test-node"), ("10.0.1.3", TERMINATING, "test-node"),
         ("10.0.1.4", GONE, "test-node"), ("10.0.1.5", READY, "node-1")],
        "10.0.1.5:80", "10.0.1.2:80, 10.0.1.3:80",
        marks=pytest.mark.xfail(strict=True, reason=(
            "emu's proxy feed falls back to serving-and-terminating endpoints for a service port as a whole "
            "(emu/node/kube/proxyfeed.py) and the proxiers take one list; kube-proxy's CategorizeEndpoints falls "
            "back for the node's local endpoints apart, so with a ready endpoint on another node the local "
            "terminating ones still take external traffic there. emu drops it."))),
    ("terminating endpoints on remote node", [("10.0.1.5", TERMINATING, "node-1")], "10.0.1.5:80", "DROP"),
    ("no usable endpoints on any node", [("10.0.1.5", GONE, "test-node"), ("10.0.1.5", GONE, "node-1")],
     "REJECT", "REJECT"),
]  # fmt: skip


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
@pytest.mark.parametrize("name,slice_,internal,external", LOCAL_CASES,
                         ids=[c.values[0] if hasattr(c, "marks") else c[0] for c in LOCAL_CASES])  # fmt: skip
def test_terminating_endpoints_with_local_policy_traced(mode, name, slice_, internal, external):
    state, endpoints = rendered(slice_, LOCAL)
    tracer = (IptablesTracer(iptables.render(state, "test-node", endpoints), [NODE_IP]) if mode == "iptables" else
              NftablesTracer(nftables.render(state, "test-node", endpoints), [NODE_IP]))  # fmt: skip
    assert outcome(tracer.trace(Packet(POD, "172.30.1.1", 80))) == (internal, None if internal == "REJECT" else False)
    refused = external in ("REJECT", "DROP")
    assert outcome(tracer.trace(Packet(CLIENT, "1.2.3.4", 80))) == (external, None if refused else False)
