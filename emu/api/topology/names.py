"""Names Kubernetes generates for a deployment's pods (pure; used by
validation and by allocation, so neither imports the other)."""

from __future__ import annotations

import hashlib
import json

from emu.api.topology.model import DaemonSet, Deployment, PodTemplate, StatefulSet

# The alphabet Kubernetes uses for generated name suffixes (no vowels, no 0/1/3).
_K8S_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\x00".join(parts).encode()).digest()


def _k8s_suffix(data: bytes, length: int) -> str:
    number = int.from_bytes(data, "big")
    chars = []
    for _ in range(length):
        number, rest = divmod(number, len(_K8S_ALPHABET))
        chars.append(_K8S_ALPHABET[rest])
    return "".join(chars)


# Keys added to pods and containers after emu's pod names were first made, with
# their defaults: left out of hashes (and of the state) at those defaults, so
# that an existing lab's pods keep their names.
_LATER_DEFAULTS = {
    "restartPolicy": "Always", "nodeSelector": {}, "tolerations": [], "terminationGracePeriodSeconds": 30,
    "volumes": [],
}  # fmt: skip
_LATER_CONTAINER_DEFAULTS = {"envFrom": [], "volumeMounts": [], "image": None}


def container_dump(container) -> dict:
    """A container as JSON data (camelCase), without later keys at their defaults."""
    data = container.model_dump(mode="json", by_alias=True)
    for key, default in _LATER_CONTAINER_DEFAULTS.items():
        if data.get(key) == default:
            del data[key]
    for variable in data.get("env", []):
        if variable.get("valueFrom") is None:
            variable.pop("valueFrom", None)
    return data


def template_spec(template: PodTemplate, exclude: set[str] | None = None) -> dict:
    """The template as hashed for names and for 'has this pod changed'."""
    spec = template.model_dump(mode="json", by_alias=True, exclude=exclude)
    for field, default in _LATER_DEFAULTS.items():
        if spec.get(field) == default:
            del spec[field]
    spec["containers"] = [container_dump(c) for c in template.containers]
    return spec


def template_hash(template: PodTemplate) -> str:
    """A stable hash of a pod template, like the pod-template-hash label."""
    text = json.dumps(template_spec(template), sort_keys=True)
    return _k8s_suffix(_digest(text), 10)


def deployment_pod_names(deployment: Deployment) -> list[str]:
    """Pod names of a deployment: <name>-<template hash>-<5 characters>.

    Replica i keeps its name when replicas change, so scaling adds or removes
    pods at the end and leaves the others alone.
    """
    pod_hash = template_hash(deployment.template)
    return [
        f"{deployment.name}-{pod_hash}-{_k8s_suffix(_digest(deployment.name, pod_hash, str(i)), 5)}"
        for i in range(deployment.replicas)
    ]


def statefulset_pod_names(statefulset: StatefulSet) -> list[str]:
    """A StatefulSet's pods: <name>-0 .. <name>-(replicas-1), stable across changes."""
    return [f"{statefulset.name}-{ordinal}" for ordinal in range(statefulset.replicas)]


def daemonset_pod_name(daemonset: DaemonSet, node: str) -> str:
    """A DaemonSet's pod on one node: <name>-<5 characters>, stable for the node."""
    return f"{daemonset.name}-{_k8s_suffix(_digest(daemonset.name, node), 5)}"


def revision_hash(template: PodTemplate) -> str:
    """controller-revision-hash of a StatefulSet's or DaemonSet's pods (without the set's name)."""
    return _k8s_suffix(_digest("revision", json.dumps(template_spec(template), sort_keys=True)), 10)
