"""kube-controller-manager's EndpointSlice mirroring controller: the Endpoints
a user writes for a Service without a selector, mirrored into EndpointSlices
(managed-by endpointslicemirroring-controller.k8s.io), because kube-proxy and
the DNS read only EndpointSlices.

Mirrored: Endpoints whose Service exists and has no selector, unless labelled
endpointslice.kubernetes.io/skip-mirror=true (default/kubernetes is) or
carrying a leader-election annotation. Each subset's addresses become
endpoints (ready for `addresses`, not ready for `notReadyAddresses`) of the
address family of each IP, grouped by the subset's ports; at most 1000
addresses a subset are mirrored, as upstream. The slices carry the Endpoints'
labels and annotations (but last-applied-configuration and the trigger time)
and an ownerReference to the Service. Placement is the EndpointSlice
controller's (endpointslice.place)."""

from __future__ import annotations

import copy
import ipaddress

from emu.apiserver.controllers.endpointslice import (LABEL_MANAGED_BY, LABEL_SERVICE_NAME, SLICE_KEY, Plan,
                                                     endpoint_key, owned_by, owner_reference, place, port_key,
                                                     slice_prefix)
from emu.apiserver.controllers.framework import Controller, Watch, split_key

CONTROLLER_NAME = "endpointslicemirroring-controller.k8s.io"
SKIP_MIRROR = "endpointslice.kubernetes.io/skip-mirror"
LEADER_ANNOTATION = "control-plane.alpha.kubernetes.io/leader"
MAX_ENDPOINTS_PER_SUBSET = 1000
MAX_ENDPOINTS_PER_SLICE = 1000  # the mirroring controller's --mirroring-max-endpoints-per-subset default
_NOT_COPIED = ("endpoints.kubernetes.io/last-change-trigger-time", "kubectl.kubernetes.io/last-applied-configuration")


def should_mirror(endpoints: dict | None) -> bool:
    if endpoints is None:
        return False
    meta = endpoints.get("metadata") or {}
    return (meta.get("labels") or {}).get(SKIP_MIRROR) != "true" and LEADER_ANNOTATION not in (
        meta.get("annotations") or {})


def _meta_for(endpoints: dict):
    meta = endpoints.get("metadata") or {}
    labels = dict(meta.get("labels") or {})
    labels[LABEL_SERVICE_NAME] = meta["name"]
    labels[LABEL_MANAGED_BY] = CONTROLLER_NAME
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in _NOT_COPIED}

    def fn(current: dict) -> tuple[dict, bool]:
        want = {"labels": labels, "annotations": annotations}
        changed = (current.get("labels") or {}) != labels or (current.get("annotations") or {}) != annotations
        return want, changed
    return fn


def new_mirror_slice(endpoints: dict, service: dict, ports: list[dict], address_type: str) -> dict:
    meta_fields, _ = _meta_for(endpoints)({})
    return {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"generateName": slice_prefix(endpoints["metadata"]["name"]),
                         "namespace": endpoints["metadata"].get("namespace", ""),
                         "labels": copy.deepcopy(meta_fields["labels"]),
                         "annotations": copy.deepcopy(meta_fields["annotations"]),
                         "ownerReferences": [owner_reference(service)]},
            "addressType": address_type, "endpoints": [], "ports": copy.deepcopy(ports)}


def _address_endpoint(addr: dict, ready: bool) -> dict:
    ep: dict = {"addresses": [addr["ip"]], "conditions": {"ready": ready}}
    if addr.get("hostname"):
        ep["hostname"] = addr["hostname"]
    if addr.get("targetRef"):
        ep["targetRef"] = copy.deepcopy(addr["targetRef"])
    if addr.get("nodeName"):
        ep["nodeName"] = addr["nodeName"]
    return ep


