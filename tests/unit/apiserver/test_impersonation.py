"""Impersonation (emu.apiserver.impersonation) as kube-apiserver does it, driven
by the real kubectl over TLS: `--as`, `--as-group` and `auth can-i --as`
answer for the impersonated user, and only for a user RBAC allows to
impersonate. Before, emu ignored the headers and answered as the caller
(`kubectl auth can-i create services --as=system:serviceaccount:kube-system:coredns`
said yes)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import ssl
import subprocess

import pytest
import yaml

from emu.apiserver.server import ApiServer, cluster_security
from emu.apiserver.storage import Store
from emu.control import kubeconfig
from emu.control.pki import client_cert, make_pki

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(not KUBECTL, reason="kubectl is not installed (Debian's kubectl package)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A secured API server (TLS, certificates, RBAC's bootstrap policy) and kubeconfigs for
    the admin (system:masters) and for a node (system:node:w1, no impersonate rights)."""
    tmp = tmp_path_factory.mktemp("impersonation")
    pki = make_pki(["127.0.0.1"], "10.96.0.1", ["cp", "w1"])
    pki.write(tmp / "pki")
    store = Store(str(tmp / "state.db"))
    server = ApiServer(store, **cluster_security(store, str(tmp / "pki")))
    host, port = server.start(("127.0.0.1", 0))
    url = f"https://{host}:{port}"
    configs = {}
    node_cert, node_key = client_cert(pki.ca_cert, pki.ca_key, "system:node:w1", ["system:nodes"])
    for who, (cert, key) in {"admin": (pki.admin_cert, pki.admin_key), "node": (node_cert, node_key)}.items():
        path = tmp / f"{who}.kubeconfig"
        path.write_text(kubeconfig.render("lab", url, pki.ca_cert, cert, key))
        configs[who] = path
    try:
        yield configs, tmp
    finally:
        server.shutdown()
        store.close()


def kubectl(cluster, who: str, *args: str) -> subprocess.CompletedProcess:
    configs, tmp = cluster
    env = {**os.environ, "KUBECONFIG": str(configs[who]), "HOME": str(tmp)}
    return subprocess.run([KUBECTL, *args], env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)  # fmt: skip


def can_i(cluster, who: str, *args: str) -> str:
    return kubectl(cluster, who, "auth", "can-i", *args).stdout.strip()


def test_can_i_answers_for_the_impersonated_user(cluster):
    assert can_i(cluster, "admin", "create", "services") == "yes"
    assert can_i(cluster, "admin", "create", "services", "--as=alice") == "no"
    assert can_i(cluster, "admin", "create", "services", "--as=alice", "--as-group=system:masters") == "yes"
    coredns = "--as=system:serviceaccount:kube-system:coredns"
    assert can_i(cluster, "admin", "create", "services", coredns) == "no"
    # A service account's own groups are added when none are given: the basic discovery roles hold.
    assert can_i(cluster, "admin", "create", "selfsubjectaccessreviews.authorization.k8s.io", coredns) == "yes"


def test_a_request_made_as_another_user_is_authorized_as_that_user(cluster):
    denied = kubectl(cluster, "admin", "get", "pods", "--as=alice")
    assert denied.returncode == 1
    assert 'pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace ' \
           '"default"' in denied.stderr, denied.stderr
    assert kubectl(cluster, "admin", "get", "pods", "--as=alice", "--as-group=system:masters").returncode == 0


def test_impersonating_needs_the_impersonate_verb(cluster):
    refused = kubectl(cluster, "node", "get", "pods", "--as=alice")
    assert refused.returncode == 1
    assert 'users "alice" is forbidden: User "system:node:w1" cannot impersonate resource "users" in API group "" ' \
           "at the cluster scope" in refused.stderr, refused.stderr
    groups = kubectl(cluster, "node", "get", "pods", "--as=system:node:w1", "--as-group=system:masters")
    assert 'groups "system:masters" is forbidden' in groups.stderr or 'users "system:node:w1" is forbidden' \
        in groups.stderr, groups.stderr


def test_a_group_without_a_user_is_refused_as_kube_apiserver_refuses_it(cluster):
    """kubectl refuses this itself; a client that sends it gets kube-apiserver's 500."""
    configs, tmp = cluster
    config = yaml.safe_load(configs["admin"].read_text())
    user, server = config["users"][0]["user"], config["clusters"][0]["cluster"]
    files = {}
    for name in ("client-certificate-data", "client-key-data", "certificate-authority-data"):
        files[name] = tmp / name
        files[name].write_bytes(base64.b64decode(user.get(name) or server.get(name)))
    context = ssl.create_default_context(cafile=str(files["certificate-authority-data"]))
    context.load_cert_chain(str(files["client-certificate-data"]), str(files["client-key-data"]))
    host, port = server["server"].removeprefix("https://").rsplit(":", 1)
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=30)
    connection.request("GET", "/api/v1/namespaces/default/pods", headers={"Impersonate-Group": "system:masters"})
    answer = connection.getresponse()
    status = json.loads(answer.read())
    assert answer.status == 500 and status["reason"] == "InternalError"
    assert "without impersonating a user" in status["message"]
