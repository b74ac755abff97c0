"""openapi.py inside emu's real API server (server.py), driven by the real kubectl
1.27 and 1.33: the documents as the server serves them, kubectl's own validation,
its server-side field validation, explain.

Runs once server.py and storage.py are merged in (ApiServer(Store(path)), plain
HTTP as in the core tests); skips before. The server must hand /openapi/* to
``openapi.handle()``: kubectl 1.27/1.28 ask /openapi/v2 for protobuf only and parse
it as protobuf, and every kubectl does for a `kind: List`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest

from emu.apiserver import openapi

server_module = pytest.importorskip("emu.apiserver.server", reason="server.py is not merged in yet")
storage_module = pytest.importorskip("emu.apiserver.storage", reason="storage.py is not merged in yet")

KUBECTLS = {v: f"/usr/lib/google-cloud-sdk/bin/kubectl.{v}" for v in ("1.27", "1.33")}

DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
    "spec": {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "web"}},
        "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "containers": [
                    {
                        "name": "web",
                        "image": "nginx:1.27",
                        "imagePullPolicy": "IfNotPresent",
                        "ports": [{"containerPort": 80, "name": "http"}],
                        "resources": {"limits": {"cpu": "500m"}},
                    }
                ]
            },
        },
    },
}


class _Server:
    def __init__(self, tmp: Path):
        self.store = storage_module.Store(str(tmp / "state.db"))
        self.log = open(tmp / "apiserver.log", "a", buffering=1)  # noqa: SIM115 (closed in stop)
        self.api = server_module.ApiServer(self.store, log=self.log)
        host, port = self.api.start(("127.0.0.1", 0))
        self.base_url = f"http://{host}:{port}"
        self.home = tmp / "home"
        self.home.mkdir()

    def stop(self) -> None:
        self.api.shutdown()
        self.store.close()
        self.log.close()


@pytest.fixture()
def server(tmp_path):
    running = _Server(tmp_path)
    try:
        yield running
    finally:
        running.stop()


def _kubectl(version: str, server, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    binary = KUBECTLS[version]
    if not os.access(binary, os.X_OK):
        pytest.skip(f"kubectl {version} is not installed at {binary}")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(server.home), "KUBECONFIG": str(server.home / "none")}
    cmd = [binary, "--server", server.base_url, "--cache-dir", str(server.home / "cache"), *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60, env=env, check=False)


def _get(server, path: str, accept: str) -> tuple[int, str, bytes]:
    req = urllib.request.Request(server.base_url + path, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def test_the_server_serves_v2_as_protobuf_or_json_as_asked_and_v3(server):
    status, content_type, body = _get(server, "/openapi/v2", openapi.PROTOBUF_V2_ASKED)
    assert (status, content_type) == (200, openapi.PROTOBUF_V2), "server.py must serve /openapi/* with handle()"
    assert body == openapi.v2_protobuf()
    status, content_type, body = _get(server, "/openapi/v2", "application/json")
    assert (status, content_type, body) == (200, "application/json", openapi.v2())
    status, _, body = _get(server, "/openapi/v3", "application/json")
    index = json.loads(body)
    assert status == 200 and index == openapi.v3_index()
    status, _, body = _get(server, index["paths"]["apis/apps/v1"]["serverRelativeURL"], "application/json")
    assert status == 200 and body == openapi.v3("apis/apps/v1")


@pytest.mark.parametrize("version", sorted(KUBECTLS))
def test_kubectl_explain_and_validate_against_the_server(server, version):
    result = _kubectl(version, server, "explain", "deployments.spec.strategy.rollingUpdate")
    assert result.returncode == 0, result.stderr
    assert re.search(r"maxSurge\s+<IntOrString>", result.stdout), result.stdout
    # kubectl sees fieldValidation on the PATCH operations: it leaves unknown fields to the server
    bad = json.loads(json.dumps(DEPLOYMENT))
    container = bad["spec"]["template"]["spec"]["containers"][0]
    container["imagePullPolicyy"] = container.pop("imagePullPolicy")
    result = _kubectl(version, server, "create", "-f", "-", stdin=json.dumps(bad))
    assert result.returncode == 1
    assert 'unknown field "spec.template.spec.containers[0].imagePullPolicyy"' in result.stderr, result.stderr
    assert "ValidationError" not in result.stderr
    result = _kubectl(version, server, "create", "-f", "-", stdin=json.dumps(DEPLOYMENT))
    assert result.returncode == 0, result.stderr
    assert "deployment.apps/web created" in result.stdout
    # a List is validated by kubectl itself, from the protobuf v2 document
    bad["metadata"]["name"] = "other"
    result = _kubectl(
        version, server, "create", "--dry-run=client", "-f", "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": [bad]}),
    )  # fmt: skip
    assert result.returncode == 1
    assert 'unknown field "imagePullPolicyy" in io.k8s.api.core.v1.Container' in result.stderr, result.stderr
