"""Admission: what an authorized request may still not do (docs/apiserver.md).

- NodeRestriction, as kube-apiserver's plugin of that name: a node's
  identity (user system:node:<name> in group system:nodes) may change only
  its own Node (never its taints, nor labels outside the kubelet's set), the
  status of pods bound to it, delete those pods, and its own Lease in
  kube-node-lease; tokens only for pods bound to it.
- NamespaceLifecycle: nothing is created in a namespace that does not exist or
  is being terminated; default, kube-system and kube-public are never deleted.

admit(attributes, old, new) returns None or raises AdmissionError, which
carries the Status kube-apiserver would send (code, reason, message, details).
"""

from __future__ import annotations

from typing import Callable, Iterable

from emu.apiserver.types import Attributes

NODE_USER_PREFIX = "system:node:"
NODES_GROUP = "system:nodes"
NODE_LEASE_NAMESPACE = "kube-node-lease"
MIRROR_POD_ANNOTATION = "kubernetes.io/config.mirror"
IMMORTAL_NAMESPACES = ("default", "kube-system", "kube-public")

# Labels a kubelet may set on its Node (k8s.io/kubelet/pkg/apis: IsKubeletLabel).
KUBELET_LABELS = frozenset({
    "kubernetes.io/hostname",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch",
})
KUBELET_LABEL_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")
NODE_RESTRICTION_LABEL_NAMESPACE = "node-restriction.kubernetes.io"

# Pod subresources that are connections (CONNECT) or reads, which NodeRestriction does not see.
_NOT_ADMITTED_POD_SUBRESOURCES = ("exec", "attach", "portforward", "proxy", "log")


