"""kube-controller-manager's EndpointSlice controller: the discovery.k8s.io/v1
EndpointSlices of every Service with a selector.

The computation is pure (`reconcile`, `desired_slices`): from a Service, the
pods its selector picks and the nodes, which slices to create, update and
delete. It places endpoints as the upstream reconciler does, to keep churn
low: an endpoint stays in the slice it is in, changed endpoints are rewritten
in place, new endpoints first fill the slices being updated anyway, then the
fullest unchanged slice that takes them all, and only then new slices; a
slice that would be deleted is reused for one that would be created. Pods
that resolve a named targetPort to different numbers get different slices
(one set per distinct port list), and every address family of the Service
gets its own set. A Service without endpoints keeps one empty placeholder
slice, as upstream does.

`EndpointSliceController` runs it over the store on the framework."""

from __future__ import annotations

import copy
import ipaddress
from dataclasses import dataclass, field

from emu.apiserver.controllers.framework import Controller, Watch, obj_key, split_key

MAX_ENDPOINTS_PER_SLICE = 100  # kube-controller-manager's --max-endpoints-per-slice default
CONTROLLER_NAME = "endpointslice-controller.k8s.io"
LABEL_SERVICE_NAME = "kubernetes.io/service-name"
LABEL_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
LABEL_HEADLESS = "service.kubernetes.io/headless"
LABEL_ZONE = "topology.kubernetes.io/zone"
RESERVED_LABELS = (LABEL_SERVICE_NAME, LABEL_MANAGED_BY, LABEL_HEADLESS)
SLICE_KEY = "endpointslices.discovery.k8s.io"


# ---------------------------------------------------------------- pod and service helpers

def pod_ready(pod: dict) -> bool:
    """The pod's Ready condition is True (podutil.IsPodReady)."""
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def pod_ips(pod: dict) -> list[str]:
    """status.podIPs (status.podIP when only that is set), normalised."""
    status = pod.get("status") or {}
    ips = [p.get("ip") for p in status.get("podIPs") or [] if isinstance(p, dict) and p.get("ip")]
    if not ips and status.get("podIP"):
        ips = [status["podIP"]]
    out = []
    for ip in ips:
        try:
            out.append(str(ipaddress.ip_address(ip)))
        except ValueError:
            continue
    return out


