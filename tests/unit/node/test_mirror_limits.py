"""POST /emu/mirror carries a whole lab at once: it takes more than kube-apiserver's
3 MiB a request (a 50-node lab of 1,000 Services and 2,000 pods is 4.3 MiB), but no
single object over it, as the API server would refuse that object written alone."""

from __future__ import annotations

import pytest
from kube_testserver import ClusterServer, client_for

from emu.apiserver.mirror import CONTROLLER_USER, PATH
from emu.apiserver.server import MAX_BODY
from emu.control.pki import client_cert
from emu.node.kube.client import ApiError


def controller(server: ClusterServer, tmp_path):
    cert, key = client_cert((server.pki / "ca.crt").read_bytes(), (server.pki / "ca.key").read_bytes(),
                            CONTROLLER_USER, ["system:masters"])  # fmt: skip
    (tmp_path / "controller.crt").write_bytes(cert)
    (tmp_path / "controller.key").write_bytes(key)
    return client_for(server.url, tmp_path, "controller")


def namespace(name: str, padding: int = 0) -> dict:
    meta = {"name": name, "annotations": {"emu.io/padding": "x" * padding}} if padding else {"name": name}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def test_a_mirror_over_3_mib_is_taken_and_an_object_over_it_is_refused(tmp_path):
    server = ClusterServer(tmp_path)
    try:
        (tmp_path / "ca.crt").write_bytes((server.pki / "ca.crt").read_bytes())
        client = controller(server, tmp_path)
        many = [namespace(f"ns-{i}", padding=4000) for i in range(1000)]  # ~4 MiB in all
        assert client.request("POST", PATH, {"objects": many})["created"] == 1000
        with pytest.raises(ApiError) as refused:
            client.request("POST", PATH, {"objects": [*many[:10], namespace("big", MAX_BODY)]})
        assert str(refused.value).startswith("413 RequestEntityTooLarge") and "limit is 3145728" in str(refused.value)
        assert server.client().get("/api/v1/namespaces/ns-999")["metadata"]["name"] == "ns-999"  # nothing undone
    finally:
        server.stop()
