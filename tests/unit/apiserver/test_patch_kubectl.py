"""The real kubectl patches objects in emu's API server (server.py with
patch.py, tables.py and openapi.py): apply twice, label, annotate, scale,
rollout restart, set image, apply --server-side, conflicts between field
managers, and the Table columns `kubectl get` prints.

The server runs in-process on plain HTTP (no Docker); kubectl talks to it
through a kubeconfig of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from emu.apiserver.server import ApiServer
from emu.apiserver.storage import Store

KUBECTL = os.environ.get("EMU_TEST_KUBECTL") or shutil.which("kubectl") or "/usr/bin/kubectl"

pytestmark = pytest.mark.skipif(not Path(KUBECTL).exists(), reason="needs a kubectl binary")


@pytest.fixture(scope="module")
def kubeconfig(tmp_path_factory):
    root = tmp_path_factory.mktemp("apiserver")
    with open(root / "server.log", "w") as log:
        api = ApiServer(Store(str(root / "state.db")), log=log)
        host, port = api.start(("127.0.0.1", 0))
        config = root / "kubeconfig"
        config.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: emu, cluster: {{server: "http://{host}:{port}"}}}}]
users: [{{name: admin, user: {{}}}}]
contexts: [{{name: emu, context: {{cluster: emu, user: admin, namespace: default}}}}]
current-context: emu
""")
        yield config
        api.shutdown()


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([KUBECTL, "--kubeconfig", str(kubeconfig), *args], input=stdin,
                            capture_output=True, text=True, timeout=60, check=False,
                            env={**os.environ, "KUBECACHEDIR": str(kubeconfig.parent / "cache")})
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def get(kubeconfig: Path, kind: str, name: str) -> dict:
    return json.loads(kubectl(kubeconfig, "get", kind, name, "-o", "json", "--show-managed-fields").stdout)


def manifest(name: str, image: str = "nginx:1.25", container: str = "web", replicas: int = 2,
             labels: dict | None = None) -> str:
    return json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels or {"app": name}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": container, "image": image,
                                                       "ports": [{"containerPort": 80}]}]}}},
    })


def containers(obj: dict) -> list[tuple[str, str]]:
    return [(c["name"], c["image"]) for c in obj["spec"]["template"]["spec"]["containers"]]


