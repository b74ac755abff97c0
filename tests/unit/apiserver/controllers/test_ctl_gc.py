"""The garbage collector against a real Store with the workload controllers: Background,
Foreground and Orphan deletion, dangling references, and the server-side finalizer helper."""

from __future__ import annotations

import pytest
from ctl_helpers import add_nodes, live, manager, namespace, new_store, node, pod_template, pods, settle

from emu.apiserver import storage
from emu.apiserver.controllers import gc
from emu.apiserver.controllers.framework import Client, controller_ref, info_for

DEPLOY = "deployments.apps"
RS = "replicasets.apps"


def server_delete(store, resource, ns, name, policy=None):
    """What server.py's DELETE does once it calls gc.add_deletion_finalizers (the lead's wiring)."""
    info = info_for(resource)
    opts = {} if policy is None else {"propagationPolicy": policy}

    def fn(current):
        gc.add_deletion_finalizers(current, opts)
        return storage.mark_deleted(current)
    return store.write(resource, ns, name, fn, info.field_values)


@pytest.fixture
def env(tmp_path):
    store = new_store(tmp_path)
    namespace(store)
    add_nodes(store, node("n1"))
    m = manager(store, "deployment", "replicaset", "scheduler", "garbagecollector")
    c = Client(store)
    c.create(DEPLOY, {"kind": "Deployment", "apiVersion": "apps/v1",
                      "metadata": {"name": "web", "namespace": "default"},
                      "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                               "template": pod_template({"app": "web"})}})
    settle(m, store)
    assert len(pods(store, app="web")) == 3
    yield store, m, c
    store.close()


def deletions(store, since: int) -> list[str]:
    """Resources of the objects removed after revision `since`, in order."""
    out = []
    for resource in ("pods", RS, DEPLOY):
        w = store.watch(resource, resource_version=str(since))
        while True:
            ev = w.next(0) if not w.events.empty() else None
            if ev is None:
                break
            if ev[0] == "DELETED":
                out.append((ev[2], resource))
        w.stop()
    return [r for _, r in sorted(out)]


def test_background_deletes_replica_sets_and_pods(env):
    store, m, _c = env
    etype, _ = server_delete(store, DEPLOY, "default", "web", "Background")
    assert etype == "DELETED"  # gone at once; the collector follows
    m.run_until_idle()
    assert store.list_objects(RS, "default") == []
    assert pods(store, app="web") == []


def test_foreground_keeps_the_owner_until_dependents_are_gone(env):
    store, m, _c = env
    since = store.revision
    etype, _obj = server_delete(store, DEPLOY, "default", "web", "Foreground")
    assert etype == "MODIFIED"
    d = store.get(DEPLOY, "default", "web")
    assert d["metadata"]["deletionTimestamp"] and d["metadata"]["finalizers"] == ["foregroundDeletion"]
    m.run_until_idle()
    assert store.get(DEPLOY, "default", "web") is None
    assert store.list_objects(RS, "default") == [] and pods(store, app="web") == []
    order = deletions(store, since)
    assert order == ["pods"] * 3 + [RS, DEPLOY]


def test_orphan_leaves_dependents_without_the_reference(env):
    store, m, _c = env
    [rs] = store.list_objects(RS, "default")
    etype, _ = server_delete(store, DEPLOY, "default", "web", "Orphan")
    assert etype == "MODIFIED"
    m.run_until_idle()
    assert store.get(DEPLOY, "default", "web") is None
    rs_now = store.get(RS, "default", rs["metadata"]["name"])
    assert rs_now is not None and not rs_now["metadata"].get("ownerReferences")
    assert len(live(pods(store, app="web"))) == 3
    # the pods still belong to the replica set; deleting it in the background takes them
    server_delete(store, RS, "default", rs["metadata"]["name"])
    m.run_until_idle()
    assert pods(store, app="web") == []


def test_dangling_reference_is_dropped_while_another_owner_lives(tmp_path):
    store = new_store(tmp_path)
    namespace(store)
    m = manager(store, "garbagecollector")
    c = Client(store)
    a = c.create("configmaps", {"metadata": {"name": "a", "namespace": "default"}})
    b = c.create("configmaps", {"metadata": {"name": "b", "namespace": "default"}})
    ref_b = controller_ref(b) | {"controller": False}
    c.create("configmaps", {"metadata": {"name": "dep", "namespace": "default",
                                         "ownerReferences": [controller_ref(a), ref_b]}})
    m.run_until_idle()
    assert store.get("configmaps", "default", "dep") is not None
    server_delete(store, "configmaps", "default", "a")
    m.run_until_idle()
    dep = store.get("configmaps", "default", "dep")
    assert [r["name"] for r in dep["metadata"]["ownerReferences"]] == ["b"]
    server_delete(store, "configmaps", "default", "b")
    m.run_until_idle()
    assert store.get("configmaps", "default", "dep") is None


def test_owner_missing_from_the_start_is_collected(tmp_path):
    store = new_store(tmp_path)
    namespace(store)
    m = manager(store, "garbagecollector")
    c = Client(store)
    c.create("configmaps", {"metadata": {"name": "lost", "namespace": "default", "ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gone", "uid": "no-such-uid", "controller": True}]}})
    c.create("configmaps", {"metadata": {"name": "alien", "namespace": "default", "ownerReferences": [
        {"apiVersion": "example.com/v1", "kind": "Widget", "name": "w", "uid": "u"}]}})
    m.run_until_idle()
    assert store.get("configmaps", "default", "lost") is None
    assert store.get("configmaps", "default", "alien") is not None  # an unknown kind is not judged


