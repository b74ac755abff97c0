"""An API server with no cluster around it, for the benches that feed a node's
clients from one (dns_api.py, node_watch.py): the cluster's PKI, RBAC's
bootstrap objects and the bench's own objects written straight into a SQLite
store (setup, not measured), then emu.apiserver serving it over TLS in a
process of its own on 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from harness import ROOT

SERVER = """
import sys
sys.path.insert(0, {root!r})
from emu.apiserver import resources
from emu.apiserver.auth import Authenticator, server_ssl_context_from_directory
from emu.apiserver.rbac import Authorizer
from emu.apiserver.server import ApiServer
from emu.apiserver.storage import Store
store = Store({db!r})
key = lambda plural: resources.lookup("rbac.authorization.k8s.io", "v1", plural).key
server = ApiServer(store, authenticator=Authenticator.from_directory({pki!r}),
                   authorizer=Authorizer(lambda plural, ns: store.list_objects(key(plural), ns or "")),
                   ssl_context=server_ssl_context_from_directory({pki!r}), {options}log=open("/dev/null", "w"))
server.make_httpd(("127.0.0.1", {port}))
print("serving", flush=True)
server.serve(("127.0.0.1", {port}))
"""


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    while True:
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def preload(db: str, objects: Iterable[dict]) -> None:
    """RBAC's bootstrap objects and `objects` written straight into the store at `db`."""
    from emu.apiserver import resources
    from emu.apiserver.rbac import bootstrap_objects
    from emu.apiserver.storage import Store

    store = Store(db)
    for obj in [*bootstrap_objects(), *objects]:
        info = resources.by_kind(obj["apiVersion"], obj["kind"])
        store.create(info.key, json.loads(json.dumps(obj)), info.field_values)
    store.close()


@dataclass
class ApiLab:
    folder: Path
    pki: Path
    port: int
    process: subprocess.Popen
    admin: object  # emu.node.kube.client.Client with the admin's certificate

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)


def start(folder: Path, objects: Iterable[dict], node: str = "node", service_cidr: str | None = None) -> ApiLab:
    """The PKI in folder/pki, the store in folder/state.db with `objects`, the server
    running (its stderr in folder/apiserver.log) and answering the admin's GET /version."""
    from emu.control.pki import make_pki
    from emu.node.kube.client import Client

    pki = folder / "pki"
    make_pki(["127.0.0.1"], "10.96.0.1", [node]).write(pki)
    db = str(folder / "state.db")
    preload(db, objects)
    port = free_port()
    options = f"service_cidr={service_cidr!r}, " if service_cidr else ""
    code = SERVER.format(root=str(ROOT), db=db, pki=str(pki), port=port, options=options)
    with open(folder / "apiserver.log", "ab") as log:
        process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=log)
    if process.stdout.readline().strip() != b"serving":
        process.kill()
        raise SystemExit(f"the API server did not start: see {folder / 'apiserver.log'}")
    admin = Client(f"https://127.0.0.1:{port}", str(pki / "ca.crt"), str(pki / "admin.crt"), str(pki / "admin.key"))
    for _ in range(200):
        try:
            admin.get("/version")
            break
        except OSError:
            time.sleep(0.05)
    return ApiLab(folder, pki, port, process, admin)