def test_apply_twice_changes_the_container(kubeconfig):
    assert "created" in kubectl(kubeconfig, "apply", "-f", "-", stdin=manifest("web1")).stdout
    assert "configured" in kubectl(kubeconfig, "apply", "-f", "-", stdin=manifest("web1", "nginx:1.27")).stdout
    obj = get(kubeconfig, "deployment", "web1")
    assert containers(obj) == [("web", "nginx:1.27")]
    # Defaults the server set survive the three-way strategic merge patch.
    assert obj["spec"]["template"]["spec"]["containers"][0]["ports"] == [{"containerPort": 80, "protocol": "TCP"}]
    last = json.loads(obj["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"])
    assert last["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.27"


def test_apply_renaming_the_container_and_dropping_a_label(kubeconfig):
    kubectl(kubeconfig, "apply", "-f", "-", stdin=manifest("web2", labels={"app": "web2", "tier": "front"}))
    kubectl(kubeconfig, "apply", "-f", "-", stdin=manifest("web2", container="app"))
    obj = get(kubeconfig, "deployment", "web2")
    assert containers(obj) == [("app", "nginx:1.25")]
    assert obj["metadata"]["labels"] == {"app": "web2"}


def test_label_annotate_scale_set_image_and_rollout_restart(kubeconfig):
    kubectl(kubeconfig, "apply", "-f", "-", stdin=manifest("web3"))
    kubectl(kubeconfig, "label", "deployment", "web3", "tier=front")
    kubectl(kubeconfig, "annotate", "deployment", "web3", "note=hello")
    kubectl(kubeconfig, "scale", "deployment", "web3", "--replicas=4")
    kubectl(kubeconfig, "set", "image", "deployment/web3", "web=nginx:1.28")
    kubectl(kubeconfig, "rollout", "restart", "deployment", "web3")
    obj = get(kubeconfig, "deployment", "web3")
    assert obj["metadata"]["labels"] == {"app": "web3", "tier": "front"}
    assert obj["metadata"]["annotations"]["note"] == "hello"
    assert obj["spec"]["replicas"] == 4
    assert containers(obj) == [("web", "nginx:1.28")]
    assert "kubectl.kubernetes.io/restartedAt" in obj["spec"]["template"]["metadata"]["annotations"]
    kubectl(kubeconfig, "label", "deployment", "web3", "tier-")
    assert get(kubeconfig, "deployment", "web3")["metadata"]["labels"] == {"app": "web3"}


def test_apply_server_side_creates_and_updates(kubeconfig):
    assert "serverside-applied" in kubectl(kubeconfig, "apply", "--server-side", "-f", "-",
                                           stdin=manifest("web4")).stdout
    kubectl(kubeconfig, "apply", "--server-side", "-f", "-", stdin=manifest("web4", "nginx:1.27", replicas=3))
    obj = get(kubeconfig, "deployment", "web4")
    assert containers(obj) == [("web", "nginx:1.27")]
    assert obj["spec"]["replicas"] == 3


def test_apply_server_side_conflict_between_two_field_managers(kubeconfig):
    kubectl(kubeconfig, "apply", "--server-side", "--field-manager=alice", "-f", "-",
            stdin=manifest("web5", replicas=2))
    result = kubectl(kubeconfig, "apply", "--server-side", "--field-manager=bob", "-f", "-",
                     stdin=manifest("web5", replicas=5), check=False)
    assert result.returncode != 0
    assert 'Apply failed with 1 conflict: conflict with "alice": .spec.replicas' in result.stderr
    kubectl(kubeconfig, "apply", "--server-side", "--field-manager=bob", "--force-conflicts", "-f", "-",
            stdin=manifest("web5", replicas=5))
    obj = get(kubeconfig, "deployment", "web5")
    assert obj["spec"]["replicas"] == 5
    owners = {e["manager"]: e["fieldsV1"] for e in obj["metadata"]["managedFields"]}
    assert "f:replicas" in owners["bob"]["f:spec"]
    assert "f:replicas" not in owners["alice"].get("f:spec", {})


def test_kubectl_get_prints_the_servers_columns(kubeconfig):
    kubectl(kubeconfig, "apply", "-f", "-", stdin=manifest("web6", replicas=3))
    lines = kubectl(kubeconfig, "get", "deployment", "web6", "-o", "wide").stdout.splitlines()
    assert lines[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES",
                                "SELECTOR"]
    name, ready, updated, available, _age, names, images, selector = lines[1].split()
    assert (name, ready, updated, available, names, images, selector) == (
        "web6", "0/3", "0", "0", "web", "nginx:1.25", "app=web6")
    narrow = kubectl(kubeconfig, "get", "deployments").stdout.splitlines()
    assert narrow[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    kubectl(kubeconfig, "create", "configmap", "cm1", "--from-literal=a=1", "--from-literal=b=2")
    cm = kubectl(kubeconfig, "get", "configmap", "cm1").stdout.splitlines()
    assert cm[0].split() == ["NAME", "DATA", "AGE"]
    assert cm[1].split()[:2] == ["cm1", "2"]


def test_kubectl_get_pods_services_and_rbac_columns(kubeconfig):
    kubectl(kubeconfig, "run", "pod7", "--image=nginx:1.25")
    pods = kubectl(kubeconfig, "get", "pod", "pod7", "-o", "wide").stdout.splitlines()
    assert pods[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED", "NODE",
                               "READINESS", "GATES"]
    name, ready, status, restarts, _age, *wide = pods[1].split()
    assert (name, ready, status, restarts, wide) == ("pod7", "0/1", "Pending", "0", ["<none>"] * 4)

    kubectl(kubeconfig, "create", "service", "nodeport", "svc7", "--tcp=443:8443")
    svc = kubectl(kubeconfig, "get", "service", "svc7", "-o", "wide").stdout.splitlines()
    assert svc[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE", "SELECTOR"]
    name, kind, cluster_ip, external_ip, ports, _age, selector = svc[1].split()
    obj = get(kubeconfig, "service", "svc7")
    assert (name, kind, cluster_ip, external_ip, selector) == (
        "svc7", "NodePort", obj["spec"]["clusterIPs"][0], "<none>", "app=svc7")
    assert ports == f"443:{obj['spec']['ports'][0]['nodePort']}/TCP"

    kubectl(kubeconfig, "create", "role", "role7", "--verb=get", "--resource=pods")
    roles = kubectl(kubeconfig, "get", "role", "role7").stdout.splitlines()
    assert roles[0].split() == ["NAME", "CREATED", "AT"]
    assert roles[1].split() == ["role7", get(kubeconfig, "role", "role7")["metadata"]["creationTimestamp"]]
    kubectl(kubeconfig, "create", "rolebinding", "rb7", "--role=role7", "--user=alice",
            "--serviceaccount=default:robot")
    bindings = kubectl(kubeconfig, "get", "rolebinding", "rb7", "-o", "wide").stdout.splitlines()
    assert bindings[0].split() == ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"]
    name, role, _age, *subjects = bindings[1].split()
    assert (name, role, subjects) == ("rb7", "Role/role7", ["alice", "default/robot"])


def test_apply_server_side_after_kubectl_scale_conflicts_with_the_scale_subresource(kubeconfig):
    kubectl(kubeconfig, "apply", "--server-side", "-f", "-", stdin=manifest("web8", replicas=2))
    kubectl(kubeconfig, "scale", "deployment", "web8", "--replicas=5")
    result = kubectl(kubeconfig, "apply", "--server-side", "-f", "-", stdin=manifest("web8", replicas=2),
                     check=False)
    assert result.returncode != 0
    # kubectl scale sends no fieldManager: the manager is the User-Agent's first
    # word, which kubectl makes of its binary's name.
    assert (f'Apply failed with 1 conflict: conflict with "{Path(KUBECTL).name}" with subresource "scale" '
            'using apps/v1: .spec.replicas') in result.stderr
    # Dropping replicas from the manifest lets the scaled value stand.
    without_replicas = json.loads(manifest("web8"))
    del without_replicas["spec"]["replicas"]
    kubectl(kubeconfig, "apply", "--server-side", "-f", "-", stdin=json.dumps(without_replicas))
    assert get(kubeconfig, "deployment", "web8")["spec"]["replicas"] == 5
