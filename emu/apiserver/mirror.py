"""Stage 2 of docs/apiserver.md: the objects emu drives, written by emu's own commands.

Until the nodes watch the API server (stage 4), `emu up`, `apply`, `scale` and
`delete` plan the cluster themselves and then hand the server the objects a
real cluster would show for it (Nodes, Namespaces, Pods with their status
until their node reports it, Services, Deployments, StatefulSets, DaemonSets,
ConfigMaps, NetworkPolicies, Ingresses; EndpointSlices and Endpoints are the
API server's controllers'): one request, POST /emu/mirror, from
the emu-controller identity. `sync` makes the store hold exactly those objects
of those kinds: new ones created, changed ones replaced (spec and status
together, as the node would report it), and the others deleted; unchanged
objects keep their resourceVersion, so watchers see only what changed. Every
write goes through the store, so watches, lists and kubectl see them.

While emu drives a kind, writes to it by anyone else are refused (`refuse`):
they would not reach the nodes, and the next mirror would undo them. Pods are
the exception (stage 4, the kubelet's first part): the pods the mirror writes
carry the annotation MANAGED_BY (`emu.io/managed-by: emu`, after
EndpointSlices' `endpointslice.kubernetes.io/managed-by`), and the mirror
owns only those: it never deletes or replaces a pod without it, and writes
are refused only to pods with it. Other pods are anyone's: kubectl creates
and deletes them, the scheduler binds them, and the node's kubelet
(emu.node.agent.kubelet) runs them. Services are owned the same way (OWNED):
kube-proxy's part of every node and the DNS server watch the API server, so a
Service made with kubectl is programmed and answered like emu's own; an emu
Service may not take the address or node port of one (emu's commands plan
around those they find, emu.control.apiserver.foreign_service_addresses).
"""

from __future__ import annotations

from emu.apiserver import errors, resources
from emu.apiserver.admission import NODE_USER_PREFIX
from emu.apiserver.storage import DELETE, Store, canonical, keep_identity, now_rfc3339

CONTROLLER_USER = "emu-controller"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
LIFECYCLE_TAINTS = "node.kubernetes.io/"  # the node lifecycle controller's taints
KUBELET_MANAGER = "kubelet"  # the field manager of the node agents' status writes (client-go's: the program's name)
PATH = "/emu/mirror"
# The annotation on every pod the mirror writes: emu's commands drive that pod (see above).
MANAGED_BY = "emu.io/managed-by"
MANAGER = "emu"
# The kinds whose objects emu owns one by one: those with MANAGED_BY; others of the kind
# are made through the API and left alone (the kubelet runs such pods; kube-proxy and the
# DNS server, which watch the API server, serve such Services).
# Workloads too: the API server's Deployment, ReplicaSet, StatefulSet and DaemonSet
# controllers run those made through the API (their pods are run by the kubelet), and
# leave emu's alone.
# Namespaces too, but one made through the API that emu's topology also names is shared:
# emu writes into it and leaves it as it is (it never deletes it).
# NetworkPolicies too: every node's policy agent watches the API server (emu.node.kube.policyfeed),
# so one made with kubectl is enforced like emu's own. Ingresses too: the ingress controller
# watches the API server and serves kubectl's like emu's.
OWNED = (("v1", "Pod"), ("v1", "Service"), ("apps/v1", "Deployment"), ("apps/v1", "ReplicaSet"),
         ("apps/v1", "StatefulSet"), ("apps/v1", "DaemonSet"), ("v1", "Namespace"),
         ("networking.k8s.io/v1", "NetworkPolicy"), ("networking.k8s.io/v1", "Ingress"))  # fmt: skip