def should_pod_be_in_endpoints(pod: dict, include_terminating: bool) -> bool:
    """Terminal pods and pods without an IP never are; terminating pods only when asked."""
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return False
    if not pod_ips(pod):
        return False
    if not include_terminating and (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return True


def should_set_hostname(pod: dict, service: dict) -> bool:
    """A pod's hostname is published when its subdomain names this Service (in its namespace)."""
    spec = pod.get("spec") or {}
    return bool(spec.get("hostname")) and spec.get("subdomain") == service["metadata"]["name"] and \
        (pod.get("metadata") or {}).get("namespace") == service["metadata"].get("namespace")


def find_port(pod: dict, service_port: dict) -> int | None:
    """The pod's port number for a Service port: a numeric targetPort as is, a named one looked up in the
    containers' ports (and restartable init containers') with the same protocol; None when it has none."""
    target = service_port.get("targetPort", service_port.get("port"))
    protocol = service_port.get("protocol", "TCP")
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    spec = pod.get("spec") or {}
    containers = list(spec.get("containers") or [])
    containers += [c for c in spec.get("initContainers") or [] if isinstance(c, dict) and c.get("restartPolicy") == "Always"]
    for c in containers:
        for p in (c or {}).get("ports") or []:
            if p.get("name") == target and p.get("protocol", "TCP") == protocol:
                return p.get("containerPort")
    return None


def is_headless(service: dict) -> bool:
    ip = (service.get("spec") or {}).get("clusterIP") or ""
    return ip in ("", "None")


def has_selector(service: dict) -> bool:
    """Whether the controller manages this Service's endpoints: a selector and not ExternalName.
    An empty selector is no selector (a stored empty map decodes as nil upstream)."""
    spec = service.get("spec") or {}
    return bool(spec.get("selector")) and spec.get("type") != "ExternalName"


def selector_matches(service: dict, pod: dict) -> bool:
    sel = (service.get("spec") or {}).get("selector") or {}
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return bool(sel) and all(labels.get(k) == v for k, v in sel.items())


def address_types(service: dict) -> list[str]:
    """The slice address types of a Service: its ipFamilies; else its clusterIP's family; headless: both."""
    spec = service.get("spec") or {}
    fams = spec.get("ipFamilies") or []
    out = [{"IPv4": "IPv4", "IPv6": "IPv6"}[f] for f in fams if f in ("IPv4", "IPv6")]
    if out:
        return list(dict.fromkeys(out))
    ip = spec.get("clusterIP") or ""
    if ip and ip != "None":
        return ["IPv6" if ":" in ip else "IPv4"]
    return ["IPv4", "IPv6"]


def endpoint_ports(service: dict, pod: dict) -> list[dict]:
    """The slice ports this pod serves for the Service (ports whose targetPort the pod lacks are left out)."""
    spec = service.get("spec") or {}
    out = []
    for sp in spec.get("ports") or []:
        num = find_port(pod, sp)
        if num is None:
            continue
        p = {"name": sp.get("name", ""), "protocol": sp.get("protocol", "TCP"), "port": num}
        if sp.get("appProtocol"):
            p["appProtocol"] = sp["appProtocol"]
        out.append(p)
    return out


def port_key(ports: list[dict]) -> tuple:
    """The identity of a port list, its order ignored (upstream's PortMapKey)."""
    return tuple(sorted((p.get("name") or "", p.get("protocol") or "TCP", p.get("port") or 0,
                         p.get("appProtocol") or "") for p in ports or []))


def pod_to_endpoint(pod: dict, node: dict | None, service: dict, address_type: str) -> dict:
    """One endpoint: the pod's addresses of that family, ready/serving/terminating, node, zone, targetRef."""
    meta = pod.get("metadata") or {}
    serving = pod_ready(pod)
    terminating = bool(meta.get("deletionTimestamp"))
    publish = bool((service.get("spec") or {}).get("publishNotReadyAddresses"))
    ready = publish or (serving and not terminating)
    want_v6 = address_type == "IPv6"
    ep: dict = {"addresses": [ip for ip in pod_ips(pod) if (":" in ip) == want_v6],
                "conditions": {"ready": ready, "serving": serving, "terminating": terminating}}
    if should_set_hostname(pod, service):
        ep["hostname"] = pod["spec"]["hostname"]
    ep["targetRef"] = {"kind": "Pod", "namespace": meta.get("namespace", ""), "name": meta.get("name", ""),
                       "uid": meta.get("uid", "")}
    node_name = (pod.get("spec") or {}).get("nodeName")
    if node_name:
        ep["nodeName"] = node_name
    zone = (((node or {}).get("metadata") or {}).get("labels") or {}).get(LABEL_ZONE)
    if zone:
        ep["zone"] = zone
    return ep


def endpoint_key(ep: dict) -> tuple:
    """An endpoint's identity (upstream hashes addresses, hostname and the target's namespace/name)."""
    ref = ep.get("targetRef") or {}
    return (tuple(sorted(ep.get("addresses") or [])), ep.get("hostname") or "", ref.get("namespace") or "",
            ref.get("name") or "")


def _endpoint_same(a: dict, b: dict) -> bool:
    """Equal beyond the identity: node, zone, conditions, target (its resourceVersion ignored)."""
    def strip(ep):
        ref = dict(ep.get("targetRef") or {})
        ref.pop("resourceVersion", None)
        cond = ep.get("conditions") or {}
        return (ep.get("nodeName"), ep.get("zone"), cond.get("ready"), cond.get("serving"),
                cond.get("terminating"), tuple(sorted(ref.items())))
    return strip(a) == strip(b)


def slice_labels(service: dict, current: dict | None) -> tuple[dict, bool]:
    """A slice's labels: the Service's (reserved keys excepted), service-name, managed-by, headless;
    and whether the copied Service labels differ from the slice's."""
    svc_labels = {k: v for k, v in ((service.get("metadata") or {}).get("labels") or {}).items()
                  if k not in RESERVED_LABELS}
    cur = {k: v for k, v in (current or {}).items() if k not in RESERVED_LABELS}
    changed = cur != svc_labels
    out = dict(svc_labels)
    if is_headless(service):
        out[LABEL_HEADLESS] = ""
    out[LABEL_SERVICE_NAME] = service["metadata"]["name"]
    out[LABEL_MANAGED_BY] = CONTROLLER_NAME
    return out, changed


def slice_prefix(name: str) -> str:
    """generateName of a Service's slices: "<svc>-" (the name alone when that is too long)."""
    return f"{name}-" if len(name) + 1 <= 253 else name


def owner_reference(service: dict) -> dict:
    meta = service["metadata"]
    return {"apiVersion": "v1", "kind": "Service", "name": meta["name"], "uid": meta.get("uid", ""),
            "controller": True, "blockOwnerDeletion": True}


def owned_by(slice_: dict, service: dict) -> bool:
    uid = service["metadata"].get("uid", "")
    return any(o.get("uid") == uid and o.get("kind") == "Service" and o.get("apiVersion") == "v1"
               for o in (slice_.get("metadata") or {}).get("ownerReferences") or [])


def new_slice(service: dict, ports: list[dict], address_type: str) -> dict:
    """An EndpointSlice to create (no name yet: generateName)."""
    labels, _ = slice_labels(service, None)
    return {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"generateName": slice_prefix(service["metadata"]["name"]),
                         "namespace": service["metadata"].get("namespace", ""),
                         "labels": labels, "ownerReferences": [owner_reference(service)]},
            "addressType": address_type, "endpoints": [], "ports": copy.deepcopy(ports)}


