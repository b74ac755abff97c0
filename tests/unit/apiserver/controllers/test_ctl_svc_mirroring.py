"""EndpointSlice mirroring: the Endpoints of a selector-less Service become EndpointSlices."""

from __future__ import annotations

from ctl_helpers import FakeClock, namespace, new_store
from emu.apiserver.controllers import build_manager
from emu.apiserver.controllers.endpoints import KubernetesServiceReconciler
from emu.apiserver.controllers.endpointslicemirroring import EndpointSliceMirroringController
from emu.apiserver.controllers.framework import Client

SLICES = "endpointslices.discovery.k8s.io"


def mirrored(store, name):
    return [s for s in store.list_objects(SLICES, "default")
            if s["metadata"]["labels"].get("kubernetes.io/service-name") == name]


def test_selectorless_service_endpoints_are_mirrored(tmp_path):
    store = new_store(tmp_path)
    clock = FakeClock()
    m = build_manager(store, clock=clock, wall=clock, enabled=(), log=lambda s: None)
    m.add(EndpointSliceMirroringController())
    m.add(KubernetesServiceReconciler(["172.18.0.2"]))
    namespace(store, "default")
    c = Client(store)
    c.create("services", {"metadata": {"name": "db", "namespace": "default"},
                          "spec": {"ports": [{"name": "pg", "port": 5432}], "clusterIP": "10.96.0.30",
                                   "ipFamilies": ["IPv4"]}})
    c.create("endpoints", {"metadata": {"name": "db", "namespace": "default", "labels": {"team": "data"},
                                        "annotations": {"note": "external"}},
                           "subsets": [{"addresses": [{"ip": "192.0.2.10"}, {"ip": "192.0.2.11", "hostname": "b"}],
                                        "notReadyAddresses": [{"ip": "192.0.2.12"}, {"ip": "not-an-ip"}],
                                        "ports": [{"name": "pg", "port": 5432}]},
                                       {"addresses": [{"ip": "2001:db8::1"}],
                                        "ports": [{"name": "pg", "port": 5432}]}]})
    m.run_until_idle()
    slices = {s["addressType"]: s for s in mirrored(store, "db")}
    assert sorted(slices) == ["IPv4", "IPv6"]
    v4 = slices["IPv4"]
    assert v4["metadata"]["generateName"] == "db-"
    assert v4["metadata"]["labels"] == {"team": "data", "kubernetes.io/service-name": "db",
                                        "endpointslice.kubernetes.io/managed-by":
                                            "endpointslicemirroring-controller.k8s.io"}
    assert v4["metadata"]["annotations"] == {"note": "external"}
    svc = store.get("services", "default", "db")
    assert v4["metadata"]["ownerReferences"][0]["uid"] == svc["metadata"]["uid"]
    assert v4["ports"] == [{"name": "pg", "port": 5432, "protocol": "TCP"}]
    assert v4["endpoints"] == [{"addresses": ["192.0.2.10"], "conditions": {"ready": True}},
                               {"addresses": ["192.0.2.11"], "conditions": {"ready": True}, "hostname": "b"},
                               {"addresses": ["192.0.2.12"], "conditions": {"ready": False}}]
    # the kubernetes Service's Endpoints say skip-mirror: only its own slice exists
    assert [s["metadata"]["name"] for s in mirrored(store, "kubernetes")] == ["kubernetes"]

    # an address leaves: the slice is updated in place; the IPv6 one goes with its subset
    name = v4["metadata"]["name"]
    c.mutate("endpoints", "default", "db", lambda o: (o.__setitem__("subsets", [
        {"addresses": [{"ip": "192.0.2.10"}], "ports": [{"name": "pg", "port": 5432}]}]), o)[1])
    m.run_until_idle()
    [s] = mirrored(store, "db")
    assert s["metadata"]["name"] == name and [e["addresses"] for e in s["endpoints"]] == [["192.0.2.10"]]

    # the Service gets a selector: the mirrors go (the EndpointSlice controller takes over)
    c.mutate("services", "default", "db", lambda o: (o["spec"].__setitem__("selector", {"app": "db"}), o)[1])
    m.run_until_idle()
    assert mirrored(store, "db") == []
