"""Every controller in its threads at once (ControllerManager.start) over one Store, with a
fake kubelet: many deployments made and deleted together settle to the right pods and
leave nothing behind (no deadlock between informers, no duplicate pods from stale caches)."""

from __future__ import annotations

import time

from ctl_helpers import FakeKubelet, add_nodes, namespace, new_store, node, pod_template

from emu.apiserver import storage
from emu.apiserver.controllers import build_manager
from emu.apiserver.controllers.framework import Client, info_for
from emu.apiserver.controllers.gc import add_deletion_finalizers


def wait_for(fn, what: str, limit: float = 60.0):
    """Poll an outcome; the limit only turns a hang into a failure."""
    deadline = time.monotonic() + limit
    while not fn():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def test_many_deployments_in_threads(tmp_path):
    store = new_store(tmp_path)
    namespace(store)
    add_nodes(store, *(node(f"n{i}") for i in range(4)))
    logs = []
    m = build_manager(store, log=logs.append)
    m.add(FakeKubelet())
    m.start()
    c = Client(store)
    try:
        for i in range(15):
            c.create("deployments.apps", {"kind": "Deployment", "apiVersion": "apps/v1",
                                          "metadata": {"name": f"d{i}", "namespace": "default"},
                                          "spec": {"replicas": 3, "selector": {"matchLabels": {"app": f"d{i}"}},
                                                   "template": pod_template({"app": f"d{i}"})}})

        def running():
            ps = store.list_objects("pods", "default")
            return len(ps) == 45 and all(p["status"].get("phase") == "Running" for p in ps)
        wait_for(running, "45 running pods")
        by_app = {}
        for p in store.list_objects("pods", "default"):
            by_app[p["metadata"]["labels"]["app"]] = by_app.get(p["metadata"]["labels"]["app"], 0) + 1
        assert set(by_app.values()) == {3}
        wait_for(lambda: all((d.get("status") or {}).get("availableReplicas") == 3
                             for d in store.list_objects("deployments.apps", "default")), "deployments available")
        info = info_for("deployments.apps")
        for i in range(15):  # half in the foreground, half in the background
            opts = {"propagationPolicy": "Foreground" if i % 2 else "Background"}
            store.write(info.key, "default", f"d{i}",
                        lambda cur, opts=opts: storage.mark_deleted(add_deletion_finalizers(cur, opts)),
                        info.field_values)
        wait_for(lambda: not store.list_objects("pods", "default") and not store.list_objects("replicasets.apps")
                 and not store.list_objects("deployments.apps"), "everything deleted")
    finally:
        m.stop()
        store.close()
    assert not [line for line in logs if "failed" in line and "the object has been modified" not in line], logs
