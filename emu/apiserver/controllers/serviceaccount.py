"""kube-controller-manager's serviceaccounts-controller: the "default" ServiceAccount in every active
Namespace, made again when deleted."""

from __future__ import annotations

from emu.apiserver.controllers.framework import Controller, Watch

DEFAULT_NAME = "default"


def namespace_active(ns: dict | None) -> bool:
    """A Namespace that may get new content: present, not being deleted (NamespaceLifecycle's rule)."""
    return ns is not None and not ns["metadata"].get("deletionTimestamp") and \
        (ns.get("status") or {}).get("phase", "Active") == "Active"


class ServiceAccountController(Controller):
    """Makes sure each active Namespace has the ServiceAccounts in `names` (["default"])."""

    name = "serviceaccount-controller"

    def __init__(self, names: tuple[str, ...] = (DEFAULT_NAME,)):
        super().__init__()
        self.names = names

    def watches(self) -> list[Watch]:
        return [Watch("namespaces"),
                Watch("serviceaccounts", lambda sa: [sa["metadata"].get("namespace", "")]
                      if sa["metadata"].get("name") in self.names else [])]

    def reconcile(self, key: str) -> None:
        ns = self.informer("namespaces").get(key)
        if not namespace_active(ns):
            return None
        for name in self.names:
            if self.informer("serviceaccounts").get(f"{key}/{name}") is None:
                self.client.create("serviceaccounts", {"kind": "ServiceAccount", "apiVersion": "v1",
                                                       "metadata": {"name": name, "namespace": key}})
        return None
