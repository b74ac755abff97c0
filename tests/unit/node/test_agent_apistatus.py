"""emu.node.agent.apistatus: a node's agent writes its Lease and its pods' status
into emu's real API server (TLS, the node's own certificate, RBAC and
NodeRestriction), and emu's own commands then leave that status alone."""

from __future__ import annotations

import time

import pytest
from kube_testserver import client_for, write_pki

from emu.api.load import load_text
from emu.api.manifests.render import View
from emu.apiserver import mirror
from emu.apiserver.controllers import start_named
from emu.apiserver.server import ApiServer, cluster_security
from emu.apiserver.storage import Store
from emu.control.apiserver import mirror_objects
from emu.control.state import plan_cluster
from emu.node.agent.apistatus import LEASE_NAMESPACE, ApiStatus
from emu.node.kube import podstatus
from emu.node.kube.client import ApiError, resource_path
from emu.node.plan.cni import API_CONTROLLERS

LAB = """
name: lab
nodes:
  - {name: control-plane, role: control-plane}
  - {name: worker}
  - {name: worker2}
pods:
  - name: web
    node: worker
    labels: {app: web}
    containers:
      - {name: server, workload: netexec, readinessProbe: {httpGet: {path: /, port: 8080}}}
      - {name: sidecar, command: [sleep, infinity]}
  - name: other
    node: worker2
    containers: [{name: shell, command: [sleep, infinity]}]
services:
  - {name: web, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
"""


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Served:
    """emu's API server as every emu cluster runs it: TLS, client certificates, RBAC,
    NodeRestriction, and the kinds emu drives refused to others (--emu-driven)."""

    def __init__(self, tmp, controllers: tuple[str, ...] = ()):
        self.pki = write_pki(tmp / "pki")
        self.store = Store(str(tmp / "state.db"))
        self.server = ApiServer(self.store, **cluster_security(self.store, str(self.pki)), emu_driven=True)
        host, port = self.server.start(("127.0.0.1", 0))
        self.url = f"https://{host}:{port}"
        self.manager = start_named(self.store, controllers) if controllers else None

    def client(self, who: str = "admin"):
        return client_for(self.url, self.pki, who)

    def stop(self) -> None:
        if self.manager:
            self.manager.stop()
        self.server.shutdown()
        self.store.close()


@pytest.fixture()
def server(tmp_path):
    served = Served(tmp_path)
    yield served
    served.stop()


@pytest.fixture()
def state():
    return plan_cluster(load_text(LAB), "emu-lab", "172.28.0.0/24")


def running(ready: bool, restarts: int = 0) -> dict:
    return {"state": "Running", "exitCode": None, "ready": ready, "restarts": restarts, "started": 1_700_000_000}


def mirror_pods(server, state) -> None:
    """What `emu up` writes: the pods as emu's view shows them (before any node reported)."""
    pods = [o for o in mirror_objects(state, [], 1_700_000_000.0) if o["kind"] == "Pod"]
    mirror.sync(server.store, pods)


