"""The zone from the Kubernetes API, as CoreDNS's kubernetes plugin builds it.

The plugin (plugin/kubernetes/controller.go) lists and watches Services,
EndpointSlices and Namespaces (Pods only with `pods verified`; emu's Corefile
has `pods insecure`) as the pod's service account (kubeadm's ClusterRole
system:coredns), and keeps only what it answers from (object.ToService,
object.EndpointSliceToEndpoints). `ApiSource` does the same with emu's
informers (emu.node.kube.informer), in-cluster (emu.node.kube.client.in_cluster):

- each informer's transform keeps the few fields a record needs, so the cache
  of 1,000 services is small;
- after every change, once all three informers have synced (client-go's
  HasSynced), one builder thread turns the caches into the zone's snapshot
  (the same JSON as emu.node.dns.snapshot's: services with ports, endpoints
  with readiness and hostname, namespaces) and hands it to `publish`; a burst
  of changes makes one snapshot;
- when the API server goes away the informers keep their caches and watch
  again from their last resourceVersion (relisting after 410 Gone), so the
  zone keeps answering meanwhile, as CoreDNS does.

An endpoint is in a service's answers when its EndpointSlice says ready
(`conditions.ready`, absent counts as ready); the EndpointSlice controller
sets it for not-ready pods of a service with publishNotReadyAddresses. Its
name is the slice's `hostname` (the pod's, when its subdomain names the
service), else its address with dashes.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable

from emu.node.kube import release_memory
from emu.node.kube.client import Client
from emu.node.kube.informer import Informer

SERVICES = "/api/v1/services"
ENDPOINT_SLICES = "/apis/discovery.k8s.io/v1/endpointslices"
NAMESPACES = "/api/v1/namespaces"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def _meta(obj: dict, labels: bool = False) -> dict:
    meta = obj.get("metadata") or {}
    kept = {"name": meta.get("name", ""), "resourceVersion": meta.get("resourceVersion", "")}
    if meta.get("namespace"):
        kept["namespace"] = meta["namespace"]
    if labels and SERVICE_NAME_LABEL in (meta.get("labels") or {}):
        kept["labels"] = {SERVICE_NAME_LABEL: meta["labels"][SERVICE_NAME_LABEL]}
    return kept


def service_of(obj: dict) -> dict:
    """A Service as the zone needs it (CoreDNS's object.ToService)."""
    spec = obj.get("spec") or {}
    kept = {"type": spec.get("type") or "ClusterIP", "clusterIP": spec.get("clusterIP") or ""}
    if spec.get("externalName"):
        kept["externalName"] = spec["externalName"]
    kept["ports"] = [{"name": p.get("name") or "", "port": p.get("port"), "protocol": p.get("protocol") or "TCP"}
                     for p in spec.get("ports") or []]  # fmt: skip
    return {"metadata": _meta(obj), "spec": kept}


def slice_of(obj: dict) -> dict:
    """An EndpointSlice as the zone needs it (CoreDNS's object.EndpointSliceToEndpoints)."""
    endpoints = []
    for endpoint in obj.get("endpoints") or []:
        ready = (endpoint.get("conditions") or {}).get("ready")
        kept = {"addresses": list(endpoint.get("addresses") or []), "ready": ready is None or bool(ready)}
        if endpoint.get("hostname"):
            kept["hostname"] = endpoint["hostname"]
        endpoints.append(kept)
    ports = [{"name": p.get("name") or "", "port": p.get("port")} for p in obj.get("ports") or []]
    return {"metadata": _meta(obj, labels=True), "addressType": obj.get("addressType", "IPv4"),
            "endpoints": endpoints, "ports": ports}  # fmt: skip


def namespace_of(obj: dict) -> dict:
    return {"metadata": _meta(obj)}


def snapshot(settings: dict, services: list[dict], slices: list[dict], namespaces: list[dict]) -> dict:
    """The zone's snapshot (emu.node.dns.snapshot's shape) from the informers' objects."""
    by_service: dict[tuple[str, str], list[dict]] = {}
    for item in slices:
        meta = item["metadata"]
        owner = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if owner and item.get("addressType") in ("IPv4", "IPv6"):
            by_service.setdefault((meta.get("namespace", ""), owner), []).append(item)
    out = []
    for service in sorted(services, key=lambda s: (s["metadata"].get("namespace", ""), s["metadata"]["name"])):
        meta, spec = service["metadata"], service["spec"]
        namespace, name = meta.get("namespace", ""), meta["name"]
        endpoints = []
        seen: set[str] = set()
        for item in sorted(by_service.get((namespace, name), []), key=lambda s: s["metadata"]["name"]):
            ports = {p["name"]: p["port"] for p in item["ports"] if p.get("port") is not None}
            for endpoint in item["endpoints"]:
                for address in endpoint["addresses"]:
                    if address in seen:
                        continue
                    seen.add(address)
                    endpoints.append({"ip": address, "hostname": endpoint.get("hostname"),
                                      "ready": endpoint["ready"], "ports": ports})  # fmt: skip
        endpoints.sort(key=lambda e: e["ip"])
        out.append({"namespace": namespace, "name": name, "type": spec["type"], "clusterIP": spec["clusterIP"],
                    "externalName": spec.get("externalName"), "ports": spec["ports"],
                    "endpoints": endpoints})  # fmt: skip
    names = sorted(n["metadata"]["name"] for n in namespaces)
    return {**settings, "namespaces": names, "services": out}


class ApiSource:
    """Services, EndpointSlices and Namespaces watched; `publish(snapshot)` after each change once synced.

    make_client: returns the Client (called again until it succeeds: the pod's
    token may not be mounted yet). settings: the zone's own (zone, ttl,
    upstreams, serviceSubnet, podSubnet), as the Corefile gives CoreDNS."""

    def __init__(self, make_client: Callable[[], Client], settings: dict, publish: Callable[[dict], None],
                 log: Callable[[str], None] = print, retry: float = 1.0):  # fmt: skip
        self.make_client = make_client
        self.settings = settings
        self.publish = publish
        self.log = log
        self.retry = retry
        self.informers: list[Informer] = []
        self.changed = threading.Event()
        self.stopped = False
        self.builds = 0
        self.thread: threading.Thread | None = None

    def start(self) -> ApiSource:
        self.thread = threading.Thread(target=self._run, name="dns-api-source", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped = True
        self.changed.set()
        for informer in self.informers:
            informer.stop()

    @property
    def synced(self) -> bool:
        return bool(self.informers) and all(i.synced.is_set() for i in self.informers)

    def _client(self) -> Client | None:
        said = ""
        while not self.stopped:
            try:
                return self.make_client()
            except (OSError, ValueError) as error:
                if str(error) != said:  # once, not every second
                    said = str(error)
                    self.log(f"kubernetes API: {error}; trying again every {self.retry:g}s")
                time.sleep(self.retry)
        return None

    def _run(self) -> None:
        client = self._client()
        if client is None:
            return

        def mark(*_args) -> None:
            self.changed.set()

        for path, transform in ((SERVICES, service_of), (ENDPOINT_SLICES, slice_of), (NAMESPACES, namespace_of)):
            informer = Informer(client, path, on_add=mark, on_update=mark, on_delete=mark, transform=transform,
                                log=self.log)  # fmt: skip
            self.informers.append(informer)
        self.log(f"kubernetes API: watching services, endpointslices and namespaces at {client.server}")
        for informer in self.informers:
            informer.start()
        while not self.stopped:
            if self.builds and self.synced:
                self.changed.wait()
            else:
                self.changed.wait(0.05)  # an informer that lists nothing calls no handler: look for its sync
            self.changed.clear()
            if self.stopped or not self.synced:
                continue
            services, slices, namespaces = (i.list() for i in self.informers)
            self.publish(snapshot(self.settings, services, slices, namespaces))
            if not self.builds:
                self.log(f"kubernetes API: synced ({len(services)} services, {len(slices)} endpointslices, "
                         f"{len(namespaces)} namespaces)")  # fmt: skip
            self.builds += 1
            del services, slices, namespaces
            release_memory()  # the lists' pages and the zone before, parsed whole, are garbage now


def write_zone(path: str, data: dict) -> None:
    """The snapshot written for the server's processes (write, then rename: a reader sees it whole)."""
    with open(path + ".new", "w") as handle:
        json.dump(data, handle, sort_keys=True)
    os.replace(path + ".new", path)
