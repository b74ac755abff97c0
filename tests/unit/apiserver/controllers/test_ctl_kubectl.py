"""End to end: the real kubectl against an in-process ApiServer with the controllers
running in their threads (ControllerManager.start) and a fake kubelet that starts bound
pods. Uses the `apiserver` and `kubectl_default` fixtures of tests/unit/apiserver.

Waiting for the controllers is polling an outcome (get until it shows what is
expected, bounded so a broken controller fails instead of hanging); `kubectl rollout
status` itself waits by watching, as it does against a real cluster."""

from __future__ import annotations

import json
import time

import pytest
from ctl_helpers import FakeKubelet, add_nodes, node

from emu.apiserver.controllers import build_manager


def eventually(fn, what: str, limit: float = 30.0):
    deadline = time.monotonic() + limit
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.1)


def pod_names(kubectl, selector="app=web"):
    out = json.loads(kubectl("get", "pods", "-l", selector, "-o", "json"))
    return sorted(p["metadata"]["name"] for p in out["items"] if not p["metadata"].get("deletionTimestamp"))


def test_kubectl_deployment_lifecycle(apiserver, kubectl):
    """With each kubectl installed (1.27, 1.32, 1.33): their rollout status/history/undo read the same fields."""
    add_nodes(apiserver.store, node("worker-1"), node("worker-2"))
    logs = []
    manager = build_manager(apiserver.store, log=logs.append)
    manager.add(FakeKubelet())
    manager.start()
    try:
        assert "deployment.apps/web created" in kubectl("create", "deployment", "web", "--image=nginx:1.25",
                                                        "--replicas=3")
        eventually(lambda: len(pod_names(kubectl)) == 3, "3 pods")
        out = kubectl("rollout", "status", "deploy/web", "--timeout=60s")
        assert 'deployment "web" successfully rolled out' in out
        table = kubectl("get", "pods", "-o", "wide")
        assert table.count("Running") == 3 and "worker-1" in table and "worker-2" in table
        assert "3/3" in kubectl("get", "deploy", "web")

        kubectl("scale", "deploy/web", "--replicas=5")
        assert "successfully rolled out" in kubectl("rollout", "status", "deploy/web", "--timeout=60s")
        assert len(pod_names(kubectl)) == 5

        before = set(pod_names(kubectl))
        kubectl("rollout", "restart", "deploy/web")
        assert "successfully rolled out" in kubectl("rollout", "status", "deploy/web", "--timeout=60s")
        eventually(lambda: len(pod_names(kubectl)) == 5 and not (set(pod_names(kubectl)) & before),
                   "every pod replaced")
        history = kubectl("rollout", "history", "deploy/web")
        assert [line.split()[0] for line in history.splitlines()[2:] if line.strip()] == ["1", "2"]
        kubectl("rollout", "undo", "deploy/web")
        assert "successfully rolled out" in kubectl("rollout", "status", "deploy/web", "--timeout=60s")
        history = kubectl("rollout", "history", "deploy/web")
        assert [line.split()[0] for line in history.splitlines()[2:] if line.strip()] == ["2", "3"]

        events = kubectl("get", "events", "--field-selector", "reason=Scheduled", "-o", "json")
        assert any(e["message"].startswith("Successfully assigned default/web-")
                   for e in json.loads(events)["items"])

        kubectl("delete", "deploy", "web")
        eventually(lambda: json.loads(kubectl("get", "rs", "-o", "json"))["items"] == [], "replica sets deleted")
        eventually(lambda: pod_names(kubectl) == [], "pods deleted")
    finally:
        manager.stop()
    # conflicts between the threads are expected and retried, as upstream logs them; nothing else may fail
    assert not [line for line in logs if "failed" in line and "the object has been modified" not in line], logs


MANIFEST = """
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 3
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: db, image: "postgres:16"}]}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec: {containers: [{name: agent, image: "busybox:1.36"}]}
"""


def test_kubectl_statefulset_and_daemonset_roll_out(apiserver, kubectl_default):
    kubectl = kubectl_default
    cp_taint = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
    add_nodes(apiserver.store, node("cp", taints=[cp_taint]), node("worker-1"), node("worker-2"))
    manager = build_manager(apiserver.store, log=lambda line: None)
    manager.add(FakeKubelet())
    manager.start()
    try:
        kubectl("apply", "-f", "-", input=MANIFEST)
        out = kubectl("rollout", "status", "sts/db", "--timeout=60s")
        # spec.updateStrategy.rollingUpdate.partition defaults to 0, so kubectl reports a partitioned roll out,
        # as it does against a real cluster
        assert out == "partitioned roll out complete: 3 new pods have been updated...\n"
        assert pod_names(kubectl, "app=db") == ["db-0", "db-1", "db-2"]
        assert 'daemon set "agent" successfully rolled out' in kubectl("rollout", "status", "ds/agent",
                                                                       "--timeout=60s")
        pods = json.loads(kubectl("get", "pods", "-l", "app=agent", "-o", "json"))["items"]
        assert sorted(p["spec"]["nodeName"] for p in pods) == ["worker-1", "worker-2"]
        kubectl("set", "image", "sts/db", "db=postgres:17")
        assert kubectl("rollout", "status", "sts/db", "--timeout=60s") == \
            "partitioned roll out complete: 3 new pods have been updated...\n"
        status = json.loads(kubectl("get", "sts", "db", "-o", "json"))["status"]
        assert status["currentRevision"] == status["updateRevision"] and status["updatedReplicas"] == 3
        images = {p["spec"]["containers"][0]["image"]
                  for p in json.loads(kubectl("get", "pods", "-l", "app=db", "-o", "json"))["items"]}
        assert images == {"postgres:17"}
    finally:
        manager.stop()


def test_kubectl_delete_cascade_orphan_and_foreground(apiserver, kubectl_default):
    """kubectl delete --cascade=orphan and --cascade=foreground, with the garbage collector."""
    kubectl = kubectl_default
    add_nodes(apiserver.store, node("w1"))
    manager = build_manager(apiserver.store, log=lambda line: None)
    manager.add(FakeKubelet())
    manager.start()
    try:
        kubectl("create", "deployment", "web", "--image=nginx:1.25", "--replicas=2")
        kubectl("rollout", "status", "deploy/web", "--timeout=60s")
        assert 'deployment.apps "web" deleted' in kubectl("delete", "deploy", "web", "--cascade=orphan")
        rs = json.loads(kubectl("get", "rs", "-o", "json"))["items"]
        assert len(rs) == 1 and not rs[0]["metadata"].get("ownerReferences")
        assert len(pod_names(kubectl)) == 2
        # kubectl waits for the object to be gone: the collector removes the pods first, then the finalizer
        kubectl("delete", "rs", rs[0]["metadata"]["name"], "--cascade=foreground", "--timeout=60s")
        assert pod_names(kubectl) == []
    finally:
        manager.stop()
