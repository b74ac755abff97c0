"""The cluster's Kubernetes API server, seen from the controller (docs/apiserver.md, stage 2).

`emu up` makes the cluster's PKI (emu.control.pki), publishes the first
control-plane node's port 6443 on 127.0.0.1 and a free port of this machine
(as kind does), starts `python3 -m emu.apiserver` there, waits until it is
ready, writes the cluster's objects into it and merges the kubeconfig context
`emu-<name>` (emu.control.kubeconfig). `emu down` removes the context.

NodeApi is emu's own client of that server: curl in the server's node with the
emu-controller certificate (in system:masters), one exec a request.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from emu.apiserver.discovery import GIT_VERSION as KUBERNETES_VERSION
from emu.apiserver.mirror import CONTROLLER_USER
from emu.apiserver.mirror import PATH as MIRROR_PATH
from emu.control import kubeconfig
from emu.control.pki import Pki, client_cert, make_pki
from emu.control.runtime.provider import PortMapping
from emu.errors import EmuError
from emu.node.plan import cni
from emu.node.plan.cni import API_LOG
from emu.node.records import KUBERNETES_INDEX, ClusterState, well_known_ip

def kernel_port(address: str) -> int:
    """A port nothing listens on at `address` now: the kernel picks it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def free_port(address: str = "127.0.0.1", taken: Collection[int] = ()) -> int:
    """A port nothing listens on now (kind's GetFreePort: the kernel picks it) and
    not in `taken`: the ports the engine publishes, which a probe here does not see
    when emu runs in a container of its own (the compose labs) or the engine is on
    another host."""
    for _ in range(1000):
        port = kernel_port(address)
        if port not in taken:
            return port
    raise EmuError(f"no free TCP port for the API server: the kernel kept offering ports the engine "
                   f"publishes ({len(taken)} of them); stop some of those containers and try again")


class NodeApi:
    """emu's own requests to the cluster's API server, made with curl inside the API
    server's node as the emu-controller identity. The node reaches 127.0.0.1:6443
    wherever emu runs: on the Docker host, in a container of its own (the compose
    labs, where the host's 127.0.0.1 is not the container's), or with the engine
    on another host; and it costs one exec, as everything else emu does."""

    def __init__(self, runtime, container: str, server: str):
        self.runtime, self.container, self.server = runtime, container, server
        pki = cni.PKI_DIR
        self.curl = ["curl", "-sS", "--max-time", "120", "--cacert", f"{pki}/ca.crt",
                     "--cert", f"{pki}/emu-controller.crt", "--key", f"{pki}/emu-controller.key"]  # fmt: skip
        self.local = f"https://127.0.0.1:{cni.API_PORT}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until GET /readyz answers 200 (the server starts with its node), at most `timeout` s."""
        ask = shlex.join([*self.curl, "-o", "/dev/null", "-w", "%{http_code}", f"{self.local}/readyz"])
        steps = int(timeout / 0.05)
        script = (f'n=0; while [ $n -lt {steps} ]; do code=$({ask} 2>/dev/null); [ "$code" = 200 ] && exit 0; '
                  'n=$((n+1)); sleep 0.05; done; echo "last answer: ${code:-none}"; exit 1')  # fmt: skip
        result = self.runtime.exec(self.container, ["sh", "-c", script])
        if not result.ok:
            raise EmuError(
                f"the API server at {self.server} was not ready within {timeout:.0f}s ({result.output.strip()}); "
                f"see its log with `emu exec --node NODE -- tail {API_LOG}`"
            )

    def get(self, path: str) -> tuple[int, object]:
        """(status, the answer's JSON or text) of a GET."""
        argv = [*self.curl, "-w", "\n%{http_code}", f"{self.local}{path}"]
        result = self.runtime.exec(self.container, argv)
        return self._answer(result)

    def post(self, path: str, body: object) -> tuple[int, object]:
        """(status, the answer's JSON or text) of a POST of `body` as JSON."""
        payload = json.dumps(body).encode()
        request = "/tmp/emu-api-request.json"
        argv = [*self.curl, "-X", "POST", "-H", "Content-Type: application/json", "--data-binary", f"@{request}",
                "-w", "\n%{http_code}", f"{self.local}{path}"]  # fmt: skip
        script = f"{shlex.join(argv)}; code=$?; rm -f {request}; exit $code"
        result = self.runtime.run_with_files(self.container, {request: payload}, ["sh", "-c", script])
        return self._answer(result)

    def _answer(self, result) -> tuple[int, object]:
        text, _, code = result.output.rstrip("\n").rpartition("\n")
        if not result.ok or not code.isdigit():
            raise EmuError(f"asking the API server at {self.server} failed: {result.output.strip()[-500:]}")
        try:
            return int(code), json.loads(text) if text else None
        except ValueError:
            return int(code), text


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
        taken = {port for port, protocol in runtime.published_ports(hub.host) if protocol == "TCP"}
        port = free_port(taken=taken)
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

    def client(self, runtime, state: ClusterState) -> NodeApi:
        return NodeApi(runtime, cni.api_server_node(state).container, self.endpoint)

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


def controller_client(state: ClusterState, runtime) -> NodeApi:
    """emu's own client of a running cluster's API server."""
    return NodeApi(runtime, cni.api_server_node(state).container, state.api_endpoint)


# ---- stage 2: what emu drives, written into the API server (emu.apiserver.mirror) ----------

KINDS = ("Namespace", "Node", "Pod", "Service", "ConfigMap", "Deployment", "StatefulSet", "DaemonSet")


def _slice_name(namespace: str, service: str) -> str:
    """A stable EndpointSlice name: the service's and five characters, as generateName makes them."""
    import hashlib

    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    digest = hashlib.sha256(f"{namespace}/{service}".encode()).digest()
    return f"{service[:57]}-" + "".join(alphabet[b % len(alphabet)] for b in digest[:5])


