"""kube-controller-manager's root-ca-cert-publisher: the ConfigMap kube-root-ca.crt (data ca.crt: the
cluster CA) in every active Namespace, put back when deleted or changed."""

from __future__ import annotations

import copy

from emu.apiserver.controllers.framework import Controller, Watch
from emu.apiserver.controllers.serviceaccount import namespace_active

CONFIGMAP = "kube-root-ca.crt"
DESCRIPTION_ANNOTATION = "kubernetes.io/description"
DESCRIPTION = ("Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints "
               "such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across "
               "distributions of Kubernetes clusters.")


class RootCAPublisher(Controller):
    """Publishes `ca_pem` (the cluster CA certificate, PEM text) as kube-root-ca.crt in every Namespace."""

    name = "root-ca-cert-publisher"

    def __init__(self, ca_pem: str):
        super().__init__()
        if not ca_pem or "BEGIN CERTIFICATE" not in ca_pem:
            raise ValueError("root-ca-cert-publisher needs the cluster CA certificate in PEM form")
        self.ca_pem = ca_pem

    def watches(self) -> list[Watch]:
        return [Watch("namespaces"),
                Watch("configmaps", lambda cm: [cm["metadata"].get("namespace", "")]
                      if cm["metadata"].get("name") == CONFIGMAP else [])]

    def reconcile(self, key: str) -> None:
        ns = self.informer("namespaces").get(key)
        if not namespace_active(ns):
            return None
        data = {"ca.crt": self.ca_pem}
        cm = self.informer("configmaps").get(f"{key}/{CONFIGMAP}")
        if cm is None:
            self.client.create("configmaps", {"kind": "ConfigMap", "apiVersion": "v1",
                                              "metadata": {"name": CONFIGMAP, "namespace": key,
                                                           "annotations": {DESCRIPTION_ANNOTATION: DESCRIPTION}},
                                              "data": data})
            return None
        if cm.get("data") == data and (cm["metadata"].get("annotations") or {}).get(DESCRIPTION_ANNOTATION):
            return None
        new = copy.deepcopy(cm)
        new["data"] = data
        new.pop("binaryData", None)
        new["metadata"].setdefault("annotations", {})[DESCRIPTION_ANNOTATION] = DESCRIPTION
        self.client.update("configmaps", new)
        return None
