"""One Kubernetes object (a parsed YAML document) -> one emu topology object.

Every field is one of three things, decided by the API's own field lists
(emu.api.manifests.fields) and emu's (MODELLED below):
- modelled: read, and honoured with Kubernetes' semantics;
- a Kubernetes field emu does not model: left out, and named in a warning;
- not a Kubernetes field at all: an error, as kubectl's strict validation makes it.
Pure: no files, no Docker.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from emu.errors import Problem
from emu.api.manifests.fields import FIELDS
from emu.api.topology.load import Locator, problems_from_pydantic
from emu.api.topology.model import (
    ConfigMap,
    DaemonSet,
    Deployment,
    Ingress,
    Namespace,
    NetworkPolicy,
    Pod,
    Secret,
    Service,
    StatefulSet,
)

Path = tuple[str | int, ...]

# (apiVersion, kind) emu reads, and where each goes in a topology.
KINDS = {
    ("v1", "Namespace"): "namespaces",
    ("v1", "ConfigMap"): "configMaps",
    ("v1", "Service"): "services",
    ("v1", "Pod"): "pods",
    ("apps/v1", "Deployment"): "deployments",
    ("apps/v1", "StatefulSet"): "statefulSets",
    ("apps/v1", "DaemonSet"): "daemonSets",
    ("v1", "Secret"): "secrets",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkPolicies",
    ("networking.k8s.io/v1", "Ingress"): "ingresses",
}
MODELS = {
    "Namespace": Namespace, "ConfigMap": ConfigMap, "Service": Service, "Pod": Pod,
    "Deployment": Deployment, "StatefulSet": StatefulSet, "DaemonSet": DaemonSet, "Secret": Secret,
    "NetworkPolicy": NetworkPolicy, "Ingress": Ingress,
}  # fmt: skip
# What kubectl calls each kind in its output (resource.group).
RESOURCES = {
    "Namespace": "namespace", "ConfigMap": "configmap", "Service": "service", "Pod": "pod",
    "Deployment": "deployment.apps", "StatefulSet": "statefulset.apps", "DaemonSet": "daemonset.apps",
    "Secret": "secret", "NetworkPolicy": "networkpolicy.networking.k8s.io", "Ingress": "ingress.networking.k8s.io",
}  # fmt: skip

# The fields emu honours, per API type; the rest of FIELDS[type] are warned about.
MODELLED: dict[str, set[str]] = {
    "Pod": {"apiVersion", "kind", "metadata", "spec"},
    "Service": {"apiVersion", "kind", "metadata", "spec"},
    "ConfigMap": {"apiVersion", "kind", "metadata", "data"},
    "Namespace": {"apiVersion", "kind", "metadata"},
    "Deployment": {"apiVersion", "kind", "metadata", "spec"},
    "StatefulSet": {"apiVersion", "kind", "metadata", "spec"},
    "DaemonSet": {"apiVersion", "kind", "metadata", "spec"},
    "ObjectMeta": {"name", "namespace", "labels"},
    "PodTemplateSpec": {"metadata", "spec"},
    "PodSpec": {
        "containers", "hostname", "subdomain", "dnsPolicy", "dnsConfig", "nodeSelector", "nodeName",
        "enableServiceLinks", "terminationGracePeriodSeconds", "volumes", "tolerations", "restartPolicy",
    },
    "Container": {"name", "image", "command", "args", "ports", "env", "envFrom", "volumeMounts", "readinessProbe"},
    "ContainerPort": {"name", "containerPort", "protocol"},
    "EnvVar": {"name", "value", "valueFrom"},
    "EnvVarSource": {"configMapKeyRef", "fieldRef"},
    "ConfigMapKeySelector": {"name", "key", "optional"},
    "ObjectFieldSelector": {"fieldPath", "apiVersion"},
    "EnvFromSource": {"configMapRef", "prefix"},
    "ConfigMapEnvSource": {"name", "optional"},
    "VolumeMount": {"name", "mountPath", "readOnly", "subPath"},
    "Volume": {"name", "configMap", "emptyDir"},
    "ConfigMapVolumeSource": {"name", "items", "optional"},
    "KeyToPath": {"key", "path"},
    "EmptyDirVolumeSource": set(),
    "Probe": {
        "httpGet", "tcpSocket", "exec", "initialDelaySeconds", "periodSeconds", "timeoutSeconds",
        "successThreshold", "failureThreshold",
    },
    "HTTPGetAction": {"path", "port", "scheme"},
    "TCPSocketAction": {"port"},
    "ExecAction": {"command"},
    "PodDNSConfig": {"nameservers", "searches", "options"},
    "PodDNSConfigOption": {"name", "value"},
    "Toleration": {"key", "operator", "value", "effect"},
    "ServiceSpec": {
        "type", "selector", "ports", "clusterIP", "clusterIPs", "externalName", "sessionAffinity",
        "sessionAffinityConfig", "externalTrafficPolicy", "internalTrafficPolicy", "loadBalancerIP",
        "ipFamilies", "ipFamilyPolicy", "externalIPs", "loadBalancerSourceRanges", "healthCheckNodePort",
        "trafficDistribution",
    },
    "ServicePort": {"name", "port", "targetPort", "protocol", "nodePort"},
    "SessionAffinityConfig": {"clientIP"},
    "ClientIPConfig": {"timeoutSeconds"},
    "DeploymentSpec": {"replicas", "selector", "template"},
    "StatefulSetSpec": {"replicas", "selector", "template", "serviceName", "podManagementPolicy"},
    "DaemonSetSpec": {"selector", "template"},
    "LabelSelector": {"matchLabels", "matchExpressions"},
    "LabelSelectorRequirement": {"key", "operator", "values"},
    "Secret": {"apiVersion", "kind", "metadata", "type", "data", "stringData"},
    "NetworkPolicy": {"apiVersion", "kind", "metadata", "spec"},
    "NetworkPolicySpec": {"podSelector", "policyTypes", "ingress", "egress"},
    "NetworkPolicyIngressRule": {"from", "ports"},
    "NetworkPolicyEgressRule": {"to", "ports"},
    "NetworkPolicyPeer": {"podSelector", "namespaceSelector", "ipBlock"},
    "NetworkPolicyPort": {"protocol", "port", "endPort"},
    "IPBlock": {"cidr", "except"},
    "Ingress": {"apiVersion", "kind", "metadata", "spec"},
    "IngressSpec": {"ingressClassName", "defaultBackend", "rules", "tls"},
    "IngressRule": {"host", "http"},
    "HTTPIngressRuleValue": {"paths"},
    "HTTPIngressPath": {"path", "pathType", "backend"},
    "IngressBackend": {"service"},
    "IngressServiceBackend": {"name", "port"},
    "ServiceBackendPort": {"name", "number"},
    "IngressTLS": {"hosts", "secretName"},
}  # fmt: skip

AGNHOST = re.compile(r"(^|/)agnhost([:@]|$)")
NETEXEC_FLAGS = ("--http-port", "--udp-port")  # the agnhost netexec flags emu's netexec has


@dataclass
class ManifestObject:
    """One object read from a manifest, as an emu topology object."""

    kind: str
    name: str
    namespace: str | None  # None for a Namespace
    model: Any
    source: str
    document: int  # 1-based, in its file
    locator: Locator
    prefix: Path = ()  # where the object is in its document (items[i] of a List)

    @property
    def key(self) -> str:
        """The topology list it goes to (pods, deployments, ...)."""
        return next(key for (_, kind), key in KINDS.items() if kind == self.kind)

    @property
    def identity(self) -> tuple[str, str | None, str]:
        return (self.kind, self.namespace, self.name)

    @property
    def reference(self) -> str:
        """'Deployment default/web', as messages name it."""
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"

    @property
    def resource(self) -> str:
        """'deployment.apps/web', as kubectl prints it."""
        return f"{RESOURCES[self.kind]}/{self.name}"

    def problem(self, path: Path, message: str) -> Problem:
        """A problem at a path of the manifest (from the object's root), located in its file."""
        full = self.prefix + tuple(path)
        line, column = self.locator.locate(full)
        return Problem(_format(full), f"{self.reference}: {message}", line, column)

    def topology_problem(self, path: Path, message: str) -> Problem:
        """A problem at a path of the emu object, located at the manifest field it came from."""
        return self.problem(manifest_path(self.kind, path), message)


def _format(path: Path) -> str:
    from emu.api.topology.load import format_path

    return format_path(path)


def manifest_path(kind: str, path: Path) -> Path:
    """Where a field of the emu object came from in the manifest: ('template',
    'containers', 0, 'workload') of a Deployment is spec.template.spec.containers[0].image."""
    if not path:
        return ()
    head, rest = path[0], tuple(path[1:])
    if head in ("name", "namespace") or (kind == "Namespace" and head == "labels"):
        return ("metadata", head, *rest)
    if kind == "Pod":
        return _template_path(("spec",), ("metadata",), tuple(path))
    if kind in ("Deployment", "StatefulSet", "DaemonSet"):
        if head == "template":
            return _template_path(("spec", "template", "spec"), ("spec", "template", "metadata"), rest)
        return ("spec", head, *rest)
    if kind in ("Service", "NetworkPolicy", "Ingress"):
        return ("spec", *path)
    return tuple(path)


def _template_path(spec: Path, metadata: Path, path: Path) -> Path:
    if not path:
        return spec
    if path[0] == "labels":
        return metadata + path
    if path[0] == "node":
        return spec + ("nodeName", *path[1:])
    if path[0] == "containers" and len(path) > 2 and path[2] == "workload":
        return spec + ("containers", path[1], "image")
    return spec + path


class _Reader:
    """Walks one object against the API's field lists: keeps what emu models,
    gathers warnings for the rest and problems for fields Kubernetes lacks."""

    def __init__(self, locate):
        self.locate = locate  # (path, message) -> Problem
        self.problems: list[Problem] = []
        self.unmodelled: dict[str, str] = {}  # path without indexes -> path as written, first seen

    def error(self, path: Path, message: str) -> None:
        self.problems.append(self.locate(path, message))

    def clean(self, data: Any, type_name: str, path: Path) -> Any:
        """data with only the fields emu models (None for a value of the wrong shape)."""
        fields = FIELDS.get(type_name)
        if fields is None:
            return data
        if not isinstance(data, dict):
            self.error(path, f"must be a mapping ({type_name}), not {_shape(data)}")
            return None
        kept = {}
        for key, value in data.items():
            if not isinstance(key, str) or key not in fields:
                close = difflib.get_close_matches(str(key), list(fields), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                self.error(path + (str(key),), f"unknown field '{key}' in {type_name}{hint}; Kubernetes would refuse it too")
                continue
            if value is None:
                continue  # null is absent, as in Kubernetes
            if key not in MODELLED.get(type_name, set()):
                self._unmodelled(path + (key,))
                continue
            field_type = fields[key]
            if field_type.startswith("list:"):
                if not isinstance(value, list):
                    self.error(path + (key,), f"must be a list, not {_shape(value)}")
                    continue
                kept[key] = [self.clean(item, field_type[5:], path + (key, i)) for i, item in enumerate(value)]
            else:
                kept[key] = self.clean(value, field_type, path + (key,))
        return kept

    def _unmodelled(self, path: Path) -> None:
        written = _format(path)
        self.unmodelled.setdefault(re.sub(r"\[\d+\]", "[]", written), written)


def _shape(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false"}.get(type(value), repr(value)[:40])


def selector_matches(selector: dict, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels and matchExpressions) selects these labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for requirement in selector.get("matchExpressions") or []:
        key, operator, values = requirement.get("key"), requirement.get("operator"), requirement.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def convert(
    data: dict, locator: Locator, source: str, document: int, default_namespace: str, prefix: Path = ()
) -> tuple[ManifestObject | None, list[Problem], list[str]]:
    """(object, problems, warnings) for one Kubernetes object of a document."""

    def locate(path: Path, message: str) -> Problem:
        full = prefix + tuple(path)
        line, column = locator.locate(full)
        return Problem(_format(full), message, line, column)

    api_version, kind = data.get("apiVersion"), data.get("kind")
    where = f"document {document}" + (f" ({_format(prefix)})" if prefix else "")
    if not isinstance(kind, str) or not isinstance(api_version, str):
        missing = " and ".join(k for k, v in (("apiVersion", api_version), ("kind", kind)) if not isinstance(v, str))
        return None, [locate((), f"{where} has no {missing}; every Kubernetes object names both (e.g. apiVersion: v1, kind: Pod)")], []
    if (api_version, kind) not in KINDS:
        served = [f"{v} {k}" for v, k in KINDS]
        if kind in MODELS:
            wanted = next(v for v, k in KINDS if k == kind)
            message = f"{where}: {kind} is not served as {api_version}; use apiVersion: {wanted}"
        else:
            message = (f"{where}: kind {kind} ({api_version}) is not one emu reads (it reads {', '.join(served)}); "
                       "remove the document, or apply it to a real cluster")  # fmt: skip
        return None, [locate(("kind",), message)], []

    raw = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    if isinstance(raw.get("name"), str):
        namespace = "" if kind == "Namespace" else f"{raw.get('namespace') or default_namespace}/"
        label = f"{kind} {namespace}{raw['name']}"
    else:
        label = f"{kind} in {where}"
    reader = _Reader(lambda path, message: locate(path, f"{label}: {message}"))
    cleaned = reader.clean(data, kind, ())
    metadata = (cleaned or {}).get("metadata") or {}
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        generate = isinstance(data.get("metadata"), dict) and "generateName" in data["metadata"]
        why = "generateName is not supported by emu; give metadata.name" if generate else "metadata.name is required"
        return None, reader.problems + [locate(("metadata",), f"{kind} in {where} has no name: {why}")], []
    namespace = None if kind == "Namespace" else (metadata.get("namespace") or default_namespace)
    obj = ManifestObject(kind, name, namespace, None, source, document, locator, prefix)
    warnings: list[str] = []
    body: dict = {"name": name}
    if namespace is not None:
        body["namespace"] = namespace
    spec = (cleaned or {}).get("spec") or {}
    if kind == "Namespace":
        body["labels"] = metadata.get("labels") or {}
    elif kind == "ConfigMap":
        body["data"] = cleaned.get("data") or {}
    elif kind == "Service":
        body.update(_service(spec, obj, reader))
    elif kind in ("NetworkPolicy", "Ingress"):
        body.update(spec)  # emu's models take the API's spec fields as they are
    elif kind == "Secret":
        secret_type = cleaned.get("type") or "Opaque"
        if secret_type != "kubernetes.io/tls":
            # Only TLS secrets have a use in emu (Ingress TLS); pods' secretKeyRef is not modelled.
            where_line = obj.problem((), "").line
            at = f"{source}:{where_line}" if where_line else source
            return None, reader.problems, [f"{obj.reference} ({at}): a Secret of type {secret_type} is not modelled "
                                           "(emu uses kubernetes.io/tls secrets, for Ingress TLS); ignored"]  # fmt: skip
        body["type"] = secret_type
        body["stringData"] = {**_decoded(cleaned.get("data") or {}, reader), **(cleaned.get("stringData") or {})}
    elif kind == "Pod":
        body.update(_template(spec, metadata.get("labels") or {}, ("spec",), obj, reader, warnings, controller=False))
    else:
        template = spec.get("template") or {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        body["template"] = _template(template.get("spec") or {}, labels, ("spec", "template", "spec"), obj, reader,
                                     warnings, controller=True)  # fmt: skip
        selector = spec.get("selector")
        if not selector:
            reader.error(("spec", "selector"), f"spec.selector is required (e.g. matchLabels: {labels or {'app': name}})")
        elif not selector_matches(selector, labels):
            reader.error(("spec", "selector"), f"selector does not match template labels ({labels})")
        if kind != "DaemonSet" and "replicas" in spec:
            body["replicas"] = spec["replicas"]
        if kind == "StatefulSet":
            for key in ("serviceName", "podManagementPolicy"):
                if key in spec:
                    body[key] = spec[key]
    if reader.problems:
        return None, reader.problems, []
    try:
        obj.model = MODELS[kind].model_validate(body)
    except ValidationError as error:
        # Located at the emu path first, then moved to the manifest's field.
        emu_problems = problems_from_pydantic(error, Locator(None))
        problems = []
        for problem in emu_problems:
            emu_path = _parse_path(problem.path)
            problems.append(obj.topology_problem(emu_path, problem.message))
        return None, problems, []
    if reader.unmodelled:
        warnings.insert(0, f"fields emu does not model, ignored: {', '.join(reader.unmodelled.values())}")
    located = obj.problem((), "")
    at = f"{source}:{located.line}" if located.line else source
    return obj, [], [f"{obj.reference} ({at}): {w}" for w in warnings]


def _decoded(data: dict, reader: _Reader) -> dict[str, str]:
    """A Secret's data: base64 values, as text."""
    import base64
    import binascii

    decoded = {}
    for key, value in data.items():
        try:
            decoded[key] = base64.b64decode(str(value), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            reader.error(("data", key), f"data.{key} is not base64 of UTF-8 text; put text under stringData instead")
    return decoded


def _parse_path(text: str) -> Path:
    """'template.containers[0].name' -> ('template', 'containers', 0, 'name')."""
    path: list[str | int] = []
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", text):
        path.append(int(part[1:-1]) if part.startswith("[") else part)
    return tuple(path)


def _service(spec: dict, obj: ManifestObject, reader: _Reader) -> dict:
    body = {k: v for k, v in spec.items() if k not in ("clusterIPs", "ipFamilies", "ipFamilyPolicy")}
    ips = spec.get("clusterIPs")
    if ips:
        if "clusterIP" in spec and ips[0] != spec["clusterIP"]:
            reader.error(("spec", "clusterIPs"), "clusterIPs[0] must equal clusterIP")
        elif len(ips) > 1:
            reader.error(("spec", "clusterIPs"), "emu's services are IPv4 only: give one clusterIP")
        body.setdefault("clusterIP", ips[0])
    families = spec.get("ipFamilies") or []
    if any(family != "IPv4" for family in families) or spec.get("ipFamilyPolicy") == "RequireDualStack":
        reader.error(("spec", "ipFamilies"), "emu's cluster is IPv4 single-stack; use ipFamilies: [IPv4]")
    return body


def _template(
    spec: dict, labels: dict, at: Path, obj: ManifestObject, reader: _Reader, warnings: list[str], controller: bool
) -> dict:
    """A PodSpec (and its pod's labels) as an emu pod template."""
    template: dict = {"labels": labels}
    for key in ("hostname", "subdomain", "dnsConfig", "nodeSelector", "enableServiceLinks",
                "terminationGracePeriodSeconds", "volumes", "tolerations", "dnsPolicy"):  # fmt: skip
        if key in spec:
            template[key] = spec[key]
    if template.get("dnsPolicy") == "ClusterFirstWithHostNet":
        template["dnsPolicy"] = "ClusterFirst"  # the same for a pod without hostNetwork
    if "nodeName" in spec:
        template["node"] = spec["nodeName"]
    policy = spec.get("restartPolicy", "Always")
    containers = []
    for index, container in enumerate(spec.get("containers") or []):
        if isinstance(container, dict):
            containers.append(_container(container, at + ("containers", index), obj, reader, warnings))
    template["containers"] = containers
    if policy != "Always":
        template["restartPolicy"] = policy
        if controller:
            reader.error(at + ("restartPolicy",), f"restartPolicy must be Always in a pod template (got {policy})")
    return template


def _container(container: dict, at: Path, obj: ManifestObject, reader: _Reader, warnings: list[str]) -> dict:
    """A Container as emu's: agnhost netexec and pause as emu's built-in workloads
    (no pull), any other image as itself (a Docker container in the pod)."""
    body = {k: v for k, v in container.items() if k not in ("image", "command", "args")}
    for probe in ("readinessProbe",):
        action = (container.get(probe) or {}).get("httpGet") or {}
        if action.get("scheme", "HTTP") != "HTTP":
            reader.error(at + (probe, "httpGet", "scheme"), f"emu's probes speak HTTP only, not {action['scheme']}")
        action.pop("scheme", None)
    image = container.get("image")
    command, args = container.get("command"), list(container.get("args") or [])
    name = container.get("name", "?")
    if not image:
        reader.error(at, f"container '{name}' has no image; Kubernetes requires one")
        return body
    body["image"] = image
    if AGNHOST.search(image) and not command and args[:1] in (["netexec"], ["pause"]):
        body["workload"], body["args"] = args[0], args[1:]
        flags = [a.split("=", 1)[0] for a in args[1:] if a.startswith("-")]
        allowed = NETEXEC_FLAGS if args[0] == "netexec" else ()
        unknown = [f for f in flags if f not in allowed]
        if unknown:
            reader.error(at + ("args",), f"container '{name}': emu's agnhost {args[0]} has only "
                                         f"{', '.join(allowed) or 'no flags'}, not {', '.join(unknown)}")  # fmt: skip
        return body
    if command:
        body["command"] = command
    if args:
        body["args"] = args
    return body
