"""Every kind the API server serves, and each kind's strategy.

A strategy is what kube-apiserver's registry does around storage for a kind:
defaults applied on every write (as decoding applies them), defaults applied
on create only (as admission plugins do), the status split, metadata.generation,
field-selector values and validation (422 Invalid with field causes, worded as
k8s.io/apimachinery's field errors)."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from typing import Any

from emu.apiserver import selectors

STANDARD_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class Subresource:
    """A subresource (status, scale, binding): the kind it answers with and its verbs."""

    name: str
    kind: str
    verbs: tuple[str, ...]
    group: str = ""
    version: str = ""


@dataclass(frozen=True)
class ResourceInfo:
    """One resource served: names as discovery shows them, scope, verbs, strategy switches."""

    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    verbs: tuple[str, ...] = STANDARD_VERBS
    categories: tuple[str, ...] = ()
    subresources: tuple[Subresource, ...] = ()
    generation: bool = False  # metadata.generation counts spec changes
    create_on_update: bool = False  # PUT of a missing object creates it (AllowCreateOnUpdate)
    name_rule: str = "subdomain"  # subdomain | label | dns1035 | path
    fields: tuple[str, ...] = ()  # field-selector labels beyond metadata.name/namespace
    returns_deleted: bool = False  # DELETE answers with the object instead of a Status
    storage_plural: str = ""  # another resource's rows (events.k8s.io events are core events)
    stored: bool = True  # False: a review resource answered, never stored
    # A custom resource: its CRD's served version (crd.Served): strategy, schema, columns, storage version
    custom: Any = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        """The storage key: GroupResource.String() (`pods`, `deployments.apps`)."""
        if self.storage_plural:
            return self.storage_plural
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def list_kind(self) -> str:
        return self.custom.list_kind if self.custom is not None else self.kind + "List"

    @property
    def converts(self) -> bool:
        """Objects are stored in another form than served (events.k8s.io Events, a custom
        resource served in a version other than its storage version): no stored text as is."""
        return bool(self.storage_plural) or (self.custom is not None and self.custom.converts)

    def subresource(self, name: str) -> Subresource | None:
        for s in self.subresources:
            if s.name == name:
                return s
        return None

    def has_status(self) -> bool:
        return self.subresource("status") is not None

    def field_labels(self) -> tuple[str, ...]:
        return ("metadata.name", "metadata.namespace") + self.fields

    def field_values(self, obj: dict) -> dict[str, str]:
        """The values field selectors match for this object (fields.Set)."""
        meta = obj.get("metadata") or {}
        out = {"metadata.name": meta.get("name", ""), "metadata.namespace": meta.get("namespace", "")}
        for f in self.fields:
            out[f] = _field_text(_get_path(obj, FIELD_PATHS.get((self.key, f), f)))
        return out


def _status(kind: str = "", verbs=("get", "patch", "update")) -> Subresource:
    return Subresource("status", kind, tuple(verbs))


def _scale() -> Subresource:
    return Subresource("scale", "Scale", ("get", "patch", "update"), "autoscaling", "v1")


_POD_FIELDS = ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
               "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName")
_EVENT_FIELDS = ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
                 "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
                 "reason", "reportingComponent", "source", "type")

# A field label whose value lives elsewhere in the object.
FIELD_PATHS = {("events", "source"): "source.component"}

RESOURCES: list[ResourceInfo] = [
    # core v1
    ResourceInfo("", "v1", "Namespace", "namespaces", "namespace", False, ("ns",),
                 subresources=(_status("Namespace"), Subresource("finalize", "Namespace", ("update",))),
                 name_rule="label", fields=("status.phase",), returns_deleted=True),
    ResourceInfo("", "v1", "Node", "nodes", "node", False, ("no",), subresources=(_status("Node"),),
                 fields=("spec.unschedulable",), returns_deleted=False),
    ResourceInfo("", "v1", "Pod", "pods", "pod", True, ("po",), categories=("all",),
                 subresources=(_status("Pod"), Subresource("binding", "Binding", ("create",))),
                 fields=_POD_FIELDS, returns_deleted=True),
    ResourceInfo("", "v1", "Binding", "bindings", "binding", True, verbs=("create",), stored=False),
    ResourceInfo("", "v1", "Service", "services", "service", True, ("svc",), categories=("all",),
                 subresources=(_status("Service"),), create_on_update=True, name_rule="dns1035",
                 fields=("spec.clusterIP", "spec.type"), returns_deleted=True),
    ResourceInfo("", "v1", "Endpoints", "endpoints", "endpoints", True, ("ep",), create_on_update=True),
    ResourceInfo("", "v1", "ConfigMap", "configmaps", "configmap", True, ("cm",)),
    ResourceInfo("", "v1", "Secret", "secrets", "secret", True, fields=("type",)),
    ResourceInfo("", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", True, ("sa",),
                 subresources=(Subresource("token", "TokenRequest", ("create",)),)),
    ResourceInfo("", "v1", "Event", "events", "event", True, ("ev",), create_on_update=True, fields=_EVENT_FIELDS),
    ResourceInfo("events.k8s.io", "v1", "Event", "events", "event", True, ("ev",), create_on_update=True,
                 storage_plural="events"),
    ResourceInfo("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", "endpointslice", True,
                 create_on_update=True, generation=True),
    ResourceInfo("coordination.k8s.io", "v1", "Lease", "leases", "lease", True, create_on_update=True),
    # apps/v1
    ResourceInfo("apps", "v1", "Deployment", "deployments", "deployment", True, ("deploy",), categories=("all",),
                 subresources=(_scale(), _status("Deployment")), generation=True),
    ResourceInfo("apps", "v1", "ReplicaSet", "replicasets", "replicaset", True, ("rs",), categories=("all",),
                 subresources=(_scale(), _status("ReplicaSet")), generation=True, fields=("status.replicas",)),
    ResourceInfo("apps", "v1", "StatefulSet", "statefulsets", "statefulset", True, ("sts",), categories=("all",),
                 subresources=(_scale(), _status("StatefulSet")), generation=True),
    ResourceInfo("apps", "v1", "DaemonSet", "daemonsets", "daemonset", True, ("ds",), categories=("all",),
                 subresources=(_status("DaemonSet"),), generation=True),
    # networking.k8s.io/v1
    ResourceInfo("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", "networkpolicy", True, ("netpol",),
                 generation=True),
    ResourceInfo("networking.k8s.io", "v1", "Ingress", "ingresses", "ingress", True, ("ing",),
                 subresources=(_status("Ingress"),), generation=True),
    ResourceInfo("networking.k8s.io", "v1", "IngressClass", "ingressclasses", "ingressclass", False),
    # rbac.authorization.k8s.io/v1
    ResourceInfo("rbac.authorization.k8s.io", "v1", "Role", "roles", "role", True, create_on_update=True,
                 name_rule="path"),
    ResourceInfo("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", "clusterrole", False,
                 create_on_update=True, name_rule="path"),
    ResourceInfo("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", "rolebinding", True,
                 create_on_update=True, name_rule="path"),
    ResourceInfo("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings",
                 "clusterrolebinding", False, create_on_update=True, name_rule="path"),
    # reviews: answered, never stored
    ResourceInfo("authorization.k8s.io", "v1", "SelfSubjectAccessReview", "selfsubjectaccessreviews",
                 "selfsubjectaccessreview", False, verbs=("create",), stored=False),
    ResourceInfo("authorization.k8s.io", "v1", "SubjectAccessReview", "subjectaccessreviews",
                 "subjectaccessreview", False, verbs=("create",), stored=False),
    ResourceInfo("authorization.k8s.io", "v1", "LocalSubjectAccessReview", "localsubjectaccessreviews",
                 "localsubjectaccessreview", True, verbs=("create",), stored=False),
    ResourceInfo("authentication.k8s.io", "v1", "SelfSubjectReview", "selfsubjectreviews", "selfsubjectreview",
                 False, verbs=("create",), stored=False),
    # apiextensions.k8s.io/v1 (the custom resources they define: crd.py)
    ResourceInfo("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions",
                 "customresourcedefinition", False, ("crd", "crds"), categories=("api-extensions",),
                 subresources=(_status("CustomResourceDefinition"),), generation=True),
]

# Kinds kube-apiserver serves with shortNames or categories, in the order `kubectl api-resources` shows groups.
GROUP_ORDER = ["", "apps", "events.k8s.io", "authentication.k8s.io", "authorization.k8s.io", "coordination.k8s.io",
               "discovery.k8s.io", "networking.k8s.io", "rbac.authorization.k8s.io", "apiextensions.k8s.io"]

_BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}
_BY_KIND = {(r.api_version, r.kind): r for r in RESOURCES}


def lookup(group: str, version: str, plural: str) -> ResourceInfo | None:
    """The resource served at /apis/GROUP/VERSION/PLURAL (group "" is /api/v1)."""
    return _BY_PATH.get((group, version, plural))


def by_kind(api_version: str, kind: str) -> ResourceInfo | None:
    return _BY_KIND.get((api_version, kind))


def service_addresses(service: dict) -> tuple[set[str], set[int]]:
    """The cluster IPs (clusterIP and clusterIPs, "None" left out) and node ports a Service holds."""
    spec = service.get("spec") or {}
    ips = {ip for ip in [spec.get("clusterIP"), *(spec.get("clusterIPs") or [])] if ip and ip != "None"}
    return ips, {p["nodePort"] for p in spec.get("ports") or [] if p.get("nodePort")}


def internal_ip(node: dict | None) -> str | None:
    """A Node's InternalIP address (where the API server finds its kubelet), None without one."""
    for address in ((node or {}).get("status") or {}).get("addresses") or []:
        if address.get("type") == "InternalIP":
            return address.get("address")
    return None


