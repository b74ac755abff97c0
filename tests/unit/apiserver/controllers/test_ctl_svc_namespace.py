"""The namespace controller against a real Store: a deleted Namespace is emptied, reports what holds it,
and goes once nothing is left."""

from __future__ import annotations

from ctl_helpers import FakeClock, namespace, new_store
from emu.apiserver.controllers import build_manager
from emu.apiserver.controllers.framework import Client
from emu.apiserver.controllers.namespace import NamespaceController, conditions


def test_conditions_wording():
    conds = conditions({"pods.": 2, "configmaps.": 1}, {"example.com/hold": 1}, [], "2026-01-01T00:00:00Z")
    by = {c["type"]: c for c in conds}
    assert [c["type"] for c in conds] == ["NamespaceDeletionDiscoveryFailure",
                                          "NamespaceDeletionGroupVersionParsingFailure",
                                          "NamespaceDeletionContentFailure", "NamespaceContentRemaining",
                                          "NamespaceFinalizersRemaining"]
    assert by["NamespaceContentRemaining"] == {
        "type": "NamespaceContentRemaining", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z",
        "reason": "SomeResourcesRemain",
        "message": "Some resources are remaining: configmaps. has 1 resource instances, pods. has 2 resource instances"}
    assert by["NamespaceFinalizersRemaining"]["message"] == \
        "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"
    assert by["NamespaceDeletionContentFailure"]["status"] == "False"
    assert by["NamespaceDeletionContentFailure"]["reason"] == "ContentDeleted"
    later = conditions({}, {}, [], "2026-01-02T00:00:00Z", conds)
    assert {c["type"]: c["lastTransitionTime"] for c in later}["NamespaceDeletionDiscoveryFailure"] == \
        "2026-01-01T00:00:00Z"  # unchanged status keeps its transition time
    assert {c["type"]: c["lastTransitionTime"] for c in later}["NamespaceContentRemaining"] == "2026-01-02T00:00:00Z"


def test_deleted_namespace_is_emptied_then_removed(tmp_path):
    store = new_store(tmp_path)
    clock = FakeClock()
    m = build_manager(store, clock=clock, wall=clock, enabled=(), log=lambda s: None)
    m.add(NamespaceController())
    c = Client(store)
    namespace(store, "x")
    namespace(store, "keep")
    for ns in ("x", "keep"):
        c.create("configmaps", {"metadata": {"name": "cm", "namespace": ns}, "data": {"a": "b"}})
        c.create("pods", {"metadata": {"name": "p", "namespace": ns},
                          "spec": {"containers": [{"name": "c", "image": "nginx"}]}})
    c.create("services", {"metadata": {"name": "s", "namespace": "x"}, "spec": {"ports": [{"port": 80}]}})
    c.create("roles.rbac.authorization.k8s.io", {"metadata": {"name": "r", "namespace": "x"}, "rules": []})
    c.create("configmaps", {"metadata": {"name": "held", "namespace": "x", "finalizers": ["example.com/hold"]}})
    m.run_until_idle()
    assert store.get("namespaces", "", "x")["status"]["phase"] == "Active"  # nothing happens to a live one

    c.delete("namespaces", "", "x")
    m.run_until_idle()
    ns = store.get("namespaces", "", "x")
    assert ns["status"]["phase"] == "Terminating"
    assert [(k, n) for k, n in store.namespaces_in_use("x")] == [("configmaps", "held")]
    assert store.get("configmaps", "x", "held")["metadata"]["deletionTimestamp"]
    by = {c_["type"]: c_ for c_ in ns["status"]["conditions"]}
    assert by["NamespaceContentRemaining"]["status"] == "True"
    assert by["NamespaceContentRemaining"]["message"] == \
        "Some resources are remaining: configmaps. has 1 resource instances"
    assert by["NamespaceFinalizersRemaining"]["message"] == \
        "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"
    assert ns["spec"]["finalizers"] == ["kubernetes"]

    # the finalizer's owner lets go; the next look (a second later) removes the namespace
    c.mutate("configmaps", "x", "held", lambda o: (o["metadata"].__setitem__("finalizers", []), o)[1])
    m.run_until_idle()
    assert store.get("namespaces", "", "x") is not None  # not looked at again yet
    clock.advance(1.0)
    m.run_until_idle()
    assert store.get("namespaces", "", "x") is None
    assert store.namespaces_in_use("x") == []
    assert sorted(k for k, _ in store.namespaces_in_use("keep")) == ["configmaps", "pods"]
