"""The cluster's Kubernetes API server, seen from the controller (docs/apiserver.md, stage 2).

`emu up` makes the cluster's PKI (emu.control.pki), publishes the first
control-plane node's port 6443 on 127.0.0.1 and a free port of this machine
(as kind does), starts `python3 -m emu.apiserver` there, waits until it is
ready, writes the cluster's objects into it and merges the kubeconfig context
`emu-<name>` (emu.control.kubeconfig). `emu down` removes the context.

ApiClient is emu's own client of that server (HTTPS with the emu-controller
certificate, which is in system:masters): the standard library's http.client
over one kept-alive connection.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from emu.control import kubeconfig
from emu.control.pki import Pki, client_cert, make_pki
from emu.control.runtime.provider import PortMapping
from emu.errors import EmuError
from emu.node.plan import cni
from emu.node.plan.cni import API_LOG
from emu.node.records import KUBERNETES_INDEX, ClusterState, well_known_ip

CONTROLLER_USER = "emu-controller"  # the identity emu's own commands use (O=system:masters)


def free_port(address: str = "127.0.0.1") -> int:
    """A port nothing listens on now (kind's GetFreePort): the kernel picks it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


class ApiClient:
    """A small HTTPS client of the cluster's API server, for emu's own commands."""

    def __init__(self, server: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, timeout: float = 30.0):
        if not server.startswith("https://"):
            raise EmuError(f"the API server address {server!r} is not https://HOST:PORT")
        host, _, port = server.removeprefix("https://").rpartition(":")
        self.server, self.host, self.port, self.timeout = server, host.strip("[]"), int(port), timeout
        self.context = ssl.create_default_context(cadata=ca_pem.decode())
        # load_cert_chain reads files only: the pair lives in a private temporary folder while loaded.
        with tempfile.TemporaryDirectory(prefix="emu-client-") as folder:
            cert, key = Path(folder, "client.crt"), Path(folder, "client.key")
            cert.write_bytes(cert_pem)
            key.touch(mode=0o600)
            key.write_bytes(key_pem)
            self.context.load_cert_chain(cert, key)
        self.connection: http.client.HTTPSConnection | None = None

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def request(self, method: str, path: str, body: object = None, content_type: str = "application/json"):
        """(status, decoded JSON or text) of one request; one retry on a connection the server closed."""
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        headers = {"Accept": "application/json", "User-Agent": "emu"}
        if data is not None:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            if self.connection is None:
                self.connection = http.client.HTTPSConnection(
                    self.host, self.port, context=self.context, timeout=self.timeout
                )
            try:
                self.connection.request(method, path, body=data, headers=headers)
                response = self.connection.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
                continue
            text = raw.decode("utf-8", "replace")
            try:
                return response.status, json.loads(text) if text else None
            except ValueError:
                return response.status, text
        raise AssertionError("unreachable")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until GET /readyz answers 200 (the server starts with its node), at most `timeout` s."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                status, body = self.request("GET", "/readyz")
                if status == 200:
                    return
                last = f"HTTP {status}: {body}"
            except (OSError, http.client.HTTPException) as error:
                last = str(error) or type(error).__name__
            time.sleep(0.05)
        raise EmuError(f"the API server at {self.server} was not ready within {timeout:.0f}s ({last}); "
                       f"see its log with `emu exec --node NODE -- tail {API_LOG}`")  # fmt: skip


@dataclass
class ApiServerSetup:
    """What `emu up` makes for a new cluster's API server: the PKI, the host port
    it is published on, and the files each node gets."""

    node: str  # the node it runs on (cni.api_server_node)
    endpoint: str  # https://127.0.0.1:PORT, as this machine reaches it
    mapping: PortMapping
    pki: Pki
    controller_cert: bytes
    controller_key: bytes

    @classmethod
    def plan(cls, state: ClusterState, runtime) -> ApiServerSetup:
        """Pick the port, make the PKI, and record the endpoint in `state`."""
        hub = cni.api_server_node(state)
        port = free_port()
        address, listen = "127.0.0.1", "127.0.0.1"
        if hub.host:  # on several hosts: the host's own address, as kind publishes on a remote engine
            host = next((h for h in state.topology.get("hosts", []) if h.get("name") == hub.host), {})
            address, listen = host.get("address") or address, "0.0.0.0"
        state.api_endpoint = f"https://{address}:{port}"
        names = [hub.name, *(n.name for n in state.nodes if n.name != hub.name)]
        service_ip = well_known_ip(state.net.service_subnet, KUBERNETES_INDEX)
        pki = make_pki([hub.node_ip], service_ip, names, state.net.dns_domain, extra_sans=[address])
        cert, key = client_cert(pki.ca_cert, pki.ca_key, CONTROLLER_USER, ["system:masters"])
        return cls(hub.name, state.api_endpoint, PortMapping(listen, port, cni.API_PORT, "TCP"), pki, cert, key)

    def add_files(self, plans: list) -> None:
        """Each node's certificates into its plan: the whole PKI on the API server's
        node, a node's own client certificate (and the CA's) on the others."""
        for plan in plans:
            if plan.node == self.node:
                files = {**self.pki.files(), "emu-controller.crt": self.controller_cert,
                         "emu-controller.key": self.controller_key}  # fmt: skip
            else:
                files = self.pki.files(plan.node)
            plan.files.update({f"{cni.PKI_DIR}/{name}": data for name, data in files.items()})

    def client(self) -> ApiClient:
        return ApiClient(self.endpoint, self.pki.ca_cert, self.controller_cert, self.controller_key)

    def merge_kubeconfig(self, cluster: str) -> Path:
        return kubeconfig.merge(cluster, self.endpoint, self.pki.ca_cert, self.pki.admin_cert, self.pki.admin_key)


def remove_kubeconfig(cluster: str) -> None:
    """Remove the cluster's context from the kubeconfig files (`emu down`)."""
    try:
        kubeconfig.remove(cluster)
    except EmuError as error:  # the cluster is gone all the same; say what is left
        print(f"warning: {error}", file=sys.stderr)


def _node_files(state: ClusterState, runtime, names: list[str]) -> list[bytes]:
    """Files of the PKI on the API server's node, read with one exec."""
    node = cni.api_server_node(state)
    marker = "--- emu: end of file ---"
    script = "; ".join(f"cat {cni.PKI_DIR}/{name} && echo '{marker}'" for name in names)
    result = runtime.exec(node.container, ["sh", "-c", script])
    parts = result.output.split(marker + "\n")
    if not result.ok or len(parts) != len(names) + 1:
        raise EmuError(
            f"cluster '{state.name}' has no complete PKI in {cni.PKI_DIR} on node {node.name}: it was made "
            "without an API server (by an older emu); recreate it with `emu down` and `emu up`"
        )
    return [part.encode() for part in parts[:-1]]


def admin_kubeconfig(cluster: str, state: ClusterState, runtime) -> str:
    """The admin's kubeconfig for a running cluster, from the certificates on its node."""
    if not state.api_endpoint:
        raise EmuError(f"cluster '{cluster}' has no API server (made by an older emu); recreate it with "
                       "`emu down` and `emu up`")  # fmt: skip
    ca, cert, key = _node_files(state, runtime, ["ca.crt", "admin.crt", "admin.key"])
    return kubeconfig.render(cluster, state.api_endpoint, ca, cert, key)


def controller_client(state: ClusterState, runtime) -> ApiClient:
    """emu's own client of a running cluster's API server."""
    ca, cert, key = _node_files(state, runtime, ["ca.crt", "emu-controller.crt", "emu-controller.key"])
    return ApiClient(state.api_endpoint, ca, cert, key)


# ---- stage 2: what emu drives, written into the API server (emu.apiserver.mirror) ----------

MIRROR_PATH = "/emu/mirror"
KINDS = ("Namespace", "Node", "Pod", "Service", "Endpoints", "ConfigMap", "Deployment", "StatefulSet", "DaemonSet")


def _slice_name(namespace: str, service: str) -> str:
    """A stable EndpointSlice name: the service's and five characters, as generateName makes them."""
    import hashlib

    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    digest = hashlib.sha256(f"{namespace}/{service}".encode()).digest()
    return f"{service[:57]}-" + "".join(alphabet[b % len(alphabet)] for b in digest[:5])


def endpoint_slice(endpoints: dict) -> dict:
    """The EndpointSlice of an Endpoints object (one address family, one slice per port set)."""
    meta = endpoints["metadata"]
    items = []
    ports: list[dict] = []
    for subset in endpoints.get("subsets", []):
        ports = [{"name": p.get("name", ""), "port": p["port"], "protocol": p["protocol"]} for p in subset["ports"]]
        for ready, key in ((True, "addresses"), (False, "notReadyAddresses")):
            for address in subset.get(key, []):
                item = {"addresses": [address["ip"]],
                        "conditions": {"ready": ready, "serving": ready, "terminating": False}}  # fmt: skip
                for field in ("hostname", "nodeName", "targetRef"):
                    if field in address:
                        item[field] = address[field]
                items.append(item)
    name = meta["name"]
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": _slice_name(meta["namespace"], name), "namespace": meta["namespace"],
                     "labels": {"kubernetes.io/service-name": name,
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                     "generateName": f"{name}-"},
        "addressType": "IPv4", "endpoints": items, "ports": ports,
    }  # fmt: skip


