"""The StatefulSet controller against a real Store with the scheduler and a fake kubelet:
stable names and DNS fields, OrderedReady and Parallel, scale down from the highest
ordinal, rolling update with a partition, status."""

from __future__ import annotations

from ctl_helpers import add_nodes, kubelet, live, manager, namespace, new_store, node, pod_template, pods, settle

from emu.apiserver.controllers.framework import Client
from emu.apiserver.controllers.statefulset import update_revision

STS = "statefulsets.apps"


def statefulset(name: str, replicas: int, **spec) -> dict:
    return {"kind": "StatefulSet", "apiVersion": "apps/v1", "metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": replicas, "serviceName": f"{name}-hl", "selector": {"matchLabels": {"app": name}},
                     "template": pod_template({"app": name}), **spec}}


def env(tmp_path):
    store = new_store(tmp_path)
    namespace(store)
    add_nodes(store, node("n1"), node("n2"))
    return store, manager(store, "statefulset", "scheduler"), Client(store)


def events(store, reason):
    """Event messages with that reason, in the order they were written."""
    evs = [e for e in store.list_objects("events", "default") if e["reason"] == reason]
    return [e["message"] for e in sorted(evs, key=lambda e: int(e["metadata"]["resourceVersion"]))]


def names(store, app="db"):
    return sorted(p["metadata"]["name"] for p in live(pods(store, app=app)))


def test_ordered_ready_creates_one_ordinal_at_a_time(tmp_path):
    store, m, c = env(tmp_path)
    sts = c.create(STS, statefulset("db", 3))
    m.run_until_idle()
    assert names(store) == ["db-0"]
    kubelet(store, ready=False)  # Running but not Ready: db-1 still waits
    m.run_until_idle()
    assert names(store) == ["db-0"]
    kubelet(store, ready=True)
    m.run_until_idle()
    assert names(store) == ["db-0", "db-1"]
    settle(m, store)
    assert names(store) == ["db-0", "db-1", "db-2"]
    p = store.get("pods", "default", "db-1")
    rev = update_revision(store.get(STS, "default", "db"))
    assert p["spec"]["hostname"] == "db-1" and p["spec"]["subdomain"] == "db-hl"
    assert p["metadata"]["labels"] == {"app": "db", "statefulset.kubernetes.io/pod-name": "db-1",
                                       "apps.kubernetes.io/pod-index": "1", "controller-revision-hash": rev}
    assert p["metadata"]["ownerReferences"][0]["uid"] == sts["metadata"]["uid"]
    assert "generateName" not in p["metadata"]
    s = store.get(STS, "default", "db")["status"]
    assert s == {"observedGeneration": 1, "replicas": 3, "readyReplicas": 3, "availableReplicas": 3,
                 "currentReplicas": 3, "updatedReplicas": 3, "currentRevision": rev, "updateRevision": rev,
                 "collisionCount": 0}
    assert events(store, "SuccessfulCreate") == [f"create Pod db-{i} in StatefulSet db successful" for i in range(3)]


def test_scale_down_from_the_highest_ordinal_one_at_a_time(tmp_path):
    store, m, c = env(tmp_path)
    c.create(STS, statefulset("db", 4))
    settle(m, store)
    c.mutate(STS, "default", "db", lambda o: {**o, "spec": {**o["spec"], "replicas": 1}})
    m.run_until_idle()
    # the store removes a pod at once (no kubelet grace period here), so each deletion's event starts the next
    assert events(store, "SuccessfulDelete") == [f"delete Pod db-{i} in StatefulSet db successful" for i in (3, 2, 1)]
    assert names(store) == ["db-0"]


def test_ordered_scale_down_waits_for_unready_pods(tmp_path):
    store, m, c = env(tmp_path)
    c.create(STS, statefulset("db", 3))
    settle(m, store)
    kubelet(store, ready=False, only={"db-0"})
    c.mutate(STS, "default", "db", lambda o: {**o, "spec": {**o["spec"], "replicas": 2}})
    m.run_until_idle()
    assert names(store) == ["db-0", "db-1", "db-2"]
    kubelet(store, ready=True)
    m.run_until_idle()
    assert names(store) == ["db-0", "db-1"]


def test_parallel_creates_and_deletes_at_once(tmp_path):
    store, m, c = env(tmp_path)
    c.create(STS, statefulset("db", 3, podManagementPolicy="Parallel"))
    m.run_until_idle()
    assert names(store) == ["db-0", "db-1", "db-2"]  # no pod is Ready yet
    c.mutate(STS, "default", "db", lambda o: {**o, "spec": {**o["spec"], "replicas": 0}})
    m.run_until_idle()
    assert names(store) == []


def test_rolling_update_highest_first_down_to_partition(tmp_path):
    store, m, c = env(tmp_path)
    c.create(STS, statefulset("db", 3, updateStrategy={"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}))
    settle(m, store)
    old_rev = update_revision(store.get(STS, "default", "db"))

    def image(o):
        o["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:2"
        return o
    c.mutate(STS, "default", "db", image)
    new_rev = update_revision(store.get(STS, "default", "db"))
    order = []
    for _ in range(10):
        m.run_until_idle()
        revs = {p["metadata"]["name"]: p["metadata"]["labels"]["controller-revision-hash"]
                for p in live(pods(store, app="db"))}
        order.append(sorted(n for n, r in revs.items() if r == new_rev))
        kubelet(store, ready=True)
    assert [o for i, o in enumerate(order) if i == 0 or o != order[i - 1]][-1] == ["db-1", "db-2"]
    assert ["db-2"] in order  # db-2 was replaced before db-1
    assert store.get("pods", "default", "db-0")["metadata"]["labels"]["controller-revision-hash"] == old_rev
    s = store.get(STS, "default", "db")["status"]
    assert (s["updateRevision"], s["currentRevision"], s["updatedReplicas"], s["currentReplicas"]) == (
        new_rev, old_rev, 2, 1)
