"""The controllers' machinery against a real Store: informer cache and relist, the work
queue's dedup and back-off, conflict retries, and the manager's threads."""

from __future__ import annotations

import threading
import time

import pytest
from ctl_helpers import FakeClock, namespace, new_store

from emu.apiserver import errors
from emu.apiserver.controllers.framework import (
    Client,
    Controller,
    ControllerManager,
    Informer,
    Watch,
    WorkQueue,
    controller_ref,
)


def ns_store(tmp_path):
    store = new_store(tmp_path)
    namespace(store)
    return store


def cm(name: str, data: dict | None = None) -> dict:
    return {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": name, "namespace": "default"},
            "data": data or {}}


def test_informer_lists_watches_and_indexes(tmp_path):
    store = ns_store(tmp_path)
    c = Client(store)
    c.create("configmaps", cm("a", {"k": "1"}))
    inf = Informer(store, "configmaps", print)
    seen = []
    inf.handlers.append(lambda t, old, new: seen.append((t, (new or old)["metadata"]["name"])))
    inf.add_index("k", lambda o: [o.get("data", {}).get("k", "")])
    inf.pump()
    assert seen == [("ADDED", "a")]
    c.create("configmaps", cm("b", {"k": "1"}))
    c.mutate("configmaps", "default", "a", lambda o: {**o, "data": {"k": "2"}})
    c.delete("configmaps", "default", "b")
    assert inf.pump() == 3
    assert seen[1:] == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    assert [o["metadata"]["name"] for o in inf.by_index("k", "2")] == ["a"]
    assert inf.by_index("k", "1") == []


def test_informer_relists_after_410(tmp_path):
    store = ns_store(tmp_path)
    c = Client(store)
    c.create("configmaps", cm("a"))
    inf = Informer(store, "configmaps", print)
    inf.pump()
    inf.stop()  # the watch ends; meanwhile more events than the window holds
    store._cache.clear()
    c.create("configmaps", cm("b"))
    c.delete("configmaps", "default", "a")
    store.window_start = store.revision  # as after a compaction: the informer's revision is too old
    events = []
    inf.handlers.append(lambda t, old, new: events.append((t, (new or old)["metadata"]["name"])))
    inf.pump()
    assert inf.relists == 2
    assert sorted(inf.cache) == ["default/b"]
    assert sorted(events) == [("ADDED", "b"), ("DELETED", "a")]


def test_work_queue_dedups_and_backs_off():
    clock = FakeClock()
    q = WorkQueue(clock)
    q.add("a")
    q.add("a")
    q.add("b")
    assert q.get() == "a"
    q.add("a")  # while processing: queued again after done
    assert q.get() == "b"
    assert q.get() is None
    q.done("a")
    assert q.get() == "a"
    q.done("a")
    q.done("b")
    delays = [q.add_rate_limited("x") for _ in range(4)]
    assert delays == [0.005, 0.01, 0.02, 0.04]
    assert q.get() is None
    clock.advance(0.005)
    assert q.get() == "x"
    q.done("x")
    q.forget("x")
    assert q.add_rate_limited("x") == 0.005


class Copier(Controller):
    """Test controller: keeps a ConfigMap "<name>-copy" owned by each ConfigMap labelled copy=yes."""

    name = "copier"

    def __init__(self, fail_first: int = 0):
        super().__init__()
        self.fail_first = fail_first
        self.calls = 0

    def watches(self):
        return [Watch("configmaps", lambda o: [f"default/{o['metadata']['name'].removesuffix('-copy')}"])]

    def reconcile(self, key):
        self.calls += 1
        if self.calls <= self.fail_first:
            raise RuntimeError("injected failure")
        _ns, name = key.split("/")
        src = self.informer("configmaps").get(key)
        if src is None or src["metadata"].get("labels", {}).get("copy") != "yes":
            return
        if self.informer("configmaps").get(f"{key}-copy") is None:
            obj = cm(f"{name}-copy", src.get("data"))
            obj["metadata"]["ownerReferences"] = [controller_ref(src)]
            self.client.create("configmaps", obj)
        return


