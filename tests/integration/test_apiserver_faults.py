"""Faults of the cluster's API server (issue 21, "Faults and bad input"), driven
with the real kubectl: the server's process killed comes back by itself with
every object in place; while it is down the nodes keep forwarding with the
rules they have; the control-plane node restarted (`docker restart`) keeps
every object (the SQLite file is on the node's disk) and serves kubectl and
emu's own commands again. Waits are generous and only bound the repair; how
fast it is is not asserted."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests import labs
from tests.integration import helpers
from tests.integration.helpers import skip_without_kubectl
from tests.waiting import wait_for

LAB = labs.load("apifaults")
# The server's process in its node, as the node's boot plan starts it (emu.node.plan.cni).
SERVER = "^python3 -m emu.apiserver "


@pytest.fixture(scope="module")
def cluster(make_module_cluster):
    skip_without_kubectl()
    return make_module_cluster(LAB, "apifaults")


def kubectl(cluster, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return helpers.kubectl("--request-timeout=20s", *argv, context=f"emu-{cluster.name}", check=check)


def objects(cluster) -> set[tuple[str, str, str, str, str]]:
    """(apiVersion, kind, namespace, name, uid) of every object of every kind the server lists."""
    kinds = kubectl(cluster, "api-resources", "--verbs=list", "-o", "name").stdout.split()
    assert "pods" in kinds and "configmaps" in kinds, kinds
    items = json.loads(kubectl(cluster, "get", ",".join(kinds), "-A", "-o", "json").stdout)["items"]
    return {(o["apiVersion"], o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"],
             o["metadata"]["uid"]) for o in items}  # fmt: skip


def server_pid(cluster) -> str:
    """The API server's process id in its node (exactly one runs)."""
    found = cluster.node_exec("cp", ["pgrep", "-f", SERVER]).output.split()
    assert len(found) == 1, f"API server processes on cp: {found}"
    return found[0]


def server_pid_or_none(cluster) -> str | None:
    """The API server's process id, or None while none runs."""
    found = cluster.node_exec("cp", ["pgrep", "-f", SERVER]).output.split()
    return found[0] if len(found) == 1 else None


def answers(cluster) -> bool:
    """kubectl gets an answer from the server (its readiness check) now."""
    result = kubectl(cluster, "get", "--raw", "/readyz", check=False)
    return result.returncode == 0 and result.stdout.strip() == "ok"


def hostnames(cluster, count: int = 8) -> set[str]:
    """The echo pods that answered `count` requests to the service from pod client; "(failed)" for a failure."""
    ip = cluster.state().services["default/echo"].cluster_ip
    seen = set()
    for _ in range(count):
        result = cluster.exec("client", ["curl", "-sS", "--max-time", "2", f"http://{ip}/hostname"])
        seen.add(result.output.strip() if result.ok else "(failed)")
    return seen


def echo_pods(cluster) -> set[str]:
    return {p.name for p in cluster.state().pods.values() if p.labels.get("app") == "echo"}


def test_a_killed_api_server_is_started_again_with_every_object(cluster):
    kubectl(cluster, "create", "configmap", "before-kill", "--from-literal=color=blue")
    before = objects(cluster)
    written = json.loads(kubectl(cluster, "get", "cm", "before-kill", "-o", "json").stdout)
    old = server_pid(cluster)
    assert cluster.node_exec("cp", ["kill", "-9", old]).ok

    wait_for(lambda: server_pid_or_none(cluster) not in (None, old) and answers(cluster), 30,
             "the killed API server was not started again")  # fmt: skip
    assert before <= objects(cluster)
    again = json.loads(kubectl(cluster, "get", "cm", "before-kill", "-o", "json").stdout)
    assert again["data"] == {"color": "blue"}
    assert again["metadata"]["resourceVersion"] == written["metadata"]["resourceVersion"]
    # The revision goes on from the stored one: a new write is newer than every write before.
    kubectl(cluster, "create", "configmap", "after-kill", "--from-literal=color=green")
    after = json.loads(kubectl(cluster, "get", "cm", "after-kill", "-o", "json").stdout)
    assert int(after["metadata"]["resourceVersion"]) > int(written["metadata"]["resourceVersion"])


def test_a_watch_resumes_or_is_told_to_relist_after_the_server_restarts(cluster):
    from kubernetes import client, config, watch
    from kubernetes.client.rest import ApiException

    api = client.CoreV1Api(config.new_client_from_config(context=f"emu-{cluster.name}"))
    listed = api.list_namespaced_config_map("default").metadata.resource_version
    assert cluster.node_exec("cp", ["kill", "-9", server_pid(cluster)]).ok
    wait_for(lambda: server_pid_or_none(cluster) and answers(cluster), 30, "the API server was not started again")
    kubectl(cluster, "create", "configmap", "after-watch", "--from-literal=color=red")

    # A watcher resumes from the revision it had: it sees what was written since, or
    # (once later writes moved the store's revision past it) 410 Gone "Expired",
    # upon which a client relists, as after an etcd compaction.
    try:
        stream = watch.Watch().stream(api.list_namespaced_config_map, "default", resource_version=listed,
                                      timeout_seconds=20)  # fmt: skip
        first = next(iter(stream))
    except ApiException as gone:
        assert gone.status == 410 and "too old resource version" in str(gone.reason), gone
        names = [cm.metadata.name for cm in api.list_namespaced_config_map("default").items]
        assert "after-watch" in names
    else:
        assert (first["type"], first["object"].metadata.name) == ("ADDED", "after-watch")


def test_while_the_api_server_is_down_nodes_keep_forwarding(cluster):
    assert hostnames(cluster) == echo_pods(cluster)
    pid = server_pid(cluster)
    supervisor = cluster.node_exec("cp", ["ps", "-o", "ppid=", "-p", pid]).output.strip()
    # The loop that starts the server again held still, so that the server stays down.
    assert cluster.node_exec("cp", ["kill", "-STOP", supervisor]).ok
    try:
        assert cluster.node_exec("cp", ["kill", "-9", pid]).ok
        wait_for(lambda: server_pid_or_none(cluster) is None, 10, "the API server did not end")
        assert not answers(cluster)
        assert hostnames(cluster) == echo_pods(cluster)
    finally:
        assert cluster.node_exec("cp", ["kill", "-CONT", supervisor]).ok
    wait_for(lambda: answers(cluster), 30, "the API server was not started again")


def test_a_restarted_control_plane_node_keeps_every_object(cluster, runtime):
    kubectl(cluster, "create", "configmap", "before-restart", "--from-literal=color=blue")
    kubectl(cluster, "create", "secret", "generic", "before-restart", "--from-literal=password=s3cret")
    before = objects(cluster)
    runtime.api.restart(cluster.state().node("cp").container, timeout=1)

    wait_for(lambda: answers(cluster), 60, "the API server on the restarted node cp did not answer")
    assert before <= objects(cluster)
    data = json.loads(kubectl(cluster, "get", "cm", "before-restart", "-o", "json").stdout)["data"]
    assert data == {"color": "blue"}
    # emu's own commands write through the server again, and kubectl reads what they wrote.
    cluster.scale("echo", 3)
    pods = json.loads(kubectl(cluster, "get", "pods", "-l", "app=echo", "-o", "json").stdout)["items"]
    assert {p["metadata"]["name"] for p in pods} == echo_pods(cluster) and len(pods) == 3
    wait_for(lambda: hostnames(cluster, 12) == echo_pods(cluster), 30, "the service did not reach the 3 echo pods")
