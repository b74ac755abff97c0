"""Container images as pods: a sandbox container owns the pod's network
namespace, wired into the node's cni0 by the node; the pod's containers join it.
The image is built here from emu's node image (no registry is reachable)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from emu.errors import EmuError
from emu.control.runtime.images import ImageBuilder
from emu.api.topology.model import Topology
from tests import labs
from tests.integration.helpers import curl
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
IMAGE_DIR = Path(__file__).parent / "images" / "web"


def build_web_image(runtime, tmp_path: Path) -> str:
    """emutest/web:<content hash>: emu's netexec as an image's entrypoint."""
    import hashlib

    netexec = ROOT / "emu" / "node" / "workloads" / "netexec.py"
    builder = ImageBuilder(runtime)
    node = builder.ensure_node_image()
    digest = hashlib.sha256((IMAGE_DIR / "Dockerfile").read_bytes() + netexec.read_bytes() + node.encode()).hexdigest()
    tag = f"emutest/web:{digest[:12]}"
    if not builder.exists(tag):
        shutil.copy(IMAGE_DIR / "Dockerfile", tmp_path)
        shutil.copy(netexec, tmp_path)
        builder.build(tag, tmp_path, {"BASE_IMAGE": node})
    return tag


LAB = labs.load("images")


@pytest.fixture(scope="module")
def image(runtime, tmp_path_factory) -> str:
    return build_web_image(runtime, tmp_path_factory.mktemp("web-image"))


@pytest.fixture(scope="module")
def lab(make_cluster, image):
    return make_cluster(LAB.replace("IMAGE", image), "images")


def pod_containers(lab, pod: str) -> list[str]:
    """Names of the Docker containers of a pod (its sandbox and containers)."""
    return sorted(c.name for c in lab.runtime.cluster_containers(lab.name) if c.role == "pod" and f"_{pod}_" in c.name)


def test_image_pod_runs_in_a_sandbox_and_answers_on_its_pod_ip(lab):
    state = lab.state()
    web = state.pods["default/web"]
    assert len(pod_containers(lab, "web")) == 3  # the sandbox (POD), server and sidecar
    assert curl(lab, "client", f"http://{web.ip}:8080/hostname") == "web"  # same node
    assert curl(lab, "far", f"http://{web.ip}:8080/clientip").startswith(state.pods["default/far"].ip + ":")  # no NAT
    assert curl(lab, "client", "http://web/hostname") == "web"  # ClusterIP, by its DNS name
    for node in state.nodes:  # NodePort on every node
        answer = lab.node_exec(node.name, ["curl", "-sS", "--max-time", "5", f"http://{node.node_ip}:30800/hostname"])
        assert answer.output == "web", node.name


def test_image_pod_is_a_pod_inside(lab):
    state = lab.state()
    web = state.pods["default/web"]
    assert lab.exec("web", ["hostname"]).output.strip() == "web"
    resolv = lab.exec("web", ["cat", "/etc/resolv.conf"]).output
    assert "search default.svc.cluster.local svc.cluster.local cluster.local" in resolv and "ndots:5" in resolv
    assert f"{web.ip}\tweb" in lab.exec("web", ["cat", "/etc/hosts"]).output
    env = lab.exec("web", ["env"]).output.splitlines()
    assert "GREETING=hi" in env and any(line.startswith("ECHO_SERVICE_HOST=") for line in env)
    # The image pod reaches a service by its name, through the node's kube-proxy rules.
    echo = {p.name for p in state.pods.values() if p.owner == "Deployment/echo"}
    assert curl(lab, "web", "http://echo/hostname") in echo


def test_containers_of_an_image_pod_share_localhost(lab):
    assert curl(lab, "web", "http://localhost:8080/hostname", container="sidecar") == "web"
    wait_for(lambda: "web" in lab.logs("web", "sidecar").split(), 30, "the sidecar's log to show the server's answer")
    # A command container beside an image container: one namespace, one localhost.
    assert curl(lab, "mixed", "http://localhost:9090/hostname", container="shell") == "mixed"


def test_readiness_probe_takes_an_image_pod_out_of_endpoints_and_back(lab):
    state = lab.state()
    address = f"{state.pods['default/web'].ip}:8080"

    def endpoints() -> list[str]:
        return [a for addresses in lab.endpoints().get("default/web", {}).values() for a in addresses]

    assert endpoints() == [address]
    curl(lab, "web", "http://localhost:8080/sethealth?status=fail")
    wait_for(lambda: endpoints() == [], 30, "the failing pod to leave the endpoints")
    curl(lab, "web", "http://localhost:8080/sethealth?status=ok")
    wait_for(lambda: endpoints() == [address], 30, "the pod to come back")


def test_a_killed_image_container_is_restarted_and_counted(lab):
    state = lab.state()
    web = state.pods["default/web"]
    node = state.node(web.node).container
    pid = lab.runtime.exec(node, ["cat", f"/run/emu/pods/{web.netns}/server.pid"]).output.strip()
    lab.runtime.exec(node, ["kill", "-KILL", pid])

    def restarted() -> bool:
        status = lab.pod_status(lab.state())["default/web"]["server"]
        return status["restarts"] >= 1 and status["state"] == "Running" and status["ready"]

    wait_for(restarted, 45, "the server to be started again (Docker's restart policy) and ready")
    assert curl(lab, "client", f"http://{web.ip}:8080/hostname") == "web"


def test_exited_containers_follow_the_restart_policy_and_say_why(lab, capsys):
    from emu.cli import main

    current = Topology.model_validate(lab.state().topology)
    server = next(p for p in current.pods if p.name == "web").containers[0]
    # terminationGracePeriodSeconds 0: the jobs are deleted at the end without the default 30 s
    # grace each (the restart policy is what this test is about, not the grace period).
    jobs = [
        current.pods[0].model_copy(update={"name": name, "restart_policy": policy, "node": "w2", "containers": [
            server.model_copy(update={"name": "task", "command": ["sh", "-c", f"exit {code}"], "ports": [],
                                      "readiness_probe": None})], "termination_grace_period_seconds": 0})  # fmt: skip
        for name, policy, code in (("failed", "Never", 3), ("done", "OnFailure", 0), ("crashing", "Always", 1))
    ]
    lab.apply(current.model_copy(update={"pods": [*current.pods, *jobs]}), wait=False)

    def statuses() -> dict[str, list[str]]:
        capsys.readouterr()
        main(["get", "pods", "failed", "done", "crashing", "--name", lab.name])
        return {line.split()[0]: line.split()[1:4] for line in capsys.readouterr().out.splitlines()[1:]}

    wait_for(lambda: statuses().get("failed", [""])[1] == "Error" and statuses().get("done", [""])[1] == "Completed"
             and statuses().get("crashing", ["", ""])[1] == "CrashLoopBackOff", 30, "the jobs to finish")  # fmt: skip
    capsys.readouterr()
    main(["get", "pod", "failed", "-o", "json", "--name", lab.name])
    failed = json.loads(capsys.readouterr().out)
    assert failed["status"]["phase"] == "Failed"
    assert failed["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    wait_for(lambda: int(statuses()["crashing"][2]) >= 1, 30, "Docker to restart the crashing container")
    lab.apply(current)  # the jobs go, with their containers
    assert pod_containers(lab, "failed") == pod_containers(lab, "crashing") == []


def test_a_failed_pull_is_an_error_and_changes_nothing(lab):
    before = pod_containers(lab, "broken")
    current = Topology.model_validate(lab.state().topology)
    mixed = next(p for p in current.pods if p.name == "mixed")
    server = mixed.containers[0].model_copy(update={"image": "emutest/missing:1"})
    broken = mixed.model_copy(update={"name": "broken", "containers": [server, mixed.containers[1]]})
    with pytest.raises(EmuError, match="image emutest/missing:1 is not on the Docker engine and pulling it failed"):
        lab.apply(current.model_copy(update={"pods": [*current.pods, broken]}))
    assert pod_containers(lab, "broken") == before == []
    assert "default/broken" not in lab.state().pods


def test_deleting_an_image_pod_removes_its_containers(lab):
    lab.delete_pod("mixed")
    assert pod_containers(lab, "mixed") == []
    assert not lab.node_exec("w2", ["ip", "netns", "list"]).output.count("mixed")


DOOMED = labs.load("images-down")


def test_down_leaves_no_container(make_cluster, image, runtime):
    # A cluster of its own: taking the module's down would leave later or reordered tests none.
    doomed = make_cluster(DOOMED.replace("IMAGE", image), "images-down")
    assert pod_containers(doomed, "web")  # the image pod's containers, which down must remove too
    doomed.down()
    assert [c for c in runtime.cluster_containers(doomed.name)] == []
