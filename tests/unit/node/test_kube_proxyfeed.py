"""kube-proxy's view from the API server (emu.node.kube.proxyfeed) renders the
same rules as the state file does today, byte for byte.

The default lab is planned (emu.control.state.plan_cluster), its objects are
rendered in API form (emu.api.manifests.render.View: Nodes, Services and the
Endpoints from which this test builds EndpointSlices, as the EndpointSlice
mirroring controller would) and loaded into a real API server over TLS; the
informers then feed a ProxyFeed as kube-proxy (its own certificate, RBAC's
system:node-proxier), and every proxy mode's render from the feed is compared
with the render from the state and the endpoints worked out from its pods."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from kube_testserver import ChildProcess, InProcess

from emu.api.load import load_text
from emu.api.manifests.render import View
from emu.control.state import plan_cluster
from emu.node.kube.client import resource_path
from emu.node.kube.informer import start_all
from emu.node.kube.proxyfeed import ProxyFeed, service_state, slice_endpoints
from emu.node.proxy import proxier
from emu.node.proxy.iptables import BASE_CHAINS, endpoint_chain, restore_text, service_chain
from emu.node.services import all_endpoints

DEFAULT = (Path(__file__).resolve().parents[3] / "topologies" / "default.yaml").read_text()
# The default lab with a LoadBalancer pool (so echo-lb gets an address) and services that use
# the other fields kube-proxy reads: session affinity, both traffic policies, externalIPs and
# loadBalancerSourceRanges (one range holding the nodes' addresses), a healthCheckNodePort.
RICH = DEFAULT.replace(
    "  serviceSubnet: 10.96.0.0/16\n",
    "  serviceSubnet: 10.96.0.0/16\n  clusterNetwork: 172.28.0.0/24\n  loadBalancerPool: 172.28.0.200-172.28.0.250\n",
) + """  - name: sticky
    selector: {app: echo}
    sessionAffinity: ClientIP
    sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
    internalTrafficPolicy: Local
    ports:
      - {name: http, port: 8080, targetPort: http}
  - name: local-web
    type: NodePort
    externalTrafficPolicy: Local
    selector: {app: web}
    ports:
      - {port: 81, targetPort: 8080}
  - name: nobody
    selector: {app: nobody}
    ports:
      - {port: 82, targetPort: 8080}
  - name: outside
    selector: {app: web}
    externalIPs: [198.51.100.7, 198.51.100.8]
    ports:
      - {port: 83, targetPort: 8080}
  - name: fenced
    type: LoadBalancer
    selector: {app: web}
    loadBalancerSourceRanges: [203.0.113.0/25, 172.28.0.0/24]
    ports:
      - {port: 84, targetPort: 8080}
  - name: checked
    type: LoadBalancer
    externalTrafficPolicy: Local
    selector: {app: web}
    ports:
      - {port: 85, targetPort: 8080}
"""
MODES = ("iptables", "nftables", "ipvs")


def plan(text: str):
    assert text.count("services:") == 1
    return plan_cluster(load_text(text), "emu-lab", "172.28.0.0/24")


def readiness(state) -> dict[str, bool]:
    """Every pod ready but the first echo pod, so that slices hold not-ready endpoints too."""
    echo = sorted(p.name for p in state.pods.values() if p.labels.get("app") == "echo")
    return {p.uid: p.name != echo[0] for p in state.pods.values()}


def container_status(state, ready: dict[str, bool]) -> dict:
    """What View reads for each pod's readiness: {pod key: {container: {ready, state}}}."""
    return {p.key: {c["name"]: {"ready": ready[p.uid], "state": "Running"} for c in p.containers}
            for p in state.pods.values()}  # fmt: skip


def endpoint_slices(endpoints: dict) -> list[dict]:
    """EndpointSlices for an Endpoints object, one per subset, as the mirroring controller makes them."""
    meta = endpoints["metadata"]
    slices = []
    for index, subset in enumerate(endpoints.get("subsets") or []):
        items = []
        for ready, addresses in ((True, subset.get("addresses") or []), (False, subset.get("notReadyAddresses") or [])):
            for address in addresses:
                item = {"addresses": [address["ip"]], "conditions": {"ready": ready, "serving": ready, "terminating": False}}
                for field in ("hostname", "nodeName", "targetRef"):
                    if field in address:
                        item[field] = address[field]
                items.append(item)
        slices.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{meta['name']}-{index}", "namespace": meta["namespace"],
                         "labels": {"kubernetes.io/service-name": meta["name"],
                                    "endpointslice.kubernetes.io/managed-by": "endpointslicemirroring-controller.k8s.io"}},
            "addressType": "IPv4", "endpoints": items, "ports": subset.get("ports") or [],
        })  # fmt: skip
    return slices