def _architecture() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


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
    for node in (obj for obj in objects if obj["kind"] == "Node"):
        # What `kubectl get nodes -o wide` shows of a kubelet: its version is the API server's.
        node["status"]["nodeInfo"] = {
            "kubeletVersion": KUBERNETES_VERSION, "kubeProxyVersion": KUBERNETES_VERSION,
            "osImage": "Debian GNU/Linux 12 (bookworm)", "kernelVersion": os.uname().release,
            "containerRuntimeVersion": "emu://netns", "operatingSystem": "linux", "architecture": _architecture(),
        }  # fmt: skip
    # The API server's EndpointSlice and Endpoints controllers follow the services with a
    # selector (from the pods' readiness); emu writes the endpoints of those without one
    # (default/kubernetes: the control plane).
    for service in state.services.values():
        endpoints = view.endpoints(service) if not service.selector else None
        if endpoints and endpoints.get("subsets"):
            objects += [endpoints, endpoint_slice(endpoints)]
    coredns_addon(objects)
    ingress_addon(objects)
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


def coredns_addon(objects: list[dict]) -> None:
    """What kubeadm's CoreDNS addon adds to its Deployment: the ServiceAccount
    kube-system/coredns, which its pods run as (the ClusterRole system:coredns and
    its binding to that account are in the API server's policy, emu.apiserver.rbac),
    so the DNS server lists and watches Services, EndpointSlices and Namespaces."""
    found = False
    for obj in objects:
        meta = obj.get("metadata") or {}
        if meta.get("namespace") != "kube-system":
            continue
        if obj["kind"] == "Deployment" and meta.get("name") == "coredns":
            spec = obj["spec"]["template"].setdefault("spec", {})
        elif obj["kind"] == "Pod" and (meta.get("labels") or {}).get("k8s-app") == "kube-dns":
            spec = obj.setdefault("spec", {})
        else:
            continue
        found = True
        spec["serviceAccountName"] = spec["serviceAccount"] = "coredns"
    if found:
        objects.append({"apiVersion": "v1", "kind": "ServiceAccount",
                        "metadata": {"name": "coredns", "namespace": "kube-system"}})  # fmt: skip


def ingress_addon(objects: list[dict]) -> None:
    """What ingress-nginx's manifests (kind's among them) add to its controller's
    Deployment: the ServiceAccount ingress-nginx/ingress-nginx its pods run as (the
    ClusterRole ingress-nginx and its binding are in the API server's policy,
    emu.apiserver.rbac) and the IngressClass nginx (controller k8s.io/ingress-nginx),
    so the controller watches the API server as itself and serves the Ingresses of its class."""
    from emu.node import ingress

    found = False
    for obj in objects:
        meta = obj.get("metadata") or {}
        if meta.get("namespace") != ingress.NAMESPACE:
            continue
        if obj["kind"] == "Deployment" and meta.get("name") == ingress.NAME:
            spec = obj["spec"]["template"].setdefault("spec", {})
        elif obj["kind"] == "Pod" and all((meta.get("labels") or {}).get(k) == v for k, v in ingress.LABELS.items()):
            spec = obj.setdefault("spec", {})
        else:
            continue
        found = True
        spec["serviceAccountName"] = spec["serviceAccount"] = ingress.SERVICE_ACCOUNT
    if found:
        objects.append({"apiVersion": "v1", "kind": "ServiceAccount",
                        "metadata": {"name": ingress.SERVICE_ACCOUNT, "namespace": ingress.NAMESPACE}})  # fmt: skip
        objects.append(ingress.ingress_class())


def foreign_service_addresses(client: NodeApi) -> tuple[set[str], set[int], dict[str, str]]:
    """The cluster IPs, node ports (health check ones too) and LoadBalancer addresses
    ({address: "namespace/name"}: status.loadBalancer.ingress, given by the API server's
    service load-balancer controller) of the Services made through the API (kubectl),
    which emu's planner must leave to them; nothing when the API server does not answer
    (the mirror then refuses a clash of cluster IPs or node ports, and a LoadBalancer
    address emu takes anyway moves the other Service: emu.apiserver.controllers.servicelb)."""
    from emu.apiserver.controllers.servicelb import ingress_ips
    from emu.apiserver.mirror import emu_owned
    from emu.apiserver.resources import service_addresses

    try:
        status, body = client.get("/api/v1/services")
    except Exception:  # noqa: BLE001  (its node stopped, the engine away: plan without; the mirror checks)
        return set(), set(), {}
    if status != 200 or not isinstance(body, dict):
        return set(), set(), {}
    ips: set[str] = set()
    ports: set[int] = set()
    balancers: dict[str, str] = {}
    for service in body.get("items") or []:
        if emu_owned(service):
            continue
        held_ips, held_ports = service_addresses(service)
        ips |= held_ips
        ports |= held_ports
        health = (service.get("spec") or {}).get("healthCheckNodePort")
        if health:
            ports.add(health)
        meta = service.get("metadata") or {}
        for address in ingress_ips(service):
            balancers.setdefault(address, f"{meta.get('namespace', '')}/{meta.get('name', '')}")
    return ips, ports, balancers


def mirror(client: NodeApi, state: ClusterState, unready: list[str]) -> dict:
    """Write the objects of `state` into its API server (POST /emu/mirror). Returns the counts."""
    status, body = client.post(MIRROR_PATH, {"objects": mirror_objects(state, unready, time.time())})
    if status != 200:
        message = body.get("message") if isinstance(body, dict) else body
        raise EmuError(
            f"the API server at {client.server} did not take the cluster's objects: HTTP {status}: {message}"
        )
    return body
