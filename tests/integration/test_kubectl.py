"""The cluster's Kubernetes API server, driven with the real kubectl and the
official Python client (docs/apiserver.md, stage 2): emu up merges a kubeconfig
context; kubectl reads the lab as a real cluster shows it; the Python client
watches a change emu makes; emu down removes the context."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests import labs
from tests.integration.helpers import KUBECTL, kubectl, skip_without_kubectl

LAB = labs.load("kubectl")


@pytest.fixture(scope="module")
def cluster(make_cluster):
    skip_without_kubectl()
    return make_cluster(LAB, "kubectl")


def test_up_merges_a_context_and_kubectl_shows_the_lab_as_a_cluster_shows_it(cluster):
    context = f"emu-{cluster.name}"
    config = yaml.safe_load(Path(os.environ["KUBECONFIG"]).read_text())
    assert context in [c["name"] for c in config["contexts"]]
    server = next(c["cluster"]["server"] for c in config["clusters"] if c["name"] == context)
    state = cluster.state()
    assert server == state.api_endpoint and server.startswith("https://127.0.0.1:")

    nodes = json.loads(kubectl("get", "nodes", "-o", "json", context=context).stdout)["items"]
    assert {n["metadata"]["name"]: n["status"]["addresses"][0]["address"] for n in nodes} == {
        node.name: node.node_ip for node in state.nodes
    }
    pods = json.loads(kubectl("get", "pods", "-A", "-o", "json", context=context).stdout)["items"]
    seen = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": (p["status"]["podIP"], p["spec"]["nodeName"])
            for p in pods}  # fmt: skip
    assert seen == {pod.key: (pod.ip, pod.node) for pod in state.pods.values()}
    assert all(c["status"] == "True" for p in pods for c in p["status"]["conditions"] if c["type"] == "Ready")

    table = kubectl("get", "svc", "echo", context=context).stdout.splitlines()
    assert table[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert table[1].split()[:5] == ["echo", "ClusterIP", state.services["default/echo"].cluster_ip, "<none>", "80/TCP"]
    # The API server's EndpointSlice controller makes them from the pods the nodes report ready.
    expected = sorted(p.ip for p in state.pods.values() if p.labels.get("app") == "echo")
    deadline = time.monotonic() + 30
    while True:
        slices = json.loads(kubectl("get", "endpointslices", "-l", "kubernetes.io/service-name=echo", "-o", "json",
                                    context=context).stdout)["items"]  # fmt: skip
        addresses = sorted(e["addresses"][0] for s in slices for e in s.get("endpoints") or []
                           if e["conditions"]["ready"])  # fmt: skip
        if addresses == expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert addresses == expected
    assert all(s["metadata"]["ownerReferences"][0]["kind"] == "Service" for s in slices)


def test_the_api_server_authenticates_and_authorizes(cluster, tmp_path):
    context = f"emu-{cluster.name}"
    assert kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", context=context).stdout == \
        "kubernetes-admin"  # fmt: skip
    server = cluster.state().api_endpoint
    insecure = ssl.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
    with pytest.raises(urllib.error.HTTPError) as anonymous:  # no credentials at all
        urllib.request.urlopen(f"{server}/api/v1/pods", context=insecure, timeout=30)
    assert anonymous.value.code == 401 and json.loads(anonymous.value.read())["reason"] == "Unauthorized"

    # A service account's token (signed with the cluster's key, as the TokenRequest API does) is
    # authenticated, and RBAC gives it nothing: kubectl prints kube-apiserver's Forbidden.
    from emu.apiserver.auth import issue_token

    key = cluster.node_exec("cp", ["cat", "/etc/emu/pki/sa.key"]).output.encode()
    token = issue_token(key, "default", "default", "uid-1", [], 600)
    (tmp_path / "empty").write_text("")
    forbidden = subprocess.run(
        [KUBECTL, "--kubeconfig", str(tmp_path / "empty"), "--server", server, "--insecure-skip-tls-verify",
         "--token", token, "get", "pods", "-n", "default"], capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert forbidden.returncode != 0
    assert forbidden.stderr.strip() == (
        'Error from server (Forbidden): pods is forbidden: User "system:serviceaccount:default:default" '
        'cannot list resource "pods" in API group "" in the namespace "default"'
    )


def test_kinds_emu_does_not_drive_are_written_and_emus_own_objects_refused(cluster):
    context = f"emu-{cluster.name}"
    kubectl("create", "configmap", "settings", "--from-literal=color=blue", context=context)
    data = json.loads(kubectl("get", "cm", "settings", "-o", "json", context=context).stdout)["data"]
    assert data == {"color": "blue"}
    # emu's own Service (its commands drive it): kubectl may read it, not change it.
    refused = kubectl("label", "service", "echo", "changed=yes", context=context, check=False)
    assert refused.returncode != 0 and "emu apply -f" in refused.stderr
    assert "changed" not in (json.loads(kubectl("get", "svc", "echo", "-o", "json", context=context).stdout)
                             ["metadata"].get("labels") or {})  # fmt: skip


def test_a_watch_of_the_python_client_sees_emu_scale(cluster):
    from kubernetes import client, config, watch

    api = client.CoreV1Api(config.new_client_from_config(context=f"emu-{cluster.name}"))
    listed = api.list_namespaced_pod("default", label_selector="app=echo")
    seen: list[tuple[str, str]] = []
    done = threading.Event()

    def follow() -> None:
        for event in watch.Watch().stream(api.list_namespaced_pod, "default", label_selector="app=echo",
                                          resource_version=listed.metadata.resource_version, timeout_seconds=60):
            seen.append((event["type"], event["object"].status.pod_ip))
            if sum(kind == "ADDED" for kind, _ in seen) == 1:
                done.set()
                return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    cluster.scale("echo", 3)
    assert done.wait(60), f"the watch saw {seen}"
    added_ip = next(ip for kind, ip in seen if kind == "ADDED")
    assert added_ip in {p.ip for p in cluster.state().pods.values() if p.labels.get("app") == "echo"}


def test_nodes_hold_leases_and_renew_them_as_kubelets_do(cluster):
    context = f"emu-{cluster.name}"

    def leases() -> dict[str, dict]:
        found = kubectl("get", "leases", "-n", "kube-node-lease", "-o", "json", context=context).stdout
        return {lease["metadata"]["name"]: lease["spec"] for lease in json.loads(found)["items"]}

    first = leases()
    assert set(first) == {node.name for node in cluster.state().nodes}
    assert all(spec["holderIdentity"] == name and spec["leaseDurationSeconds"] == 40 for name, spec in first.items())
    deadline = time.monotonic() + 40  # a renewal every 10 s
    while time.monotonic() < deadline:
        again = leases()
        if all(again[name]["renewTime"] > first[name]["renewTime"] for name in first):
            break
        time.sleep(1)
    assert all(again[name]["renewTime"] > first[name]["renewTime"] for name in first), (first, again)


def test_readiness_and_restarts_reach_the_api_server_without_an_emu_command(cluster):
    """The nodes write their pods' status as kubelets do: a readiness probe that
    starts failing, and a container restarted by its node, show in kubectl."""
    from emu.node.agent import container_file

    context = f"emu-{cluster.name}"
    pod = cluster.state().pods["default/flip"]
    try:
        cluster.node_exec(pod.node, ["touch", "/tmp/emu-flip-unready"])
        kubectl("wait", "--for=condition=Ready=false", "pod/flip", "--timeout=60s", context=context)
        shown = json.loads(kubectl("get", "pod", "flip", "-o", "json", context=context).stdout)
        assert [c["ready"] for c in shown["status"]["containerStatuses"]] == [False]
        # ... and the service's endpoint turns unready in its EndpointSlice.
        name = kubectl("get", "endpointslices", "-l", "kubernetes.io/service-name=flip", "-o", "name",
                       context=context).stdout.split()  # fmt: skip
        assert len(name) == 1
        kubectl("wait", "--for=jsonpath={.endpoints[0].conditions.ready}=false", name[0], "--timeout=30s",
                context=context)  # fmt: skip
    finally:
        cluster.node_exec(pod.node, ["rm", "-f", "/tmp/emu-flip-unready"])
    kubectl("wait", "--for=condition=Ready", "pod/flip", "--timeout=60s", context=context)
    killed = cluster.node_exec(pod.node, ["sh", "-c", f"kill $(cat {container_file(pod.netns, 'shell', 'pid')})"])
    assert killed.ok, killed.output
    kubectl("wait", "--for=jsonpath={.status.containerStatuses[0].restartCount}=1", "pod/flip", "--timeout=90s",
            context=context)  # fmt: skip
    kubectl("wait", "--for=condition=Ready", "pod/flip", "--timeout=60s", context=context)


def test_a_pod_reaches_the_api_as_its_service_account_and_rbac_decides(cluster):
    """In-cluster: the pod's token, CA and namespace where Kubernetes puts them, the
    API at kubernetes.default.svc; nothing of the node's keys visible in the pod."""
    context = f"emu-{cluster.name}"
    account = "/var/run/secrets/kubernetes.io/serviceaccount"
    ask = (f'curl -sS -o /dev/null -w "%{{http_code}}" --cacert {account}/ca.crt '
           f'-H "Authorization: Bearer $(cat {account}/token)" '
           "https://kubernetes.default.svc/api/v1/namespaces/$(cat " + account + "/namespace)/pods")  # fmt: skip

    def answer(script: str) -> str:
        deadline = time.monotonic() + 60  # the node fetches the token once the pod is in the API
        while True:
            result = cluster.exec("flip", ["sh", "-c", script])
            if result.ok and result.output.strip() not in ("", "000") or time.monotonic() > deadline:
                return result.output.strip()
            time.sleep(1)

    assert answer(ask) == "403"  # authenticated as system:serviceaccount:default:default, which may not list pods
    anonymous = f'curl -sS -o /dev/null -w "%{{http_code}}" --cacert {account}/ca.crt https://kubernetes.default.svc/api'
    assert answer(anonymous) == "401"
    kubectl("create", "rolebinding", "default-view", "--clusterrole=view", "--serviceaccount=default:default",
            context=context)  # fmt: skip
    try:
        assert answer(ask) == "200"
    finally:
        kubectl("delete", "rolebinding", "default-view", context=context)
    assert cluster.exec("flip", ["sh", "-c", "ls -A /etc/emu/pki"]).output.strip() == ""
    assert cluster.node_exec("cp", ["test", "-s", "/etc/emu/pki/ca.key"]).ok  # (the node itself still has them)


def test_kubectl_top_fails_as_on_a_cluster_without_metrics_server(cluster):
    for what in ("pods", "nodes"):
        top = kubectl("top", what, context=f"emu-{cluster.name}", check=False)
        assert (top.returncode, top.stderr) == (1, "error: Metrics API not available\n")


def test_emu_kubeconfig_prints_a_working_kubeconfig_and_down_removes_the_context(cluster, tmp_path):
    from emu.cli import main

    path = tmp_path / "config"
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["kubeconfig", "--name", cluster.name]) == 0
    path.write_text(out.getvalue())
    result = subprocess.run([KUBECTL, "--kubeconfig", str(path), "get", "ns", "-o", "name"], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0 and "namespace/kube-system" in result.stdout.split()
    cluster.down()
    config = yaml.safe_load(Path(os.environ["KUBECONFIG"]).read_text()) or {}
    assert f"emu-{cluster.name}" not in [c["name"] for c in config.get("contexts") or []]

