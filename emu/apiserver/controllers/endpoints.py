"""Core v1 Endpoints: kube-controller-manager's Endpoints controller, and
kube-apiserver's own reconciler for the `default/kubernetes` Service.

Endpoints "<svc>" carry the same pods as the Service's EndpointSlices, in the
legacy shape: subsets of addresses (ready) and notReadyAddresses sharing a
port list, repacked as upstream's RepackSubsets does (an address whose port
set differs lands in another subset). Terminating pods are left out (unless
publishNotReadyAddresses), one address family (the Service's first), at most
1000 addresses with the over-capacity annotation beyond."""

from __future__ import annotations

import copy
import ipaddress

from emu.apiserver.controllers.endpointslice import (LABEL_HEADLESS, find_port, has_selector,
                                                     index_pods_and_services, is_headless, pod_ips, pod_ready,
                                                     pods_of_service, selector_matches, services_of_pod,
                                                     should_pod_be_in_endpoints, should_set_hostname)
from emu.apiserver.controllers.framework import Controller, Watch, obj_key, split_key

LABEL_MANAGED_BY = "endpoints.kubernetes.io/managed-by"
CONTROLLER_NAME = "endpoint-controller"
MAX_CAPACITY = 1000  # addresses an Endpoints object holds (the controller's maxCapacity)
OVER_CAPACITY = "endpoints.kubernetes.io/over-capacity"
SKIP_MIRROR = "endpointslice.kubernetes.io/skip-mirror"


def _family(service: dict) -> str:
    spec = service.get("spec") or {}
    fams = spec.get("ipFamilies") or []
    if fams:
        return fams[0]
    ip = spec.get("clusterIP") or ""
    return "IPv6" if ip not in ("", "None") and ":" in ip else "IPv4"


def pod_address(service: dict, pod: dict) -> dict | None:
    """The EndpointAddress of a pod for the Service's (first) family, or None when it has no such IP."""
    want_v6 = _family(service) == "IPv6"
    ips = [ip for ip in pod_ips(pod) if (":" in ip) == want_v6]
    if not ips:
        return None
    meta = pod.get("metadata") or {}
    addr: dict = {"ip": ips[0]}
    if should_set_hostname(pod, service):
        addr["hostname"] = pod["spec"]["hostname"]
    addr["nodeName"] = (pod.get("spec") or {}).get("nodeName") or ""
    addr["targetRef"] = {"kind": "Pod", "namespace": meta.get("namespace", ""), "name": meta.get("name", ""),
                         "uid": meta.get("uid", "")}
    return addr


def _addr_sort(a: dict) -> tuple:
    try:
        ip = ipaddress.ip_address(a["ip"])
        ipk = (ip.version, int(ip))
    except ValueError:
        ipk = (0, 0)
    return ipk, (a.get("targetRef") or {}).get("uid", "")


def desired_subsets(service: dict, pods: list[dict]) -> list[dict]:
    """The Endpoints subsets of a Service with a selector, as the Endpoints controller computes them."""
    spec = service.get("spec") or {}
    publish = bool(spec.get("publishNotReadyAddresses"))
    ns = service["metadata"].get("namespace", "")
    # port (or None for a headless Service without ports) -> {address key: (address, ready)}
    by_port: dict[tuple | None, dict[tuple, tuple[dict, bool]]] = {}
    for pod in pods:
        if (pod.get("metadata") or {}).get("namespace", "") != ns or not selector_matches(service, pod):
            continue
        if not should_pod_be_in_endpoints(pod, publish):
            continue
        addr = pod_address(service, pod)
        if addr is None:
            continue
        ready = publish or pod_ready(pod)
        akey = (addr["ip"], addr["targetRef"]["uid"])
        if not spec.get("ports") and is_headless(service):
            by_port.setdefault(None, {})[akey] = (addr, ready)
            continue
        for sp in spec.get("ports") or []:
            num = find_port(pod, sp)
            if num is None:
                continue
            pkey = (sp.get("name", ""), num, sp.get("protocol", "TCP"), sp.get("appProtocol") or "")
            by_port.setdefault(pkey, {})[akey] = (addr, ready)
    # ports that share exactly the same addresses (and readiness) share a subset
    groups: dict[frozenset, tuple[dict[tuple, tuple[dict, bool]], list]] = {}
    for pkey, addrs in by_port.items():
        sig = frozenset((k, r) for k, (_, r) in addrs.items())
        entry = groups.setdefault(sig, (addrs, []))
        if pkey is not None:
            entry[1].append(pkey)
    subsets = []
    for addrs, ports in groups.values():
        ready = sorted((a for a, r in addrs.values() if r), key=_addr_sort)
        not_ready = sorted((a for a, r in addrs.values() if not r), key=_addr_sort)
        subset: dict = {}
        if ready:
            subset["addresses"] = copy.deepcopy(ready)
        if not_ready:
            subset["notReadyAddresses"] = copy.deepcopy(not_ready)
        out_ports = []
        for name, num, proto, app in sorted(ports):
            p = {"name": name, "port": num, "protocol": proto}
            if app:
                p["appProtocol"] = app
            out_ports.append(p)
        if out_ports:
            subset["ports"] = out_ports
        subsets.append(subset)
    subsets.sort(key=lambda s: [_addr_sort(a) for a in (s.get("addresses") or []) + (s.get("notReadyAddresses") or [])])
    return subsets


