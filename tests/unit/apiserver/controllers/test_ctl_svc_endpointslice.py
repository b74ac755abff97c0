"""The EndpointSlice controller: the pure computation (desired_slices, reconcile) and the
controller over a real Store driven by run_until_idle."""

from __future__ import annotations

import copy

from ctl_helpers import FakeClock, add_nodes, namespace, new_store, node
from emu.apiserver.controllers import build_manager
from emu.apiserver.controllers.endpointslice import (CONTROLLER_NAME, EndpointSliceController, desired_slices,
                                                     reconcile)
from emu.apiserver.controllers.framework import Client, info_for
from emu.apiserver.controllers.gc import GarbageCollector
from emu.apiserver.server import _graceful_pod_delete

SLICES = "endpointslices.discovery.k8s.io"


def svc(name="web", selector=None, ports=None, cluster_ip="10.96.0.10", publish=False, ns="default", labels=None):
    spec = {"selector": {"app": "web"} if selector is None else selector,
            "ports": ports if ports is not None else [{"name": "http", "port": 80, "targetPort": 8080,
                                                       "protocol": "TCP"}],
            "clusterIP": cluster_ip, "type": "ClusterIP"}
    if cluster_ip != "None":
        spec["ipFamilies"] = ["IPv4"]
    if publish:
        spec["publishNotReadyAddresses"] = True
    return {"kind": "Service", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "labels": labels or {}},
            "spec": spec}


