"""The pod garbage collector against a real Store: pods of a deleted node go after the
quarantine, unscheduled terminating pods at once, terminated pods over the threshold."""

from __future__ import annotations

from ctl_helpers import FakeClock, add_nodes, manager, namespace, new_store, node

from emu.apiserver.controllers.framework import Client
from emu.apiserver.controllers.podgc import PodGCController


def pod(name: str, node_name: str = "") -> dict:
    obj = {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": name, "namespace": "default"},
           "spec": {"containers": [{"name": "c", "image": "x"}]}}
    if node_name:
        obj["spec"]["nodeName"] = node_name
    return obj


def test_pods_of_a_deleted_node_go_after_the_quarantine(tmp_path):
    store = new_store(tmp_path)
    namespace(store)
    add_nodes(store, node("n1"), node("n2"))
    clock = FakeClock()
    m = manager(store, "podgc", clock=clock)
    c = Client(store)
    c.create("pods", pod("a", "n1"))
    c.create("pods", pod("b", "n2"))
    m.run_until_idle()
    store.delete("nodes", "", "n1")
    m.run_until_idle()
    assert store.get("pods", "default", "a") is not None  # quarantined
    clock.advance(41)
    m.run_until_idle()
    assert store.get("pods", "default", "a") is None
    assert store.get("pods", "default", "b") is not None
    assert any("node n1, which no longer exists" in line for line in m.logs)


def test_a_node_back_within_the_quarantine_keeps_its_pods(tmp_path):
    store = new_store(tmp_path)
    namespace(store)
    add_nodes(store, node("n1"))
    clock = FakeClock()
    m = manager(store, "podgc", clock=clock)
    Client(store).create("pods", pod("a", "n1"))
    store.delete("nodes", "", "n1")
    m.run_until_idle()
    clock.advance(20)
    add_nodes(store, node("n1"))
    clock.advance(30)
    m.run_until_idle()
    assert store.get("pods", "default", "a") is not None


def test_unscheduled_terminating_and_terminated_over_threshold(tmp_path):
    store = new_store(tmp_path)
    namespace(store)
    add_nodes(store, node("n1"))
    m = manager(store, clock=FakeClock())
    m.add(PodGCController(threshold=2))
    c = Client(store)
    held = pod("held")
    held["metadata"]["finalizers"] = ["example.com/x"]
    c.create("pods", held)
    store.delete("pods", "default", "held")  # marked, never bound: no kubelet will finish it
    for i in range(4):
        p = c.create("pods", pod(f"done{i}", "n1"))
        p["status"]["phase"] = "Succeeded"
        c.update_status("pods", p)
    m.run_until_idle()
    left = sorted(p["metadata"]["name"] for p in store.list_objects("pods", "default"))
    assert left == ["done2", "done3", "held"]  # held keeps its finalizer; the two oldest terminated pods went
    assert store.get("pods", "default", "held")["metadata"]["deletionTimestamp"]
