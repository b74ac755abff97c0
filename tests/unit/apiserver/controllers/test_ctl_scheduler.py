"""The scheduler against a real Store: filters as kube-scheduler's, spreading, and its
PodScheduled condition, Events and FailedScheduling message."""

from __future__ import annotations

from ctl_helpers import add_nodes, manager, namespace, new_store, node

from emu.apiserver.controllers import scheduler as sched
from emu.apiserver.controllers.framework import Client

CP_TAINT = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}


def pod(name: str, **spec) -> dict:
    return {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "x"}], **spec}}


def setup(tmp_path, *nodes):
    store = new_store(tmp_path)
    namespace(store)
    add_nodes(store, *nodes)
    return store, manager(store, "scheduler")


def placed(store, name):
    return store.get("pods", "default", name)["spec"].get("nodeName")


def scheduled_condition(store, name):
    for c in store.get("pods", "default", name)["status"].get("conditions") or []:
        if c["type"] == "PodScheduled":
            return c
    return None


def test_binds_to_least_loaded_node_and_records_event(tmp_path):
    store, m = setup(tmp_path, node("n1"), node("n2"), node("n3"))
    c = Client(store)
    for i in range(6):
        c.create("pods", pod(f"p{i}"))
        m.run_until_idle()
    assert [placed(store, f"p{i}") for i in range(6)] == ["n1", "n2", "n3", "n1", "n2", "n3"]
    cond = scheduled_condition(store, "p0")
    assert cond["status"] == "True"
    events = [e for e in store.list_objects("events", "default") if e["involvedObject"]["name"] == "p0"]
    assert [(e["reason"], e["message"], e["source"]["component"]) for e in events] == [
        ("Scheduled", "Successfully assigned default/p0 to n1", "default-scheduler")]
    # the field selector kubelets watch with sees the binding
    from emu.apiserver.selectors import FieldSelector
    texts, _, _ = store.list("pods", "default", fields=FieldSelector.parse("spec.nodeName=n2"))
    assert len(texts) == 2


def test_spreads_pods_of_one_owner_before_counting_all_pods(tmp_path):
    store, m = setup(tmp_path, node("a"), node("b"))
    c = Client(store)
    # node a is emptier in total, but already runs one replica of the owner
    owner_ref = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u-rs", "controller": True}
    p = pod("r1")
    p["metadata"]["ownerReferences"] = [owner_ref]
    c.create("pods", p)
    m.run_until_idle()
    assert placed(store, "r1") == "a"
    for name in ("x1", "x2"):
        c.create("pods", pod(name, nodeName="b"))
    p = pod("r2")
    p["metadata"]["ownerReferences"] = [owner_ref]
    c.create("pods", p)
    c.create("pods", pod("y"))
    m.run_until_idle()
    assert placed(store, "r2") == "b"  # same owner on a outweighs b's two other pods
    assert placed(store, "y") == "a"  # a has 1 pod, b has 3


def test_filters_and_unschedulable_message(tmp_path):
    store, m = setup(tmp_path, node("cp", taints=[CP_TAINT]), node("w1", labels={"disk": "ssd"}),
                     node("w2", unschedulable=True), node("w3", ready=False))
    c = Client(store)
    c.create("pods", pod("ssd", nodeSelector={"disk": "ssd"}))
    c.create("pods", pod("hdd", nodeSelector={"disk": "hdd"}))
    m.run_until_idle()
    assert placed(store, "ssd") == "w1"
    assert placed(store, "hdd") is None
    cond = scheduled_condition(store, "hdd")
    assert cond["status"] == "False" and cond["reason"] == "Unschedulable"
    assert cond["message"] == (
        "0/4 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
        "1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, "
        "1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, 1 node(s) were unschedulable. "
        "preemption: 0/4 nodes are available: 4 Preemption is not helpful for scheduling.")
    warnings = [e for e in store.list_objects("events", "default") if e["reason"] == "FailedScheduling"]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
    # a matching node appears: the pending pod is retried on the node event
    add_nodes(store, node("w4", labels={"disk": "hdd"}))
    m.run_until_idle()
    assert placed(store, "hdd") == "w4"
    assert scheduled_condition(store, "hdd")["status"] == "True"