def load(server, view: View) -> None:
    """The lab's Nodes, Namespaces, Services (with their LoadBalancer status) and EndpointSlices."""
    admin = server.client()
    namespaces = {n["metadata"]["name"] for n in admin.list(resource_path("v1", "namespaces"))["items"]}
    for obj in view.objects("Namespace"):
        if obj["metadata"]["name"] not in namespaces:
            admin.create(resource_path("v1", "namespaces"), obj)
    for obj in view.objects("Node"):
        admin.create(resource_path("v1", "nodes"), obj)
    for obj in view.objects("Service"):
        ns = obj["metadata"]["namespace"]
        created = admin.create(resource_path("v1", "services", ns), copy.deepcopy(obj))
        if obj["status"]["loadBalancer"]:  # the load balancer controller's write
            created["status"] = obj["status"]
            admin.update(resource_path("v1", "services", ns, created["metadata"]["name"], "status"), created)
    for endpoints in view.objects("Endpoints"):
        for item in endpoint_slices(endpoints):
            admin.create(resource_path("discovery.k8s.io/v1", "endpointslices", item["metadata"]["namespace"]), item)


def renders(state, endpoints, mode: str) -> dict[str, str]:
    """{node: the mode's whole ruleset text} for every node of the lab."""
    proxy = proxier(mode)
    return {node.name: proxy.text(proxy.render(state, node.name, endpoints)) for node in state.nodes}


@pytest.fixture()
def server(tmp_path):
    s = InProcess(tmp_path)
    yield s
    s.stop()


def feed_for(server, state) -> tuple[ProxyFeed, list]:
    feed = ProxyFeed("worker", state.networking)
    informers = feed.informers(server.client("kube-proxy"))
    assert start_all(informers, 20)
    return feed, informers


@pytest.mark.parametrize("text", [DEFAULT, RICH], ids=["default", "default+lb+affinity+policies"])
def test_rules_from_the_api_equal_the_rules_from_the_state(server, text):
    state = plan(text)
    ready = readiness(state)
    load(server, View(state, container_status(state, ready), now=0))
    feed, informers = feed_for(server, state)
    try:
        fed_state, fed_endpoints = feed.snapshot()
        assert fed_state.services == state.services  # every field kube-proxy reads, from Service objects
        assert {n.name: n.node_ip for n in fed_state.nodes} == {n.name: n.node_ip for n in state.nodes}
        expected_endpoints = all_endpoints(state, ready)
        assert fed_endpoints == expected_endpoints
        if text is RICH:  # (a service with no endpoints, one with a LoadBalancer address)
            assert expected_endpoints["default/nobody"] == {"": []} and fed_state.services["default/echo-lb"].load_balancer_ip
            assert fed_state.services["default/outside"].external_ips == ["198.51.100.7", "198.51.100.8"]
            fenced = fed_state.services["default/fenced"]
            assert fenced.load_balancer_source_ranges == ["203.0.113.0/25", "172.28.0.0/24"]
            checked = state.services["default/checked"].health_check_node_port
            assert checked and fed_state.services["default/checked"].health_check_node_port == checked
        for mode in MODES:
            assert renders(fed_state, fed_endpoints, mode) == renders(state, expected_endpoints, mode), mode
    finally:
        for informer in informers:
            informer.stop()