# The kinds emu's own commands drive in stage 2, by (apiVersion, kind).
DRIVEN = (
    ("v1", "Node"), ("v1", "Namespace"), ("v1", "Pod"), ("v1", "Service"), ("apps/v1", "Deployment"),
    ("apps/v1", "ReplicaSet"), ("apps/v1", "StatefulSet"), ("apps/v1", "DaemonSet"),
    ("networking.k8s.io/v1", "NetworkPolicy"), ("networking.k8s.io/v1", "Ingress"),
)  # fmt: skip
# Namespaces every cluster has stay whatever emu's list says.
KEPT = {("v1", "Namespace"): {"default", "kube-system", "kube-public", "kube-node-lease"}}
# Kinds emu writes once and then leaves to users (their writes are taken, nothing is deleted):
# the topology's ConfigMaps are read by the nodes only when emu starts a pod, so a ConfigMap
# made with kubectl (a controller's settings, say) harms nothing.
# So are the ServiceAccounts of emu's addons (kube-system/coredns, as kubeadm makes it).
# So is the IngressClass of emu's ingress controller (ingress-nginx's manifests make it).
CREATE_ONLY = {("v1", "ConfigMap"), ("v1", "ServiceAccount"), ("networking.k8s.io/v1", "IngressClass")}
# Kinds the API server's controllers write (the EndpointSlice and Endpoints controllers,
# from the pods' readiness as the nodes report it): emu writes only those no controller
# makes (default/kubernetes, whose endpoints are the API server's address), and deletes none.
WRITTEN = {("v1", "Endpoints"), ("discovery.k8s.io/v1", "EndpointSlice")}


def driven_keys(create_only: bool = True) -> dict[str, resources.ResourceInfo]:
    out = {}
    for api_version, kind in DRIVEN + (tuple(CREATE_ONLY | WRITTEN) if create_only else ()):
        info = resources.by_kind(api_version, kind)
        if info is not None:
            out[info.key] = info
    return out