def group_versions() -> list[tuple[str, str]]:
    """(group, version) pairs served, core first, in discovery order."""
    seen: list[tuple[str, str]] = []
    for g in GROUP_ORDER:
        for r in RESOURCES:
            if r.group == g and (g, r.version) not in seen:
                seen.append((g, r.version))
    return seen


# ---------------------------------------------------------------- field helpers

def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _field_text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def go_repr(v: Any) -> str:
    """A value as Go's %#v prints it in field errors (strings quoted, maps as map[string]string{...})."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (int, float)):
        return str(v)
    if v is None:
        return "null"
    if isinstance(v, dict) and all(isinstance(x, str) for x in v.values()):
        return "map[string]string{" + ", ".join(f"{json.dumps(k)}:{json.dumps(x)}" for k, x in sorted(v.items())) + "}"
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return "[]string{" + ", ".join(json.dumps(x) for x in v) + "}"
    return json.dumps(v, separators=(",", ":"), sort_keys=True)


def required(path: str, detail: str = "") -> dict:
    return {"reason": "FieldValueRequired", "message": "Required value" + (f": {detail}" if detail else ""),
            "field": path}


def invalid_value(path: str, value: Any, detail: str) -> dict:
    return {"reason": "FieldValueInvalid", "message": f"Invalid value: {go_repr(value)}: {detail}", "field": path}


def forbidden_field(path: str, detail: str) -> dict:
    return {"reason": "FieldValueForbidden", "message": f"Forbidden: {detail}", "field": path}


def not_supported(path: str, value: Any, supported: list[str]) -> dict:
    sup = ", ".join(json.dumps(s) for s in supported)
    return {"reason": "FieldValueNotSupported", "message": f"Unsupported value: {go_repr(value)}: supported values: {sup}",
            "field": path}


def immutable(path: str, value: Any) -> dict:
    return invalid_value(path, value, "field is immutable")


DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start "
             "and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
             "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and "
                 "must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
                 "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
DNS1035_MSG = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic "
               "character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for "
               "validation is '[a-z]([-a-z0-9]*[a-z0-9])?')")


def name_problems(rule: str, name: str) -> list[str]:
    """Why `name` is not a valid name under `rule` (empty when it is)."""
    if rule == "path":
        if name in (".", ".."):
            return [f"may not be '{name}'"]
        return [f"may not contain '{c}'" for c in "/%" if c in name]
    if rule == "label":
        out = [] if DNS1123_LABEL.match(name) else [LABEL_MSG]
        return (["must be no more than 63 characters"] if len(name) > 63 else []) + out
    if rule == "dns1035":
        out = [] if DNS1035_LABEL.match(name) else [DNS1035_MSG]
        return (["must be no more than 63 characters"] if len(name) > 63 else []) + out
    out = [] if DNS1123_SUBDOMAIN.match(name) else [SUBDOMAIN_MSG]
    return (["must be no more than 253 characters"] if len(name) > 253 else []) + out


# ---------------------------------------------------------------- strategy

def _pod_spec_defaults(spec: dict, base: str = "spec") -> None:
    """What the defaulting functions put in a PodSpec (Pods and workload templates)."""
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for key in ("initContainers", "containers"):
        for c in spec.get(key) or []:
            if not isinstance(c, dict):
                continue
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            image = c.get("image") or ""
            tag = image.rsplit("/", 1)[-1]
            if "imagePullPolicy" not in c:
                latest = "@" not in tag and (":" not in tag or tag.endswith(":latest"))
                c["imagePullPolicy"] = "Always" if latest else "IfNotPresent"
            c.setdefault("resources", {})
            for p in c.get("ports") or []:
                if isinstance(p, dict):
                    p.setdefault("protocol", "TCP")


def _qos(spec: dict) -> str:
    reqs = [((c.get("resources") or {}).get("requests") or {}, (c.get("resources") or {}).get("limits") or {})
            for c in spec.get("containers") or [] if isinstance(c, dict)]
    if all(not r and not lim for r, lim in reqs):
        return "BestEffort"
    if all(lim.get("cpu") and lim.get("memory") and {**lim, **r} == lim for r, lim in reqs):
        return "Guaranteed"
    return "Burstable"


def _template_defaults(obj: dict) -> None:
    tmpl = (obj.get("spec") or {}).get("template")
    if isinstance(tmpl, dict):
        tmpl.setdefault("metadata", {})
        if isinstance(tmpl.get("spec"), dict):
            _pod_spec_defaults(tmpl["spec"])


def _defaults(info: ResourceInfo, obj: dict) -> None:
    """Defaults applied to every write of the main resource (decoding's defaulting)."""
    spec = obj.get("spec")
    kind = info.kind
    if info.custom is not None:
        return
    if kind == "CustomResourceDefinition" and isinstance(spec, dict):
        _crd_defaults(obj)
    elif kind == "Namespace":
        meta = obj.setdefault("metadata", {})
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta.get("name", "")
    elif kind == "Pod" and isinstance(spec, dict):
        _pod_spec_defaults(spec)
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        spec.setdefault("priority", 0)
    elif kind == "Service" and isinstance(spec, dict):
        spec.setdefault("type", "ClusterIP")
        if spec["type"] != "ExternalName":
            spec.setdefault("sessionAffinity", "None")
            spec.setdefault("internalTrafficPolicy", "Cluster")
        if spec["type"] in ("NodePort", "LoadBalancer"):
            spec.setdefault("externalTrafficPolicy", "Cluster")
        for p in spec.get("ports") or []:
            if isinstance(p, dict):
                p.setdefault("protocol", "TCP")
                if "targetPort" not in p and "port" in p:
                    p["targetPort"] = p["port"]
    elif kind == "Deployment" and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
        strategy = spec.setdefault("strategy", {})
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            ru = strategy.setdefault("rollingUpdate", {})
            ru.setdefault("maxUnavailable", "25%")
            ru.setdefault("maxSurge", "25%")
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        _template_defaults(obj)
    elif kind == "ReplicaSet" and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
        _template_defaults(obj)
    elif kind == "StatefulSet" and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
        spec.setdefault("podManagementPolicy", "OrderedReady")
        us = spec.setdefault("updateStrategy", {"type": "RollingUpdate"})
        if us.get("type") == "RollingUpdate":
            us.setdefault("rollingUpdate", {}).setdefault("partition", 0)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("persistentVolumeClaimRetentionPolicy", {"whenDeleted": "Retain", "whenScaled": "Retain"})
        _template_defaults(obj)
    elif kind == "DaemonSet" and isinstance(spec, dict):
        us = spec.setdefault("updateStrategy", {"type": "RollingUpdate"})
        if us.get("type") == "RollingUpdate":
            ru = us.setdefault("rollingUpdate", {})
            ru.setdefault("maxUnavailable", 1)
            ru.setdefault("maxSurge", 0)
        spec.setdefault("revisionHistoryLimit", 10)
        _template_defaults(obj)
    elif kind == "Secret":
        obj.setdefault("type", "Opaque")
        string_data = obj.pop("stringData", None)
        if isinstance(string_data, dict):
            import base64
            data = obj.setdefault("data", {}) or {}
            obj["data"] = data
            for k, v in string_data.items():
                data[k] = base64.b64encode(str(v).encode()).decode()
    elif kind == "Endpoints":
        for subset in obj.get("subsets") or []:
            for p in (subset or {}).get("ports") or []:
                if isinstance(p, dict):
                    p.setdefault("protocol", "TCP")
    elif kind == "EndpointSlice":
        for p in obj.get("ports") or []:
            if isinstance(p, dict):
                p.setdefault("protocol", "TCP")
    elif kind == "NetworkPolicy" and isinstance(spec, dict):
        if "policyTypes" not in spec:
            spec["policyTypes"] = ["Ingress"] + (["Egress"] if spec.get("egress") else [])
        for rule_key in ("ingress", "egress"):
            for rule in spec.get(rule_key) or []:
                for p in (rule or {}).get("ports") or []:
                    if isinstance(p, dict):
                        p.setdefault("protocol", "TCP")


def admit_pod(spec: dict) -> None:
    """What the ServiceAccount and DefaultTolerationSeconds admission plugins add to a
    new pod's spec: its service account, and tolerating not-ready and unreachable
    nodes for 300 s (after which the node lifecycle controller evicts it)."""
    spec.setdefault("serviceAccountName", "default")
    spec["serviceAccount"] = spec["serviceAccountName"]
    tols = spec.setdefault("tolerations", [])
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
        if not any(isinstance(t, dict) and t.get("key") == key for t in tols):
            tols.append({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300})


def prepare_create(info: ResourceInfo, obj: dict) -> None:
    """Defaults and the create-time fields (status reset, generation 1, admission defaults)."""
    if info.custom is not None:
        return info.custom.prepare_create(info, obj)
    _defaults(info, obj)
    meta = obj.setdefault("metadata", {})
    if info.generation:
        meta["generation"] = 1
    kind = info.kind
    if kind == "Namespace":
        obj["spec"] = {"finalizers": ["kubernetes"]}
        obj["status"] = {"phase": "Active"}
    elif kind == "Pod":
        spec = obj.setdefault("spec", {})
        admit_pod(spec)
        obj["status"] = {"phase": "Pending", "qosClass": _qos(spec)}
    elif kind == "CustomResourceDefinition":
        # the naming controller accepts the names, the establishing controller establishes (crd.py)
        obj["status"] = {"acceptedNames": {"plural": "", "kind": ""},
                         "storedVersions": [v.get("name") for v in _crd_versions(obj) if v.get("storage")]}
    elif info.has_status() and kind != "Node":
        obj["status"] = {}
    elif kind == "Node":
        obj.setdefault("status", {})
    if kind == "Service":
        obj["status"] = {"loadBalancer": {}}


def prepare_update(info: ResourceInfo, new: dict, old: dict) -> None:
    """A write to the main resource: defaults, the stored status kept, generation bumped on spec change."""
    if info.custom is not None:
        return info.custom.prepare_update(info, new, old)
    _defaults(info, new)
    meta = new.setdefault("metadata", {})
    old_meta = old.get("metadata") or {}
    if info.has_status():
        if "status" in old:
            new["status"] = copy.deepcopy(old["status"])
        else:
            new.pop("status", None)
    if info.kind == "Namespace":
        new["spec"] = copy.deepcopy(old.get("spec") or {})
    if info.generation:
        gen = old_meta.get("generation", 1)
        changed = _spec_of(new) != _spec_of(old)
        if (meta.get("deletionTimestamp") and not old_meta.get("deletionTimestamp")):
            changed = True
        meta["generation"] = gen + 1 if changed else gen
    if info.kind == "CustomResourceDefinition":  # a new storage version is a stored version from now on
        stored = new.setdefault("status", {}).setdefault("storedVersions", [])
        for v in _crd_versions(new):
            if v.get("storage") and v.get("name") not in stored:
                stored.append(v.get("name"))


def _spec_of(obj: dict) -> Any:
    if "spec" in obj:
        return obj.get("spec")
    # kinds whose "spec" is the object's top level (EndpointSlice)
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


def prepare_status_update(info: ResourceInfo, new: dict, old: dict) -> dict:
    """A write to /status: the stored object with only its status (and rv precondition) taken from `new`."""
    out = copy.deepcopy(old)
    out["status"] = copy.deepcopy(new.get("status") or {})
    if "resourceVersion" in (new.get("metadata") or {}):
        out["metadata"]["resourceVersion"] = new["metadata"]["resourceVersion"]
    return out


# ---------------------------------------------------------------- validation

def _validate_meta(info: ResourceInfo, obj: dict) -> list[dict]:
    causes: list[dict] = []
    meta = obj.get("metadata") or {}
    name = meta.get("name") or ""
    if not name:
        causes.append(required("metadata.name", "name or generateName is required"))
    else:
        for why in name_problems(info.name_rule, name):
            causes.append(invalid_value("metadata.name", name, why))
    for k, v in (meta.get("labels") or {}).items():
        why = selectors.valid_label_key(k)
        if why:
            causes.append(invalid_value("metadata.labels", k, why))
        if not isinstance(v, str):
            causes.append(invalid_value("metadata.labels", v, "must be a string"))
        elif selectors.valid_label_value(v):
            causes.append(invalid_value("metadata.labels", v, selectors.valid_label_value(v)))
    for k, v in (meta.get("annotations") or {}).items():
        why = selectors.valid_label_key(k)
        if why:
            causes.append(invalid_value("metadata.annotations", k, why))
    return causes


def _validate_containers(spec: dict, base: str) -> list[dict]:
    causes = []
    containers = spec.get("containers")
    if not containers:
        causes.append(required(f"{base}.containers"))
        return causes
    seen = set()
    for i, c in enumerate(containers):
        if not isinstance(c, dict):
            causes.append(invalid_value(f"{base}.containers[{i}]", c, "must be an object"))
            continue
        if not c.get("name"):
            causes.append(required(f"{base}.containers[{i}].name"))
        elif not DNS1123_LABEL.match(c["name"]):
            causes.append(invalid_value(f"{base}.containers[{i}].name", c["name"], LABEL_MSG))
        elif c["name"] in seen:
            causes.append({"reason": "FieldValueDuplicate", "message": f"Duplicate value: {go_repr(c['name'])}",
                           "field": f"{base}.containers[{i}].name"})
        seen.add(c.get("name"))
        if not c.get("image"):
            causes.append(required(f"{base}.containers[{i}].image"))
    return causes


def _format_selector(sel: dict) -> str:
    """metav1.FormatLabelSelector: `app=x,tier in (a,b)`."""
    parts = [f"{k}={v}" for k, v in sorted((sel.get("matchLabels") or {}).items())]
    for e in sel.get("matchExpressions") or []:
        op, key, vals = e.get("operator"), e.get("key"), ",".join(sorted(e.get("values") or []))
        parts.append({"In": f"{key} in ({vals})", "NotIn": f"{key} notin ({vals})", "Exists": key,
                      "DoesNotExist": f"!{key}"}.get(op, key))
    return ",".join(sorted(parts)) or ""


def selector_text(obj: dict) -> str:
    """The label selector of a workload as Scale.status.selector carries it."""
    return _format_selector(((obj.get("spec") or {}).get("selector")) or {})


def _validate_workload(obj: dict) -> list[dict]:
    causes: list[dict] = []
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    sel = spec.get("selector")
    if not sel or not ((sel.get("matchLabels")) or (sel.get("matchExpressions"))):
        causes.append(required("spec.selector"))
        if sel is not None:
            causes.append(invalid_value("spec.selector", sel, "empty selector is invalid for deployment"))
    tmpl = spec.get("template")
    if not isinstance(tmpl, dict):
        causes.append(required("spec.template"))
        return causes
    labels = (tmpl.get("metadata") or {}).get("labels") or {}
    if sel and not selectors.LabelSelector.from_match(sel).matches(labels) and (
            sel.get("matchLabels") or sel.get("matchExpressions")):
        causes.append(invalid_value("spec.template.metadata.labels", labels,
                                    "`selector` does not match template `labels`"))
    replicas = spec.get("replicas")
    if isinstance(replicas, int) and replicas < 0:
        causes.append(invalid_value("spec.replicas", replicas, "must be greater than or equal to 0"))
    causes += _validate_containers(tmpl.get("spec") or {}, "spec.template.spec")
    return causes


_SERVICE_TYPES = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"]


def _validate_service(obj: dict) -> list[dict]:
    causes: list[dict] = []
    spec = obj.get("spec") or {}
    t = spec.get("type", "ClusterIP")
    if t not in _SERVICE_TYPES:
        causes.append(not_supported("spec.type", t, _SERVICE_TYPES))
    ports = spec.get("ports") or []
    if not ports and t != "ExternalName" and spec.get("clusterIP") != "None":
        causes.append(required("spec.ports"))
    names = set()
    for i, p in enumerate(ports):
        if not isinstance(p, dict):
            continue
        if len(ports) > 1 and not p.get("name"):
            causes.append(required(f"spec.ports[{i}].name"))
        if p.get("name") in names:
            causes.append({"reason": "FieldValueDuplicate", "message": f"Duplicate value: {go_repr(p['name'])}",
                           "field": f"spec.ports[{i}].name"})
        names.add(p.get("name"))
        port = p.get("port")
        if not isinstance(port, int) or not 1 <= port <= 65535:
            causes.append(invalid_value(f"spec.ports[{i}].port", port, "must be between 1 and 65535, inclusive"))
        if p.get("protocol") not in ("TCP", "UDP", "SCTP"):
            causes.append(not_supported(f"spec.ports[{i}].protocol", p.get("protocol"), ["SCTP", "TCP", "UDP"]))
    if t == "ExternalName" and not spec.get("externalName"):
        causes.append(required("spec.externalName"))
    return causes


_POD_MUTABLE = ("spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"
                "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to "
                "existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was "
                "previously negative)")


def validate(info: ResourceInfo, obj: dict, old: dict | None = None) -> list[dict]:
    """Field causes that make this write 422 Invalid (empty when it is valid)."""
    causes = _validate_meta(info, obj)
    kind = info.kind
    if info.custom is not None:
        return causes + info.custom.validate(info, obj, old)
    if kind == "CustomResourceDefinition":
        causes += _validate_crd(obj, old)
    elif kind == "Pod" and old is None:
        causes += _validate_containers(obj.get("spec") or {}, "spec")
    elif kind in ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet"):
        causes += _validate_workload(obj)
        if old is not None and (old.get("spec") or {}).get("selector") != (obj.get("spec") or {}).get("selector"):
            causes.append(immutable("spec.selector", (obj.get("spec") or {}).get("selector")))
    elif kind == "Service":
        causes += _validate_service(obj)
    elif kind == "ConfigMap":
        for section in ("data", "binaryData"):
            for k in (obj.get(section) or {}):
                if not re.fullmatch(r"[-._a-zA-Z0-9]+", k) or len(k) > 253:
                    causes.append(invalid_value(section, k, "a valid config key must consist of alphanumeric characters, "
                                                            "'-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or "
                                                            "'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"))
    elif kind == "EndpointSlice":
        at = obj.get("addressType")
        if not at:
            causes.append(required("addressType"))
        elif at not in ("IPv4", "IPv6", "FQDN"):
            causes.append(not_supported("addressType", at, ["FQDN", "IPv4", "IPv6"]))
    elif kind in ("RoleBinding", "ClusterRoleBinding"):
        if not obj.get("roleRef"):
            causes.append(required("roleRef"))
        elif old is not None and old.get("roleRef") != obj.get("roleRef"):
            causes.append(invalid_value("roleRef", obj["roleRef"], "cannot change roleRef"))
    if old is not None:
        causes += _validate_update(info, obj, old)
    return causes


def _validate_update(info: ResourceInfo, new: dict, old: dict) -> list[dict]:
    causes: list[dict] = []
    kind = info.kind
    if kind == "Pod":
        a, b = copy.deepcopy(new.get("spec") or {}), copy.deepcopy(old.get("spec") or {})
        for s in (a, b):
            for key in ("containers", "initContainers"):
                for c in s.get(key) or []:
                    if isinstance(c, dict):
                        c.pop("image", None)
            for key in ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds"):
                s.pop(key, None)
        if a != b:
            causes.append({"reason": "FieldValueForbidden", "message": _POD_MUTABLE.split(": ", 1)[1],
                           "field": "spec"})
    elif kind == "Service":
        ns, os_ = new.get("spec") or {}, old.get("spec") or {}
        if os_.get("clusterIP") and ns.get("clusterIP") != os_.get("clusterIP") and ns.get("type") != "ExternalName":
            causes.append(invalid_value("spec.clusterIPs[0]", ns.get("clusterIPs") or [ns.get("clusterIP", "")],
                                        "may not change once set"))
    elif kind in ("Secret", "ConfigMap") and old.get("immutable"):
        for section in ("data", "binaryData", "stringData"):
            if new.get(section) != old.get(section):
                causes.append(forbidden_field(section, "field is immutable when `immutable` is set"))
    return causes


# ---------------------------------------------------------------- events.k8s.io/v1 <-> core v1 Event
# Both are one stored resource, as in kube-apiserver; the core form is stored.

_EVENT_PAIRS = [  # (events.k8s.io/v1 field, core v1 field)
    ("regarding", "involvedObject"), ("related", "related"), ("note", "message"), ("reason", "reason"),
    ("type", "type"), ("eventTime", "eventTime"), ("action", "action"),
    ("reportingController", "reportingComponent"), ("reportingInstance", "reportingInstance"),
    ("deprecatedSource", "source"), ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"), ("deprecatedCount", "count"),
]


def to_storage(info: ResourceInfo, obj: dict) -> dict:
    """The stored form of an object written through `info` (core v1 for events.k8s.io Events)."""
    if info.custom is not None:
        return info.custom.to_storage(obj)
    if info.group != "events.k8s.io":
        return obj
    out = {"kind": "Event", "apiVersion": "v1", "metadata": obj.get("metadata") or {}}
    for new, old in _EVENT_PAIRS:
        if new in obj:
            out[old] = obj[new]
    series = obj.get("series")
    if isinstance(series, dict):
        out["series"] = {"count": series.get("count"), "lastObservedTime": series.get("lastObservedTime")}
    return out


def from_storage(info: ResourceInfo, obj: dict) -> dict:
    """The stored object as `info` serves it."""
    if info.custom is not None:
        return info.custom.from_storage(obj)
    if info.group != "events.k8s.io":
        return obj
    out = {"kind": "Event", "apiVersion": "events.k8s.io/v1", "metadata": obj.get("metadata") or {}}
    for new, old in _EVENT_PAIRS:
        if old in obj and obj[old] not in (None, "", {}):
            out[new] = obj[old]
    if isinstance(obj.get("series"), dict):
        out["series"] = obj["series"]
    return out


# ---------------------------------------------------------------- apiextensions.k8s.io/v1 CustomResourceDefinition
# The custom resources a CRD defines are served by crd.py; this is the CRD kind's own strategy.

def _crd_versions(obj: dict) -> list[dict]:
    return [v for v in ((obj.get("spec") or {}).get("versions") or []) if isinstance(v, dict)]


def _crd_defaults(obj: dict) -> None:
    """SetDefaults_CustomResourceDefinitionSpec: singular, listKind, conversion strategy None."""
    spec = obj["spec"]
    names = spec.get("names")
    if isinstance(names, dict):
        if not names.get("singular") and isinstance(names.get("kind"), str):
            names["singular"] = names["kind"].lower()
        if not names.get("listKind") and names.get("kind"):
            names["listKind"] = f"{names['kind']}List"
    if not isinstance(spec.get("conversion"), dict):
        spec["conversion"] = {"strategy": "None"}


def _dns1035(path: str, value: Any) -> list[dict]:
    if not isinstance(value, str) or len(value) > 63 or not DNS1035_LABEL.match(value):
        return [invalid_value(path, value, DNS1035_MSG)]
    return []


def _validate_crd(obj: dict, old: dict | None) -> list[dict]:
    """What ValidateCustomResourceDefinition checks that a hand-written CRD gets wrong most."""
    causes: list[dict] = []
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    names = spec.get("names") if isinstance(spec.get("names"), dict) else {}
    group, plural = spec.get("group") or "", names.get("plural") or ""
    name = (obj.get("metadata") or {}).get("name") or ""
    if name and name != f"{plural}.{group}":
        causes.append(invalid_value("metadata.name", name, 'must be spec.names.plural+"."+spec.group'))
    if not group:
        causes.append(required("spec.group"))
    elif not DNS1123_SUBDOMAIN.match(group):
        causes.append(invalid_value("spec.group", group, SUBDOMAIN_MSG))
    elif "." not in group:
        causes.append(invalid_value("spec.group", group, "should be a domain with at least one dot"))
    scope = spec.get("scope") or ""
    if not scope:
        causes.append(required("spec.scope"))
    elif scope not in ("Cluster", "Namespaced"):
        causes.append(not_supported("spec.scope", scope, ["Cluster", "Namespaced"]))
    versions = _crd_versions(obj)
    seen: set = set()
    for i, v in enumerate(versions):
        causes += _dns1035(f"spec.versions[{i}].name", v.get("name"))
        if not isinstance((v.get("schema") or {}).get("openAPIV3Schema"), dict):
            causes.append(required(f"spec.versions[{i}].schema.openAPIV3Schema"))
        seen.add(v.get("name"))
    if not versions:
        causes.append(required("spec.versions", "must have exactly one version marked as storage version"))
    else:
        if len(seen) != len(versions):
            causes.append(invalid_value("spec.versions", versions, "must contain unique version names"))
        if sum(1 for v in versions if v.get("storage")) != 1:
            causes.append(invalid_value("spec.versions", versions,
                                        "must have exactly one version marked as storage version"))
    for field in ("plural", "singular", "kind", "listKind"):
        value = names.get(field) or ""
        if not value:
            causes.append(required(f"spec.names.{field}"))
        elif field in ("plural", "singular"):
            causes += _dns1035(f"spec.names.{field}", value)
        elif _dns1035("", value.lower()):
            causes.append(invalid_value(f"spec.names.{field}", value,
                                        "may have mixed case, but should otherwise match: " + DNS1035_MSG))
    for i, short in enumerate(names.get("shortNames") or []):
        causes += _dns1035(f"spec.names.shortNames[{i}]", short)
    if names.get("kind") and names.get("kind") == names.get("listKind"):
        causes.append(invalid_value("spec.names.listKind", names["listKind"], "kind and listKind may not be the same"))
    causes += _crd_api_approval(obj, old, group)
    if old is not None:
        old_spec = old.get("spec") or {}
        if old_spec.get("group") != spec.get("group"):
            causes.append(immutable("spec.group", spec.get("group")))
        for field in ("plural",):
            if (old_spec.get("names") or {}).get(field) != names.get(field):
                causes.append(immutable(f"spec.names.{field}", names.get(field)))
    return causes


APPROVAL = "api-approved.kubernetes.io"
_APPROVAL_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s]+")


