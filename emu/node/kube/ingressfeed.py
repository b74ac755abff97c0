"""ingress-nginx's store: what its controller lists and watches, for the agent on its node.

ingress-nginx keeps informers of Ingresses, IngressClasses, Services and
EndpointSlices (internal/ingress/controller/store); so does this feed, with the
controller's own identity (its pod's service account token, RBAC's ClusterRole
ingress-nginx: emu.apiserver.rbac). `snapshot()` gives what the controller
renders nginx.conf from (emu.node.ingress.render):
- the Ingresses it serves (emu.node.ingress.is_served: their class, the
  annotation, the default IngressClass), in the state file's form, and their API
  objects (whose status.loadBalancer.ingress the controller writes);
- the Services and their ready endpoints per port, parsed as kube-proxy parses
  them (emu.node.kube.proxyfeed.ProxyFeed, without Nodes): ingress-nginx, too,
  sends requests straight to a service's ready endpoints.
`on_change` is called (from an informer's thread) after every change.
Standard library only: it runs in the node agent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from emu.node import ingress
from emu.node.kube.client import Client, resource_path
from emu.node.kube.informer import Informer, key_of
from emu.node.kube.proxyfeed import LIST_PAGE, ProxyFeed
from emu.node.records import ServiceState

INGRESSES_PATH = resource_path("networking.k8s.io/v1", "ingresses")
INGRESS_CLASSES_PATH = resource_path("networking.k8s.io/v1", "ingressclasses")


class IngressFeed:
    def __init__(self, node: str, on_change: Callable[[], None] = lambda: None):
        self.on_change = on_change
        self.services = ProxyFeed(node, {}, on_change)  # Services and EndpointSlices
        self.lock = threading.Lock()
        self.ingresses: dict[str, dict] = {}  # namespace/name -> the API object
        self.classes: dict[str, dict] = {}  # name -> IngressClass

    def _set(self, table: dict, obj: dict, gone: bool = False) -> None:
        with self.lock:
            if gone:
                table.pop(key_of(obj), None)
            else:
                table[key_of(obj)] = obj
        self.on_change()

    def snapshot(self) -> tuple[list[dict], dict[str, dict], set[str], dict[str, ServiceState], dict]:
        """(the served Ingresses in the state file's form, every Ingress's API object by
        "namespace/name", the keys of those served, the Services by "namespace/name", their
        ready endpoints {service key: {port name: [Endpoint]}})."""
        with self.lock:
            classes = list(self.classes.values())
            objects = dict(self.ingresses)
        served = sorted(key for key, obj in objects.items() if ingress.is_served(obj, classes))
        state, endpoints = self.services.snapshot()
        return [ingress.flat(objects[key]) for key in served], objects, set(served), state.services, endpoints

    def informers(self, client: Client, log: Callable[[str], None] = lambda message: None,
                  **options) -> list[Informer]:  # fmt: skip
        """Informers (not started) of Services, EndpointSlices, Ingresses and IngressClasses."""
        options.setdefault("page_size", LIST_PAGE)
        return self.services.informers(client, log, nodes=False, **options) + [
            Informer(client, INGRESSES_PATH, on_add=lambda o: self._set(self.ingresses, o),
                     on_update=lambda old, new: self._set(self.ingresses, new),
                     on_delete=lambda o: self._set(self.ingresses, o, gone=True), log=log, name="ingresses",
                     **options),
            Informer(client, INGRESS_CLASSES_PATH, on_add=lambda o: self._set(self.classes, o),
                     on_update=lambda old, new: self._set(self.classes, new),
                     on_delete=lambda o: self._set(self.classes, o, gone=True), log=log, name="ingressclasses",
                     **options),
        ]  # fmt: skip