def truncate(subsets: list[dict], limit: int = MAX_CAPACITY) -> tuple[list[dict], bool]:
    """At most `limit` addresses in all, ready ones kept first; (subsets, truncated?)."""
    total = sum(len(s.get("addresses") or []) + len(s.get("notReadyAddresses") or []) for s in subsets)
    if total <= limit:
        return subsets, False
    out = copy.deepcopy(subsets)
    left = limit
    for field in ("addresses", "notReadyAddresses"):
        for s in out:
            have = s.get(field) or []
            if field in s:
                s[field] = have[:left]
                left -= len(s[field])
                if not s[field]:
                    del s[field]
    return [s for s in out if s.get("addresses") or s.get("notReadyAddresses")], True


def endpoints_labels(service: dict) -> dict:
    labels = dict((service.get("metadata") or {}).get("labels") or {})
    if is_headless(service):
        labels[LABEL_HEADLESS] = ""
    else:
        labels.pop(LABEL_HEADLESS, None)
    labels[LABEL_MANAGED_BY] = CONTROLLER_NAME
    return labels


def desired_endpoints(service: dict, pods: list[dict]) -> dict:
    """The whole Endpoints object (without identity fields) the controller wants for a Service."""
    subsets, truncated = truncate(desired_subsets(service, pods))
    meta: dict = {"name": service["metadata"]["name"], "namespace": service["metadata"].get("namespace", ""),
                  "labels": endpoints_labels(service)}
    if truncated:
        meta["annotations"] = {OVER_CAPACITY: "truncated"}
    out = {"kind": "Endpoints", "apiVersion": "v1", "metadata": meta}
    if subsets:  # subsets is omitempty: an Endpoints without addresses has none
        out["subsets"] = subsets
    return out


class EndpointsController(Controller):
    """Keeps Endpoints "<svc>" for every Service with a selector; removes the ones it made when the Service goes."""

    name = "endpoint-controller"

    def watches(self) -> list[Watch]:
        return [Watch("services"), Watch("pods", self._services_of_pod), Watch("endpoints")]

    def setup(self) -> None:
        index_pods_and_services(self)

    def _services_of_pod(self, pod: dict) -> list[str]:
        return services_of_pod(self, pod)

    def reconcile(self, key: str) -> None:
        ns, name = split_key(key)
        svc = self.informer("services").get(key)
        current = self.informer("endpoints").get(key)
        if svc is None:
            # only what this controller made: a user's Endpoints without a Service stay
            if current is not None and ((current["metadata"].get("labels") or {}).get(LABEL_MANAGED_BY)
                                        == CONTROLLER_NAME):
                self.client.delete("endpoints", ns, name, uid=current["metadata"].get("uid", ""))
            return None
        if not has_selector(svc):
            return None
        want = desired_endpoints(svc, pods_of_service(self, svc))
        if current is None:
            if not svc["metadata"].get("deletionTimestamp"):
                self.client.create("endpoints", want)
            return None
        cur_ann = dict(current["metadata"].get("annotations") or {})
        new_ann = {k: v for k, v in cur_ann.items() if k != OVER_CAPACITY}
        new_ann.update(want["metadata"].get("annotations") or {})
        if (current.get("subsets") or []) == want.get("subsets", []) and \
                (current["metadata"].get("labels") or {}) == want["metadata"]["labels"] and cur_ann == new_ann:
            return None
        new = copy.deepcopy(current)
        new.pop("subsets", None)
        if want.get("subsets"):
            new["subsets"] = want["subsets"]
        new["metadata"]["labels"] = want["metadata"]["labels"]
        new["metadata"]["annotations"] = new_ann
        self.client.update("endpoints", new)
        return None


