"""Helpers for the node client's tests: emu's API server with TLS, client
certificates and RBAC as a cluster runs it (emu.control.pki's PKI,
emu.apiserver.auth's Authenticator, emu.apiserver.rbac's bootstrap roles),
either in this process or as a child process that a test can kill -9 and
start again on the same port and SQLite file."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from emu.apiserver import resources
from emu.apiserver.auth import Authenticator, server_ssl_context_from_directory
from emu.apiserver.rbac import Authorizer, bootstrap_objects
from emu.apiserver.server import ApiServer
from emu.apiserver.storage import Store
from emu.control.pki import make_pki
from emu.node.kube.client import Client

NODES = ["control-plane", "worker", "worker2"]
RBAC = "rbac.authorization.k8s.io"


def write_pki(directory: Path, nodes: list[str] = NODES) -> Path:
    """The cluster's PKI (emu.control.pki), written as a control-plane node holds it."""
    make_pki(["127.0.0.1"], "10.96.0.1", nodes).write(directory)
    return directory


def lister(store: Store):
    """The RBAC authorizer's view of the store: stored roles and bindings by plural and namespace."""

    def list_(plural: str, namespace: str | None) -> list[dict]:
        return store.list_objects(resources.lookup(RBAC, "v1", plural).key, namespace or "")

    return list_


def load_rbac(store: Store) -> None:
    """The bootstrap ClusterRoles and ClusterRoleBindings (cluster-admin, system:node-proxier, ...)."""
    for obj in bootstrap_objects():
        info = resources.by_kind(obj["apiVersion"], obj["kind"])
        if store.get(info.key, "", obj["metadata"]["name"]) is None:
            store.create(info.key, json.loads(json.dumps(obj)), info.field_values)


def secure_server(store: Store, pki: Path, bookmark_interval: float = 0.5, log=None) -> ApiServer:
    """An ApiServer that authenticates client certificates and authorizes with RBAC."""
    load_rbac(store)
    return ApiServer(store, authenticator=Authenticator.from_directory(str(pki)), authorizer=Authorizer(lister(store)),
                     ssl_context=server_ssl_context_from_directory(str(pki)), bookmark_interval=bookmark_interval,
                     service_cidr="10.96.0.0/12", log=log)  # fmt: skip


def client_for(url: str, pki: Path, who: str = "admin", **kwargs) -> Client:
    """A Client with a certificate of the PKI: 'admin', 'kube-proxy' or 'nodes/<name>'."""
    return Client(url, str(pki / "ca.crt"), str(pki / f"{who}.crt"), str(pki / f"{who}.key"), **kwargs)


class InProcess:
    """The secure API server in this process on 127.0.0.1 and a free port."""

    def __init__(self, tmp: Path, window: int = 10_000, bookmark_interval: float = 0.5):
        self.pki = write_pki(tmp / "pki")
        self.log = open(tmp / "apiserver.log", "a", buffering=1)  # noqa: SIM115 - closed by stop()
        self.store = Store(str(tmp / "state.db"), window=window)
        self.server = secure_server(self.store, self.pki, bookmark_interval, log=self.log)
        host, port = self.server.start(("127.0.0.1", 0))
        self.url = f"https://{host}:{port}"
        self.log_path = tmp / "apiserver.log"

    def client(self, who: str = "admin", **kwargs) -> Client:
        return client_for(self.url, self.pki, who, **kwargs)

    def requests(self) -> list[str]:
        """The request lines the server logged ('GET /path?query 200 1.2ms user')."""
        return self.log_path.read_text().splitlines()

    def stop(self) -> None:
        self.server.shutdown()
        self.store.close()
        self.log.close()


class ClusterServer:
    """emu's API server as every emu cluster runs it (emu.apiserver.server.cluster_security:
    TLS, client certificates, service account tokens, RBAC, NodeRestriction; the
    kinds emu drives refused to others, --emu-driven), with `controllers` running."""

    def __init__(self, tmp: Path, controllers: tuple[str, ...] = ()):
        from emu.apiserver.controllers import start_named
        from emu.apiserver.server import cluster_security

        self.pki = write_pki(tmp / "pki")
        self.store = Store(str(tmp / "state.db"))
        self.server = ApiServer(self.store, **cluster_security(self.store, str(self.pki)), emu_driven=True)
        host, port = self.server.start(("127.0.0.1", 0))
        self.url = f"https://{host}:{port}"
        self.manager = start_named(self.store, controllers) if controllers else None

    def client(self, who: str = "admin", **kwargs) -> Client:
        return client_for(self.url, self.pki, who, **kwargs)

    def stop(self) -> None:
        if self.manager:
            self.manager.stop()
        self.server.shutdown()
        self.store.close()


CHILD = """
import sys, threading
from pathlib import Path
sys.path[:0] = [{root!r}, {here!r}]
from emu.apiserver.storage import Store
from kube_testserver import secure_server
store = Store({db!r})
server = secure_server(store, Path({pki!r}), bookmark_interval={bookmark})
server.make_httpd(("127.0.0.1", {port}))
print("serving", flush=True)
server.serve(("127.0.0.1", {port}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ChildProcess:
    """The secure API server as a child process on a fixed port: kill() is kill -9,
    start() brings it back on the same port and SQLite file."""

    def __init__(self, tmp: Path, bookmark_interval: float = 0.3):
        self.tmp = tmp
        self.pki = write_pki(tmp / "pki")
        self.db = tmp / "state.db"
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.bookmark_interval = bookmark_interval
        self.process: subprocess.Popen | None = None
        self.log = open(tmp / "apiserver.log", "ab")  # noqa: SIM115 - closed by stop()
        self.start()

    def start(self, timeout: float = 20.0) -> None:
        root = str(Path(__file__).resolve().parents[3])
        code = CHILD.format(root=root, here=str(Path(__file__).parent), db=str(self.db), pki=str(self.pki),
                            bookmark=self.bookmark_interval, port=self.port)  # fmt: skip
        self.process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=self.log,
                                        env={**os.environ, "PYTHONPATH": root})  # fmt: skip
        line = self.process.stdout.readline()
        if line.strip() != b"serving":
            raise RuntimeError(f"the API server child did not start: {line!r}; see {self.tmp / 'apiserver.log'}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # (listening since make_httpd; serve_forever a moment later)
            try:
                client_for(self.url, self.pki).get("/version")
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the API server child does not answer")

    def kill(self) -> None:
        """kill -9: no goodbye to open watches; the kernel resets the connections."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def freeze(self) -> None:
        """SIGSTOP: the process stops answering but its connections stay open (a paused container)."""
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def client(self, who: str = "admin", **kwargs) -> Client:
        return client_for(self.url, self.pki, who, **kwargs)

    def stop(self) -> None:
        if self.process is not None:
            self.thaw()
        self.kill()
        self.log.close()
