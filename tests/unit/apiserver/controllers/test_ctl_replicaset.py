"""The ReplicaSet controller against a real Store: scaling up and down, naming, owner
references, adoption, status from the pods' Ready conditions."""

from __future__ import annotations

from ctl_helpers import add_nodes, kubelet, live, manager, namespace, new_store, node, pod_template, pods

from emu.apiserver.controllers.framework import Client


def replicaset(name: str, replicas: int) -> dict:
    return {"kind": "ReplicaSet", "apiVersion": "apps/v1", "metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": pod_template({"app": name})}}


def scale(store, name, n):
    Client(store).mutate("replicasets.apps", "default", name, lambda o: {**o, "spec": {**o["spec"], "replicas": n}})


def test_scales_up_and_down_with_status(tmp_path):
    store = new_store(tmp_path)
    namespace(store)
    add_nodes(store, node("n1"), node("n2"))
    m = manager(store, "replicaset", "scheduler")
    rs = Client(store).create("replicasets.apps", replicaset("web", 3))
    m.run_until_idle()
    ps = pods(store, app="web")
    assert len(ps) == 3
    for p in ps:
        assert p["metadata"]["name"].startswith("web-") and len(p["metadata"]["name"]) == len("web-") + 5
        assert p["metadata"]["generateName"] == "web-"
        ref = p["metadata"]["ownerReferences"][0]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"], ref["blockOwnerDeletion"]) == (
            "ReplicaSet", "web", rs["metadata"]["uid"], True, True)
        assert p["spec"]["nodeName"] in ("n1", "n2")
    status = store.get("replicasets.apps", "default", "web")["status"]
    assert status == {"replicas": 3, "fullyLabeledReplicas": 3, "observedGeneration": 1}
    kubelet(store, ready=True, only={ps[0]["metadata"]["name"]})
    m.run_until_idle()
    status = store.get("replicasets.apps", "default", "web")["status"]
    assert (status["readyReplicas"], status["availableReplicas"]) == (1, 1)
    kubelet(store, ready=True)
    scale(store, "web", 5)
    m.run_until_idle()
    assert len(pods(store, app="web")) == 5
    # scaling down deletes the pods that are not ready first: the two new ones (not started by the kubelet)
    new = {p["metadata"]["name"] for p in pods(store, app="web")} - {p["metadata"]["name"] for p in ps}
    scale(store, "web", 3)
    m.run_until_idle()
    left = {p["metadata"]["name"] for p in pods(store, app="web")}
    assert len(left) == 3 and not (left & new)
    status = store.get("replicasets.apps", "default", "web")["status"]
    assert (status["replicas"], status["readyReplicas"], status["observedGeneration"]) == (3, 3, 3)
    scale(store, "web", 0)
    m.run_until_idle()
    assert live(pods(store, app="web")) == []
    assert store.get("replicasets.apps", "default", "web")["status"] == {"replicas": 0, "observedGeneration": 4}


def test_adopts_orphans_and_releases_pods_relabelled(tmp_path):
    store = new_store(tmp_path)
    namespace(store)
    c = Client(store)
    c.create("pods", {"kind": "Pod", "apiVersion": "v1",
                      "metadata": {"name": "orphan", "namespace": "default", "labels": {"app": "db"}},
                      "spec": {"containers": [{"name": "c", "image": "x"}]}})
    m = manager(store, "replicaset")
    rs = c.create("replicasets.apps", replicaset("db", 2))
    m.run_until_idle()
    ps = pods(store, app="db")
    assert len(ps) == 2  # the orphan was adopted: one pod created, not two
    orphan = store.get("pods", "default", "orphan")
    assert orphan["metadata"]["ownerReferences"][0]["uid"] == rs["metadata"]["uid"]
    # relabelled out of the selector: released, and replaced
    c.mutate("pods", "default", "orphan", lambda p: {**p, "metadata": {**p["metadata"], "labels": {"app": "x"}}})
    m.run_until_idle()
    assert not store.get("pods", "default", "orphan")["metadata"].get("ownerReferences")
    assert len(pods(store, app="db")) == 2
