"""Node lifecycle from Leases against a real Store and an injected clock: a node whose Lease stops
being renewed becomes Unknown, is tainted, its pods are evicted after their toleration; the
disruption rule holds evictions back; a renewed Lease clears it all."""

from __future__ import annotations

import copy

from ctl_helpers import FakeClock, add_nodes, namespace, new_store, node, pod_template
from emu.apiserver.controllers import build_manager
from emu.apiserver.controllers.framework import Client
from emu.apiserver.controllers.nodelifecycle import (NodeLifecycleController, desired_taints, eviction_delay,
                                                     rfc3339, zone_state)

LEASES = "leases.coordination.k8s.io"


class Lab:
    def __init__(self, tmp_path, names=("n1", "n2", "n3", "n4"), enabled=(), **opts):
        self.store = new_store(tmp_path)
        self.clock = FakeClock(1_700_000_000.0)
        self.m = build_manager(self.store, clock=self.clock, wall=self.clock, enabled=enabled, log=lambda s: None)
        self.ctl = self.m.add(NodeLifecycleController(**opts))
        self.c = Client(self.store)
        namespace(self.store, "default")
        namespace(self.store, "kube-node-lease")
        add_nodes(self.store, *[node(n) for n in names])
        self.names = list(names)
        for n in names:
            self.c.create(LEASES, {"metadata": {"name": n, "namespace": "kube-node-lease"},
                                   "spec": {"holderIdentity": n, "leaseDurationSeconds": 40,
                                            "renewTime": self.micro()}})
        self.m.run_until_idle()  # the controller sees every node from the start

    def micro(self) -> str:
        return rfc3339(self.clock()).replace("Z", ".000000Z")

    def renew(self, *names):
        for n in names:
            stamp = self.micro()
            self.c.mutate(LEASES, "kube-node-lease", n, lambda o: (o["spec"].__setitem__("renewTime", stamp), o)[1])

    def run_for(self, seconds, alive, step=10.0):
        """Let `seconds` pass in steps, the `alive` nodes renewing their Leases, controllers running."""
        left = seconds
        while left > 0:
            d = min(step, left)
            self.clock.advance(d)
            left -= d
            self.renew(*alive)
            self.m.run_until_idle()

    def pod(self, name, node_name, tolerations=None):
        p = self.c.create("pods", {"metadata": {"name": name, "namespace": "default"},
                                   "spec": {"nodeName": node_name, "containers": [{"name": "c", "image": "nginx"}]}})
        if tolerations is not None:
            p = copy.deepcopy(p)
            p["spec"]["tolerations"] = tolerations
            self.c.update("pods", p)

        def ready(o):
            o["status"].update(phase="Running", podIP="10.244.0.9",
                               conditions=[{"type": "Ready", "status": "True"}])
            return o
        self.c.mutate("pods", "default", name, ready, status=True)

    def node(self, name):
        return self.store.get("nodes", "", name)

    def ready(self, name):
        return next(c for c in self.node(name)["status"]["conditions"] if c["type"] == "Ready")

    def taints(self, name):
        return sorted((t["key"], t["effect"]) for t in self.node(name)["spec"].get("taints") or [])

    def pod_names(self):
        return sorted(p["metadata"]["name"] for p in self.store.list_objects("pods", "default"))


UNREACHABLE = [("node.kubernetes.io/unreachable", "NoExecute"), ("node.kubernetes.io/unreachable", "NoSchedule")]


def test_silent_node_goes_unknown_is_tainted_and_its_pods_are_evicted(tmp_path):
    lab = Lab(tmp_path)
    lab.pod("default-tol", "n1")  # DefaultTolerationSeconds: 300 s
    lab.pod("short", "n1", tolerations=[{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                                         "effect": "NoExecute", "tolerationSeconds": 30}])
    lab.pod("forever", "n1", tolerations=[{"operator": "Exists"}])
    lab.pod("elsewhere", "n2")
    lab.m.run_until_idle()
    others = ["n2", "n3", "n4"]

    lab.run_for(30, others)
    assert lab.ready("n1")["status"] == "True" and lab.taints("n1") == []

    lab.run_for(20, others)  # at 40 s without a renewal (the grace) it is marked; now 50 s
    r = lab.ready("n1")
    assert (r["status"], r["reason"], r["message"]) == ("Unknown", "NodeStatusUnknown",
                                                        "Kubelet stopped posting node status.")
    assert lab.taints("n1") == UNREACHABLE
    [ne] = [t for t in lab.node("n1")["spec"]["taints"] if t["effect"] == "NoExecute"]
    assert ne["timeAdded"]
    assert all(lab.ready(n)["status"] == "True" for n in others)
    # MarkPodsNotReady: the pods on the silent node are no longer Ready (their endpoints stop being ready)
    p = lab.store.get("pods", "default", "default-tol")
    assert [c["status"] for c in p["status"]["conditions"] if c["type"] == "Ready"] == ["False"]
    assert lab.pod_names() == ["default-tol", "elsewhere", "forever", "short"]

    lab.run_for(30, others)
    assert lab.pod_names() == ["default-tol", "elsewhere", "forever"]  # 30 s toleration ran out
    lab.run_for(250, others)
    assert "default-tol" in lab.pod_names()  # tainted 290 s ago: 10 s of its 300 left
    lab.run_for(20, others)
    assert lab.pod_names() == ["elsewhere", "forever"]
    events = [e for e in lab.store.list_objects("events", "default") if e["reason"] == "TaintManagerEviction"]
    assert sorted(e["involvedObject"]["name"] for e in events) == ["default-tol", "short"]

    # the Lease is renewed again: Ready, no taints
    lab.run_for(10, lab.names)
    r = lab.ready("n1")
    assert (r["status"], r["reason"]) == ("True", "KubeletReady")
    assert lab.taints("n1") == []