# ---------------------------------------------------------------- reconciliation

@dataclass
class Plan:
    """What to write: slices to create (generateName), to update (whole objects), to delete."""

    create: list[dict] = field(default_factory=list)
    update: list[dict] = field(default_factory=list)
    delete: list[dict] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.create or self.update or self.delete)


def desired_endpoints(service: dict, pods: list[dict], nodes: dict[str, dict] | list[dict],
                      address_type: str) -> dict[tuple, tuple[list[dict], dict[tuple, dict]]]:
    """{port key: (ports, {endpoint key: endpoint})} for one address type, pods in the given order.

    A pod on a node that does not exist is left out (unless publishNotReadyAddresses), as upstream does
    so that a stale pod cannot pin a slice."""
    if isinstance(nodes, list):
        nodes = {n["metadata"]["name"]: n for n in nodes}
    publish = bool((service.get("spec") or {}).get("publishNotReadyAddresses"))
    out: dict[tuple, tuple[list[dict], dict[tuple, dict]]] = {}
    ns = service["metadata"].get("namespace", "")
    for pod in pods:
        if (pod.get("metadata") or {}).get("namespace", "") != ns or not selector_matches(service, pod):
            continue
        if not should_pod_be_in_endpoints(pod, True):
            continue
        ports = endpoint_ports(service, pod)
        node = nodes.get((pod.get("spec") or {}).get("nodeName") or "")
        if node is None and not publish:
            continue
        ep = pod_to_endpoint(pod, node, service, address_type)
        if not ep["addresses"]:
            continue
        entry = out.setdefault(port_key(ports), (ports, {}))
        entry[1][endpoint_key(ep)] = ep
    return out


def _service_meta(service: dict):
    """The metadata a Service's slices carry: (fields to set from the current metadata, changed?)."""
    def fn(meta: dict) -> tuple[dict, bool]:
        labels, changed = slice_labels(service, meta.get("labels"))
        return {"labels": labels}, changed
    return fn


def place(meta_for, make, ports: list[dict], address_type: str, existing: list[dict], desired: dict[tuple, dict],
          max_per_slice: int, plan: Plan) -> None:
    """Upstream's reconcileByPortMapping for one port list of one address type: `existing` slices and the
    `desired` endpoints (by endpoint_key) into creates, updates and deletes added to `plan`.
    `meta_for(metadata) -> (fields, changed)` gives the metadata fields the slices must carry;
    `make(ports, address_type)` a new slice."""
    desired = dict(desired)
    to_update: dict[str, dict] = {}
    unchanged: dict[str, dict] = {}
    # 1. keep what is still wanted where it is, rewrite what changed, drop what left
    for s in existing:
        kept, updated = [], False
        for ep in s.get("endpoints") or []:
            k = endpoint_key(ep)
            want = desired.pop(k, None)
            if want is not None:
                kept.append(want)
                updated = updated or not _endpoint_same(want, ep)
        meta, meta_changed = meta_for(s.get("metadata") or {})
        if updated or len(kept) != len(s.get("endpoints") or []):
            if not kept:
                plan.delete.append(s)
                continue
            new = copy.deepcopy(s)
            new["endpoints"] = kept
            new["metadata"].update(copy.deepcopy(meta))
            to_update[new["metadata"]["name"]] = new
        elif meta_changed:
            new = copy.deepcopy(s)
            new["metadata"].update(copy.deepcopy(meta))
            to_update[new["metadata"]["name"]] = new
        else:
            unchanged[s["metadata"]["name"]] = s
    left = list(desired.values())
    # 2. fill the slices written anyway, fullest first
    if left and to_update:
        for s in sorted(to_update.values(), key=lambda x: -len(x["endpoints"])):
            room = max_per_slice - len(s["endpoints"])
            if room > 0:
                s["endpoints"].extend(left[:room])
                left = left[room:]
    # 3. the rest: one unchanged slice that takes them all (the fullest such), else new slices
    while left:
        target = None
        if len(left) < max_per_slice and unchanged:
            best = max_per_slice
            for s in unchanged.values():
                diff = max_per_slice - (len(left) + len(s.get("endpoints") or []))
                if 0 <= diff < best:
                    best, target = diff, s
        if target is None:
            target = make(ports, address_type)
        else:
            target = copy.deepcopy(target)
            target["endpoints"] = list(target.get("endpoints") or [])
            del unchanged[target["metadata"]["name"]]
            target["metadata"].update(copy.deepcopy(meta_for(target["metadata"])[0]))
        room = max_per_slice - len(target["endpoints"])
        target["endpoints"].extend(left[:room])
        left = left[room:]
        if target["metadata"].get("name"):
            to_update[target["metadata"]["name"]] = target
        else:
            plan.create.append(target)
    plan.update.extend(to_update.values())