def _comparable(obj: dict) -> dict:
    """An object without what the store sets: compared to see whether a write changes anything."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items()
            if k not in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields")}  # fmt: skip
    return canonical({**obj, "metadata": meta})


def sync(store: Store, objects: list[dict]) -> dict[str, int]:
    """Make the store hold exactly `objects` of the driven kinds. Returns counts
    {"created", "updated", "deleted", "unchanged"}. Objects of other kinds are refused (400)."""
    keys = driven_keys()
    desired: dict[tuple[str, str, str], dict] = {}
    for obj in objects:
        if not isinstance(obj, dict):
            raise errors.bad_request("every mirrored object must be a JSON object")
        info = resources.by_kind(obj.get("apiVersion", ""), obj.get("kind", ""))
        if info is None or info.key not in keys:
            raise errors.bad_request(f"emu does not mirror {obj.get('apiVersion')}/{obj.get('kind')}")
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace", "") if info.namespaced else ""
        if not meta.get("name"):
            raise errors.bad_request(f"a mirrored {info.kind} has no metadata.name")
        desired[(info.key, namespace, meta["name"])] = obj
    owned = owned_keys()
    shared = set()  # namespaces made through the API that emu's objects also go into
    held: dict[object, tuple[str, str]] | None = None  # the addresses Services made through the API hold
    for (key, namespace, name), obj in desired.items():
        if key in owned:
            kind = owned[key]
            current = store.get(key, namespace, name)
            if kind == "Namespace" and current is not None and not emu_owned(current):
                shared.add((key, namespace, name))
                continue
            if current is not None and not emu_owned(current):
                raise errors.conflict(key, name, why=f"{kind.lower()} {namespace}/{name} was made through the API "
                                      f"(kubectl), not by emu: delete it with kubectl first, or give emu's "
                                      f"{kind.lower()} another name")  # fmt: skip
            if kind == "Service":
                if held is None:  # listed once a sync: a lab's 1,000 Services are 1,000 checks, not 1,000 lists
                    held = _foreign_service_addresses(store, key)
                _check_service_addresses(held, key, namespace, name, obj)
    counts = {"created": 0, "updated": 0, "deleted": 0, "unchanged": 0}
    for key, info in keys.items():
        fields_of = info.field_values
        kept = KEPT.get((info.api_version, info.kind), set())
        if (info.api_version, info.kind) in CREATE_ONLY | WRITTEN:
            continue
        for current in store.list_objects(key):
            meta = current.get("metadata") or {}
            where = (key, meta.get("namespace", ""), meta.get("name", ""))
            if key in owned and not emu_owned(current):
                continue  # not emu's: made through the API (a pod run by its node's kubelet, a Service)
            if where not in desired and meta.get("name") not in kept:
                etype, _ = store.write(key, where[1], where[2], lambda obj: DELETE, fields_of)
                counts["deleted"] += etype == "DELETED"
                if info.kind == "Service":
                    _delete_endpoints(store, where[1], where[2])
    for (key, namespace, name), obj in desired.items():
        info = keys[key]
        if (key, namespace, name) in shared:
            counts["unchanged"] += 1
            continue

        def replace(current: dict | None, obj: dict = obj, info: resources.ResourceInfo = info) -> dict | None:
            new = canonical(obj)
            new.setdefault("metadata", {})
            if info.kind == "Pod":
                resources.admit_pod(new.setdefault("spec", {}))  # as the API server's admission would
            if info.key in owned:
                new["metadata"].setdefault("annotations", {})[MANAGED_BY] = MANAGER
            elif info.kind == "Node" and current is not None:
                keep_node_lifecycle(current, new)
            if current is None:
                new["metadata"]["creationTimestamp"] = new["metadata"].get("creationTimestamp") or now_rfc3339()
                new["metadata"].setdefault("uid", _uid(obj))
                return new
            if (info.api_version, info.kind) in CREATE_ONLY:
                return None  # the user's now
            keep_identity(current, new)
            if info.kind == "Pod" and reported_by_kubelet(current):
                new["status"] = current.get("status", {})  # the node's report, newer than emu's reading
            if info.kind == "Ingress":
                new["status"] = current.get("status", {})  # the ingress controller's (its address)
            if _comparable(current) == _comparable(new):
                return None  # unchanged: no write, no event, the same resourceVersion
            return new

        etype, _ = store.write(key, namespace, name, replace, info.field_values)
        counts[{"ADDED": "created", "MODIFIED": "updated", "": "unchanged"}[etype]] += 1
    return counts


OWNED_RESOURCES = {(info.group, info.plural) for info in (resources.by_kind(v, k) for v, k in OWNED) if info}


def owned_keys() -> dict[str, str]:
    """{resource key: kind} of the kinds whose objects emu owns one by one (MANAGED_BY)."""
    return {resources.by_kind(v, k).key: k for v, k in OWNED}


def _foreign_service_addresses(store: Store, key: str) -> dict[object, tuple[str, str]]:
    """{cluster IP or node port: (namespace, name)} of the Services made through the API."""
    held: dict[object, tuple[str, str]] = {}
    for other in store.list_objects(key):
        if emu_owned(other):
            continue
        meta = other.get("metadata") or {}
        their_ips, their_ports = resources.service_addresses(other)
        for address in [*sorted(their_ips), *sorted(their_ports)]:
            held.setdefault(address, (meta.get("namespace", ""), meta.get("name", "")))
    return held


def _check_service_addresses(held: dict[object, tuple[str, str]], key: str, namespace: str, name: str,
                             obj: dict) -> None:  # fmt: skip
    """An emu Service may not take a cluster IP or node port a Service made through
    the API holds (`held`: _foreign_service_addresses; emu plans around those it saw,
    one made meanwhile could clash)."""
    ips, ports = resources.service_addresses(obj)
    for address in [*sorted(ips), *sorted(ports)]:
        holder = held.get(address)
        if holder is not None and holder != (namespace, name):
            raise errors.conflict(key, name, why=f"service {namespace}/{name} would take {address}, which service "
                                  f"{holder[0]}/{holder[1]} (made through the API) holds: delete "
                                  "that one with kubectl, or run the emu command again to plan around it")  # fmt: skip


def move(store: Store, moves: list[dict]) -> dict[str, int]:
    """The hub's eviction (emu.node.agent.evict), told to the API server: each of
    `moves` ({"namespace", "name", "node", "ip"}) is an emu pod placed again on
    `node` with address `ip`. Its object is bound there and its status starts
    over as a new pod's (scheduled, not ready, the new addresses) until that
    node's agent reports it; nothing else of the store changes (a partial
    mirror: emu's next command writes the whole picture). Returns {"moved",
    "unchanged"}; a pod the store does not hold, or not emu's, is refused (400)."""
    pods = resources.by_kind("v1", "Pod")
    nodes = resources.by_kind("v1", "Node")
    counts = {"moved": 0, "unchanged": 0}
    for entry in moves:
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) and entry.get(k)
                                                  for k in ("namespace", "name", "node", "ip")):  # fmt: skip
            raise errors.bad_request('every move must be {"namespace", "name", "node", "ip"} (strings)')
        namespace, name, node, ip = entry["namespace"], entry["name"], entry["node"], entry["ip"]
        host = resources.internal_ip(store.get(nodes.key, "", node))
        if host is None:
            raise errors.bad_request(f"pod {namespace}/{name} cannot move to node {node}: no such Node "
                                     "with an InternalIP")  # fmt: skip

        def bind(current: dict | None) -> dict | None:
            if current is None or not emu_owned(current):
                raise errors.bad_request(f"pod {namespace}/{name} is not one of emu's pods in the API server")
            spec, status = current.get("spec") or {}, current.get("status") or {}
            if spec.get("nodeName") == node and status.get("podIP") == ip:
                return None
            new = canonical(current)
            new["spec"]["nodeName"] = node
            new["status"] = _placed_status(new, ip, host, now_rfc3339())
            return new

        etype, _ = store.write(pods.key, namespace, name, bind, pods.field_values)
        counts["moved" if etype else "unchanged"] += 1
    return counts