class AdmissionError(Exception):
    """A request refused by admission: the Status the server sends.

    details: Status details ({"name", "group", "kind", "causes"}), empty fields left out."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}


def _q(text: str) -> str:
    # Go's %q for the plain names admission quotes.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _operation(attributes: Attributes) -> str:
    """The admission operation of a request (admission.Operation's text), "" when admission does not see it."""
    if attributes.resource == "pods" and attributes.subresource in _NOT_ADMITTED_POD_SUBRESOURCES:
        return ""
    return {
        "create": "CREATE",
        "update": "UPDATE",
        "patch": "UPDATE",
        "delete": "DELETE",
        "deletecollection": "DELETE",
    }.get(attributes.verb, "")


def _meta(obj: dict | None) -> dict:
    if isinstance(obj, dict) and isinstance(obj.get("metadata"), dict):
        return obj["metadata"]
    return {}


def _spec(obj: dict | None) -> dict:
    if isinstance(obj, dict) and isinstance(obj.get("spec"), dict):
        return obj["spec"]
    return {}


def _qualified(attributes: Attributes) -> str:
    if attributes.api_group:
        return f"{attributes.resource}.{attributes.api_group}"
    return attributes.resource


def forbidden(attributes: Attributes, why: str, new: dict | None = None, causes: list[dict] | None = None
              ) -> AdmissionError:
    """admission.NewForbidden: `<resource>[.<group>] ["<name>"] is forbidden: <why>` (403 Forbidden).

    The name is the request's, or the new object's on create (as kube-apiserver takes it)."""
    name = attributes.name or _meta(new).get("name", "")
    qualified = _qualified(attributes)
    if not qualified:
        message = f"forbidden: {why}"
    elif name:
        message = f"{qualified} {_q(name)} is forbidden: {why}"
    else:
        message = f"{qualified} is forbidden: {why}"
    details = {"name": name, "group": attributes.api_group, "kind": attributes.resource}
    details = {k: v for k, v in details.items() if v}
    if causes:
        details["causes"] = causes
    return AdmissionError(403, "Forbidden", message, details)


def not_found(resource: str, name: str, group: str = "") -> AdmissionError:
    """apierrors.NewNotFound: `<resource> "<name>" not found` (404 NotFound)."""
    qualified = f"{resource}.{group}" if group else resource
    details = {k: v for k, v in {"name": name, "group": group, "kind": resource}.items() if v}
    return AdmissionError(404, "NotFound", f"{qualified} {_q(name)} not found", details)


def node_identity(attributes: Attributes) -> tuple[str, bool]:
    """(node name, is a node): a user named system:node:<name> in group system:nodes is node <name>."""
    user = attributes.user
    if user is None or not user.name.startswith(NODE_USER_PREFIX) or NODES_GROUP not in user.groups:
        return "", False
    return user.name[len(NODE_USER_PREFIX):], True


def _label_namespace(key: str) -> str:
    return key.split("/", 1)[0] if "/" in key else ""


def _is_kubelet_label(key: str) -> bool:
    if key in KUBELET_LABELS:
        return True
    ns = _label_namespace(key)
    return any(ns == allowed or ns.endswith("." + allowed) for allowed in KUBELET_LABEL_NAMESPACES)


def _is_kubernetes_label(key: str) -> bool:
    ns = _label_namespace(key)
    return ns in ("kubernetes.io", "k8s.io") or ns.endswith(".kubernetes.io") or ns.endswith(".k8s.io")


def _forbidden_labels(new: dict, old: dict) -> list[str]:
    modified = {k for k in set(new) | set(old) if new.get(k) != old.get(k) or (k in new) != (k in old)}
    out = set()
    for key in modified:
        ns = _label_namespace(key)
        if ns == NODE_RESTRICTION_LABEL_NAMESPACE or ns.endswith("." + NODE_RESTRICTION_LABEL_NAMESPACE):
            out.add(key)
        if _is_kubernetes_label(key) and not _is_kubelet_label(key):
            out.add(key)
    return sorted(out)


Getter = Callable[[str, str, str], "dict | None"]  # (resource plural, namespace, name) -> object or None


class NodeRestriction:
    """kube-apiserver's NodeRestriction admission plugin.

    getter(resource, namespace, name) is used where the request alone does
    not carry the object checked: the pod of an eviction or of a token
    request (and the pod of a delete when `old` is not given)."""

    def __init__(self, getter: Getter | None = None):
        self._get = getter

    def admit(self, attributes: Attributes, old: dict | None, new: dict | None) -> None:
        """Raise AdmissionError (403) when a node asks for what is not its own."""
        op = _operation(attributes)
        if not op:
            return
        node, is_node = node_identity(attributes)
        if not is_node:
            return
        if not node:
            raise forbidden(attributes, f"could not determine node from user {_q(attributes.user.name)}", new)
        group, resource = attributes.api_group, attributes.resource
        if group == "" and resource == "pods":
            sub = attributes.subresource
            if sub == "":
                return self._pod(node, op, attributes, old, new)
            if sub == "status":
                return self._pod_status(node, op, attributes, old, new)
            if sub == "eviction":
                return self._pod_eviction(node, op, attributes, new)
            raise forbidden(attributes, f"unexpected pod subresource {_q(sub)}, only 'status' and 'eviction' "
                                        "are allowed", new)
        if group == "" and resource == "nodes":
            return self._node(node, op, attributes, old, new)
        if group == "" and resource == "serviceaccounts":
            return self._service_account(node, op, attributes, new)
        if group == "coordination.k8s.io" and resource == "leases":
            return self._lease(node, op, attributes, new)
        return None

    def _existing(self, resource: str, namespace: str, name: str) -> dict:
        pod = self._get(resource, namespace, name) if self._get else None
        if pod is None:
            raise not_found(resource, name)
        return pod

    def _pod(self, node: str, op: str, a: Attributes, old: dict | None, new: dict | None) -> None:
        if op == "CREATE":
            return self._mirror_pod(node, a, new)
        if op == "DELETE":
            existing = old if old is not None else self._existing("pods", a.namespace, a.name)
            if _spec(existing).get("nodeName") != node:
                raise forbidden(a, f"node {_q(node)} can only delete pods with spec.nodeName set to itself", new)
            return None
        raise forbidden(a, f"unexpected operation {_q(op)}, node {_q(node)} can only create and delete mirror pods",
                        new)

    def _mirror_pod(self, node: str, a: Attributes, pod: dict | None) -> None:
        meta, spec = _meta(pod), _spec(pod)
        if MIRROR_POD_ANNOTATION not in (meta.get("annotations") or {}):
            raise forbidden(a, f"pod does not have {_q(MIRROR_POD_ANNOTATION)} annotation, node {_q(node)} can "
                               "only create mirror pods", pod)
        if spec.get("nodeName") != node:
            raise forbidden(a, f"node {_q(node)} can only create pods with spec.nodeName set to itself", pod)
        owners = meta.get("ownerReferences") or []
        if len(owners) > 1:
            raise forbidden(a, f"node {_q(node)} can only create pods with a single owner reference set to itself",
                            pod)
        if not owners:
            raise forbidden(a, f"node {_q(node)} can only create pods with an owner reference set to itself", pod)
        owner = owners[0]
        if owner.get("apiVersion") != "v1" or owner.get("kind") != "Node" or owner.get("name") != node:
            raise forbidden(a, f"node {_q(node)} can only create pods with an owner reference set to itself", pod)
        if not owner.get("controller"):
            raise forbidden(a, f"node {_q(node)} can only create pods with a controller owner reference set to "
                               "itself", pod)
        if owner.get("blockOwnerDeletion"):
            raise forbidden(a, f"node {_q(node)} must not set blockOwnerDeletion on an owner reference", pod)
        if spec.get("serviceAccountName"):
            raise forbidden(a, f"node {_q(node)} can not create pods that reference a service account", pod)
        return None

    def _pod_status(self, node: str, op: str, a: Attributes, old: dict | None, new: dict | None) -> None:
        if op != "UPDATE":
            raise forbidden(a, f"unexpected operation {_q(op)}", new)
        if _spec(old).get("nodeName") != node:
            raise forbidden(a, f"node {_q(node)} can only update pod status for pods with spec.nodeName set to "
                               "itself", new)
        if (_meta(old).get("labels") or {}) != (_meta(new).get("labels") or {}):
            raise forbidden(a, f"node {_q(node)} cannot update labels through pod status", new)
        return None

    def _pod_eviction(self, node: str, op: str, a: Attributes, eviction: dict | None) -> None:
        if op != "CREATE":
            raise forbidden(a, f"unexpected operation {op}", eviction)
        name = a.name or _meta(eviction).get("name", "")
        if not name:
            raise forbidden(a, "could not determine pod from request data", eviction)
        pod = self._existing("pods", a.namespace, name)
        if _spec(pod).get("nodeName") != node:
            # Kubernetes' own text has %s here, not %q.
            raise forbidden(a, f"node {node} can only evict pods with spec.nodeName set to itself", eviction)
        return None

    def _node(self, node: str, op: str, a: Attributes, old: dict | None, new: dict | None) -> None:
        requested = a.name or (_meta(new).get("name", "") if op == "CREATE" else "")
        if requested != node:
            raise forbidden(a, f"node {_q(node)} is not allowed to modify node {_q(requested)}", new)
        if op == "CREATE":
            if _spec(new).get("configSource") is not None:
                raise forbidden(a, f"node {_q(node)} is not allowed to create pods with a non-nil configSource", new)
            bad = _forbidden_labels(_meta(new).get("labels") or {}, {})
            if bad:
                raise forbidden(a, f"node {_q(node)} is not allowed to set the following labels: {', '.join(bad)}",
                                new)
        elif op == "UPDATE":
            source = _spec(new).get("configSource")
            if source is not None and source != _spec(old).get("configSource"):
                raise forbidden(a, f"node {_q(node)} is not allowed to update configSource to a new non-nil "
                                   "configSource", new)
            if (_spec(new).get("taints") or []) != (_spec(old).get("taints") or []):
                raise forbidden(a, f"node {_q(node)} is not allowed to modify taints", new)
            bad = _forbidden_labels(_meta(new).get("labels") or {}, _meta(old).get("labels") or {})
            if bad:
                # Kubernetes' own text names no node here.
                raise forbidden(a, f"is not allowed to modify labels: {', '.join(bad)}", new)
        return None

    def _service_account(self, node: str, op: str, a: Attributes, request: dict | None) -> None:
        if op != "CREATE" or a.subresource != "token":
            return None
        ref = _spec(request).get("boundObjectRef") or {}
        if ref.get("apiVersion") != "v1" or ref.get("kind") != "Pod" or not ref.get("name"):
            raise forbidden(a, "node requested token not bound to a pod", request)
        if not ref.get("uid"):
            raise forbidden(a, "node requested token with a pod binding without a uid", request)
        pod = self._existing("pods", a.namespace, ref["name"])
        if ref["uid"] != _meta(pod).get("uid"):
            raise forbidden(a, f"the UID in the bound object reference ({ref['uid']}) does not match the UID in "
                               "record. The object might have been deleted and then recreated", request)
        if _spec(pod).get("nodeName") != node:
            raise forbidden(a, "node requested token bound to a pod scheduled on a different node", request)
        return None

    def _lease(self, node: str, op: str, a: Attributes, new: dict | None) -> None:
        if a.namespace != NODE_LEASE_NAMESPACE:
            raise forbidden(a, f"can only access leases in the {_q(NODE_LEASE_NAMESPACE)} system namespace", new)
        name = _meta(new).get("name", "") if op == "CREATE" else a.name
        if name != node:
            raise forbidden(a, "can only access node lease with the same name as the requesting node", new)
        return None


class NamespaceLifecycle:
    """kube-apiserver's NamespaceLifecycle plugin.

    get_namespace(name) returns the stored Namespace or None."""

    def __init__(self, get_namespace: Callable[[str], "dict | None"]):
        self._get_namespace = get_namespace

    def admit(self, attributes: Attributes, old: dict | None, new: dict | None) -> None:
        """Raise AdmissionError: 404 for content in a missing namespace, 403 in a terminating
        one or for deleting an immortal namespace."""
        op = _operation(attributes)
        a = attributes
        if a.api_group == "" and a.resource == "namespaces" and not a.subresource:
            if op == "DELETE" and a.name in IMMORTAL_NAMESPACES:
                raise forbidden(a, "this namespace may not be deleted", new)
            return None
        if op != "CREATE" or not a.namespace:
            return None
        if a.api_group in ("authorization.k8s.io", "authentication.k8s.io"):
            return None  # access and token reviews: answering them leaks nothing about the namespace
        namespace = self._get_namespace(a.namespace)
        if namespace is None:
            raise not_found("namespaces", a.namespace)
        if (namespace.get("status") or {}).get("phase") == "Terminating" or _meta(namespace).get("deletionTimestamp"):
            raise forbidden(
                a,
                f"unable to create new content in namespace {a.namespace} because it is being terminated",
                new,
                causes=[{"reason": "NamespaceTerminating", "message": f"namespace {a.namespace} is being terminated",
                         "field": "metadata.namespace"}],
            )
        return None


class Chain:
    """Several admission plugins, in order: the first refusal wins."""

    def __init__(self, plugins: Iterable):
        self.plugins = list(plugins)

    def admit(self, attributes: Attributes, old: dict | None, new: dict | None) -> None:
        for plugin in self.plugins:
            plugin.admit(attributes, old, new)