def mirror_objects(state: ClusterState, unready: list[str], now: float) -> list[dict]:
    """The objects a real cluster would show for `state`, pods ready but those in
    `unready` (their uids, as the agents report them)."""
    from emu.api.manifests.render import View

    waiting = set(unready)
    status = {
        pod.key: {c["name"]: {"state": "Running", "exitCode": None, "ready": pod.uid not in waiting, "restarts": 0}
                  for c in pod.containers}
        for pod in state.pods.values()
    }  # fmt: skip
    view = View(state, status, now)
    objects = [obj for kind in KINDS for obj in view.objects(kind)]
    objects += [endpoint_slice(obj) for obj in view.objects("Endpoints") if obj.get("subsets")]
    for policy in state.network_policies:
        spec = {k: v for k, v in policy.items() if k not in ("name", "namespace")}
        objects.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                        "metadata": {"name": policy["name"], "namespace": policy.get("namespace", "default")},
                        "spec": spec})  # fmt: skip
    for ingress in state.ingresses:
        spec = {k: v for k, v in ingress.items() if k not in ("name", "namespace", "annotations")}
        meta = {"name": ingress["name"], "namespace": ingress.get("namespace", "default")}
        if ingress.get("annotations"):
            meta["annotations"] = ingress["annotations"]
        objects.append({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta, "spec": spec})
    return objects


def mirror(client: ApiClient, state: ClusterState, unready: list[str]) -> dict:
    """Write the objects of `state` into its API server (POST /emu/mirror). Returns the counts."""
    status, body = client.request("POST", MIRROR_PATH, {"objects": mirror_objects(state, unready, time.time())})
    if status != 200:
        message = body.get("message") if isinstance(body, dict) else body
        raise EmuError(
            f"the API server at {client.server} did not take the cluster's objects: HTTP {status}: {message}"
        )
    return body