def test_no_evictions_while_most_nodes_are_not_ready(tmp_path):
    lab = Lab(tmp_path)
    for n in ("n1", "n2", "n3"):
        lab.pod(f"p-{n}", n)
    lab.m.run_until_idle()
    lab.run_for(50, ["n4"])  # 3 of 4 nodes (75% > 55%, more than 2) silent: PartialDisruption
    for n in ("n1", "n2", "n3"):
        assert lab.ready(n)["status"] == "Unknown"
        assert lab.taints(n) == [("node.kubernetes.io/unreachable", "NoSchedule")]
    assert lab.ctl.zone_states == {"": "PartialDisruption"}
    lab.run_for(1000, ["n4"])
    assert lab.pod_names() == ["p-n1", "p-n2", "p-n3"]
    # one comes back: 2 of 4 not ready is Normal again, the silent ones get NoExecute and their pods go later
    lab.run_for(10, ["n3", "n4"])
    assert lab.ctl.zone_states == {"": "Normal"}
    assert lab.taints("n1") == UNREACHABLE and lab.taints("n3") == []
    lab.run_for(310, ["n3", "n4"])
    assert lab.pod_names() == ["p-n3"]


def test_every_node_silent_evicts_nothing(tmp_path):
    lab = Lab(tmp_path, names=("n1", "n2"))
    lab.pod("p", "n1")
    lab.run_for(1000, [])
    assert lab.ctl.zone_states == {"": "FullDisruption"}
    assert lab.taints("n1") == [("node.kubernetes.io/unreachable", "NoSchedule")]
    assert lab.pod_names() == ["p"]


def test_grace_period_is_configurable(tmp_path):
    lab = Lab(tmp_path, grace_period=5.0)
    lab.run_for(6, ["n2", "n3", "n4"], step=3.0)
    assert lab.ready("n1")["status"] == "Unknown"


def test_pure_rules():
    tol300 = {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
              "tolerationSeconds": 300}
    taint = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": "x"}
    assert eviction_delay({"spec": {"tolerations": [tol300]}}, [taint]) == 300.0
    assert eviction_delay({"spec": {}}, [taint]) == 0.0
    assert eviction_delay({"spec": {"tolerations": [{"operator": "Exists"}]}}, [taint]) is None
    assert eviction_delay({"spec": {}}, [{"key": "a", "effect": "NoSchedule"}]) is None
    nr = lambda s: {"status": {"conditions": [{"type": "Ready", "status": s}]}}  # noqa: E731
    assert zone_state([nr("True"), nr("Unknown"), nr("Unknown")]) == "Normal"  # only 2 not ready
    assert zone_state([nr("True"), nr("False"), nr("Unknown"), nr("Unknown")]) == "PartialDisruption"
    assert zone_state([nr("Unknown")]) == "FullDisruption"
    n = {"metadata": {"name": "x"}, "spec": {"unschedulable": True, "taints": [{"key": "mine", "effect": "NoSchedule"}]},
         **nr("False")}
    assert desired_taints(n, True, "T") == [{"key": "mine", "effect": "NoSchedule"},
                                            {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"},
                                            {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute",
                                             "timeAdded": "T"},
                                            {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]


def test_evicted_pods_are_recreated_elsewhere_by_their_replicaset(tmp_path):
    lab = Lab(tmp_path, names=("n1", "n2", "n3"), enabled=("scheduler", "replicaset"))
    store, m, c = lab.store, lab.m, lab.c
    c.create("replicasets.apps", {"metadata": {"name": "web", "namespace": "default"},
                                  "spec": {"replicas": 6, "selector": {"matchLabels": {"app": "web"}},
                                           "template": pod_template({"app": "web"})}})
    m.run_until_idle()
    on = lambda n: [p for p in store.list_objects("pods", "default") if p["spec"].get("nodeName") == n]  # noqa: E731
    assert on("n1")  # spread over the three nodes
    lab.run_for(50, ["n2", "n3"])
    assert lab.taints("n1") == UNREACHABLE
    lab.run_for(300, ["n2", "n3"])
    assert on("n1") == []
    pods = store.list_objects("pods", "default")
    assert len(pods) == 6 and {p["spec"]["nodeName"] for p in pods} == {"n2", "n3"}