def _approval_state(obj: dict | None) -> tuple[str, str]:
    """apihelpers.GetAPIApprovalState: (missing|bypassed|approved|invalid, reason)."""
    value = ((obj or {}).get("metadata") or {}).get("annotations", {}).get(APPROVAL, "")
    if not value:
        return "missing", (f'protected groups must have approval annotation "{APPROVAL}", see '
                           "https://github.com/kubernetes/enhancements/pull/1111")
    if value.startswith("unapproved"):
        return "bypassed", f"not approved: {json.dumps(value)}"
    if _APPROVAL_URL.match(value):
        return "approved", f"approved in {value}"
    return "invalid", (f'protected groups must have approval annotation "{APPROVAL}" with either a URL or a reason '
                       'starting with "unapproved", see https://github.com/kubernetes/enhancements/pull/1111')


def _crd_api_approval(obj: dict, old: dict | None, group: str) -> list[dict]:
    """validateAPIApproval: a CRD in a protected group (k8s.io, kubernetes.io and their subdomains)
    needs the api-approved.kubernetes.io annotation (Gateway API's CRDs carry it)."""
    protected = group in ("k8s.io", "kubernetes.io") or group.endswith((".k8s.io", ".kubernetes.io"))
    if not protected:
        return []
    state, reason = _approval_state(obj)
    if old is not None and _approval_state(old)[0] == state:
        return []
    where = f"metadata.annotations[{APPROVAL}]"
    if state == "missing":
        return [required(where, reason)]
    if state == "invalid":
        value = ((obj.get("metadata") or {}).get("annotations") or {}).get(APPROVAL, "")
        return [invalid_value(where, value, reason)]
    return []
