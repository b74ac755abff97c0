"""emu.node.agent.kubelet and emu.node.kube.podwatch: a pod made through emu's real
API server (TLS, the node's certificate, RBAC, NodeRestriction, --emu-driven, the
scheduler running) is bound to a node, and that node's kubelet gives it an address
of its own range, wires it with emu's pod plans, writes its status and, when it
is deleted, unwires it and confirms the deletion. The plans are recorded here, not
run (tests/integration/test_kubelet.py runs them in a real lab)."""

from __future__ import annotations

import subprocess
import time

import pytest
from kube_testserver import ClusterServer

from emu.api.load import load_text
from emu.apiserver import mirror
from emu.control.apiserver import mirror_objects
from emu.control.state import plan_cluster
from emu.node.agent.kubelet import ApiPods, NodeIPAM
from emu.node.agent.pods import Seen
from emu.node.agent.probes import Kubelet, ProbeThreads
from emu.node.kube.client import ApiError, resource_path
from emu.node.records import HostLocalIPAM, kubelet_pod_range, planner_pod_range

LAB = """
name: lab
nodes:
  - {name: control-plane, role: control-plane}
  - {name: worker}
pods:
  - name: emu-web
    node: worker
    labels: {app: web}
    containers: [{name: server, workload: netexec}]
services:
  - {name: web, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
"""
AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.52"
PODS = resource_path("v1", "pods", "default")


def pod_manifest(name: str, image: str = AGNHOST, args: list[str] | None = None, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": image, "args": args or ["netexec", "--http-port=8080"],
                                     "ports": [{"containerPort": 8080}]}], **spec}}  # fmt: skip