def _placed_status(pod: dict, ip: str, host: str, now: str) -> dict:
    """A pod's status the moment it is bound to a node whose kubelet has not started it:
    Pending, PodScheduled, its containers waiting (ContainerCreating), not ready."""
    containers = (pod.get("spec") or {}).get("containers") or []
    names = [c.get("name", "") for c in containers]

    def condition(kind: str, ok: bool, reason: str = "") -> dict:
        found = {"type": kind, "status": "True" if ok else "False", "lastProbeTime": None,
                 "lastTransitionTime": now}  # fmt: skip
        if reason:
            found["reason"] = reason
            found["message"] = f"containers with unready status: [{' '.join(names)}]"
        return found

    return {
        "phase": "Pending",
        "conditions": [condition("PodScheduled", True), condition("Initialized", True),
                       condition("ContainersReady", False, "ContainersNotReady"),
                       condition("Ready", False, "ContainersNotReady")],
        "hostIP": host, "hostIPs": [{"ip": host}], "podIP": ip, "podIPs": [{"ip": ip}],
        "containerStatuses": [
            {"name": c.get("name", ""), "ready": False, "restartCount": 0, "started": False,
             "image": c.get("image", ""), "imageID": "", "state": {"waiting": {"reason": "ContainerCreating"}}}
            for c in containers
        ],
    }  # fmt: skip


def keep_node_lifecycle(current: dict, new: dict) -> None:
    """What the node lifecycle controller wrote into a Node stays: its conditions
    (Ready Unknown while the node's Lease is not renewed, put back when it is) and
    its taints (node.kubernetes.io/unreachable, not-ready, ...); emu writes the rest."""
    conditions = (current.get("status") or {}).get("conditions")
    if conditions:
        new.setdefault("status", {})["conditions"] = conditions
    theirs = [t for t in (current.get("spec") or {}).get("taints") or []
              if str(t.get("key", "")).startswith(LIFECYCLE_TAINTS)]  # fmt: skip
    if theirs:
        spec = new.setdefault("spec", {})
        ours = [t for t in spec.get("taints") or [] if not str(t.get("key", "")).startswith(LIFECYCLE_TAINTS)]
        spec["taints"] = ours + theirs


