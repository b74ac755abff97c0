"""The Endpoints controller (subsets as upstream repacks them) and kube-apiserver's reconciler for
default/kubernetes, against a real Store."""

from __future__ import annotations

import pytest

from ctl_helpers import FakeClock, add_nodes, namespace, new_store, node
from emu.apiserver.controllers import build_manager
from emu.apiserver.controllers.endpoints import (EndpointsController, KubernetesServiceReconciler, desired_subsets,
                                                 truncate)
from emu.apiserver.controllers.framework import Client
from test_ctl_svc_endpointslice import create_pod, pod, set_pod, svc


def addr(name, ip, node_name="n1"):
    return {"ip": ip, "nodeName": node_name,
            "targetRef": {"kind": "Pod", "namespace": "default", "name": name, "uid": f"uid-{name}"}}


def test_subsets_split_ready_and_not_ready_and_skip_terminating():
    pods = [pod("b", "10.244.1.3", ready=False), pod("a", "10.244.1.2"),
            pod("t", "10.244.1.4", deleting=True), pod("noip", "")]
    assert desired_subsets(svc(), pods) == [{
        "addresses": [addr("a", "10.244.1.2")], "notReadyAddresses": [addr("b", "10.244.1.3")],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]


def test_publish_not_ready_keeps_terminating_and_not_ready_as_ready():
    pods = [pod("b", "10.244.1.3", ready=False), pod("t", "10.244.1.4", deleting=True)]
    [s] = desired_subsets(svc(publish=True), pods)
    assert [a["ip"] for a in s["addresses"]] == ["10.244.1.3", "10.244.1.4"] and "notReadyAddresses" not in s


def test_named_ports_repack_into_subsets_per_port_set():
    service = svc(ports=[{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"},
                         {"name": "metrics", "port": 9090, "targetPort": 9090, "protocol": "TCP"}])
    web = lambda n: [{"name": "web", "containerPort": n, "protocol": "TCP"}]  # noqa: E731
    pods = [pod("a", "10.244.1.2", ports=web(8080)), pod("b", "10.244.1.3", ports=web(8080)),
            pod("c", "10.244.1.4", ports=web(9000)), pod("d", "10.244.1.5")]
    got = desired_subsets(service, pods)
    assert [([a["ip"] for a in s["addresses"]], [(p["name"], p["port"]) for p in s["ports"]]) for s in got] == [
        (["10.244.1.2", "10.244.1.3"], [("http", 8080)]),
        (["10.244.1.2", "10.244.1.3", "10.244.1.4", "10.244.1.5"], [("metrics", 9090)]),
        (["10.244.1.4"], [("http", 9000)]),
    ]


def test_headless_without_ports_and_hostnames():
    service = svc(name="db", cluster_ip="None", ports=[], selector={"app": "db"})
    pods = [pod("db-0", "10.244.1.2", labels={"app": "db"}, hostname="db-0", subdomain="db")]
    assert desired_subsets(service, pods) == [{"addresses": [{"ip": "10.244.1.2", "hostname": "db-0", "nodeName": "n1",
                                                              "targetRef": {"kind": "Pod", "namespace": "default",
                                                                            "name": "db-0", "uid": "uid-db-0"}}]}]


def test_over_capacity_truncates_ready_first():
    subsets = [{"addresses": [{"ip": f"10.0.0.{i}"} for i in range(5)],
                "notReadyAddresses": [{"ip": f"10.0.1.{i}"} for i in range(5)], "ports": []}]
    out, cut = truncate(subsets, 7)
    assert cut and len(out[0]["addresses"]) == 5 and len(out[0]["notReadyAddresses"]) == 2
    assert truncate(subsets, 10) == (subsets, False)


def _setup(tmp_path, *controllers):
    store = new_store(tmp_path)
    clock = FakeClock()
    m = build_manager(store, clock=clock, wall=clock, enabled=(), log=lambda s: None)
    for c in controllers:
        m.add(c)
    namespace(store, "default")
    add_nodes(store, node("n1"))
    return store, m, Client(store)


def test_controller_writes_and_removes_endpoints(tmp_path):
    store, m, c = _setup(tmp_path, EndpointsController())
    c.create("services", {"metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
                          "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.20", "ipFamilies": ["IPv4"],
                                   "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
    m.run_until_idle()
    ep = store.get("endpoints", "default", "web")
    assert "subsets" not in ep
    assert ep["metadata"]["labels"] == {"app": "web", "endpoints.kubernetes.io/managed-by": "endpoint-controller"}
    create_pod(c, "a", "10.244.1.2", ready=False)
    m.run_until_idle()
    ep = store.get("endpoints", "default", "web")
    assert [a["ip"] for a in ep["subsets"][0]["notReadyAddresses"]] == ["10.244.1.2"]
    set_pod(c, "a", "10.244.1.2", True)
    m.run_until_idle()
    ep = store.get("endpoints", "default", "web")
    assert [a["ip"] for a in ep["subsets"][0]["addresses"]] == ["10.244.1.2"]
    assert ep["subsets"][0]["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    c.delete("pods", "default", "a")
    m.run_until_idle()
    assert "subsets" not in store.get("endpoints", "default", "web")
    # a user's Endpoints of a selector-less Service, and one without a Service, are left alone
    c.create("endpoints", {"metadata": {"name": "mine", "namespace": "default"},
                           "subsets": [{"addresses": [{"ip": "192.0.2.1"}], "ports": [{"port": 80}]}]})
    c.delete("services", "default", "web")
    m.run_until_idle()
    assert store.get("endpoints", "default", "web") is None
    assert store.get("endpoints", "default", "mine")["subsets"][0]["addresses"] == [{"ip": "192.0.2.1"}]


def test_kubernetes_service_endpoints_and_slice(tmp_path):
    store, m, c = _setup(tmp_path, KubernetesServiceReconciler(["172.18.0.2"], port=6443,
                                                               service_cidr="10.96.0.0/12"))
    m.run_until_idle()
    s = store.get("services", "default", "kubernetes")
    assert s["spec"]["clusterIP"] == "10.96.0.1" and s["spec"]["clusterIPs"] == ["10.96.0.1"]
    assert s["spec"]["ports"] == [{"name": "https", "protocol": "TCP", "port": 443, "targetPort": 6443}]
    assert s["metadata"]["labels"] == {"component": "apiserver", "provider": "kubernetes"}
    assert "selector" not in s["spec"]
    ep = store.get("endpoints", "default", "kubernetes")
    assert ep["subsets"] == [{"addresses": [{"ip": "172.18.0.2"}],
                              "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]}]
    assert ep["metadata"]["labels"] == {"endpointslice.kubernetes.io/skip-mirror": "true"}
    sl = store.get("endpointslices.discovery.k8s.io", "default", "kubernetes")
    assert sl["addressType"] == "IPv4" and sl["metadata"]["labels"] == {"kubernetes.io/service-name": "kubernetes"}
    assert sl["endpoints"] == [{"addresses": ["172.18.0.2"], "conditions": {"ready": True}}]
    assert sl["ports"] == [{"name": "https", "port": 6443, "protocol": "TCP"}]
    # deleted or changed: put back
    c.delete("endpoints", "default", "kubernetes")
    c.mutate("endpointslices.discovery.k8s.io", "default", "kubernetes",
             lambda o: (o.__setitem__("endpoints", []), o)[1])
    m.run_until_idle()
    assert store.get("endpoints", "default", "kubernetes")["subsets"] == ep["subsets"]
    assert store.get("endpointslices.discovery.k8s.io", "default", "kubernetes")["endpoints"] == sl["endpoints"]
    rv = store.revision
    m.run_until_idle()
    assert store.revision == rv  # settled: no writes


def test_kubernetes_service_needs_an_address():
    with pytest.raises(ValueError, match="address"):
        KubernetesServiceReconciler([])