def test_deletion_finalizers():
    assert gc.deletion_finalizers("Foreground") == ["foregroundDeletion"]
    assert gc.deletion_finalizers("Orphan") == ["orphan"]
    assert gc.deletion_finalizers("Background") == []
    assert gc.deletion_finalizers(None, "Deployment") == []
    assert gc.deletion_finalizers(None, "Deployment", orphan_dependents=True) == ["orphan"]
    obj = {"metadata": {"finalizers": ["example.com/keep", "orphan"]}}
    assert gc.add_deletion_finalizers(obj, {"propagationPolicy": "Foreground"})["metadata"]["finalizers"] == [
        "example.com/keep", "foregroundDeletion"]
    assert gc.add_deletion_finalizers(obj, {"propagationPolicy": "Background"})["metadata"]["finalizers"] == [
        "example.com/keep"]
    assert gc.add_deletion_finalizers({"metadata": {}}, {})["metadata"] == {}


def test_the_controllers_leave_emus_own_objects_to_emus_commands(tmp_path):
    """What emu's commands write (mirror: emu.io/managed-by) is theirs: no ReplicaSet or
    pods for emu's Deployments, StatefulSets and DaemonSets, no adoption of emu's bare pods
    by a ReplicaSet whose selector matches, no collection of emu's pods whose owner (a
    ReplicaSet emu does not write) is not stored; made through the API, the same kinds run."""
    from emu.apiserver import mirror

    store = new_store(tmp_path)
    namespace(store)
    add_nodes(store, node("n1"))
    m = manager(store, "deployment", "replicaset", "statefulset", "daemonset", "scheduler", "garbagecollector")
    mark = {"annotations": {mirror.MANAGED_BY: mirror.MANAGER}}
    spec = {"replicas": 2, "selector": {"matchLabels": {"app": "emu"}}, "template": pod_template({"app": "emu"})}
    objects = [
        {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "emus", "namespace": "default", **mark},
         "spec": {**spec, **({"serviceName": "emus"} if kind == "StatefulSet" else {})}}
        for kind in ("Deployment", "StatefulSet", "DaemonSet")
    ]  # fmt: skip
    owned = {"kind": "ReplicaSet", "apiVersion": "apps/v1", "name": "emus-abc", "uid": "not-stored",
             "controller": True, "blockOwnerDeletion": True}  # fmt: skip
    objects += [
        {"apiVersion": "v1", "kind": "Pod", "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x"}]},
         "metadata": {"name": name, "namespace": "default", "labels": {"app": "emu"}, **mark, **extra}}
        for name, extra in (("bare", {}), ("emus-abc-1", {"ownerReferences": [owned]}))
    ]  # fmt: skip
    mirror.sync(store, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}},
                        *[o for o in objects]])  # fmt: skip
    c = Client(store)
    c.create(RS, {"kind": "ReplicaSet", "apiVersion": "apps/v1", "metadata": {"name": "theirs", "namespace": "default"},
                  "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "emu"}},
                           "template": pod_template({"app": "emu"})}})  # fmt: skip
    settle(m, store)
    names = sorted(p["metadata"]["name"] for p in live(pods(store, app="emu")))
    assert [n for n in names if not n.startswith("theirs-")] == ["bare", "emus-abc-1"]  # emu's, untouched
    assert len([n for n in names if n.startswith("theirs-")]) == 1  # it made its own rather than adopt emu's
    assert [r["metadata"]["name"] for r in store.list_objects(RS)] == ["theirs"]
    store.close()