def test_tolerations_and_node_affinity(tmp_path):
    store, m = setup(tmp_path, node("cp", taints=[CP_TAINT], labels={"zone": "a"}),
                     node("w1", labels={"zone": "b", "gen": "3"}), node("w2", labels={"zone": "c"}))
    c = Client(store)
    c.create("pods", pod("on-cp", tolerations=[{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists",
                                                "effect": "NoSchedule"}],
                         nodeSelector={"zone": "a"}))
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["b"]},
                              {"key": "gen", "operator": "DoesNotExist"}]}]}}}
    c.create("pods", pod("not-b", affinity=affinity))
    gen = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["2"]}]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["nowhere"]}]}]}}}
    c.create("pods", pod("gen3", affinity=gen))
    m.run_until_idle()
    assert placed(store, "on-cp") == "cp"
    assert placed(store, "not-b") == "w2"  # cp is tainted, w1 is zone b
    assert placed(store, "gen3") == "w1"


def test_toleration_semantics():
    taint = {"key": "k", "value": "v", "effect": "NoSchedule"}
    assert sched.tolerates({"key": "k", "operator": "Equal", "value": "v"}, taint)
    assert not sched.tolerates({"key": "k", "value": "w"}, taint)
    assert sched.tolerates({"operator": "Exists"}, taint)
    assert not sched.tolerates({"key": "k", "operator": "Exists", "effect": "NoExecute"}, taint)
    assert sched.fit_error([], 0) == "no nodes available to schedule pods"


def labelled(name: str, labels: dict, **spec) -> dict:
    p = pod(name, **spec)
    p["metadata"]["labels"] = labels
    return p


def zone_nodes():
    return (node("a1", labels={"zone": "a"}), node("a2", labels={"zone": "a"}), node("b1", labels={"zone": "b"}))


def test_pod_anti_affinity_one_per_node_then_unschedulable(tmp_path):
    store, m = setup(tmp_path, *zone_nodes())
    c = Client(store)
    anti = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]}}
    for i in range(4):
        c.create("pods", labelled(f"db{i}", {"app": "db"}, affinity=anti))
        m.run_until_idle()
    assert sorted(placed(store, f"db{i}") or "-" for i in range(4)) == ["-", "a1", "a2", "b1"]
    stuck = next(f"db{i}" for i in range(4) if not placed(store, f"db{i}"))
    assert scheduled_condition(store, stuck)["message"] == (
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. "
        "preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.")
    # an unlabelled pod may still go anywhere; one the existing pods' rules select may not
    c.create("pods", labelled("other", {"app": "web"}))
    c.create("pods", labelled("intruder", {"app": "db"}))
    m.run_until_idle()
    assert placed(store, "other") is not None
    assert placed(store, "intruder") is None
    assert "3 node(s) didn't satisfy existing pods anti-affinity rules" in scheduled_condition(
        store, "intruder")["message"]


def test_pod_affinity_follows_the_zone(tmp_path):
    store, m = setup(tmp_path, *zone_nodes())
    c = Client(store)
    c.create("pods", labelled("cache", {"app": "cache"}, nodeName="b1"))
    near = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "zone"}]}}
    for i in range(2):
        c.create("pods", labelled(f"web{i}", {"app": "web"}, affinity=near))
    c.create("pods", labelled("lonely", {"app": "x"}, affinity={"podAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "nothing"}}, "topologyKey": "zone"}]}}))
    m.run_until_idle()
    assert placed(store, "web0") == placed(store, "web1") == "b1"
    assert placed(store, "lonely") is None
    assert scheduled_condition(store, "lonely")["message"].startswith(
        "0/3 nodes are available: 3 node(s) didn't match pod affinity rules. preemption: 0/3 nodes are available: "
        "3 Preemption is not helpful for scheduling.")


def test_topology_spread_do_not_schedule(tmp_path):
    store, m = setup(tmp_path, *zone_nodes(), node("nozone"))
    c = Client(store)
    spread = [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
               "labelSelector": {"matchLabels": {"app": "web"}}}]
    zones = []
    for i in range(4):
        c.create("pods", labelled(f"w{i}", {"app": "web"}, topologySpreadConstraints=spread))
        m.run_until_idle()
        zones.append({"a1": "a", "a2": "a", "b1": "b"}[placed(store, f"w{i}")])
    assert sorted(zones) == ["a", "a", "b", "b"]  # never more than one ahead in a zone; "nozone" never used