def test_run_until_idle_reconciles_with_read_your_writes_and_back_off(tmp_path):
    store = ns_store(tmp_path)
    clock = FakeClock()
    logs = []
    m = ControllerManager(store, clock=clock, log=logs.append)
    ctl = m.add(Copier(fail_first=1))
    src = cm("src", {"x": "1"})
    src["metadata"]["labels"] = {"copy": "yes"}
    Client(store).create("configmaps", src)
    m.run_until_idle()
    assert store.get("configmaps", "default", "src-copy") is None  # failed once, waits its back-off
    assert "injected failure" in logs[0]
    clock.advance(0.01)
    m.run_until_idle()
    copy_ = store.get("configmaps", "default", "src-copy")
    assert copy_["metadata"]["ownerReferences"][0]["controller"] is True
    assert copy_["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] is True
    calls = ctl.calls
    m.run_until_idle()
    assert ctl.calls == calls  # idle: nothing queued


def test_mutate_retries_on_conflict(tmp_path):
    store = ns_store(tmp_path)
    c = Client(store)
    c.create("configmaps", cm("a", {"n": "0"}))
    attempts = []

    def change(obj):
        attempts.append(1)
        if len(attempts) == 1:  # another writer wins the race
            other = store.get("configmaps", "default", "a")
            other["data"]["other"] = "yes"
            c.update("configmaps", other)
        obj["data"]["n"] = str(len(attempts))
        return obj

    out = c.mutate("configmaps", "default", "a", change)
    assert len(attempts) == 2
    assert out["data"] == {"n": "2", "other": "yes"}
    stale = store.get("configmaps", "default", "a")
    c.update("configmaps", {**stale, "data": {"n": "3"}})
    with pytest.raises(errors.ApiError) as e:
        c.update("configmaps", {**stale, "data": {"n": "4"}})
    assert e.value.code == 409


def test_started_manager_reconciles_in_threads(tmp_path):
    store = ns_store(tmp_path)
    m = ControllerManager(store, log=lambda s: None)
    m.add(Copier())
    m.start()
    threads = list(m.threads)
    assert len(threads) == 2  # the configmaps informer's watch and the copier's worker
    try:
        src = cm("t", {"x": "1"})
        src["metadata"]["labels"] = {"copy": "yes"}
        Client(store).create("configmaps", src)
        done = threading.Event()
        for _ in range(200):  # polls the outcome; the test's verdict does not depend on how long it takes
            if store.get("configmaps", "default", "t-copy") is not None:
                done.set()
                break
            time.sleep(0.05)
        assert done.is_set()
    finally:
        m.stop()
    assert all(not t.is_alive() for t in threads)


def test_no_creates_in_a_terminating_namespace(tmp_path):
    store = ns_store(tmp_path)
    c = Client(store)
    namespace(store, "going")
    c.mutate("namespaces", "", "going", lambda n: {**n, "metadata": {**n["metadata"],
                                                                     "finalizers": ["example.com/hold"]}})
    store.delete("namespaces", "", "going")
    with pytest.raises(errors.ApiError) as e:
        c.create("configmaps", {"metadata": {"name": "x", "namespace": "going"}})
    assert e.value.code == 403 and "because it is being terminated" in e.value.message
    with pytest.raises(errors.ApiError) as e:
        c.create("configmaps", {"metadata": {"name": "x", "namespace": "missing"}})
    assert e.value.code == 404


def test_the_same_event_again_counts_up(tmp_path):
    store = ns_store(tmp_path)
    c = Client(store)
    obj = c.create("configmaps", cm("a"))
    for _ in range(3):
        c.event(obj, "Warning", "Broken", "it broke", "tester")
    c.event(obj, "Warning", "Broken", "it broke differently", "tester")
    events = {e["message"]: e for e in store.list_objects("events", "default")}
    assert events["it broke"]["count"] == 3 and events["it broke differently"]["count"] == 1
    assert events["it broke"]["involvedObject"] == {"kind": "ConfigMap", "namespace": "default", "name": "a",
                                                    "uid": obj["metadata"]["uid"], "apiVersion": "v1",
                                                    "resourceVersion": obj["metadata"]["resourceVersion"]}
