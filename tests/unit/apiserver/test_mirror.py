"""emu.apiserver.mirror: the objects emu's commands drive, written into a real store."""

from emu.apiserver import mirror
from emu.apiserver.storage import Store


def pod(name: str, ready: str = "True", namespace: str = "default") -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": {"app": "x"}},
        "spec": {"nodeName": "worker", "containers": [{"name": "c", "image": "emu/node"}]},
        "status": {"phase": "Running", "podIP": "10.244.1.2", "conditions": [{"type": "Ready", "status": ready}]},
    }  # fmt: skip


def namespace(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}, "status": {"phase": "Active"}}


def test_sync_creates_replaces_only_what_changed_and_deletes_what_left(tmp_path):
    store = Store(str(tmp_path / "state.db"))
    assert mirror.sync(store, [namespace("default"), pod("a"), pod("b")]) == \
        {"created": 3, "updated": 0, "deleted": 0, "unchanged": 0}  # fmt: skip
    before = store.get("pods", "default", "a")
    watcher = store.watch("pods", resource_version=str(store.revision))
    counts = mirror.sync(store, [namespace("default"), pod("a"), pod("b", ready="False")])
    assert counts == {"created": 0, "updated": 1, "deleted": 0, "unchanged": 2}
    assert store.get("pods", "default", "a")["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    b = store.get("pods", "default", "b")
    assert b["status"]["conditions"] == [{"type": "Ready", "status": "False"}]  # status written with the rest
    event = watcher.next(1.0)
    assert event is not None and event[0] == "MODIFIED" and '"name":"b"' in event[1].replace(" ", "")
    assert mirror.sync(store, [namespace("default"), pod("b", ready="False")])["deleted"] == 1
    assert store.get("pods", "default", "a") is None
    assert store.get("pods", "default", "b")["metadata"]["uid"] == b["metadata"]["uid"]  # the same pod


def test_the_system_namespaces_stay_and_other_kinds_are_left_alone(tmp_path):
    store = Store(str(tmp_path / "state.db"))
    mirror.sync(store, [namespace("default"), namespace("kube-system"), namespace("team")])
    store.create("configmaps", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "team"}})
    settings = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "team"},
                "data": {"a": "1"}}  # fmt: skip
    mirror.sync(store, [namespace("team"), settings])
    store.update("configmaps", {**settings, "data": {"a": "2"}})  # a user's change
    mirror.sync(store, [namespace("team"), settings])
    assert store.get("configmaps", "team", "settings")["data"] == {"a": "2"}  # emu wrote it once, then left it
    store.create("secrets", {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "team"}})
    mirror.sync(store, [])
    names = {o["metadata"]["name"] for o in store.list_objects("namespaces")}
    assert names == {"default", "kube-system"}  # "team" was emu's; the system ones stay
    assert store.get("secrets", "team", "s") is not None  # not a kind emu drives


def test_writes_to_driven_kinds_are_refused_for_everyone_but_emu():
    error = mirror.refuse("kubernetes-admin", "create", "apps", "deployments", "default")
    assert error is not None and error.code == 405 and "emu apply -f" in error.message
    assert mirror.refuse("emu-controller", "create", "apps", "deployments", "default") is None
    assert mirror.refuse("kubernetes-admin", "list", "", "pods", "default") is None
    assert mirror.refuse("kubernetes-admin", "create", "", "secrets", "default") is None
    assert mirror.refuse("kubernetes-admin", "create", "", "configmaps", "default") is None  # written once, then theirs
    # Endpoints are the API server's controllers' (and a user's, for a service without a selector).
    assert mirror.refuse("kubernetes-admin", "create", "discovery.k8s.io", "endpointslices", "default") is None
    # A node writes the status of its pods (NodeRestriction checks which), nothing else of them.
    assert mirror.refuse("system:node:worker", "patch", "", "pods", "default", "status") is None
    assert mirror.refuse("system:node:worker", "patch", "", "pods", "default") is not None
    assert mirror.refuse("kubernetes-admin", "patch", "", "pods", "default", "status") is not None


def test_an_object_of_a_kind_emu_does_not_mirror_is_refused(tmp_path):
    import pytest

    from emu.apiserver.errors import ApiError

    store = Store(str(tmp_path / "state.db"))
    with pytest.raises(ApiError, match="does not mirror"):
        mirror.sync(store, [{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "d"}}])
