"""What a pod made through the API takes from ConfigMaps, Secrets and itself when
its kubelet starts it, as the kubelet does (pkg/kubelet/kubelet_pods.go's
makeEnvironmentVariables and the configMap, secret and emptyDir volume plugins):

- each container's environment: envFrom (configMapRef, secretRef, with their
  prefix) first, then env in order (value, with $(VAR) references to the
  variables before it; valueFrom configMapKeyRef, secretKeyRef, fieldRef);
  $(VAR) in the container's args as well;
- the Services' environment variables (SERVICE_HOST, SERVICE_PORT and the
  Docker-link ones) of the pod's namespace and of default/kubernetes, from
  the Services known when it starts, under its own env;
- the files of its volumes (a ConfigMap's or Secret's keys, or the items
  chosen; an emptyDir is an empty folder) and each container's volumeMounts,
  in the shape emu's pod plans mount them (emu.node.plan.cni.mount_commands).

Values are read once, when the pod is wired (a ConfigMap changed later reaches
the pod when it is made again, as environment variables do on a real cluster).
A ConfigMap, Secret or key that is not there and not `optional` stops the pod
from starting, with the kubelet's reason (CreateContainerConfigError) and
message; what emu's kubelet cannot provide (a hostPath volume, a
resourceFieldRef) stops it too, saying so.
Standard library only: it runs in the node agent.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from collections.abc import Callable

from emu.node.records import PodState, ServiceState
from emu.node.services import pod_service_env

ENV_NAME_PATTERN = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_REFERENCE = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")
CONFIG_ERROR = "CreateContainerConfigError"  # the kubelet's reason for a missing ConfigMap, Secret or key
UNSUPPORTED = "CreateContainerError"
# Volume kinds emu's kubelet fills; others stop the pod with a reason.
VOLUME_KINDS = ("configMap", "secret", "emptyDir")


class PodConfigError(Exception):
    """Why a pod's containers cannot start: (container, reason, message); container "" for the pod."""

    def __init__(self, container: str, reason: str, message: str):
        super().__init__(message)
        self.container, self.reason, self.message = container, reason, message


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in env values and args: a defined variable's
    value, an undefined reference left as written, $$ for a $."""

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(replace, text)


# Reads one object: (kind "ConfigMap" | "Secret", namespace, name) -> the object, None when not found.
Reader = Callable[[str, str, str], "dict | None"]


class _Sources:
    """The ConfigMaps and Secrets a pod names, each read once."""

    def __init__(self, read: Reader, namespace: str):
        self.read, self.namespace = read, namespace
        self.seen: dict[tuple[str, str], dict[str, str] | None] = {}

    def data(self, kind: str, name: str, optional: bool, container: str) -> dict[str, str] | None:
        """The object's keys and values (a Secret's decoded); None for a missing optional one."""
        if (kind, name) not in self.seen:
            obj = self.read(kind, self.namespace, name)
            self.seen[(kind, name)] = None if obj is None else _values(kind, obj, container)
        found = self.seen[(kind, name)]
        if found is None and not optional:
            raise PodConfigError(container, CONFIG_ERROR, f'{kind.lower()} "{name}" not found')
        return found


def _values(kind: str, obj: dict, container: str) -> dict[str, str]:
    out = {}
    encoded = dict(obj.get("binaryData") or {}) if kind == "ConfigMap" else dict(obj.get("data") or {})
    plain = dict(obj.get("data") or {}) if kind == "ConfigMap" else {}
    for key, value in encoded.items():
        try:
            out[key] = base64.b64decode(str(value), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            name = (obj.get("metadata") or {}).get("name", "")
            raise PodConfigError(container, UNSUPPORTED, f"{kind} {name!r} key {key!r}: emu's kubelet provides "
                                 "text values only, not binary ones") from None  # fmt: skip
    out.update({key: str(value) for key, value in plain.items()})
    return out


def _field(obj: dict, pod: PodState, host_ip: str, path: str, container: str) -> str:
    """A downward API fieldRef's value (the paths the kubelet resolves for env)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name", ""), "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""), "spec.nodeName": spec.get("nodeName") or pod.node,
        "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
        "status.hostIP": host_ip, "status.hostIPs": host_ip, "status.podIP": pod.ip, "status.podIPs": pod.ip,
    }  # fmt: skip
    if path in simple:
        return simple[path]
    found = re.fullmatch(r"metadata\.(labels|annotations)\['([^']*)'\]", path)
    if found:
        return str((meta.get(found.group(1)) or {}).get(found.group(2), ""))
    known = ", ".join(sorted(simple))
    raise PodConfigError(container, UNSUPPORTED, f"fieldRef {path!r}: emu's kubelet resolves {known}"
                         " and metadata.labels['KEY'] / metadata.annotations['KEY']")  # fmt: skip