def wait_for(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (found := check()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return found


def reporter(server, node: str, log: list) -> tuple[ApiStatus, Clock]:
    clock = Clock()
    status = ApiStatus(node, log.append, clock=clock, wall=lambda: 1_700_000_100.0 + clock.now,
                       connect=lambda state, name: server.client(f"nodes/{name}"))  # fmt: skip
    return status, clock


def test_a_node_writes_its_lease_and_renews_it(server, state):
    log: list[str] = []
    status, clock = reporter(server, "worker", log)
    assert status.step(state, {}) == pytest.approx(10.0)
    lease = server.client().get(resource_path("coordination.k8s.io/v1", "leases", LEASE_NAMESPACE, "worker"))
    assert lease["spec"]["holderIdentity"] == "worker" and lease["spec"]["leaseDurationSeconds"] == 40
    first = lease["spec"]["renewTime"]
    clock.now += 5
    status.step(state, {})  # not due yet
    clock.now += 5
    status.step(state, {})
    again = server.client().get(resource_path("coordination.k8s.io/v1", "leases", LEASE_NAMESPACE, "worker"))
    assert again["spec"]["renewTime"] > first and again["spec"]["acquireTime"] == lease["spec"]["acquireTime"]
    assert log == []


def test_pod_status_follows_the_kubelet_and_only_changes_are_written(server, state):
    mirror_pods(server, state)
    web = state.pods["default/web"]
    log: list[str] = []
    status, clock = reporter(server, "worker", log)
    path = resource_path("v1", "pods", "default", "web")
    entries = {web.uid: {"server": running(False), "sidecar": running(True)}}
    status.step(state, entries)
    pod = server.client().get(path)
    conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert conditions["Ready"] == "False" and conditions["ContainersReady"] == "False"
    assert [(c["name"], c["ready"]) for c in pod["status"]["containerStatuses"]] == [("server", False), ("sidecar", True)]
    assert pod["status"]["podIP"] == web.ip and pod["status"]["phase"] == "Running"
    written = pod["metadata"]["resourceVersion"]

    status.step(state, entries)  # nothing changed: nothing written
    assert server.client().get(path)["metadata"]["resourceVersion"] == written

    entries = {web.uid: {"server": running(True, restarts=2), "sidecar": running(True)}}
    status.step(state, entries)
    pod = server.client().get(path)
    ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["lastTransitionTime"] == podstatus.iso(1_700_000_100.0 + clock.now)
    assert [c["restartCount"] for c in pod["status"]["containerStatuses"]] == [2, 0]
    assert log == []

    # emu's next command writes the pods again: the node's report stays.
    mirror_pods(server, state)
    assert server.client().get(path)["status"] == pod["status"]


def test_a_pod_not_in_the_api_yet_is_written_once_it_is(server, state):
    web = state.pods["default/web"]
    status, clock = reporter(server, "worker", [])
    entries = {web.uid: {"server": running(True), "sidecar": running(True)}}
    assert status.step(state, entries) == pytest.approx(1.0)  # due again soon
    mirror_pods(server, state)
    status.step(state, entries)
    pod = server.client().get(resource_path("v1", "pods", "default", "web"))
    assert all(c["ready"] for c in pod["status"]["containerStatuses"])


def test_a_node_cannot_write_another_nodes_pod(server, state):
    mirror_pods(server, state)
    other = state.pods["default/other"]
    intruder = server.client("nodes/worker")
    with pytest.raises(ApiError) as refused:
        intruder.patch(resource_path("v1", "pods", "default", "other", "status"),
                       {"status": {"phase": "Failed"}}, "merge")  # fmt: skip
    assert refused.value.code == 403
    assert other.node == "worker2"
    # Nor another node's Lease.
    with pytest.raises(ApiError) as refused:
        intruder.create(resource_path("coordination.k8s.io/v1", "leases", LEASE_NAMESPACE),
                        {"metadata": {"name": "worker2"}, "spec": {"holderIdentity": "worker2"}})  # fmt: skip
    assert refused.value.code == 403


def test_the_api_server_away_is_retried_and_said_once(server, state, tmp_path):
    log: list[str] = []
    web = state.pods["default/web"]
    status, clock = reporter(server, "worker", log)
    server.stop()
    entries = {web.uid: {"server": running(True), "sidecar": running(True)}}
    assert status.step(state, entries) == pytest.approx(1.0)
    assert status.step(state, entries) == pytest.approx(1.0)
    assert len(log) == 1 and "reporting to the API server failed" in log[0]


def test_emu_view_and_the_node_render_a_pod_alike(state):
    """One definition of a pod's status (emu.node.kube.podstatus): emu's own view of
    a pod and the node's report agree when they see the same containers."""
    web = state.pods["default/web"]
    entries = {"server": running(True, restarts=1), "sidecar": running(True)}
    view = View(state, {web.key: entries}, 1_700_000_000.0)
    assert view.pod(web)["status"] == podstatus.from_entries(state, web, entries)


def test_endpoint_slices_follow_what_the_nodes_report(tmp_path, state):
    """In a cluster the API server's EndpointSlice and Endpoints controllers make a
    service's endpoints from its pods' readiness, which the nodes write: a pod
    that turns unready leaves the ready endpoints without any emu command."""
    served = Served(tmp_path, API_CONTROLLERS)
    try:
        mirror.sync(served.store, mirror_objects(state, [], 1_700_000_000.0))
        web = state.pods["default/web"]
        admin = served.client()
        slices = resource_path("discovery.k8s.io/v1", "endpointslices", "default")

        def endpoints() -> list[tuple[str, bool]]:
            found = admin.list(slices, label_selector="kubernetes.io/service-name=web")["items"]
            return [(e["addresses"][0], e["conditions"]["ready"]) for s in found for e in s.get("endpoints") or []]

        assert wait_for(lambda: endpoints() == [(web.ip, True)]), endpoints()
        status, clock = reporter(served, "worker", [])
        status.step(state, {web.uid: {"server": running(False), "sidecar": running(True)}})
        assert wait_for(lambda: endpoints() == [(web.ip, False)]), endpoints()
        legacy = admin.get(resource_path("v1", "endpoints", "default", "web"))
        assert legacy["subsets"][0]["notReadyAddresses"][0]["ip"] == web.ip
        accounts = admin.list(resource_path("v1", "serviceaccounts", "default"))["items"]
        assert wait_for(lambda: [a["metadata"]["name"] for a in admin.list(
            resource_path("v1", "serviceaccounts", "default"))["items"]] == ["default"]), accounts

        # emu deletes the service: its endpoints go with it, as the garbage collector takes them.
        rest = [o for o in mirror_objects(state, [], 1_700_000_000.0) if o["metadata"]["name"] != "web"
                or o["kind"] != "Service"]  # fmt: skip
        mirror.sync(served.store, rest)
        assert wait_for(lambda: endpoints() == [] and not admin.list(
            resource_path("v1", "endpoints", "default"), field_selector="metadata.name=web")["items"])
    finally:
        served.stop()