def _delete_endpoints(store: Store, namespace: str, service: str) -> None:
    """A deleted Service's Endpoints and EndpointSlices, as the garbage collector
    removes them on a real cluster (their ownerReference; the Endpoints by name)."""
    for api_version, kind in sorted(WRITTEN):
        info = resources.by_kind(api_version, kind)
        for current in store.list_objects(info.key, namespace):
            meta = current.get("metadata") or {}
            labels = meta.get("labels") or {}
            if meta.get("name") == service if kind == "Endpoints" else labels.get(SERVICE_NAME_LABEL) == service:
                store.write(info.key, namespace, meta["name"], lambda obj: DELETE, info.field_values)


def reported_by_kubelet(pod: dict) -> bool:
    """Whether a node's agent has written this pod's status (PATCH pods/status as the
    kubelet's field manager): from then on the status is the node's, as on a real
    cluster, and the mirror writes only the pod's metadata and spec."""
    return any(
        entry.get("manager") == KUBELET_MANAGER and entry.get("subresource") == "status"
        for entry in (pod.get("metadata") or {}).get("managedFields") or []
    )


def emu_owned(obj: dict | None) -> bool:
    """Whether emu's commands drive this object (the mirror wrote it: MANAGED_BY);
    the API server's controllers leave such objects alone."""
    return (((obj or {}).get("metadata") or {}).get("annotations") or {}).get(MANAGED_BY) == MANAGER


def _uid(obj: dict) -> str:
    import uuid

    return (obj.get("metadata") or {}).get("uid") or str(uuid.uuid4())


def refuse(user_name: str, verb: str, api_group: str, resource: str, namespace: str,
           subresource: str = "", name: str = "", current=None, body=None) -> errors.ApiError | None:  # fmt: skip
    """The error for a write to a kind emu drives by anyone but emu itself (None:
    allowed). Nodes write their pods' status, as kubelets do (NodeRestriction
    then checks that the pod is bound to the node). Pods: only emu's own
    (MANAGED_BY) are refused; `current()` gives the stored pod named `name`,
    `body()` the pod a create sends."""
    if user_name == CONTROLLER_USER or verb in ("get", "list", "watch"):
        return None
    if user_name.startswith(NODE_USER_PREFIX) and (api_group, resource, subresource) == ("", "pods", "status"):
        return None
    if (api_group, resource, subresource) == ("networking.k8s.io", "ingresses", "status"):
        return None  # the ingress controller publishes its address in emu's Ingresses too (RBAC decides who)
    key = f"{resource}.{api_group}" if api_group else resource
    info = driven_keys(create_only=False).get(key)
    if info is None:
        return None
    if (api_group, resource) in OWNED_RESOURCES and verb != "deletecollection":
        if verb == "create":
            if not emu_owned(body() if body else None):
                return None  # (the server asks again with the body: emu.apiserver.server._create)
            return errors.forbidden(resource, "", f"the annotation {MANAGED_BY}={MANAGER} is emu's own mark of the "
                                    f"{resource} its commands drive: leave it out of one made through the API", "")
        if name and not emu_owned(current() if current else None):
            return None
    return errors.ApiError(
        405, "MethodNotAllowed",
        f"{resource} are driven by emu's own commands in this version of emu: change them in the topology "
        f"or with `emu apply -f FILE` / `emu delete -f FILE` / `emu scale`; kubectl reads them "
        "(writes through the API arrive when the nodes watch it, docs/apiserver.md stage 4)",
        {"group": api_group, "kind": resource, **({"name": ""} if not namespace else {})},
    )
