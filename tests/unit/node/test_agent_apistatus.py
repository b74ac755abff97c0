"""emu.node.agent.apistatus: a node's agent writes its Lease and its pods' status
into emu's real API server (TLS, the node's own certificate, RBAC and
NodeRestriction), and emu's own commands then leave that status alone."""

from __future__ import annotations

import time

import pytest
from kube_testserver import ClusterServer

from emu.api.load import load_text
from emu.api.manifests.render import View
from emu.apiserver import mirror
from emu.control.apiserver import mirror_objects
from emu.control.state import plan_cluster
from emu.node.agent.apistatus import LEASE_NAMESPACE, ApiStatus
from emu.node.kube import podstatus
from emu.node.kube.client import ApiError, resource_path
from emu.apiserver.controllers import start_named
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


@pytest.fixture()
def server(tmp_path):
    served = ClusterServer(tmp_path)
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


def wait_for(check, timeout: float = 30.0):
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


def test_a_labs_grace_period_sets_the_leases_duration_and_renewal(server, state):
    state.topology["controllerManager"] = {"nodeMonitorGracePeriod": "16s"}
    status, clock = reporter(server, "worker", [])
    assert status.step(state, {}) == pytest.approx(4.0)  # a quarter of it, as the kubelet renews
    lease = server.client().get(resource_path("coordination.k8s.io/v1", "leases", LEASE_NAMESPACE, "worker"))
    assert lease["spec"]["leaseDurationSeconds"] == 16


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
    served = ClusterServer(tmp_path, API_CONTROLLERS)
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

        def not_ready() -> list[str]:  # the Endpoints controller's view, written on its own
            legacy = admin.get(resource_path("v1", "endpoints", "default", "web"))
            return [a["ip"] for subset in legacy.get("subsets") or [] for a in subset.get("notReadyAddresses") or []]

        assert wait_for(lambda: not_ready() == [web.ip]), not_ready()
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


def test_a_pod_gets_a_token_of_its_service_account_bound_to_it(tmp_path, state):
    """The kubelet's token manager: a token bound to the pod, with the CA and the
    namespace beside it; RBAC decides what it may do; it dies with the pod."""
    from emu.node.agent.tokens import Tokens
    from emu.node.kube.client import Client

    served = ClusterServer(tmp_path / "server", ("serviceaccount",))
    try:
        mirror.sync(served.store, mirror_objects(state, [], 1_700_000_000.0))
        web = state.pods["default/web"]
        tokens = Tokens("worker", directory=str(tmp_path / "tokens"), ca_file=str(served.pki / "ca.crt"))
        node = served.client("nodes/worker")
        assert wait_for(lambda: tokens.sync(node, state) > 1.0)  # once the namespace's account exists
        folder = tmp_path / "tokens" / web.netns
        assert (folder / "namespace").read_text() == "default"
        assert (folder / "ca.crt").read_text() == (served.pki / "ca.crt").read_text()
        assert not (tmp_path / "tokens" / state.pods["default/other"].netns).exists()  # not this node's

        as_pod = Client(served.url, str(folder / "ca.crt"), token=(folder / "token").read_text())
        with pytest.raises(ApiError) as refused:
            as_pod.list(resource_path("v1", "pods", "default"))
        assert refused.value.code == 403 and refused.value.message == (
            'pods is forbidden: User "system:serviceaccount:default:default" cannot list resource "pods" in API '
            'group "" in the namespace "default"')  # fmt: skip
        served.client().create(resource_path("rbac.authorization.k8s.io/v1", "rolebindings", "default"), {
            "metadata": {"name": "default-view"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "default"}]})  # fmt: skip
        assert {p["metadata"]["name"] for p in as_pod.list(resource_path("v1", "pods", "default"))["items"]} == \
            {"web", "other"}  # fmt: skip

        # A node asks for tokens of its own pods only.
        other = served.store.get("pods", "default", "other")
        with pytest.raises(ApiError) as refused:
            node.request("POST", resource_path("v1", "serviceaccounts", "default", "default", "token"), {
                "spec": {"boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "other",
                                            "uid": other["metadata"]["uid"]}}})  # fmt: skip
        assert refused.value.code == 403 and "different node" in refused.value.message

        # The pod deleted: its token is no longer good.
        mirror.sync(served.store, [o for o in mirror_objects(state, [], 1_700_000_000.0)
                                   if not (o["kind"] == "Pod" and o["metadata"]["name"] == "web")])  # fmt: skip
        with pytest.raises(ApiError) as refused:
            as_pod.list(resource_path("v1", "pods", "default"))
        assert refused.value.code == 401
    finally:
        served.stop()