def wait_for(check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (found := check()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return found


class Node:
    """What a node holds, as far as the kubelet looks: plans are recorded and their
    namespaces and veths noted, instead of run."""

    def __init__(self):
        self.plans: list[str] = []
        self.netns: set[str] = set()
        self.ports: set[str] = set()

    def run(self, plan, script: str) -> subprocess.CompletedProcess:
        text = plan.script + "\n" + "\n".join(plan.files.values())
        self.plans.append(text)
        for line in text.splitlines():
            words = line.split()
            if words[:2] == ["netns", "add"]:
                self.netns.add(words[2])
            if words[:2] == ["link", "add"]:
                self.ports.add(words[2])
            if words[:1] == ["emu_delete_pod"] and not line.startswith("emu_delete_pod()"):
                self.netns.discard(words[1])
                self.ports.discard(words[2])
        return subprocess.CompletedProcess([], 0, "", "")

    def look(self) -> Seen:
        return Seen(bridge=True, netns=set(self.netns), ports=set(self.ports))


@pytest.fixture()
def state():
    return plan_cluster(load_text(LAB), "emu-lab", "172.28.0.0/24")


@pytest.fixture()
def served(tmp_path, state):
    served = ClusterServer(tmp_path / "server", ("scheduler",))
    mirror.sync(served.store, mirror_objects(state, [], 1_700_000_000.0))
    yield served
    served.stop()


def kubelet_of(served, state, node: str, tmp_path, held: Node | None = None) -> tuple[ApiPods, Node]:
    held = held or Node()
    kubelet = ApiPods(node, lambda message: None, lambda: state, connect=lambda s, n: served.client(f"nodes/{n}"),
                      ipam_dir=str(tmp_path / node / "ipam"), run=held.run, look=held.look)  # fmt: skip
    return kubelet, held


def run_until(kubelet: ApiPods, check, timeout: float = 30.0):
    def turn():
        kubelet.step(True)
        return check()

    return wait_for(turn, timeout)


def stop(*kubelets: ApiPods) -> None:
    for kubelet in kubelets:
        if kubelet.informer is not None:
            kubelet.informer.stop()


def test_ipam_hands_out_the_kubelets_range_only_and_keeps_it_on_disk(tmp_path):
    cidr = "10.244.1.0/24"
    ipam = NodeIPAM(cidr, str(tmp_path))
    first, second = ipam.allocate("uid-1", "default/a"), ipam.allocate("uid-2", "default/b")
    assert (first, second) == ("10.244.1.192", "10.244.1.193")
    assert ipam.allocate("uid-1", "default/a") == first  # a pod keeps its address
    ipam.release("uid-1")
    # Host-local's order: the next after the last handed out, not the one just freed.
    assert NodeIPAM(cidr, str(tmp_path)).allocate("uid-3", "default/c") == "10.244.1.194"
    assert NodeIPAM(cidr, str(tmp_path)).allocations() == {"uid-2": ("10.244.1.193", "default/b"),
                                                          "uid-3": ("10.244.1.194", "default/c")}  # fmt: skip
    for n in range(4, 64):
        ipam.allocate(f"uid-{n}", f"default/p{n}")
    assert ipam.allocate("uid-again", "default/x") == first  # wrapped around to the freed one
    with pytest.raises(OSError, match="no free address in the kubelet's range 10.244.1.192-10.244.1.254"):
        ipam.allocate("uid-more", "default/y")


def test_the_planner_and_the_kubelet_never_pick_the_same_address(state):
    node = state.node("worker")
    kubelet = set(kubelet_pod_range(node.pod_cidr))
    planner = HostLocalIPAM(node, set(), None)
    handed = {planner.allocate() for _ in range(len(planner_pod_range(node.pod_cidr)))}
    assert len(handed) == 190 and not handed & kubelet and len(kubelet) == 63
    with pytest.raises(Exception, match="pod CIDR is full"):
        planner.allocate()


def test_a_pod_made_with_the_api_is_scheduled_wired_reported_and_deleted(tmp_path, served, state):
    admin = served.client()
    admin.create(PODS, pod_manifest("web", terminationGracePeriodSeconds=7))
    pod = wait_for(lambda: (admin.get(f"{PODS}/web").get("spec") or {}).get("nodeName") and admin.get(f"{PODS}/web"))
    node = pod["spec"]["nodeName"]
    assert node == "worker"  # the control-plane node is tainted
    worker, held = kubelet_of(served, state, "worker", tmp_path)
    other, other_held = kubelet_of(served, state, "control-plane", tmp_path)
    try:
        assert run_until(worker, lambda: (admin.get(f"{PODS}/web").get("status") or {}).get("podIP"))
        other.step(True)
        ip = admin.get(f"{PODS}/web")["status"]["podIP"]
        assert ip in kubelet_pod_range(state.node("worker").pod_cidr)
        plan = held.plans[0]
        assert "netns add web\n" in plan and f"addr add {ip}/24 dev eth0" in plan
        assert "netexec.py --http-port=8080" in plan  # agnhost netexec runs as emu's netexec
        assert "/etc/emu/kubelet/containers/web/c.sh" in plan
        assert not any("emu-web" in p for p in held.plans)  # emu's own pod is the plans' business
        assert other_held.plans == [] and other.wired == {}
        status = admin.get(f"{PODS}/web")["status"]
        assert status["hostIP"] == state.node("worker").node_ip
        assert {c["type"]: c["status"] for c in status["conditions"]}["PodScheduled"] == "True"

        # kubectl delete: graceful; the pod stays until its kubelet has stopped it.
        admin.delete(f"{PODS}/web")
        gone = admin.get(f"{PODS}/web")
        assert gone["metadata"]["deletionTimestamp"] and gone["metadata"]["deletionGracePeriodSeconds"] == 7
        assert run_until(worker, lambda: not admin.list(PODS, field_selector="metadata.name=web")["items"])
        # SIGTERM first; its process gone (none runs here), the rest is killed and the pod removed.
        assert "kill -TERM" in held.plans[-2] and "/run/emu/pods/web/c.pid" in held.plans[-2]
        assert f" {ip} - 0\n" in held.plans[-1]
        assert NodeIPAM(state.node("worker").pod_cidr, str(tmp_path / "worker" / "ipam")).allocations() == {}
        assert "web" not in held.netns and worker.wired == {}
    finally:
        stop(worker, other)


def test_after_a_restart_the_kubelet_adopts_or_rewires_its_pods(tmp_path, served, state):
    admin = served.client()
    admin.create(PODS, pod_manifest("web", nodeName="worker"))
    first, held = kubelet_of(served, state, "worker", tmp_path)
    try:
        assert run_until(first, lambda: (admin.get(f"{PODS}/web").get("status") or {}).get("podIP"))
    finally:
        stop(first)
    ip = admin.get(f"{PODS}/web")["status"]["podIP"]
    plans = len(held.plans)
    # The agent starts again, the pod's namespace still there: adopted as it runs.
    again, _ = kubelet_of(served, state, "worker", tmp_path, held)
    try:
        assert run_until(again, lambda: "default/web" in {p.key for p in again.wired.values()})
        assert len(held.plans) == plans
    finally:
        stop(again)
    # The node restarted (its namespaces are gone): wired again with the address it had.
    held.netns.clear()
    held.ports.clear()
    rebooted, _ = kubelet_of(served, state, "worker", tmp_path, held)
    try:
        assert run_until(rebooted, lambda: len(held.plans) > plans)
        assert "emu_delete_pod web" in held.plans[-1] and f"addr add {ip}/24" in held.plans[-1]
        assert admin.get(f"{PODS}/web")["status"]["podIP"] == ip
    finally:
        stop(rebooted)


def test_a_pod_deleted_while_its_kubelet_was_away_is_unwired_when_it_comes_back(tmp_path, served, state):
    admin = served.client()
    admin.create(PODS, pod_manifest("web", nodeName="worker"))
    first, held = kubelet_of(served, state, "worker", tmp_path)
    try:
        assert run_until(first, lambda: first.wired)
    finally:
        stop(first)
    admin.delete(f"{PODS}/web", grace_period_seconds=0)  # --force --grace-period=0: gone at once
    assert not admin.list(PODS, field_selector="metadata.name=web")["items"]
    back, _ = kubelet_of(served, state, "worker", tmp_path, held)
    try:
        assert run_until(back, lambda: "web" not in held.netns)
        assert back.ipam.allocations() == {}
    finally:
        stop(back)


def test_a_pod_the_node_cannot_run_says_why_in_its_status(tmp_path, served, state):
    admin = served.client()
    admin.create(PODS, pod_manifest("nginx", image="nginx:1.27", args=[], nodeName="worker"))
    worker, held = kubelet_of(served, state, "worker", tmp_path)
    try:
        assert run_until(worker, lambda: (admin.get(f"{PODS}/nginx").get("status") or {}).get("containerStatuses"))
        status = admin.get(f"{PODS}/nginx")["status"]
        waiting = status["containerStatuses"][0]["state"]["waiting"]
        assert waiting["reason"] == "CreateContainerError" and "nginx:1.27" in waiting["message"]
        assert status["phase"] == "Pending" and held.plans == []
    finally:
        stop(worker)


def test_emu_keeps_its_pods_and_leaves_the_others_alone(tmp_path, served, state):
    admin = served.client()
    emu_pod = admin.get(f"{PODS}/emu-web")
    assert emu_pod["metadata"]["annotations"][mirror.MANAGED_BY] == mirror.MANAGER
    with pytest.raises(ApiError) as refused:
        admin.delete(f"{PODS}/emu-web")
    assert refused.value.code == 405
    with pytest.raises(ApiError) as marked:
        made = pod_manifest("sneaky")
        made["metadata"]["annotations"] = {mirror.MANAGED_BY: mirror.MANAGER}
        admin.create(PODS, made)
    assert marked.value.code == 403 and mirror.MANAGED_BY in marked.value.message
    admin.create(PODS, pod_manifest("mine", nodeName="worker"))
    admin.patch(f"{PODS}/mine", {"metadata": {"labels": {"tier": "x"}}})  # a user's pod is the user's
    # emu's next command mirrors its objects: its pods stay, the user's pod too, untouched.
    counts = mirror.sync(served.store, mirror_objects(state, [], 1_700_000_000.0))
    assert counts["deleted"] == 0
    assert admin.get(f"{PODS}/mine")["metadata"]["labels"] == {"app": "web", "tier": "x"}
    # emu declaring a pod of the same name as the user's: refused, nothing written.
    clash = [o for o in mirror_objects(state, [], 1_700_000_000.0)]
    twin = next(o for o in clash if o["kind"] == "Pod")
    twin = {**twin, "metadata": {**twin["metadata"], "name": "mine"}}
    from emu.apiserver.errors import ApiError as ServerError

    with pytest.raises(ServerError) as conflict:
        mirror.sync(served.store, clash + [twin])
    assert conflict.value.code == 409
    assert admin.get(f"{PODS}/mine")["metadata"].get("annotations", {}).get(mirror.MANAGED_BY) is None


def test_what_a_plain_pod_manifest_may_run_in_a_node():
    from emu.node.kube import podwatch

    def pod(*containers: dict, **spec) -> dict:
        return {"metadata": {"name": "p", "namespace": "shop", "uid": "u1"},
                "spec": {"containers": list(containers), **spec}}  # fmt: skip

    netexec = {"name": "c", "image": AGNHOST, "args": ["netexec", "--http-port=8080", "--udp-port=8081",
                                                       "--delay-shutdown=30"],
               "ports": [{"name": "http", "containerPort": 8080}], "env": [{"name": "A", "value": "1"}],
               "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 2}}  # fmt: skip
    assert podwatch.unsupported(pod(netexec, {"name": "p", "image": "agnhost", "args": ["pause"]})) is None
    state = podwatch.pod_state(pod(netexec, dnsPolicy="ClusterFirstWithHostNet", restartPolicy="OnFailure",
                                   terminationGracePeriodSeconds=5), "w1", "10.244.1.192")  # fmt: skip
    assert (state.netns, state.dns_policy, state.restart_policy, state.termination_grace_seconds) == (
        "shop.p", "ClusterFirst", "OnFailure", 5)
    [container] = state.containers
    assert container["workload"] == "netexec" and container["args"] == ["--http-port=8080", "--udp-port=8081",
                                                                         "--delay-shutdown=30"]
    assert state.resolve_port("http") == 8080 and container["readinessProbe"]["periodSeconds"] == 2
    for bad, why in (
        ({"name": "c", "image": "nginx:1.27"}, "image 'nginx:1.27'"),
        ({"name": "c", "image": AGNHOST, "args": ["netexec", "--sctp-port=5"]}, "not --sctp-port=5"),
        ({"name": "c", "image": AGNHOST, "args": ["pause", "--x"]}, "takes no flags"),
        ({"name": "c", "image": AGNHOST, "command": ["/agnhost"], "args": ["netexec"]}, "image"),
    ):
        assert why in podwatch.unsupported(pod(bad))[1], bad
    assert "init containers" in podwatch.unsupported(pod(netexec, initContainers=[netexec]))[1]
    # The node cannot import the API server's modules: the mark is spelled twice, and must agree.
    assert (podwatch.MANAGED_BY, podwatch.EMU_MANAGER) == (mirror.MANAGED_BY, mirror.MANAGER)
    assert podwatch.emu_driven({"metadata": {"annotations": {"emu.io/managed-by": "emu"}}})
    assert not podwatch.emu_driven({"metadata": {}})


class Processes:
    """The kubelet's look at its pods' processes (probes.ProcessWatch), played: they
    run until the test says they exited."""

    watched = True

    def __init__(self):
        self.running = True

    def __call__(self, pod) -> list[str]:
        return [] if self.running else [c["name"] for c in pod.containers]

    def fds(self) -> list[int]:
        return []

    def reap(self) -> bool:
        return False

    def started(self, pod, name: str) -> bool:
        return True

    def exit_code(self, pod, name: str) -> int:
        return 0

    def forget(self, pods) -> None:
        pass


def stopping_kubelet(served, state, tmp_path, probe=None):
    """The worker's kubelet on a clock of the test's, its processes played, its restarts and log recorded."""
    clock, processes, restarted, log = [1000.0], Processes(), [], []
    kubelet = Kubelet(ProbeThreads(), probe=probe or (lambda pod, spec: True), dead=processes,
                      restart=lambda pod, name: restarted.append(name), clock=lambda: clock[0])  # fmt: skip
    held = Node()
    worker = ApiPods("worker", log.append, lambda: state, connect=lambda s, n: served.client(f"nodes/{n}"),
                     ipam_dir=str(tmp_path / "worker" / "ipam"), run=held.run, look=held.look, kubelet=kubelet,
                     clock=lambda: clock[0])  # fmt: skip
    return worker, held, clock, processes, restarted, log


def ready_condition(admin, name: str) -> str | None:
    conditions = (admin.get(f"{PODS}/{name}").get("status") or {}).get("conditions") or []
    return next((c["status"] for c in conditions if c["type"] == "Ready"), None)


def test_a_deleted_pod_keeps_its_network_and_readiness_until_its_containers_exit(tmp_path, served, state):
    """Graceful deletion as the kubelet does it: SIGTERM, then the pod stays wired, probed and
    reported (Ready while its probe passes: the EndpointSlice controller publishes it serving and
    terminating) and is not started again; once its process exited, it is removed and deleted."""
    admin = served.client()
    probe_ok = [True]
    manifest = pod_manifest("web", nodeName="worker", terminationGracePeriodSeconds=60)
    manifest["spec"]["containers"][0]["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": 8080},
                                                           "periodSeconds": 1}  # fmt: skip
    admin.create(PODS, manifest)
    worker, held, clock, processes, restarted, log = stopping_kubelet(served, state, tmp_path,
                                                                      lambda pod, spec: probe_ok[0])  # fmt: skip
    try:
        assert run_until(worker, lambda: ready_condition(admin, "web") == "True")
        admin.delete(f"{PODS}/web")
        assert run_until(worker, lambda: worker.stopping)
        assert "kill -TERM" in held.plans[-1] and "emu_delete_pod" not in held.plans[-1]
        assert "SIGTERM sent to its containers, 60 s to exit" in log[-1]
        for _ in range(3):
            clock[0] += 1
            worker.step(True)
        pod = admin.get(f"{PODS}/web")
        assert pod["metadata"]["deletionTimestamp"] and "web" in held.netns and worker.wired
        assert ready_condition(admin, "web") == "True"  # serving on while it terminates
        # Its readiness probe still runs and is still reported while it terminates.
        probe_ok[0] = False
        assert run_until(worker, lambda: (clock.__setitem__(0, clock[0] + 1), ready_condition(admin, "web"))[1]
                         == "False")  # fmt: skip
        assert "web" in held.netns
        # The process exits (agnhost's --delay-shutdown is over): never started again, the pod goes.
        processes.running = False
        clock[0] += 10  # the kubelet's next look at its processes (a pidfd wakes it at once in a node)
        assert run_until(worker, lambda: not admin.list(PODS, field_selector="metadata.name=web")["items"])
        assert restarted == [] and "web" not in held.netns
        assert worker.stopping == {} and worker.kubelet.stopping == set()
        assert " - 0\n" in held.plans[-1] and any("its containers exited" in line for line in log)
    finally:
        stop(worker)


def test_a_deleted_pod_still_running_at_the_end_of_its_grace_period_is_killed(tmp_path, served, state):
    admin = served.client()
    admin.create(PODS, pod_manifest("web", nodeName="worker", terminationGracePeriodSeconds=20))
    worker, held, clock, processes, restarted, log = stopping_kubelet(served, state, tmp_path)
    try:
        assert run_until(worker, lambda: worker.wired)
        admin.delete(f"{PODS}/web")
        assert run_until(worker, lambda: worker.stopping)
        clock[0] += 19
        worker.step(True)
        assert admin.get(f"{PODS}/web")["metadata"]["deletionTimestamp"] and "web" in held.netns
        clock[0] += 1
        assert run_until(worker, lambda: not admin.list(PODS, field_selector="metadata.name=web")["items"])
        assert any("its grace period of 20 s is over: SIGKILL" in line for line in log)
        assert "web" not in held.netns and restarted == []
    finally:
        stop(worker)