def pod(name, ip, ready=True, node_name="n1", labels=None, deleting=False, ports=None, hostname=None,
        subdomain=None, phase="Running", ns="default"):
    p = {"kind": "Pod", "apiVersion": "v1",
         "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "labels": labels or {"app": "web"}},
         "spec": {"nodeName": node_name, "containers": [{"name": "c", "image": "x", "ports": ports or []}]},
         "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}] if ip else [],
                    "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}
    if deleting:
        p["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    if hostname:
        p["spec"]["hostname"] = hostname
    if subdomain:
        p["spec"]["subdomain"] = subdomain
    return p


NODES = [node("n1", {"topology.kubernetes.io/zone": "zone-a"}), node("n2")]


def conds(ep):
    c = ep["conditions"]
    return (c["ready"], c["serving"], c["terminating"])


def test_slice_shape_and_conditions():
    pods = [pod("a", "10.244.1.2"), pod("b", "10.244.1.3", ready=False),
            pod("c", "10.244.2.4", node_name="n2", deleting=True),
            pod("d", "10.244.2.5", node_name="n2", ready=False, deleting=True),
            pod("nolabel", "10.244.1.9", labels={"app": "other"}), pod("noip", ""),
            pod("done", "10.244.1.8", phase="Succeeded")]
    [s] = desired_slices(svc(labels={"team": "x"}), pods, NODES)
    meta = s["metadata"]
    assert meta["generateName"] == "web-" and meta["namespace"] == "default" and "name" not in meta
    assert meta["labels"] == {"team": "x", "kubernetes.io/service-name": "web",
                              "endpointslice.kubernetes.io/managed-by": CONTROLLER_NAME}
    assert meta["ownerReferences"] == [{"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "uid-web",
                                        "controller": True, "blockOwnerDeletion": True}]
    assert s["addressType"] == "IPv4"
    assert s["ports"] == [{"name": "http", "protocol": "TCP", "port": 8080}]
    by = {e["targetRef"]["name"]: e for e in s["endpoints"]}
    assert sorted(by) == ["a", "b", "c", "d"]
    assert conds(by["a"]) == (True, True, False)
    assert conds(by["b"]) == (False, False, False)
    assert conds(by["c"]) == (False, True, True)  # terminating but still serving
    assert conds(by["d"]) == (False, False, True)
    assert by["a"] == {"addresses": ["10.244.1.2"], "conditions": {"ready": True, "serving": True,
                                                                   "terminating": False},
                       "targetRef": {"kind": "Pod", "namespace": "default", "name": "a", "uid": "uid-a"},
                       "nodeName": "n1", "zone": "zone-a"}
    assert "zone" not in by["c"]  # n2 has no zone label


def test_publish_not_ready_addresses_makes_every_endpoint_ready():
    pods = [pod("b", "10.244.1.3", ready=False), pod("d", "10.244.1.4", ready=False, deleting=True)]
    [s] = desired_slices(svc(publish=True), pods, NODES)
    assert sorted(conds(e) for e in s["endpoints"]) == [(True, False, False), (True, False, True)]


def test_pod_on_a_missing_node_is_left_out_unless_published():
    pods = [pod("a", "10.244.1.2"), pod("lost", "10.244.9.9", node_name="gone")]
    [s] = desired_slices(svc(), pods, NODES)
    assert [e["targetRef"]["name"] for e in s["endpoints"]] == ["a"]
    [s] = desired_slices(svc(publish=True), pods, NODES)
    assert [e["targetRef"]["name"] for e in s["endpoints"]] == ["a", "lost"]


def test_named_target_port_resolves_per_pod_into_separate_slices():
    service = svc(ports=[{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"},
                         {"name": "metrics", "port": 9090, "targetPort": 9090, "protocol": "TCP"}])
    pods = [pod("v1a", "10.244.1.2", ports=[{"name": "web", "containerPort": 8080, "protocol": "TCP"}]),
            pod("v1b", "10.244.1.3", ports=[{"name": "web", "containerPort": 8080, "protocol": "TCP"}]),
            pod("v2", "10.244.1.4", ports=[{"name": "web", "containerPort": 9000, "protocol": "TCP"}]),
            pod("udp", "10.244.1.5", ports=[{"name": "web", "containerPort": 7000, "protocol": "UDP"}])]
    slices = desired_slices(service, pods, NODES)
    got = sorted((tuple((p["name"], p["port"]) for p in s["ports"]),
                  tuple(e["targetRef"]["name"] for e in s["endpoints"])) for s in slices)
    assert got == [((("http", 8080), ("metrics", 9090)), ("v1a", "v1b")),
                   ((("http", 9000), ("metrics", 9090)), ("v2",)),
                   ((("metrics", 9090),), ("udp",))]  # a named port of another protocol does not match


def test_more_than_100_endpoints_split_into_slices_of_at_most_100():
    pods = [pod(f"p{i:03d}", f"10.244.{i // 200}.{i % 200 + 1}") for i in range(250)]
    slices = desired_slices(svc(), pods, NODES)
    assert sorted(len(s["endpoints"]) for s in slices) == [50, 100, 100]
    names = [e["targetRef"]["name"] for s in slices for e in s["endpoints"]]
    assert sorted(names) == sorted(p["metadata"]["name"] for p in pods)
    assert len(desired_slices(svc(), pods, NODES, max_per_slice=30)) == 9


def test_headless_service_hostnames_and_label():
    service = svc(name="db", cluster_ip="None", ports=[], selector={"app": "db"})
    pods = [pod("db-0", "10.244.1.2", labels={"app": "db"}, hostname="db-0", subdomain="db"),
            pod("db-1", "10.244.1.3", labels={"app": "db"}, hostname="db-1", subdomain="other"),
            pod("x", "10.244.1.4", labels={"app": "db"})]
    [s] = [x for x in desired_slices(service, pods, NODES) if x["addressType"] == "IPv4"]
    assert s["metadata"]["labels"]["service.kubernetes.io/headless"] == ""
    assert s["ports"] == []
    by = {e["targetRef"]["name"]: e for e in s["endpoints"]}
    assert by["db-0"]["hostname"] == "db-0"
    assert "hostname" not in by["db-1"] and "hostname" not in by["x"]


def test_no_selector_or_external_name_is_left_alone_and_no_pods_is_a_placeholder():
    assert desired_slices(svc(selector={}), [pod("a", "10.244.1.2")], NODES) == []
    ext = svc()
    ext["spec"]["type"] = "ExternalName"
    assert desired_slices(ext, [pod("a", "10.244.1.2")], NODES) == []
    [s] = desired_slices(svc(), [], NODES)
    assert s["endpoints"] == [] and s["ports"] == []


def _named(slices, start=0):
    out = []
    for i, s in enumerate(slices):
        s = copy.deepcopy(s)
        s["metadata"]["name"] = f"web-{start + i}"
        s["metadata"]["uid"] = f"slice-{start + i}"
        out.append(s)
    return out


def test_reconcile_updates_in_place_and_fills_before_creating():
    service = svc()
    pods = [pod(f"p{i:03d}", f"10.244.1.{i + 1}") for i in range(150)]
    existing = _named(desired_slices(service, pods, NODES))
    assert reconcile(service, pods, NODES, existing).empty()
    # one pod leaves and one becomes not ready (both in web-0), three arrive: the first fills the room in the
    # slice written anyway, the other two go into the unchanged slice that has room; nothing is created
    pods2 = [p for p in pods if p["metadata"]["name"] != "p010"]
    pods2[20] = pod(pods2[20]["metadata"]["name"], pods2[20]["status"]["podIP"], ready=False)
    pods2 += [pod(f"q{i}", f"10.244.2.{i + 1}") for i in range(3)]
    plan = reconcile(service, pods2, NODES, existing)
    assert not plan.create and not plan.delete
    by = {s["metadata"]["name"]: [e["targetRef"]["name"] for e in s["endpoints"]] for s in plan.update}
    assert sorted(by) == ["web-0", "web-1"]
    assert "p010" not in by["web-0"] and by["web-0"][-1] == "q0" and len(by["web-0"]) == 100
    assert by["web-1"][:50] == [e["targetRef"]["name"] for e in existing[1]["endpoints"]]
    assert by["web-1"][50:] == ["q1", "q2"]
    [ep] = [e for s in plan.update for e in s["endpoints"] if e["targetRef"]["name"] == "p021"]
    assert ep["conditions"]["ready"] is False
    # new endpoints only: they go into the unchanged slice with room, not a new one
    pods3 = pods + [pod("r0", "10.244.3.1")]
    plan = reconcile(service, pods3, NODES, existing)
    assert not plan.create and [s["metadata"]["name"] for s in plan.update] == ["web-1"]
    # every pod gone: the slices go and one placeholder stays (a deleted slice's name reused)
    plan = reconcile(service, [], NODES, existing)
    assert not plan.create and len(plan.update) == 1 and len(plan.delete) == 1
    assert plan.update[0]["endpoints"] == [] and plan.update[0]["ports"] == []


# ---------------------------------------------------------------- the controller over a Store

def setup(tmp_path):
    store = new_store(tmp_path)
    clock = FakeClock()
    m = build_manager(store, clock=clock, wall=clock, enabled=(), log=lambda s: None)
    m.add(EndpointSliceController())
    namespace(store, "default")
    add_nodes(store, node("n1", {"topology.kubernetes.io/zone": "zone-a"}), node("n2"))
    return store, m, Client(store)


def create_pod(c: Client, name, ip=None, ready=None, node_name="n1", labels=None):
    p = c.create("pods", {"metadata": {"name": name, "namespace": "default", "labels": labels or {"app": "web"}},
                          "spec": {"nodeName": node_name, "containers": [{"name": "c", "image": "nginx"}]}})
    if ip:
        set_pod(c, name, ip, ready)
    return p


def set_pod(c: Client, name, ip, ready):
    def change(p):
        p["status"].update({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]})
        return p
    c.mutate("pods", "default", name, change, status=True)


def slices(store, name="web"):
    return [s for s in store.list_objects(SLICES, "default")
            if s["metadata"]["labels"].get("kubernetes.io/service-name") == name]


def test_controller_follows_pods(tmp_path):
    store, m, c = setup(tmp_path)
    c.create("services", svc(ports=[{"name": "http", "port": 80, "targetPort": 8080}]) | {"metadata": {
        "name": "web", "namespace": "default"}})
    m.run_until_idle()
    [s] = slices(store)
    assert s["endpoints"] is None and s["ports"] is None  # the placeholder, as kube-apiserver serves it
    assert s["metadata"]["name"].startswith("web-") and len(s["metadata"]["name"]) == 9
    placeholder = s["metadata"]["name"]

    create_pod(c, "a", "10.244.1.2", ready=False)
    create_pod(c, "b", "10.244.2.3", ready=True, node_name="n2")
    create_pod(c, "pending")  # no IP yet: not an endpoint
    m.run_until_idle()
    [s] = slices(store)
    assert s["metadata"]["name"] == placeholder  # the placeholder's name is reused
    assert s["ports"] == [{"name": "http", "protocol": "TCP", "port": 8080}]
    by = {e["targetRef"]["name"]: e for e in s["endpoints"]}
    assert sorted(by) == ["a", "b"]
    assert by["a"]["conditions"] == {"ready": False, "serving": False, "terminating": False}
    assert by["a"]["zone"] == "zone-a" and by["a"]["nodeName"] == "n1"
    assert by["a"]["targetRef"]["uid"] == store.get("pods", "default", "a")["metadata"]["uid"]

    # a pod turning Ready changes its endpoint's condition in the same slice
    rv = s["metadata"]["resourceVersion"]
    set_pod(c, "a", "10.244.1.2", True)
    m.run_until_idle()
    [s2] = slices(store)
    assert s2["metadata"]["name"] == placeholder and s2["metadata"]["resourceVersion"] != rv
    assert {e["targetRef"]["name"]: e["conditions"]["ready"] for e in s2["endpoints"]} == {"a": True, "b": True}

    # a deleted pod leaves
    c.delete("pods", "default", "b")
    m.run_until_idle()
    [s3] = slices(store)
    assert [e["targetRef"]["name"] for e in s3["endpoints"]] == ["a"]

    # nothing changed: no write
    rv = s3["metadata"]["resourceVersion"]
    c.create("configmaps", {"metadata": {"name": "x", "namespace": "default"}})
    for ctl in m.controllers:
        ctl.queue.add("default/web")
    m.run_until_idle()
    assert slices(store)[0]["metadata"]["resourceVersion"] == rv

    # the pod's labels stop matching: it leaves; the service's labels are copied to the slice
    c.mutate("pods", "default", "a", lambda p: (p["metadata"].__setitem__("labels", {"app": "other"}), p)[1])
    c.mutate("services", "default", "web", lambda o: (o["metadata"].__setitem__("labels", {"tier": "front"}), o)[1])
    m.run_until_idle()
    [s4] = slices(store)
    assert s4["endpoints"] is None
    assert s4["metadata"]["labels"]["tier"] == "front"


def test_controller_leaves_services_without_selector_alone(tmp_path):
    store, m, c = setup(tmp_path)
    c.create("services", {"metadata": {"name": "manual", "namespace": "default"},
                          "spec": {"ports": [{"port": 80}]}})
    c.create(SLICES, {"metadata": {"name": "manual-1", "namespace": "default",
                                   "labels": {"kubernetes.io/service-name": "manual"}},
                      "addressType": "IPv4", "endpoints": [{"addresses": ["192.0.2.1"]}]})
    create_pod(c, "a", "10.244.1.2", ready=True)
    m.run_until_idle()
    assert [s["metadata"]["name"] for s in slices(store, "manual")] == ["manual-1"]


def test_controller_splits_and_rebalances_at_100(tmp_path):
    store, m, c = setup(tmp_path)
    c.create("services", {"metadata": {"name": "web", "namespace": "default"},
                          "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}],
                                   "clusterIP": "10.96.0.20", "ipFamilies": ["IPv4"]}})
    for i in range(120):
        create_pod(c, f"p{i:03d}", f"10.244.{i // 100}.{i % 100 + 1}", ready=True)
    m.run_until_idle()
    assert sorted(len(s["endpoints"]) for s in slices(store)) == [20, 100]
    for i in range(100, 120):
        c.delete("pods", "default", f"p{i:03d}")
    m.run_until_idle()
    got = slices(store)
    assert [len(s["endpoints"] or []) for s in got] == [100]


def test_deleted_service_slices_go_with_the_garbage_collector(tmp_path):
    store, m, c = setup(tmp_path)
    m.add(GarbageCollector())
    c.create("services", {"metadata": {"name": "web", "namespace": "default"},
                          "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}],
                                   "clusterIP": "10.96.0.20", "ipFamilies": ["IPv4"]}})
    create_pod(c, "a", "10.244.1.2", ready=True)
    m.run_until_idle()
    assert len(slices(store)) == 1
    c.delete("services", "default", "web")
    m.run_until_idle()
    assert slices(store) == []