def test_an_endpoint_turning_not_ready_is_one_event_and_changes_only_its_rules(server):
    state = plan(DEFAULT)
    ready = readiness(state)
    load(server, View(state, container_status(state, ready), now=0))
    feed, informers = feed_for(server, state)
    try:
        before_state, before_endpoints = feed.snapshot()
        before = proxier("iptables").render(before_state, "worker", before_endpoints)
        before_nft = proxier("nftables").render(before_state, "worker", before_endpoints)
        admin = server.client()
        path = resource_path("discovery.k8s.io/v1", "endpointslices", "default", "echo-0")
        echo = admin.get(path)
        gone = next(e for e in echo["endpoints"] if e["conditions"]["ready"])
        gone["conditions"] = {"ready": False, "serving": False, "terminating": True}  # the pod is being deleted
        changes = feed.changes
        admin.update(path, echo)
        assert feed.wait_for(changes + 1, 20)
        after_state, after_endpoints = feed.snapshot()
        assert feed.changes == changes + 1 and feed.touched == {"default/echo"}
        assert after_state is before_state  # no service changed
        address = f"{gone['addresses'][0]}:8080"
        assert [e.address for e in after_endpoints["default/echo"]["http"]] == [
            e.address for e in before_endpoints["default/echo"]["http"] if e.address != address
        ]
        # The other services' endpoints are the very same objects (the renderers' caches skip them).
        assert all(after_endpoints[k] is before_endpoints[k] for k in before_endpoints if k != "default/echo")

        # iptables: of the service chains, only echo's service chain and that endpoint's chain
        # changed (the fixed chains are written on every restore, as kube-proxy writes them).
        after = proxier("iptables").render(after_state, "worker", after_endpoints)
        written = [line for line in restore_text(after, before).splitlines() if line.startswith(":")]
        svc = service_chain("default/echo:http", "tcp")
        sep = endpoint_chain("default/echo:http", "tcp", address)
        fixed = {f":{chain} - [0:0]" for chains in BASE_CHAINS.values() for chain in chains}
        assert sorted(set(written) - fixed) == sorted([f":{svc} - [0:0]", f":{sep} - [0:0]"])
        assert f"-X {sep}" in restore_text(after, before)
        # nftables: only echo's port.
        after_nft = proxier("nftables").render(after_state, "worker", after_endpoints)
        assert [a.name for a, b in zip(after_nft.ports, before_nft.ports) if a != b] == ["default/echo:http"]
        assert after_nft.setup == before_nft.setup and after_nft.fixed_chains == before_nft.fixed_chains

        # And it is what the state file renders with that pod not ready in echo (only echo's slice changed).
        pod = next(p for p in state.pods.values() if p.ip == gone["addresses"][0])
        expected = {**all_endpoints(state, ready),
                    "default/echo": all_endpoints(state, {**ready, pod.uid: False})["default/echo"]}  # fmt: skip
        for mode in MODES:
            assert renders(after_state, after_endpoints, mode) == renders(state, expected, mode), mode
    finally:
        for informer in informers:
            informer.stop()


def test_services_and_slices_deleted_and_added_follow(server):
    state = plan(DEFAULT)
    ready = readiness(state)
    load(server, View(state, container_status(state, ready), now=0))
    feed, informers = feed_for(server, state)
    try:
        admin = server.client()
        changes = feed.changes
        admin.delete(resource_path("v1", "services", "default", "web"))
        admin.delete(resource_path("discovery.k8s.io/v1", "endpointslices", "default", "web-0"))
        assert feed.wait_for(changes + 2, 20)
        fed_state, fed_endpoints = feed.snapshot()
        assert "default/web" not in fed_state.services and "default/web" not in fed_endpoints
        smaller = copy.deepcopy(state)
        del smaller.services["default/web"]
        for mode in MODES:
            assert renders(fed_state, fed_endpoints, mode) == renders(smaller, all_endpoints(smaller, ready), mode)
    finally:
        for informer in informers:
            informer.stop()


def test_object_conversion_defaults_as_kubernetes():
    service = service_state({"metadata": {"namespace": "ns", "name": "s"}, "spec": {
        "clusterIP": "10.96.0.5", "sessionAffinity": "ClientIP", "type": "LoadBalancer",
        "ports": [{"port": 53, "protocol": "UDP"}], "loadBalancerIP": "172.28.0.9"},
        "status": {"loadBalancer": {"ingress": [{"ip": "172.28.0.7"}]}}})  # fmt: skip
    assert service.affinity_timeout == 10800 and service.ports[0].target_port == 53 and service.ports[0].name == ""
    assert service.load_balancer_ip == "172.28.0.7"  # status, where the load balancer published it
    pending = service_state({"metadata": {"namespace": "ns", "name": "p"}, "spec": {
        "clusterIP": "10.96.0.6", "type": "LoadBalancer", "ports": [{"port": 80}], "loadBalancerIP": "203.0.113.7"},
        "status": {"loadBalancer": {}}})  # fmt: skip
    assert pending.load_balancer_vips == []  # only asked for: no address until the load balancer gives it
    assert (service.external_traffic_policy, service.internal_traffic_policy) == ("Cluster", "Cluster")
    entries = slice_endpoints({"addressType": "IPv4", "ports": [{"port": 80}], "endpoints": [
        {"addresses": ["10.244.1.5"]}, {"addresses": ["10.244.1.6"], "conditions": {"ready": False}}]})  # fmt: skip
    assert [(e.address, ready) for _, _, e, ready in entries] == [("10.244.1.5:80", True), ("10.244.1.6:80", False)]
    assert slice_endpoints({"addressType": "IPv6", "ports": [{"port": 80}], "endpoints": [{"addresses": ["fd00::1"]}]}) == []


