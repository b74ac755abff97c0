"""The DaemonSet controller against a real Store with the scheduler and a fake kubelet:
one pod per eligible node, pinned by node affinity, taints and tolerations, node
changes, rolling update, status."""

from __future__ import annotations

from ctl_helpers import add_nodes, kubelet, live, manager, namespace, new_store, node, pod_template, pods, settle

from emu.apiserver.controllers.framework import Client
from emu.apiserver.controllers.replicaset import pod_ready

DS = "daemonsets.apps"
CP_TAINT = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}


def daemonset(name: str, **spec) -> dict:
    return {"kind": "DaemonSet", "apiVersion": "apps/v1", "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": name}}, "template": pod_template({"app": name}), **spec}}


def placement(store, app="agent"):
    return sorted(p["spec"].get("nodeName") or "" for p in live(pods(store, app=app)))


def test_one_pod_per_eligible_node(tmp_path):
    store = new_store(tmp_path)
    namespace(store)
    add_nodes(store, node("cp", taints=[CP_TAINT]), node("w1"), node("w2", unschedulable=True))
    m = manager(store, "daemonset", "scheduler")
    c = Client(store)
    c.create(DS, daemonset("agent"))
    settle(m, store)
    assert placement(store) == ["w1", "w2"]  # cp's taint is not tolerated; unschedulable is
    p = next(p for p in pods(store, app="agent") if p["spec"]["nodeName"] == "w1")
    assert p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] == {
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["w1"]}]}]}
    tols = {(t["key"], t["effect"]) for t in p["spec"]["tolerations"]}
    assert ("node.kubernetes.io/unschedulable", "NoSchedule") in tols
    assert ("node.kubernetes.io/not-ready", "NoExecute") in tols
    assert p["metadata"]["ownerReferences"][0]["kind"] == "DaemonSet"
    s = store.get(DS, "default", "agent")["status"]
    assert s == {"currentNumberScheduled": 2, "numberMisscheduled": 0, "desiredNumberScheduled": 2,
                 "numberReady": 2, "observedGeneration": 1, "updatedNumberScheduled": 2, "numberAvailable": 2}

    # a node joins, another gets a taint the pods do not tolerate
    add_nodes(store, node("w3"))
    c.mutate("nodes", "", "w1", lambda n: {**n, "spec": {"taints": [{"key": "gpu", "effect": "NoExecute"}]}})
    settle(m, store)
    assert placement(store) == ["w2", "w3"]
    # the control plane, tolerated
    c.create(DS, daemonset("cni", template=pod_template({"app": "cni"}) | {"spec": {
        "containers": [{"name": "c", "image": "x"}], "tolerations": [{"operator": "Exists"}]}}))
    settle(m, store)
    assert placement(store, "cni") == ["cp", "w1", "w2", "w3"]


def test_node_selector_and_rolling_update(tmp_path):
    store = new_store(tmp_path)
    namespace(store)
    add_nodes(store, *(node(f"n{i}", labels={"role": "edge"}) for i in range(4)), node("other"))
    m = manager(store, "daemonset", "scheduler")
    c = Client(store)
    tmpl = pod_template({"app": "agent"})
    tmpl["spec"]["nodeSelector"] = {"role": "edge"}
    c.create(DS, daemonset("agent", template=tmpl,
                           updateStrategy={"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2}}))
    settle(m, store)
    assert placement(store) == ["n0", "n1", "n2", "n3"]
    old = {p["metadata"]["labels"]["controller-revision-hash"] for p in pods(store, app="agent")}

    def image(o):
        o["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:2"
        return o
    c.mutate(DS, "default", "agent", image)
    for _ in range(10):
        m.run_until_idle()
        ready = [p for p in live(pods(store, app="agent")) if pod_ready(p)]
        assert len(ready) >= 2, "more than maxUnavailable=2 daemon pods down at once"
        kubelet(store, ready=True)
    hashes = {p["metadata"]["labels"]["controller-revision-hash"] for p in pods(store, app="agent")}
    assert len(hashes) == 1 and hashes != old
    s = store.get(DS, "default", "agent")["status"]
    assert (s["desiredNumberScheduled"], s["updatedNumberScheduled"], s["numberAvailable"]) == (4, 4, 4)