def _environment(declared: dict, obj: dict, pod: PodState, host_ip: str, sources: _Sources,
                 service_env: dict[str, str]) -> dict[str, str]:  # fmt: skip
    name = declared.get("name", "")
    env: dict[str, str] = {}
    for source in declared.get("envFrom") or []:
        prefix = str(source.get("prefix") or "")
        for kind, ref in (("ConfigMap", source.get("configMapRef")), ("Secret", source.get("secretRef"))):
            if not isinstance(ref, dict):
                continue
            for key, value in (sources.data(kind, ref.get("name", ""), bool(ref.get("optional")), name) or {}).items():
                if ENV_NAME_PATTERN.match(prefix + key):  # the kubelet skips (and reports) the others
                    env[prefix + key] = value
    for variable in declared.get("env") or []:
        if not isinstance(variable, dict) or not variable.get("name"):
            continue
        source = variable.get("valueFrom")
        if not isinstance(source, dict):
            env[variable["name"]] = expand(str(variable.get("value") or ""), {**service_env, **env})
            continue
        for kind, field in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
            ref = source.get(field)
            if isinstance(ref, dict):
                optional = bool(ref.get("optional"))
                data = sources.data(kind, ref.get("name", ""), optional, name)
                if data is not None and ref.get("key") in data:
                    env[variable["name"]] = data[ref["key"]]
                elif not optional:
                    raise PodConfigError(name, CONFIG_ERROR, f"couldn't find key {ref.get('key')} in {kind} "
                                         f"{pod.namespace}/{ref.get('name', '')}")  # fmt: skip
                break
        else:
            if isinstance(source.get("fieldRef"), dict):
                env[variable["name"]] = _field(obj, pod, host_ip, str(source["fieldRef"].get("fieldPath")), name)
            else:
                raise PodConfigError(name, UNSUPPORTED, f"env {variable['name']}: emu's kubelet takes valueFrom "
                                     "configMapKeyRef, secretKeyRef or fieldRef, not "
                                     f"{', '.join(sorted(source)) or 'nothing'}")  # fmt: skip
    return env


def _volume_files(volume: dict, sources: _Sources) -> dict[str, str]:
    name = volume.get("name", "")
    kind = next((k for k in VOLUME_KINDS if k in volume), None)
    if kind is None:
        other = ", ".join(sorted(k for k in volume if k != "name")) or "no source"
        raise PodConfigError("", UNSUPPORTED, f"volume {name!r} ({other}): emu's kubelet provides "
                             f"{', '.join(VOLUME_KINDS)} volumes")  # fmt: skip
    if kind == "emptyDir":
        return {}
    source = volume.get(kind) or {}
    object_name = source.get("name" if kind == "configMap" else "secretName", "")
    optional = bool(source.get("optional"))
    data = sources.data("ConfigMap" if kind == "configMap" else "Secret", object_name, optional, "")
    if data is None:
        return {}
    items = source.get("items") or []
    if not items:
        return dict(data)
    files = {}
    for item in items:
        if item.get("key") in data:
            files[str(item.get("path") or item["key"])] = data[item["key"]]
        elif not optional:
            raise PodConfigError("", CONFIG_ERROR, f"MountVolume.SetUp failed for volume {name!r}: configmap "
                                 f"references non-existent config key: {item.get('key')}")  # fmt: skip
    return files


def configure(obj: dict, pod: PodState, host_ip: str, read: Reader,
              services: dict[str, ServiceState] | None = None) -> PodState:  # fmt: skip
    """`pod` (emu.node.kube.podwatch.pod_state of the API object `obj`) with each
    container's environment, args and volumeMounts, and the files of its volumes,
    resolved as the kubelet resolves them when it starts the pod; with `services`
    (every Service, by "namespace/name"), their environment variables too (its
    namespace's unless enableServiceLinks is false, and always default/kubernetes's).
    Raises PodConfigError for what stops the pod from starting."""
    sources = _Sources(read, pod.namespace)
    spec = obj.get("spec") or {}
    pod = dataclasses.replace(pod, enable_service_links=spec.get("enableServiceLinks") is not False)
    # (The containers get them from the node's file of them, cni.service_env_files, made from the same Services.)
    service_env = pod_service_env(services, pod, pod.enable_service_links) if services is not None else {}
    declared = {c.get("name"): c for c in spec.get("containers") or [] if isinstance(c, dict)}
    volumes = {}
    for volume in spec.get("volumes") or []:
        if isinstance(volume, dict):
            volumes[volume.get("name", "")] = _volume_files(volume, sources)
    containers = []
    for container in pod.containers:
        source = declared.get(container["name"], {})
        env = _environment(source, obj, pod, host_ip, sources, service_env)
        out = dict(container)
        if env:
            out["env"] = [{"name": name, "value": value} for name, value in env.items()]
        if out.get("args"):
            out["args"] = [expand(str(part), {**service_env, **env}) for part in out["args"]]
        mounts = []
        for mount in source.get("volumeMounts") or []:
            if mount.get("name") not in volumes:
                raise PodConfigError(container["name"], UNSUPPORTED, f"volumeMount {mount.get('name')!r}: the pod "
                                     "has no volume of that name")  # fmt: skip
            mounts.append({k: mount[k] for k in ("name", "mountPath", "subPath", "readOnly") if k in mount})
        if mounts:
            out["volumeMounts"] = mounts
        containers.append(out)
    return dataclasses.replace(pod, containers=containers, volumes=volumes)