def reconcile(service: dict, pods: list[dict], nodes: dict[str, dict] | list[dict], existing: list[dict],
              max_per_slice: int = MAX_ENDPOINTS_PER_SLICE) -> Plan:
    """The writes that bring `existing` (the slices this controller manages for the Service) to what the
    Service and its pods want."""
    plan = Plan()
    types = address_types(service)
    by_type: dict[str, list[dict]] = {}
    for s in existing:
        if s.get("addressType") not in types:
            plan.delete.append(s)
        else:
            by_type.setdefault(s["addressType"], []).append(s)
    for at in types:
        sub = Plan()
        slices = by_type.get(at, [])
        by_ports: dict[tuple, list[dict]] = {}
        for s in slices:
            if owned_by(s, service):
                by_ports.setdefault(port_key(s.get("ports") or []), []).append(s)
            else:
                sub.delete.append(s)  # left by an earlier Service of the same name
        want = desired_endpoints(service, pods, nodes, at)
        for key, (ports, eps) in want.items():
            place(_service_meta(service), lambda p, a: new_slice(service, p, a), ports, at, by_ports.get(key, []),
                  eps, max_per_slice, sub)
        for key, old in by_ports.items():
            if key not in want:
                sub.delete.extend(old)
        if len(slices) == len(sub.delete) and not sub.create:
            placeholder = new_slice(service, [], at)
            if len(sub.delete) == 1 and _is_placeholder(sub.delete[0], placeholder):
                sub.delete = []
            else:
                sub.create.append(placeholder)
        # reuse the names of slices about to go for slices about to come (fewer watch events)
        i = 0
        while i < len(sub.delete) and sub.create:
            gone, come = sub.delete[i], sub.create[-1]
            if gone.get("addressType") == come["addressType"] and owned_by(gone, service):
                come["metadata"]["name"] = gone["metadata"]["name"]
                sub.create.pop()
                sub.update.append(come)
                sub.delete.pop(i)
            else:
                i += 1
        plan.create += sub.create
        plan.update += sub.update
        plan.delete += sub.delete
    return plan


def _is_placeholder(s: dict, placeholder: dict) -> bool:
    """An existing empty slice that is already the placeholder (same labels, owner, type, no ports)."""
    return not s.get("endpoints") and not s.get("ports") and s.get("addressType") == placeholder["addressType"] \
        and (s.get("metadata") or {}).get("labels") == placeholder["metadata"]["labels"] \
        and (s.get("metadata") or {}).get("ownerReferences") == placeholder["metadata"]["ownerReferences"]


def desired_slices(service: dict, pods: list[dict], nodes: dict[str, dict] | list[dict],
                   max_per_slice: int = MAX_ENDPOINTS_PER_SLICE) -> list[dict]:
    """The slices a Service with a selector has when none exist yet (empty for a Service the controller
    leaves alone: no selector, or ExternalName)."""
    if not has_selector(service):
        return []
    return reconcile(service, pods, nodes, [], max_per_slice).create


# ---------------------------------------------------------------- the controller