def desired(endpoints: dict) -> dict[tuple[str, tuple], tuple[list[dict], dict[tuple, dict]]]:
    """{(addressType, port key): (ports, {endpoint key: endpoint})} of an Endpoints object."""
    out: dict[tuple[str, tuple], tuple[list[dict], dict[tuple, dict]]] = {}
    for subset in endpoints.get("subsets") or []:
        ports = [{k: p[k] for k in ("name", "port", "protocol", "appProtocol") if k in p}
                 for p in subset.get("ports") or []]
        for p in ports:
            p.setdefault("name", "")
            p.setdefault("protocol", "TCP")
        n = 0
        for field, ready in (("addresses", True), ("notReadyAddresses", False)):
            for addr in subset.get(field) or []:
                if n >= MAX_ENDPOINTS_PER_SUBSET:
                    break
                try:
                    ip = ipaddress.ip_address(addr.get("ip", ""))
                except ValueError:
                    continue  # upstream skips addresses that are not IPs
                n += 1
                at = "IPv6" if ip.version == 6 else "IPv4"
                ep = _address_endpoint(dict(addr, ip=str(ip)), ready)
                entry = out.setdefault((at, port_key(ports)), (ports, {}))
                entry[1].setdefault(endpoint_key(ep), ep)
    return out


def reconcile_mirror(endpoints: dict, service: dict, existing: list[dict],
                     max_per_slice: int = MAX_ENDPOINTS_PER_SLICE) -> Plan:
    """The writes that make the mirrored slices of `endpoints` (its Service `service`) match it."""
    plan = Plan()
    by_key: dict[tuple[str, tuple], list[dict]] = {}
    for s in existing:
        if owned_by(s, service):
            by_key.setdefault((s.get("addressType", ""), port_key(s.get("ports") or [])), []).append(s)
        else:
            plan.delete.append(s)
    want = desired(endpoints)
    meta_for = _meta_for(endpoints)
    for key, (ports, eps) in want.items():
        place(meta_for, lambda p, a: new_mirror_slice(endpoints, service, p, a), ports, key[0],
              by_key.get(key, []), eps, max_per_slice, plan)
    for key, old in by_key.items():
        if key not in want:
            plan.delete.extend(old)
    i = 0
    while i < len(plan.delete) and plan.create:  # reuse names of slices about to go
        gone, come = plan.delete[i], plan.create[-1]
        if gone.get("addressType") == come["addressType"] and owned_by(gone, service):
            come["metadata"]["name"] = gone["metadata"]["name"]
            plan.update.append(plan.create.pop())
            plan.delete.pop(i)
        else:
            i += 1
    return plan


class EndpointSliceMirroringController(Controller):
    """Mirrors selector-less Services' Endpoints into EndpointSlices; removes the mirrors when that stops."""

    name = "endpointslice-mirroring-controller"

    def watches(self) -> list[Watch]:
        return [Watch("endpoints"), Watch("services"), Watch(SLICE_KEY, self._endpoints_of_slice)]

    def setup(self) -> None:
        self.informer(SLICE_KEY).add_index("mirrored", self._endpoints_of_slice)

    @staticmethod
    def _endpoints_of_slice(s: dict) -> list[str]:
        labels = (s.get("metadata") or {}).get("labels") or {}
        if labels.get(LABEL_MANAGED_BY) != CONTROLLER_NAME or not labels.get(LABEL_SERVICE_NAME):
            return []
        return [f"{s['metadata'].get('namespace', '')}/{labels[LABEL_SERVICE_NAME]}"]

    def reconcile(self, key: str) -> None:
        ns, _ = split_key(key)
        existing = self.informer(SLICE_KEY).by_index("mirrored", key)
        svc = self.informer("services").get(key)
        ep = self.informer("endpoints").get(key)
        if svc is None or (svc.get("spec") or {}).get("selector") or not should_mirror(ep) or \
                svc["metadata"].get("deletionTimestamp"):
            for s in existing:
                self.client.delete(SLICE_KEY, ns, s["metadata"]["name"], uid=s["metadata"].get("uid", ""))
            return None
        plan = reconcile_mirror(ep, svc, existing)
        for s in plan.create:
            self.client.create(SLICE_KEY, _wire(s))
        for s in plan.update:
            self.client.update(SLICE_KEY, _wire(s))
        for s in plan.delete:
            self.client.delete(SLICE_KEY, ns, s["metadata"]["name"], uid=s["metadata"].get("uid", ""))
        return None


def _wire(s: dict) -> dict:
    out = copy.deepcopy(s)
    for k in ("endpoints", "ports"):
        if not out.get(k):
            out[k] = None
    if not out["metadata"].get("annotations"):
        out["metadata"].pop("annotations", None)
    return out