def test_a_pod_being_deleted_stays_serving_and_terminating_until_it_goes(tmp_path):
    """Graceful deletion as the API server and the kubelet play it: the pod gets its deletionTimestamp and
    stays Ready while it serves on (ready=false, serving=true, terminating=true: kube-proxy's fallback when
    no endpoint is ready); its readiness failing makes it not serving; deleted, it leaves the slice."""
    store, m, c = setup(tmp_path)
    c.create("services", svc(ports=[{"name": "http", "port": 80, "targetPort": 8080}]) | {"metadata": {
        "name": "web", "namespace": "default"}})
    create_pod(c, "a", "10.244.1.2", ready=True)
    m.run_until_idle()
    assert [conds(e) for e in slices(store)[0]["endpoints"]] == [(True, True, False)]

    # kubectl delete: the API server's graceful pod deletion (the pod's kubelet runs it)
    store.write("pods", "default", "a", lambda current: _graceful_pod_delete(current, 60),
                info_for("pods").field_values)  # fmt: skip
    assert store.get("pods", "default", "a")["metadata"]["deletionGracePeriodSeconds"] == 60
    m.run_until_idle()
    assert [conds(e) for e in slices(store)[0]["endpoints"]] == [(False, True, True)]
    set_pod(c, "a", "10.244.1.2", False)
    m.run_until_idle()
    assert [conds(e) for e in slices(store)[0]["endpoints"]] == [(False, False, True)]
    c.delete("pods", "default", "a")
    m.run_until_idle()
    assert slices(store)[0]["endpoints"] is None