def test_token_requests_are_checked_as_kube_apiserver_checks_them(server):
    admin = server.client()
    path = resource_path("v1", "serviceaccounts", "default", "default", "token")
    with pytest.raises(ApiError) as refused:
        admin.request("POST", path, {"spec": {}})
    assert (refused.value.code, refused.value.message) == (404, 'serviceaccounts "default" not found')
    admin.create(resource_path("v1", "serviceaccounts", "default"), {"metadata": {"name": "default"}})
    with pytest.raises(ApiError) as refused:
        admin.request("POST", path, {"spec": {"expirationSeconds": 60}})
    assert refused.value.code == 422 and "less than 10 minutes" in refused.value.message
    answer = admin.request("POST", path, {"spec": {"audiences": ["vault"], "expirationSeconds": 600}})
    assert answer["kind"] == "TokenRequest" and answer["status"]["token"].count(".") == 2
    assert answer["spec"]["audiences"] == ["vault"]


def test_kubectl_create_token(server, tmp_path):
    """`kubectl create token` (TokenRequest) against the server as clusters run it."""
    import shutil
    import subprocess

    from emu.control import kubeconfig

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (Debian's kubectl package)")
    pki = server.pki
    config = tmp_path / "kubeconfig"
    config.write_text(kubeconfig.render("t", server.url, (pki / "ca.crt").read_bytes(), (pki / "admin.crt").read_bytes(),
                                        (pki / "admin.key").read_bytes()))  # fmt: skip
    server.client().create(resource_path("v1", "serviceaccounts", "default"), {"metadata": {"name": "builder"}})
    made = subprocess.run([kubectl, "--kubeconfig", str(config), "create", "token", "builder", "--duration=20m"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert made.returncode == 0, made.stderr
    from emu.node.kube.client import Client

    as_builder = Client(server.url, str(pki / "ca.crt"), token=made.stdout.strip())
    who = as_builder.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                             {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})  # fmt: skip
    assert who["status"]["userInfo"]["username"] == "system:serviceaccount:default:builder"


def test_after_the_server_was_away_every_status_is_written_again(server, state):
    """While a node cannot reach the API server, others may write its pods' status
    (the node lifecycle controller marks them not ready): once back, it writes them all."""
    mirror_pods(server, state)
    web = state.pods["default/web"]
    status, clock = reporter(server, "worker", [])
    entries = {web.uid: {"server": running(True), "sidecar": running(True)}}
    status.step(state, entries)
    path = resource_path("v1", "pods", "default", "web")

    def mark_not_ready(pod: dict) -> dict:  # what the node lifecycle controller writes (in the server's process)
        pod["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
        return pod

    from emu.apiserver import resources

    server.store.write("pods", "default", "web", mark_not_ready, resources.lookup("", "v1", "pods").field_values)
    status.step(state, entries)  # reachable all along: it wrote nothing new, nothing is rewritten
    assert {c["type"]: c["status"] for c in server.client().get(path)["status"]["conditions"]} == {"Ready": "False"}
    status.failing = True  # (as after a failed attempt)
    status.step(state, entries)
    assert {c["type"]: c["status"] for c in server.client().get(path)["status"]["conditions"]}["Ready"] == "True"


def test_a_node_that_stops_renewing_its_lease_becomes_not_ready_and_emu_keeps_that(tmp_path, state):
    """The node lifecycle controller runs in every cluster: a node whose agent stops
    renewing its Lease is Ready=Unknown and tainted unreachable, its pods not ready
    (but kept: the mirror's pods tolerate that for 300 s, as admission makes them);
    emu's next command keeps what the controller wrote; the Lease renewed again
    makes it Ready. (A grace period of 1 s here; 40 s in clusters.)"""
    served = ClusterServer(tmp_path, ())
    served.manager = start_named(served.store, API_CONTROLLERS,
                                 {"node_monitor_grace_period": 1.0, "node_monitor_period": 0.2})  # fmt: skip
    try:
        objects = mirror_objects(state, [], 1_700_000_000.0)
        mirror.sync(served.store, objects)
        admin = served.client()
        node_path = resource_path("v1", "nodes", "", "worker")

        def ready() -> str:
            found = admin.get(node_path)
            return next(c["status"] for c in found["status"]["conditions"] if c["type"] == "Ready")

        status, clock = reporter(served, "worker", [])
        status.step(state, {})  # the Lease
        assert ready() == "True"
        assert wait_for(lambda: ready() == "Unknown"), ready()  # no renewal for over the grace period
        taints = [t["key"] for t in admin.get(node_path)["spec"].get("taints") or []]
        assert "node.kubernetes.io/unreachable" in taints
        web = admin.get(resource_path("v1", "pods", "default", "web"))
        assert next(c["status"] for c in web["status"]["conditions"] if c["type"] == "Ready") == "False"
        assert {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
                "tolerationSeconds": 300} in web["spec"]["tolerations"]  # fmt: skip

        mirror.sync(served.store, objects)  # emu's next command
        assert ready() == "Unknown" and "node.kubernetes.io/unreachable" in [
            t["key"] for t in admin.get(node_path)["spec"].get("taints") or []]  # fmt: skip

        clock.now += 10  # the agent again: a renewal
        status.step(state, {})
        assert wait_for(lambda: ready() == "True"), ready()
    finally:
        served.stop()


def test_an_image_pods_readiness_is_written_and_the_rest_of_its_status_stays_emus(server):
    state = plan_cluster(load_text(LAB.replace("{name: sidecar, command: [sleep, infinity]}",
                                               "{name: sidecar, image: 'nginx:1.27'}")), "emu-lab", "172.28.0.0/24")
    mirror_pods(server, state)
    web = state.pods["default/web"]
    path = resource_path("v1", "pods", "default", "web")
    before = server.client().get(path)["status"]
    log: list[str] = []
    status, _ = reporter(server, "worker", log)
    assert status.reported(state) == [] and status.image_pods(state) == [web]
    status.step(state, {}, {web.uid: False})  # its readiness probe fails
    after = server.client().get(path)
    conditions = {c["type"]: c["status"] for c in after["status"]["conditions"]}
    assert conditions["Ready"] == conditions["ContainersReady"] == "False"
    assert conditions["PodScheduled"] == "True"  # merged by type: the others stay
    def counts(found: dict) -> list:
        return [(c["name"], c["ready"], c["restartCount"]) for c in found["containerStatuses"]]

    assert counts(after["status"]) == counts(before)  # Docker's, as emu's commands reported them
    written = after["metadata"]["resourceVersion"]
    status.step(state, {}, {web.uid: False})  # unchanged: nothing written
    assert server.client().get(path)["metadata"]["resourceVersion"] == written
    status.step(state, {}, {web.uid: True})
    assert {c["type"]: c["status"] for c in server.client().get(path)["status"]["conditions"]}["Ready"] == "True"
    # emu's commands still write such a pod's status (the node wrote only its readiness).
    assert not mirror.reported_by_kubelet(server.client().get(path))
    assert log == []