def _label_pairs(obj: dict) -> list[str]:
    """Index values of a pod: "namespace/key=value" for each of its labels."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace", "")
    return [f"{ns}/{k}={v}" for k, v in (meta.get("labels") or {}).items()]


def _selector_pairs(svc: dict) -> list[str]:
    """Index values of a Service: "namespace/key=value" for each selector term (none without a selector)."""
    ns = (svc.get("metadata") or {}).get("namespace", "")
    return [f"{ns}/{k}={v}" for k, v in ((svc.get("spec") or {}).get("selector") or {}).items()]


def index_pods_and_services(controller: Controller) -> None:
    """Indexes that make "the pods of a Service" and "the Services of a pod" lookups of one label term
    instead of scans (1,000 Services over 2,000 pods in one namespace)."""
    controller.informer("pods").add_index("labels", _label_pairs)
    controller.informer("services").add_index("selector", _selector_pairs)


def pods_of_service(controller: Controller, svc: dict) -> list[dict]:
    """The pods the Service's selector picks, ordered by key (empty without a selector)."""
    terms = _selector_pairs(svc)
    if not terms:
        return []
    pods = controller.informer("pods")
    candidates = min((pods.by_index("labels", t) for t in terms), key=len)
    return [p for p in candidates if selector_matches(svc, p)]


def services_of_pod(controller: Controller, pod: dict) -> list[str]:
    """Keys of the Services whose selector picks the pod."""
    services = controller.informer("services")
    keys: list[str] = []
    for term in _label_pairs(pod):
        for svc in services.by_index("selector", term):
            k = obj_key(svc)
            if k not in keys and selector_matches(svc, pod):
                keys.append(k)
    return keys


def _wire(slice_: dict) -> dict:
    """As kube-apiserver serves it: an empty endpoints or ports list is null."""
    out = copy.deepcopy(slice_)
    for k in ("endpoints", "ports"):
        if not out.get(k):
            out[k] = None
    return out


class EndpointSliceController(Controller):
    """Keeps each selector Service's EndpointSlices (managed-by endpointslice-controller.k8s.io) in step with
    its pods. Slices of a deleted Service go with the garbage collector (their ownerReference)."""

    name = "endpointslice-controller"

    def __init__(self, max_endpoints_per_slice: int = MAX_ENDPOINTS_PER_SLICE):
        super().__init__()
        self.max_per_slice = max_endpoints_per_slice

    def watches(self) -> list[Watch]:
        return [Watch("services"), Watch("pods", self._services_of_pod), Watch(SLICE_KEY, self._service_of_slice),
                Watch("nodes", self._services_on_node)]

    def setup(self) -> None:
        index_pods_and_services(self)
        self.informer("pods").add_index("nodeName", lambda p: [(p.get("spec") or {}).get("nodeName") or ""])
        self.informer(SLICE_KEY).add_index("service", self._service_of_slice)

    @staticmethod
    def _service_of_slice(s: dict) -> list[str]:
        labels = (s.get("metadata") or {}).get("labels") or {}
        if labels.get(LABEL_MANAGED_BY) != CONTROLLER_NAME or not labels.get(LABEL_SERVICE_NAME):
            return []
        return [f"{s['metadata'].get('namespace', '')}/{labels[LABEL_SERVICE_NAME]}"]

    def _services_of_pod(self, pod: dict) -> list[str]:
        return services_of_pod(self, pod)

    def _services_on_node(self, node: dict) -> list[str]:
        keys: list[str] = []
        for p in self.informer("pods").by_index("nodeName", node["metadata"]["name"]):
            for k in self._services_of_pod(p):
                if k not in keys:
                    keys.append(k)
        return keys

    def reconcile(self, key: str) -> None:
        svc = self.informer("services").get(key)
        if svc is None or not has_selector(svc):
            return None
        ns, name = split_key(key)
        pods = pods_of_service(self, svc)
        nodes = self.informer("nodes").cache
        existing = self.informer(SLICE_KEY).by_index("service", key)
        plan = reconcile(svc, pods, nodes, existing, self.max_per_slice)
        deleting = bool(svc["metadata"].get("deletionTimestamp"))
        # creates first, deletes last: a reader never sees fewer endpoints than before and after
        if not deleting:
            for s in plan.create:
                self.client.create(SLICE_KEY, _wire(s))
        for s in plan.update:
            self.client.update(SLICE_KEY, _wire(s))
        for s in plan.delete:
            self.client.delete(SLICE_KEY, ns, s["metadata"]["name"], uid=s["metadata"].get("uid", ""))
        return None