def test_the_view_outlives_a_killed_api_server_and_catches_up_after(tmp_path):
    """kube-proxy keeps its rules while the API server is away, then resumes its watches."""
    child = ChildProcess(tmp_path)
    try:
        state = plan(DEFAULT)
        ready = readiness(state)
        load(child, View(state, container_status(state, ready), now=0))
        feed, informers = feed_for(child, state)
        before = renders(*feed.snapshot(), "iptables")
        child.kill()
        assert renders(*feed.snapshot(), "iptables") == before  # nothing forgotten while it is down
        child.start()
        admin = child.client()
        path = resource_path("discovery.k8s.io/v1", "endpointslices", "kube-system", "kube-dns-0")
        dns = admin.get(path)
        dns["endpoints"][0]["conditions"]["ready"] = False
        changes = feed.changes
        admin.update(path, dns)
        assert feed.wait_for(changes + 1, 30)
        coredns = next(p for p in state.pods.values() if p.ip == dns["endpoints"][0]["addresses"][0])
        expected = all_endpoints(state, {**ready, coredns.uid: False})
        assert renders(*feed.snapshot(), "iptables") == renders(state, expected, "iptables") != before
        assert all(informer.lists == 1 for informer in informers)  # resumed, not listed again
        for informer in informers:
            informer.stop()
    finally:
        child.stop()


def test_a_port_without_ready_endpoints_falls_back_to_serving_terminating_ones():
    feed = ProxyFeed("worker", {})
    feed.on_service({"metadata": {"namespace": "ns", "name": "s", "resourceVersion": "1"},
                     "spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 80, "targetPort": 8080}]}})  # fmt: skip

    def slice_(*conditions):
        return {"metadata": {"namespace": "ns", "name": "s-1", "labels": {"kubernetes.io/service-name": "s"}},
                "addressType": "IPv4", "ports": [{"port": 8080}],
                "endpoints": [{"addresses": [f"10.244.1.{i + 2}"], "conditions": c} for i, c in enumerate(conditions)]}  # fmt: skip

    def addresses():
        return [e.address for e in feed.snapshot()[1]["ns/s"][""]]

    terminating = {"ready": False, "serving": True, "terminating": True}
    gone = {"ready": False, "serving": False, "terminating": True}
    feed.on_slice(slice_(terminating, gone, terminating))
    assert addresses() == ["10.244.1.2:8080", "10.244.1.4:8080"]  # still serving while they shut down
    feed.on_slice(slice_(terminating, gone, {"ready": True}))
    assert addresses() == ["10.244.1.4:8080"]  # a ready one: the terminating ones are left alone
    feed.on_slice(slice_(gone, gone, {"ready": False, "serving": True, "terminating": False}))
    assert addresses() == []  # serving but not terminating is a pod not ready yet: never used


def test_a_node_keeps_its_own_terminating_endpoints_for_a_local_traffic_policy():
    """kube-proxy falls back to a node's own serving terminating endpoints for its Local
    policy even where another node has a ready one: the feed keeps them, for a port with a
    Local policy only (a Cluster policy never uses them while a ready one exists), and
    where unset, serving counts as true (kube-proxy's reading of the conditions)."""
    def service(**spec):
        return {"metadata": {"namespace": "ns", "name": "s", "resourceVersion": "1"},
                "spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}],
                         **spec}}  # fmt: skip

    terminating = {"ready": False, "terminating": True}  # serving unset
    endpoints = [({"ready": True}, "w2", "10.244.2.2"), (terminating, "w1", "10.244.1.2"),
                 (terminating, "w2", "10.244.2.3")]  # fmt: skip
    slice_ = {"metadata": {"namespace": "ns", "name": "s-1", "labels": {"kubernetes.io/service-name": "s"}},
              "addressType": "IPv4", "ports": [{"port": 8080}],
              "endpoints": [{"addresses": [ip], "conditions": c, "nodeName": node}
                            for c, node, ip in endpoints]}  # fmt: skip
    feed = ProxyFeed("w1", {})
    feed.on_slice(slice_)
    both = ["10.244.1.2:8080", "10.244.2.2:8080"]  # w2's ready one and w1's own terminating one
    for spec, wanted in [({}, ["10.244.2.2:8080"]), ({"type": "NodePort", "externalTrafficPolicy": "Local"}, both),
                         ({"internalTrafficPolicy": "Local"}, both),
                         ({"externalIPs": ["192.0.2.9"], "externalTrafficPolicy": "Local"}, both)]:  # fmt: skip
        feed.on_service(service(**spec))
        got = feed.snapshot()[1]["ns/s"][""]
        assert [e.address for e in got] == wanted, spec
        assert [e.terminating for e in got] == [a != "10.244.2.2:8080" for a in wanted], spec
