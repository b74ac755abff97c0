"""emu.node.kube.client against emu's real API server over TLS with client
certificates and RBAC (kube-proxy's and the admin's certificates)."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kube_testserver import ChildProcess, InProcess, client_for, free_port, write_pki

from emu.apiserver.auth import issue_token
from emu.node.kube.client import ApiError, Client, resource_path

SERVICES = resource_path("v1", "services", "default")
CONFIGMAPS = resource_path("v1", "configmaps", "default")


def service(name: str, port: int = 80, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": port, "targetPort": 8080}], **spec}}  # fmt: skip


def configmap(name: str, **data) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


@pytest.fixture()
def server(tmp_path):
    s = InProcess(tmp_path)
    yield s
    s.stop()


def test_verbs_and_status_errors(server):
    admin = server.client()
    created = admin.create(SERVICES, service("echo"))
    assert created["spec"]["clusterIP"].startswith("10.")
    assert admin.get(SERVICES + "/echo")["metadata"]["uid"] == created["metadata"]["uid"]

    with pytest.raises(ApiError) as error:
        admin.get(SERVICES + "/missing")
    assert (error.value.code, error.value.reason) == (404, "NotFound")
    assert error.value.message == 'services "missing" not found'
    with pytest.raises(ApiError) as error:
        admin.create(SERVICES, service("echo"))
    assert (error.value.code, error.value.reason) == (409, "AlreadyExists")

    stale = dict(created)
    admin.patch(SERVICES + "/echo", {"metadata": {"labels": {"tier": "front"}}})  # merge patch
    with pytest.raises(ApiError) as error:
        admin.update(SERVICES + "/echo", stale)  # its resourceVersion is no longer the stored one
    assert (error.value.code, error.value.reason) == (409, "Conflict")

    # A strategic merge patch merges ports by their key (port); a merge patch would replace the list.
    patched = admin.patch(SERVICES + "/echo", {"spec": {"ports": [{"name": "metrics", "port": 9090}]}}, "strategic")
    assert sorted(p["port"] for p in patched["spec"]["ports"]) == [80, 9090]
    assert patched["metadata"]["labels"] == {"tier": "front"}
    patched = admin.patch(SERVICES + "/echo", [{"op": "replace", "path": "/metadata/labels/tier", "value": "back"}],
                          "json")  # fmt: skip
    assert patched["metadata"]["labels"] == {"tier": "back"}
    current = admin.get(SERVICES + "/echo")
    current["metadata"]["labels"]["tier"] = "middle"
    assert admin.update(SERVICES + "/echo", current)["metadata"]["labels"] == {"tier": "middle"}

    page = admin.list(SERVICES, label_selector="tier=middle")
    assert [i["metadata"]["name"] for i in page["items"]] == ["echo"]
    assert admin.list(SERVICES, label_selector="tier=front")["items"] == []
    admin.delete(SERVICES + "/echo")
    with pytest.raises(ApiError) as error:
        admin.delete(SERVICES + "/echo")
    assert error.value.code == 404


def test_list_pages_with_limit_and_continue(server):
    admin = server.client()
    for i in range(5):
        admin.create(CONFIGMAPS, configmap(f"c{i}"))
    names, token, pages = [], "", 0
    while True:
        page = admin.list(CONFIGMAPS, limit=2, continue_=token)
        pages += 1
        names += [i["metadata"]["name"] for i in page["items"]]
        token = page["metadata"].get("continue", "")
        if not token:
            break
    assert names == [f"c{i}" for i in range(5)] and pages == 3


def test_identities_are_the_certificates_and_rbac_applies(server):
    proxy = server.client("kube-proxy")
    assert proxy.list(resource_path("v1", "services"))["kind"] == "ServiceList"
    assert proxy.list(resource_path("discovery.k8s.io/v1", "endpointslices"))["kind"] == "EndpointSliceList"
    with pytest.raises(ApiError) as error:
        proxy.create(SERVICES, service("nope"))
    assert (error.value.code, error.value.reason) == (403, "Forbidden")
    assert 'User "system:kube-proxy" cannot create resource "services"' in error.value.message
    # A node (system:node) reads services but may not delete one.
    node = server.client("nodes/worker")
    node.get("/version")
    with pytest.raises(ApiError) as error:
        node.delete(SERVICES + "/whatever")
    assert error.value.code == 403
    anonymous = Client(server.url, str(server.pki / "ca.crt"))
    with pytest.raises(ApiError) as error:
        anonymous.get(SERVICES)
    assert (error.value.code, error.value.reason) == (401, "Unauthorized")


def test_a_bearer_token_is_the_service_accounts_identity(server):
    token = issue_token((server.pki / "sa.key").read_bytes(), "kube-system", "kube-proxy", "uid-1", [], 600)
    client = Client(server.url, str(server.pki / "ca.crt"), token=token)
    assert client.get("/version")["major"] == "1"  # system:discovery, for every authenticated user
    # kubeadm binds the kube-system/kube-proxy service account to system:node-proxier: it lists services
    assert client.list(SERVICES)["kind"] == "ServiceList"
    with pytest.raises(ApiError) as error:
        client.create(SERVICES, service("nope"))
    assert error.value.code == 403 and 'User "system:serviceaccount:kube-system:kube-proxy"' in error.value.message


def test_a_server_certificate_from_another_ca_is_refused(server, tmp_path):
    other = write_pki(tmp_path / "other")
    stranger = Client(server.url, str(other / "ca.crt"), str(other / "admin.crt"), str(other / "admin.key"))
    with pytest.raises(ssl.SSLCertVerificationError):
        stranger.get("/version")


def test_watch_streams_events_and_bookmarks(server):
    admin = server.client()
    rv = admin.list(CONFIGMAPS)["metadata"]["resourceVersion"]
    watch = admin.watch(CONFIGMAPS, rv, timeout=20)
    seen: list[tuple[str, str]] = []

    def read():
        for kind, obj in watch:
            seen.append((kind, obj["metadata"].get("name", "")))
            if kind == "BOOKMARK" and any(k == "DELETED" for k, _ in seen):
                watch.close()

    reader = threading.Thread(target=read)
    reader.start()
    admin.create(CONFIGMAPS, configmap("a", k="1"))
    admin.patch(CONFIGMAPS + "/a", {"data": {"k": "2"}})
    admin.delete(CONFIGMAPS + "/a")
    reader.join(20)
    assert not reader.is_alive()
    assert [e for e in seen if e[0] != "BOOKMARK"] == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
    assert seen[-1][0] == "BOOKMARK"  # the server's every-0.5-s bookmark once idle


def test_a_watch_from_a_revision_out_of_the_window_raises_gone(tmp_path):
    server = InProcess(tmp_path, window=3)
    try:
        admin = server.client()
        rv = admin.list(CONFIGMAPS)["metadata"]["resourceVersion"]
        for i in range(6):
            admin.create(CONFIGMAPS, configmap(f"c{i}"))
        with pytest.raises(ApiError) as error:
            for _ in admin.watch(CONFIGMAPS, rv, timeout=5):
                pass
        assert error.value.gone and error.value.reason == "Expired"
        assert "too old resource version" in error.value.message
    finally:
        server.stop()


def test_one_kept_alive_connection_per_thread(server):
    admin = server.client()
    admin.get("/version")
    first = admin.local.connection
    for _ in range(5):
        admin.list(SERVICES)
    assert admin.local.connection is first
    other: list = []

    def elsewhere():
        admin.get("/version")
        other.append(admin.local.connection)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join(10)
    assert other and other[0] is not first and admin.local.connection is first


def test_a_request_after_the_server_restarted_reconnects(tmp_path):
    server = ChildProcess(tmp_path)
    try:
        admin = server.client()
        admin.create(CONFIGMAPS, configmap("kept"))
        before = admin.local.connection
        server.kill()
        with pytest.raises(OSError):
            admin.get(CONFIGMAPS + "/kept")  # nobody listens: refused, as an OSError, not an ApiError
        server.start()
        assert admin.get(CONFIGMAPS + "/kept")["metadata"]["name"] == "kept"
        assert admin.local.connection is not before
        admin.get(CONFIGMAPS + "/kept")  # the kept-alive connection to the new process
        server.kill()
        server.start()
        # The kept-alive connection was reset by the kill: it is seen dropped and a new one is made,
        # also for a create (which is never sent twice: it might have been acted on).
        assert admin.create(CONFIGMAPS, configmap("after"))["metadata"]["name"] == "after"
        assert admin.get(CONFIGMAPS + "/kept")["metadata"]["name"] == "kept"
    finally:
        server.stop()


def test_a_server_that_never_answers_times_out(tmp_path):
    pki = write_pki(tmp_path / "pki")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)  # accepts (the kernel does) and never says a word, not even TLS's hello
    try:
        client = Client(f"https://127.0.0.1:{silent.getsockname()[1]}", str(pki / "ca.crt"), str(pki / "admin.crt"),
                        str(pki / "admin.key"), timeout=0.5)  # fmt: skip
        with pytest.raises(TimeoutError):  # (without a timeout this test would hang, never fail)
            client.get("/version")
    finally:
        silent.close()


def test_bad_arguments_say_what_is_wrong():
    with pytest.raises(ValueError, match="is not http"):
        Client("127.0.0.1:6443")
    with pytest.raises(ValueError, match="use one of merge, strategic, json"):
        Client("http://127.0.0.1:1").patch("/api/v1/x", {}, "apply")


def test_a_node_reaches_python_m_emu_apiserver_in_tls_mode(tmp_path):
    pki = write_pki(tmp_path / "pki")
    port = free_port()
    root = str(Path(__file__).resolve().parents[3])
    server = subprocess.Popen(
        [sys.executable, "-m", "emu.apiserver", "--data", str(tmp_path / "data"), "--listen", f"127.0.0.1:{port}",
         "--tls-cert", str(pki / "apiserver.crt"), "--tls-key", str(pki / "apiserver.key"),
         "--client-ca", str(pki / "ca.crt"), "--pki", str(pki)],
        stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": root})  # fmt: skip
    try:
        proxy = client_for(f"https://127.0.0.1:{port}", pki, "kube-proxy")
        for _ in range(100):
            if server.poll() is not None:
                break
            try:
                proxy.get("/version")
                break
            except OSError:
                time.sleep(0.1)
        assert server.poll() is None, server.stderr.read().decode()[-2000:]
        assert proxy.list(resource_path("v1", "services"))["kind"] == "ServiceList"
    finally:
        server.kill()
        server.wait(10)


def test_a_continue_page_is_the_first_pages_snapshot(server):
    admin = server.client()
    for name in ("a", "b"):
        admin.create(CONFIGMAPS, configmap(name, k="1"))
    first = admin.list(CONFIGMAPS, limit=1)
    list_rv = int(first["metadata"]["resourceVersion"])
    admin.patch(CONFIGMAPS + "/b", {"data": {"k": "2"}})
    second = admin.list(CONFIGMAPS, limit=1, continue_=first["metadata"]["continue"])
    assert int(second["items"][0]["metadata"]["resourceVersion"]) <= list_rv
