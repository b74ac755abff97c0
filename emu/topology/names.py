"""Names Kubernetes generates for a deployment's pods (pure; used by
validation and by allocation, so neither imports the other)."""

from __future__ import annotations

import hashlib
import json

from emu.topology.model import Deployment, PodTemplate

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


# Fields added after pod names were first made, left out of hashes at their
# default so that an existing lab's pods keep their names.
_LATER_DEFAULTS = {"restartPolicy": "Always"}


def template_spec(template: PodTemplate, exclude: set[str] | None = None) -> dict:
    """The template as hashed for names and for 'has this pod changed'."""
    spec = template.model_dump(mode="json", by_alias=True, exclude=exclude)
    for field, default in _LATER_DEFAULTS.items():
        if spec.get(field) == default:
            del spec[field]
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