# ---------------------------------------------------------------- default/kubernetes

def first_service_ip(service_cidr: str) -> str:
    """The first address of the service range: the `kubernetes` Service's ClusterIP."""
    return str(ipaddress.ip_network(service_cidr, strict=False)[1])


class KubernetesServiceReconciler(Controller):
    """kube-apiserver's own loop for `default/kubernetes`: the Service (ClusterIP the first service address,
    port https 443 -> the API server's port), its Endpoints and its EndpointSlice "kubernetes", pointing at the
    API server's addresses; put back when changed or deleted."""

    name = "kubernetes-service-controller"
    KEY = "default/kubernetes"

    def __init__(self, addresses: list[str], port: int = 6443, service_cidr: str = "10.96.0.0/12"):
        super().__init__()
        if not addresses:
            raise ValueError("the kubernetes Service needs the API server's address (none given)")
        self.addresses = sorted(addresses, key=lambda a: ipaddress.ip_address(a))
        self.port = port
        self.service_ip = first_service_ip(service_cidr)

    def watches(self) -> list[Watch]:
        only = lambda o: [self.KEY] if obj_key(o) == self.KEY else []  # noqa: E731
        return [Watch("services", only), Watch("endpoints", only),
                Watch("endpointslices.discovery.k8s.io", only)]

    def setup(self) -> None:
        self.queue.add(self.KEY)  # at start, as kube-apiserver creates them when it comes up

    def _family(self) -> str:
        return "IPv6" if ":" in self.service_ip else "IPv4"

    def want_service(self) -> dict:
        fam = self._family()
        return {"kind": "Service", "apiVersion": "v1",
                "metadata": {"name": "kubernetes", "namespace": "default",
                             "labels": {"component": "apiserver", "provider": "kubernetes"}},
                "spec": {"ports": [{"name": "https", "protocol": "TCP", "port": 443, "targetPort": self.port}],
                         "clusterIP": self.service_ip, "clusterIPs": [self.service_ip], "type": "ClusterIP",
                         "sessionAffinity": "None", "ipFamilies": [fam], "ipFamilyPolicy": "SingleStack",
                         "internalTrafficPolicy": "Cluster"}}

    def want_endpoints(self) -> dict:
        return {"kind": "Endpoints", "apiVersion": "v1",
                "metadata": {"name": "kubernetes", "namespace": "default", "labels": {SKIP_MIRROR: "true"}},
                "subsets": [{"addresses": [{"ip": a} for a in self.addresses],
                             "ports": [{"name": "https", "port": self.port, "protocol": "TCP"}]}]}

    def want_slice(self) -> dict:
        return {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                "metadata": {"name": "kubernetes", "namespace": "default",
                             "labels": {"kubernetes.io/service-name": "kubernetes"}},
                "addressType": self._family(),
                "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in self.addresses],
                "ports": [{"name": "https", "port": self.port, "protocol": "TCP"}]}

    def reconcile(self, key: str) -> None:
        if key != self.KEY:
            return None
        svc = self.informer("services").get(key)
        want = self.want_service()
        if svc is None:
            self.client.create("services", want)
        elif (svc.get("spec") or {}).get("ports") != want["spec"]["ports"] or \
                (svc.get("spec") or {}).get("type") != "ClusterIP":
            new = copy.deepcopy(svc)
            new["spec"]["ports"] = want["spec"]["ports"]
            new["spec"]["type"] = "ClusterIP"
            self.client.update("services", new)
        for resource, wanted, fields in (("endpoints", self.want_endpoints(), ("subsets",)),
                                         ("endpointslices.discovery.k8s.io", self.want_slice(),
                                          ("addressType", "endpoints", "ports"))):
            cur = self.informer(resource).get(key)
            if cur is None:
                self.client.create(resource, wanted)
                continue
            labels = cur["metadata"].get("labels") or {}
            if all(cur.get(f) == wanted[f] for f in fields) and \
                    all(labels.get(k) == v for k, v in wanted["metadata"]["labels"].items()):
                continue
            if cur.get("addressType") and cur.get("addressType") != wanted.get("addressType", cur["addressType"]):
                self.client.delete(resource, "default", "kubernetes", uid=cur["metadata"].get("uid", ""))
                self.client.create(resource, wanted)  # addressType is immutable
                continue
            new = copy.deepcopy(cur)
            for f in fields:
                new[f] = wanted[f]
            new["metadata"]["labels"] = {**labels, **wanted["metadata"]["labels"]}
            self.client.update(resource, new)
        return None
